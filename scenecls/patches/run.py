"""``scenecls --mode=infer``: patch inference over files, folders and globs, writing JSON, PNG and CSV."""

import csv
import glob
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from absl import logging

from scenecls import parallel
from scenecls.data.images import ImageError, has_image_extension, is_ignored, load_rgb
from scenecls.patches.classifier import PatchClassifier
from scenecls.patches.render import render, title


def expand_inputs(spec: str, exclude: str = "") -> tuple[list[str], list[str]]:
    """Files named by a comma list of files, folders (searched recursively) and globs; and the errors.

    Folders and globs yield image files only (by extension; hidden and system files and anything under
    ``exclude``, the output folder, skipped); a file named explicitly is always tried. Duplicates are
    dropped, order is kept.
    """
    files, errors = [], []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if os.path.isfile(item):
            files.append(item)
            continue
        if os.path.isdir(item):
            found = [
                os.path.join(root, name)
                for root, _, names in os.walk(item)
                for name in names
                if not _hidden(os.path.join(root, name), item)
            ]
        else:
            found = [p for p in glob.glob(item, recursive=True) if os.path.isfile(p)]
        images = sorted(
            p
            for p in found
            if has_image_extension(p) and not is_ignored(p) and not (exclude and _is_under(p, exclude))
        )
        if not images:
            errors.append(f"{item}: no such file, or no image files in it")
        files.extend(images)
    return list(dict.fromkeys(os.path.normpath(f) for f in files)), errors


def _is_under(path: str, folder: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == os.path.abspath(folder)


def _hidden(path: str, top: str) -> bool:
    """Whether any component of ``path`` below ``top`` is hidden or system clutter."""
    return any(is_ignored(part) for part in os.path.relpath(path, top).split(os.sep))


def output_names(paths: Sequence[str]) -> list[str]:
    """A distinct, file-system-safe output name per input: its stem, or more of its path on a clash.

    ``a/photo.jpg`` and ``b/photo.jpg`` become ``a_photo`` and ``b_photo``, ``photo.jpg`` and ``photo.png``
    ``photo_jpg`` and ``photo_png``, rather than overwriting each other. Case is ignored (as macOS and
    Windows file systems do); a counter settles whatever still clashes.
    """
    common = os.path.commonpath([os.path.abspath(p) for p in paths]) if len(paths) > 1 else ""
    relative = [os.path.relpath(os.path.abspath(p), common) if common else os.path.basename(p) for p in paths]
    levels = [
        [os.path.splitext(os.path.basename(p))[0] for p in paths],
        [os.path.splitext(r)[0] for r in relative],
        relative,
    ]
    names = levels[0]
    for level in levels[1:]:
        clashes = Counter(name.lower() for name in names)
        names = [alt if clashes[name.lower()] > 1 else name for name, alt in zip(names, level, strict=True)]
    names = [re.sub(r"[^\w-]+", "_", name).strip("_") or "image" for name in names]
    seen: Counter = Counter()
    unique = []
    for name in names:
        seen[name.lower()] += 1
        unique.append(name if seen[name.lower()] == 1 else f"{name}_{seen[name.lower()]}")
    return unique


def to_json(result: dict[str, Any]) -> str:
    """The result as JSON, one field per line and one patch per line (readable, and small for big grids)."""
    lines = []
    for key, value in result.items():
        if key == "patches" and value:
            text = "[\n" + ",\n".join(f"  {json.dumps(patch)}" for patch in value) + "\n ]"
        else:
            text = json.dumps(value)
        lines.append(f" {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def summary_row(result: dict[str, Any] | None, path: str, name: str, error: str = "") -> dict[str, Any]:
    """One summary.csv row; failed files keep their row with the error."""
    row = {"file": path, "output": name, "major": "", "secondary": "", "whole_image": "", "error": error}
    if result:
        row.update(
            major=result["major"],
            whole_image=result["whole_image"]["class"],
            secondary=";".join(f"{s['class']}:{s['coverage']:.4f}" for s in result["secondary"]),
        )
        row.update({f"coverage_{c}": f"{v:.4f}" for c, v in result["coverage"].items()})
    return row


def _write_csv(rows: list[dict[str, Any]], classes: Sequence[str], path: str) -> None:
    coverage = [f"coverage_{c}" for c in classes]
    fields = ["file", "output", "major", "secondary", "whole_image", *coverage, "error"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _predict(classifier: PatchClassifier, path: str) -> dict[str, Any]:
    """The result of one file, or ``{"error": message}`` when it cannot be read or classified."""
    start = time.perf_counter()
    try:
        result = classifier.predict(path)
    except (ImageError, ValueError) as e:  # ImageError already reads "path: reason"
        return {"error": str(e) if isinstance(e, ImageError) else f"{path}: {e}"}
    result.update(image=path, seconds=time.perf_counter() - start)
    return result


def infer_files(classifier: PatchClassifier, paths: Sequence[str], out_dir: str) -> list[dict[str, Any]]:
    """Writes ``<name>.json`` and ``<name>.png`` per file, prints a line each; returns the summary rows.

    In a multi-process run the processes take one file each per round (process p: files p, p + P, ...);
    each round's results are gathered and only process 0 writes and prints. An unreadable image gives one
    line on stderr naming the file and the reason; the batch continues.
    """
    if parallel.is_primary():
        os.makedirs(out_dir, exist_ok=True)
    rows = []
    names = output_names(paths)
    for first in range(0, len(paths), jax.process_count()):
        group = paths[first : first + jax.process_count()]
        mine = [_predict(classifier, path) for path in group[jax.process_index() :][:1]]
        results = parallel.gather_json(mine, len(group))
        for path, name, result in zip(group, names[first : first + len(group)], results, strict=True):
            if "error" in result:
                rows.append(summary_row(None, path, name, error=result["error"]))
                if parallel.is_primary():
                    print(f"FAILED {result['error']}", file=sys.stderr)
                continue
            rows.append(summary_row(result, path, name))
            if parallel.is_primary():
                _write_result(result, os.path.join(out_dir, name))
    return rows


def _write_result(result: dict[str, Any], out_path: str) -> None:
    """``<out_path>.json`` and ``.png`` of one image's result, and its line on stdout."""
    with open(f"{out_path}.json", "w") as f:
        f.write(to_json(result))
    render(load_rgb(result["image"]), result, f"{out_path}.png")
    print(
        f"{result['image']}: {title(result)}; {len(result['patches'])} patches in {result['seconds']:.2f}s "
        f"-> {out_path}.json/.png"
    )
    for note in result["notes"]:
        print(f"  note: {note}")


def run_inference(config: ml_collections.ConfigDict, workdir: str) -> int:
    """Patch inference on ``config.infer.inputs`` with the best model of ``workdir``; returns the exit status.

    Outputs go to ``config.infer.output_dir`` (default ``<workdir>/infer``), with ``summary.csv`` when
    there are several inputs. The status is 1 if any input failed or matched nothing, else 0.
    """
    out_dir = config.infer.output_dir or os.path.join(workdir, "infer")
    paths, errors = expand_inputs(config.infer.inputs, exclude=out_dir)
    if not paths and not errors:
        raise ValueError("no inputs: set --config.infer.inputs=FILES,FOLDERS,GLOBS")
    if parallel.is_primary():
        for error in errors:
            print(f"FAILED {error}", file=sys.stderr)
    if not paths:
        return 1
    classifier = PatchClassifier.from_workdir(workdir, config.patch)
    logging.info("Patch inference (%s mode) on %d images -> %s", config.patch.mode, len(paths), out_dir)
    rows = infer_files(classifier, paths, out_dir)
    if len(paths) > 1 and parallel.is_primary():
        _write_csv(rows, classifier.classes, os.path.join(out_dir, "summary.csv"))
        print(f"Summary of {len(paths)} images: {os.path.join(out_dir, 'summary.csv')}")
    failed = len(errors) + sum(1 for row in rows if row["error"])
    if failed and parallel.is_primary():
        print(f"{failed} input(s) failed", file=sys.stderr)
    return 1 if failed else 0
