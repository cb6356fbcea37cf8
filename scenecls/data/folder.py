"""Folder-of-class-folders scanning, source fingerprints and the stratified split.

Everything here is decided from file names, sizes and modification times only (no decoding), and is
independent of the order in which the filesystem lists files.
"""

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence

from scenecls.data.images import has_image_extension, is_ignored

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One candidate image: ``path`` is relative to the source folder, with '/' separators."""

    path: str
    label: int
    size: int
    mtime_ns: int


@dataclasses.dataclass(frozen=True)
class Scan:
    """What a source folder holds: classes, candidate images (sorted by path) and ignored entries."""

    root: str
    classes: tuple[str, ...]
    files: tuple[SourceFile, ...]
    ignored: tuple[tuple[str, str], ...]  # (relative path, reason)


def scan(source_dir: str, classes: Sequence[str] = ()) -> Scan:
    """Lists the images of ``source_dir/<class>/**``; hidden entries and non-image files are ignored.

    Args:
      source_dir: the folder of class folders.
      classes: explicit class list; empty means the sorted names of the (non-hidden) sub-folders. With an
        explicit list a missing class folder is an error and other folders are ignored (and reported).

    Raises:
      ValueError: the folder does not exist, a listed class folder is missing, or no images were found.
    """
    if not os.path.isdir(source_dir):
        raise ValueError(f"{source_dir}: data source folder does not exist")
    ignored: list[tuple[str, str]] = []
    folders = []
    for name in sorted(os.listdir(source_dir)):
        if is_ignored(name):
            ignored.append((name, "hidden or system file"))
        elif not os.path.isdir(os.path.join(source_dir, name)):
            ignored.append((name, "file outside the class folders"))
        else:
            folders.append(name)
    if classes:
        classes = tuple(classes)
        missing = [c for c in classes if c not in folders]
        if missing:
            raise ValueError(f"{source_dir}: no folder for data.classes {missing} (found {folders})")
        ignored += [(name, "folder not in data.classes") for name in folders if name not in classes]
    else:
        classes = tuple(folders)
    if not classes:
        raise ValueError(f"{source_dir}: no class folders found (expected {source_dir}/<class>/<images>)")
    files = []
    for label, name in enumerate(classes):
        for path in _walk(source_dir, name, ignored):
            stat = os.stat(os.path.join(source_dir, path))
            files.append(SourceFile(path, label, stat.st_size, stat.st_mtime_ns))
    if not files:
        raise ValueError(f"{source_dir}: no image files in the class folders {list(classes)}")
    return Scan(source_dir, classes, tuple(sorted(files, key=lambda f: f.path)), tuple(sorted(ignored)))


def _walk(root: str, rel_dir: str, ignored: list[tuple[str, str]]) -> list[str]:
    """Relative paths of the image files under ``root/rel_dir``, recursively; records what is ignored."""
    paths = []
    for name in sorted(os.listdir(os.path.join(root, rel_dir))):
        rel_path = f"{rel_dir}/{name}"
        full_path = os.path.join(root, rel_path)
        if is_ignored(name):
            ignored.append((rel_path, "hidden or system file"))
        elif os.path.isdir(full_path):
            paths += _walk(root, rel_path, ignored)
        elif not has_image_extension(name):
            ignored.append((rel_path, f"not an image file extension ({os.path.splitext(name)[1] or 'none'})"))
        else:
            paths.append(rel_path)
    return paths


def fingerprint(files: Sequence[SourceFile], classes: Sequence[str], settings: Mapping[str, object]) -> str:
    """A short hash of the file list (paths, labels, sizes, mtimes), the classes and preparation settings.

    Any added, removed, renamed, relabelled or modified file changes it, and so does any setting that
    changes the prepared data: the prepared version is keyed by it and never mixed across changes.
    """
    content = {
        "classes": list(classes),
        "files": [[f.path, f.label, f.size, f.mtime_ns] for f in sorted(files, key=lambda f: f.path)],
        "settings": dict(settings),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def split_sizes(count: int, ratios: Sequence[float]) -> list[int]:
    """Images per split for one class, each within one image of ``count * ratio``.

    Every split with a positive ratio gets round(count * ratio), at least 1; the split with the largest
    ratio (train by default) takes the remainder instead. A result < 1 means too few images.
    """
    sizes = [max(1, math.floor(count * r + 0.5)) if r > 0 else 0 for r in ratios]
    largest = max(range(len(ratios)), key=lambda i: ratios[i])
    sizes[largest] = count - sum(sizes) + sizes[largest]
    return sizes


def stratified_split(
    files: Sequence[SourceFile], classes: Sequence[str], ratios: Sequence[float], seed: int
) -> dict[str, list[SourceFile]]:
    """Assigns files to train/validation/test per class, deterministic in (paths, seed).

    Within a class the files are ordered by a seeded hash of their path (a permutation that does not
    depend on listing order, and that keeps most assignments when files are added), then cut by
    split_sizes. Each split's files are returned sorted by path.

    Raises:
      ValueError: bad ratios, or a class with too few images for every non-empty split.
    """
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != len(SPLITS) or min(ratios) < 0 or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
        raise ValueError(
            f"data.split must be three non-negative ratios (train, validation, test) summing "
            f"to 1, got {ratios}"
        )
    splits: dict[str, list[SourceFile]] = {name: [] for name in SPLITS}
    for label, name in enumerate(classes):
        members = sorted((f for f in files if f.label == label), key=lambda f: _split_key(f.path, seed))
        sizes = split_sizes(len(members), ratios)
        if any(size < 1 for size, ratio in zip(sizes, ratios, strict=True) if ratio > 0):
            raise ValueError(
                f"class {name!r} has {len(members)} usable image(s), too few for the split {ratios}"
            )
        start = 0
        for split, size in zip(SPLITS, sizes, strict=True):
            splits[split] += members[start : start + size]
            start += size
    return {split: sorted(members, key=lambda f: f.path) for split, members in splits.items()}


def _split_key(path: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{path}".encode()).hexdigest()
