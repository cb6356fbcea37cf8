"""Folder-of-class-folders scanning, source fingerprints and the stratified split.

Everything here is decided from file names, sizes and modification times only (no decoding), and is
independent of the order in which the filesystem lists files.
"""

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Collection, Mapping, Sequence

from absl import logging

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
    absent: tuple[str, ...] = ()  # classes without a folder or without image files (only if allowed)


def scan(source_dir: str, classes: Sequence[str] = (), allow_absent: bool = False) -> Scan:
    """Lists the images of ``source_dir/<class>/**``; hidden entries and non-image files are ignored.

    Args:
      source_dir: the folder of class folders.
      classes: explicit class list; empty means the sorted names of the (non-hidden) sub-folders that hold
        an image file at some depth (the others are ignored with a warning: leftovers, not classes). With an
        explicit list, other folders are ignored (and reported).
      allow_absent: with an explicit list, accept (with a warning) classes that have no folder or no image
        file, as a labelled evaluation folder may; they are listed in ``Scan.absent``.

    Raises:
      ValueError: the folder does not exist, no images were found, or (unless ``allow_absent``) a listed
        class folder is missing or holds no image file.
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
    if not folders:
        raise ValueError(f"{source_dir}: no class folders found (expected {source_dir}/<class>/<images>)")
    image_paths, clutter = {}, {}
    for name in folders if not classes else [c for c in classes if c in folders]:
        image_paths[name], clutter[name] = _walk(source_dir, name)
    if classes:
        classes = tuple(classes)
        missing = [name for name in classes if name not in folders]
        empty = [name for name in classes if name in folders and not image_paths[name]]
        _check_absent(source_dir, folders, missing, empty, allow_absent)
        absent = tuple(name for name in classes if name in missing or name in empty)
        ignored += [(name, "folder not in data.classes") for name in folders if name not in classes]
    else:
        classes = tuple(name for name in folders if image_paths[name])
        absent = ()
        leftovers = [name for name in folders if not image_paths[name]]
        if leftovers:
            logging.warning(
                "%s: ignoring folders without image files (not classes): %s", source_dir, leftovers
            )
        ignored += [(name, "no image files: not a class") for name in leftovers]
    files = []
    for label, name in enumerate(classes):
        ignored += clutter.get(name, [])
        for path in image_paths.get(name, []):
            stat = os.stat(os.path.join(source_dir, path))
            files.append(SourceFile(path, label, stat.st_size, stat.st_mtime_ns))
    if not files:
        raise ValueError(f"{source_dir}: no image files in the sub-folders {folders}")
    return Scan(
        source_dir, classes, tuple(sorted(files, key=lambda f: f.path)), tuple(sorted(ignored)), absent
    )


def _check_absent(
    source_dir: str, folders: list[str], missing: list[str], empty: list[str], allow_absent: bool
) -> None:
    """Refuses (one line naming them) listed classes without a folder or without images; warns if allowed."""
    if not (missing or empty):
        return
    if not allow_absent:
        problems = [f"no folder for data.classes {missing} (found {folders})"] if missing else []
        problems += [
            f"data.classes entry {name!r}: no image file in {os.path.abspath(os.path.join(source_dir, name))}"
            for name in empty
        ]
        raise ValueError(f"{source_dir}: " + "; ".join(problems))
    logging.warning(
        "%s: classes without images, accepted with no examples: %s (no folder: %s, no image files: %s)",
        source_dir,
        missing + empty,
        missing,
        empty,
    )


def _walk(root: str, rel_dir: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Relative paths of the image files under ``root/rel_dir``, recursively, and the ignored entries."""
    paths: list[str] = []
    ignored: list[tuple[str, str]] = []
    for name in sorted(os.listdir(os.path.join(root, rel_dir))):
        rel_path = f"{rel_dir}/{name}"
        full_path = os.path.join(root, rel_path)
        if is_ignored(name):
            ignored.append((rel_path, "hidden or system file"))
        elif os.path.isdir(full_path):
            sub_paths, sub_ignored = _walk(root, rel_path)
            paths += sub_paths
            ignored += sub_ignored
        elif not has_image_extension(name):
            ignored.append((rel_path, f"not an image file extension ({os.path.splitext(name)[1] or 'none'})"))
        else:
            paths.append(rel_path)
    return paths, ignored


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
    files: Sequence[SourceFile],
    classes: Sequence[str],
    ratios: Sequence[float],
    seed: int,
    absent: Collection[str] = (),
) -> dict[str, list[SourceFile]]:
    """Assigns files to train/validation/test per class, deterministic in (paths, seed).

    Within a class the files are ordered by a seeded hash of their path (a permutation that does not
    depend on listing order, and that keeps most assignments when files are added), then cut by
    split_sizes. Each split's files are returned sorted by path. The classes named in ``absent``
    (``Scan.absent``) may have no file at all; they then get none in any split.

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
        if not members and name in absent:
            continue
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
