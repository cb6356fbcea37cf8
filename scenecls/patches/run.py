"""``scenecls --mode=infer``: patch inference over files, folders and globs, writing JSON, PNG and CSV
(and, with ``infer.explain``, Grad-CAM figures and arrays)."""

import contextlib
import csv
import glob
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from scenecls import console, parallel
from scenecls.data.images import ImageError, has_image_extension, is_ignored, load_rgb
from scenecls.patches.explain import explained_classes
from scenecls.patches.patch_classifier import PatchClassifier
from scenecls.patches.render import render, render_gradcam, title

# An image and class names -> their heatmaps (k, H, W) (``PatchClassifier.explain``).
Explainer = Callable[[np.ndarray, Sequence[str]], np.ndarray]


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


def csv_row(result: dict[str, Any] | None, path: str, name: str, error: str = "") -> dict[str, Any]:
    """One summary.csv row; failed files keep their row with the error."""
    row = {"file": path, "output": name, "major": "", "secondary": "", "whole_image": "", "error": error}
    if result:
        row.update(
            major=result["major"] or "",  # None: every patch abstained (uncertain is then 1)
            whole_image=result["whole_image"]["class"],
            secondary=";".join(f"{s['class']}:{s['coverage']:.4f}" for s in result["secondary"]),
            uncertain=f"{result['uncertain']['share']:.4f}",
        )
        row.update({f"coverage_{c}": f"{v:.4f}" for c, v in result["coverage"].items()})
    return row


def _write_csv(rows: list[dict[str, Any]], classes: Sequence[str], path: str) -> None:
    coverage = [f"coverage_{c}" for c in classes]
    fields = ["file", "output", "major", "secondary", "whole_image", *coverage, "uncertain", "error"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _failure_reason(error: Exception) -> str:
    """Why handling an image failed, on one line: the message, and what kind of failure when it helps."""
    message = " ".join(str(error).split())
    if isinstance(error, MemoryError):  # numpy's _ArrayMemoryError too
        return f"out of memory ({message})" if message else "out of memory"
    if isinstance(error, ValueError) and message:  # ours (ImageError too) are written to be read as they are
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _predict(classifier: PatchClassifier, path: str) -> dict[str, Any]:
    """One file's result, or ``{"error": "path: reason"}`` if anything fails in reading or classifying it."""
    start = time.perf_counter()
    try:
        result = classifier.predict(path)
    except Exception as e:  # one image never stops the batch: undecodable, out of memory, the model, ...
        logging.debug("Inference on %s failed", path, exc_info=True)
        reason = _failure_reason(e)  # an ImageError's already reads "path: reason"
        return {"error": reason if isinstance(e, ImageError) else f"{path}: {reason}"}
    result.update(image=path, seconds=time.perf_counter() - start)
    return result


def infer_files(
    classifier: PatchClassifier,
    paths: Sequence[str],
    out_dir: str,
    gradcam: bool = False,
    save_arrays: bool = False,
) -> list[dict[str, Any]]:
    """Writes ``<name>.json`` and ``<name>.png`` per file, prints a line each; returns the summary.csv rows.

    With ``gradcam`` also ``<name>_gradcam.png`` (and with ``save_arrays`` ``<name>_gradcam.npz``): the
    Grad-CAM heatmaps of the major and secondary classes (``classifier`` must be built from a model).

    In a multi-process run the processes take one file each per round (process p: files p, p + P, ...);
    each round's results are gathered and only process 0 writes and prints. Any failure with one file
    (decoding, the model, running out of memory, writing, drawing) gives one ``FAILED path: reason`` line
    on stderr and an ``error`` in its row, and the batch goes on (the traceback is logged at debug level).
    A file that was classified keeps its classes in its row even if writing its outputs failed; its JSON is
    written before its overlay, so an overlay that cannot be drawn costs only the PNG. Write failures are
    known to process 0 only, which writes summary.csv (and computes the Grad-CAM heatmaps).
    """
    explain = classifier.explain if gradcam else None
    if parallel.is_primary():
        os.makedirs(out_dir, exist_ok=True)
    rows = []
    names = output_names(paths)
    bar = console.progress(total=len(paths), desc="Patch inference", unit="img")
    for first in range(0, len(paths), jax.process_count()):
        group = paths[first : first + jax.process_count()]
        mine = [_predict(classifier, path) for path in group[jax.process_index() :][:1]]
        results = parallel.gather_json(mine, len(group))
        for path, name, result in zip(group, names[first : first + len(group)], results, strict=True):
            if "error" in result:
                error, result = result["error"], None
            elif parallel.is_primary():
                error = _write_result(result, os.path.join(out_dir, name), explain, save_arrays)
            else:
                error = ""
            if error:
                console.say(f"FAILED {error}", error=True)
            rows.append(csv_row(result, path, name, error=error))
        bar.update(len(group))
    bar.close()
    return rows


def _write_result(
    result: dict[str, Any],
    out_path: str,
    explain: Explainer | None = None,
    save_arrays: bool = False,
) -> str:
    """``<out_path>.json``, then ``.png`` (then the Grad-CAM outputs with ``explain``) of one result and its
    line on stdout; returns why not ("" if done).

    Nothing more is drawn once an output fails; an output a failure interrupts is removed.
    """
    path, json_path, png_path = result["image"], f"{out_path}.json", f"{out_path}.png"
    try:
        with open(json_path, "w") as f:
            f.write(to_json(result))
    except Exception as e:
        _discard(json_path, e)
        return f"{path}: cannot write {json_path}: {_failure_reason(e)}"
    try:
        image = load_rgb(path)
        render(image, result, png_path)
    except Exception as e:  # out of memory, a file changed since, a plotting bug: the JSON stands
        _discard(png_path, e)
        return f"{path}: overlay not drawn ({_failure_reason(e)}); {json_path} written"
    written = ".json/.png"
    if explain is not None:
        gradcam_png, gradcam_npz = f"{out_path}_gradcam.png", f"{out_path}_gradcam.npz"
        try:
            _write_gradcam(image, result, explain, gradcam_png, gradcam_npz if save_arrays else None)
        except Exception as e:  # as for the overlay: the JSON and the overlay stand
            for output in (gradcam_png, gradcam_npz):
                _discard(output, e)
            return f"{path}: Grad-CAM not drawn ({_failure_reason(e)}); {json_path} and {png_path} written"
        written += "/_gradcam.png" + ("/_gradcam.npz" if save_arrays else "")
    notes = "".join(f"\n  note: {note}" for note in result["notes"])
    console.say(
        f"{path}: {title(result)}; {len(result['patches'])} patches in {result['seconds']:.2f}s "
        f"-> {out_path}{written}{notes}"
    )
    return ""


def _write_gradcam(
    image: np.ndarray,
    result: dict[str, Any],
    explain: Explainer,
    png_path: str,
    npz_path: str | None,
) -> None:
    """The Grad-CAM figure of the result's major and secondary classes, and their heatmaps if ``npz_path``.

    The arrays: ``classes`` (k,) and ``heatmaps`` (k, H, W) float16 in [0, 1] at the image's resolution.
    """
    classes = explained_classes(result)
    heatmaps = explain(image, classes)
    if npz_path:
        np.savez_compressed(npz_path, classes=np.array(classes, str), heatmaps=heatmaps.astype(np.float16))
    render_gradcam(image, result, classes, heatmaps, png_path)


def _discard(output: str, error: Exception) -> None:
    """Removes what ``error`` left of an output (half-written, or stale from an earlier run); logs it."""
    logging.debug("Writing %s failed", output, exc_info=error)
    with contextlib.suppress(OSError):
        os.remove(output)


def run_inference(config: ml_collections.ConfigDict, workdir: str) -> int:
    """Patch inference on ``config.infer.inputs`` with the best model of ``workdir``; returns the exit status.

    Outputs go to ``config.infer.output_dir`` (default ``<workdir>/infer``), with ``summary.csv`` when
    there are several inputs, and Grad-CAM outputs with ``config.infer.explain=gradcam``. The status is
    1 if any input failed or matched nothing, else 0.
    """
    out_dir = config.infer.output_dir or os.path.join(workdir, "infer")
    paths, errors = expand_inputs(config.infer.inputs, exclude=out_dir)
    if not paths and not errors:
        raise ValueError("no inputs: set --config.infer.inputs=FILES,FOLDERS,GLOBS")
    for error in errors:
        console.say(f"FAILED {error}", error=True)
    if not paths:
        return 1
    classifier = PatchClassifier.from_workdir(workdir, config.patch)
    gradcam = config.infer.explain == "gradcam"
    if gradcam and not classifier.can_explain:
        raise ValueError("config.infer.explain=gradcam needs a classifier built from a model")
    logging.info("Patch inference (%s mode) on %d images -> %s", config.patch.mode, len(paths), out_dir)
    rows = infer_files(classifier, paths, out_dir, gradcam=gradcam, save_arrays=config.infer.save_arrays)
    if len(paths) > 1 and parallel.is_primary():
        _write_csv(rows, classifier.classes, os.path.join(out_dir, "summary.csv"))
        console.say(f"Summary of {len(paths)} images: {os.path.join(out_dir, 'summary.csv')}")
    failed = len(errors) + sum(1 for row in rows if row["error"])
    if failed:
        console.say(f"{failed} input(s) failed", error=True)
    return 1 if failed else 0
