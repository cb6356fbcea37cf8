"""``scenecls --mode=export``: a trained workdir's best model as SavedModel, TFLite and ONNX, verified.

Files are written to ``<workdir>/export.partial`` and moved to ``<workdir>/export`` only when every check
passes; a failed check leaves them there for inspection and ends the command with status 1.
"""

import hashlib
import importlib.util
import json
import os
import shutil
import time
from typing import Any

import ml_collections

import scenecls
from scenecls import console
from scenecls.export import readme, verify
from scenecls.export.serving import IMAGES_SIGNATURE, PATCHES_SIGNATURE, serving_function
from scenecls.models import build_classifier
from scenecls.models.variants import lookup_variant
from scenecls.workdir import checkpoints
from scenecls.workdir.inference import load_for_inference
from scenecls.workdir.run_files import write_atomically

FOLDER = "export"
SAVED_MODEL, TFLITE, TFLITE_QUANTIZED = "saved_model", "model.tflite", "model_quantized.tflite"
ONNX = "model.onnx"
META, README = "meta.json", "README.txt"


class ExportError(ValueError):
    """An export failed its verification (the message gives the figures)."""


def export_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Writes and verifies ``<workdir>/export``; returns the contents of its meta.json.

    Raises:
      WorkdirError: no trained run in ``workdir``.
      ExportError: an export disagrees with the JAX model beyond the tolerances of scenecls.export.verify.
    """
    missing = [name for name in ("tf2onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"--mode=export needs {' and '.join(missing)}: pip install -e '.[export]'")
    from scenecls.export import formats  # TensorFlow and jax2tf

    start = time.perf_counter()
    loaded = load_for_inference(workdir)
    # Exports compute in float32, whatever the run's model.dtype resolves to here (bfloat16 on a GPU).
    float32 = ml_collections.ConfigDict({**loaded.config.model.to_dict(), "dtype": "float32"})
    loaded = loaded._replace(model=build_classifier(float32, num_classes=len(loaded.classes)))
    final, staging = os.path.join(workdir, FOLDER), os.path.join(workdir, FOLDER + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    path = lambda name: os.path.join(staging, name)  # noqa: E731
    size = loaded.config.image_size
    console.say(
        f"Exporting the best {loaded.stage} model of {workdir} ({len(loaded.classes)} classes, "
        f"{size}x{size} px, temperature {loaded.temperature:.3g})"
    )
    quantize = config.export.quantize
    writers = {
        SAVED_MODEL: lambda: formats.write_saved_model(
            path(SAVED_MODEL), serving_function(loaded), loaded.variables, size, loaded.classes
        ),
        TFLITE: lambda: formats.write_tflite(path(SAVED_MODEL), path(TFLITE)),
        TFLITE_QUANTIZED: lambda: formats.write_tflite(path(SAVED_MODEL), path(TFLITE_QUANTIZED), True),
        ONNX: lambda: formats.write_onnx(path(TFLITE), path(ONNX), config.export.onnx_opset),
    }
    seconds = {}
    for name, write in writers.items():
        if name == TFLITE_QUANTIZED and not quantize:
            continue
        began = time.perf_counter()
        write()
        seconds[name] = round(time.perf_counter() - began, 1)
        console.say(f"  {name} written ({seconds[name]:.0f} s)")
    console.say(f"Verifying on {config.export.verify_images} synthetic photos")
    data = verify.photos(config.export.verify_images, size)
    began = time.perf_counter()
    results = _verify(loaded, staging, data, quantize)
    seconds["verification"] = round(time.perf_counter() - began, 1)
    seconds["total"] = round(time.perf_counter() - start, 1)
    failures = _failures(results)
    meta = _meta(loaded, workdir, results, data, seconds, config.export.onnx_opset)
    write_atomically(path(README), readme.text(meta))
    meta["files"] = _checksums(staging)
    write_atomically(path(META), json.dumps(meta, indent=2) + "\n")
    _say_summary(meta)
    if failures:
        raise ExportError(f"export verification failed ({'; '.join(failures)}); files kept in {staging}")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    console.say(f"Export took {seconds['total']:.0f} s: {final}")
    return meta


def _verify(loaded, staging: str, data: verify.Photos, quantized: bool) -> dict[str, dict[str, Any]]:
    """Each export's agreement with the JAX model, by name (see verify)."""
    saved_model, tflite = os.path.join(staging, SAVED_MODEL), os.path.join(staging, TFLITE)
    images, patches = verify.reference(loaded, data.images), verify.reference(loaded, data.patches)
    fresh_images, fresh_patches = verify.fresh_process_probabilities(saved_model, data)
    checks = {
        "saved_model": (
            images,
            verify.saved_model_probabilities(saved_model, data.images, IMAGES_SIGNATURE),
        ),
        "saved_model classify_patches": (
            patches,
            verify.saved_model_probabilities(saved_model, data.patches, PATCHES_SIGNATURE),
        ),
        "saved_model, fresh TensorFlow-only process": (images, fresh_images),
        "saved_model classify_patches, fresh process": (patches, fresh_patches),
        TFLITE: (images, verify.tflite_probabilities(tflite, data.images)),
        ONNX: (images, verify.onnx_probabilities(os.path.join(staging, ONNX), data.images)),
    }
    if quantized:
        quantized_path = os.path.join(staging, TFLITE_QUANTIZED)
        checks[TFLITE_QUANTIZED] = (images, verify.tflite_probabilities(quantized_path, data.images))
    results = {}
    for name, (expected, actual) in checks.items():
        results[name] = verify.compare(expected, actual).as_dict()
        results[name]["quantized"] = name == TFLITE_QUANTIZED
    return results


def _failures(results: dict[str, dict[str, Any]]) -> list[str]:
    """What breaks the tolerances: float32 exports max |dp| and identical top-1; quantised top-1 >= 99%."""
    failures = []
    for name, r in results.items():
        if r["quantized"]:
            if r["top1_agreement"] < verify.MIN_QUANTIZED_AGREEMENT:
                failures.append(f"{name}: top-1 agreement {r['top1_agreement']:.1%} < 99%")
        elif r["max_abs_diff"] > verify.FLOAT_TOLERANCE or r["top1_agreement"] < 1.0:
            failures.append(
                f"{name}: max |dp| {r['max_abs_diff']:.2g}, top-1 agreement {r['top1_agreement']:.1%}"
            )
    return failures


def _meta(
    loaded, workdir: str, results: dict, data: verify.Photos, seconds: dict[str, float], opset: int
) -> dict[str, Any]:
    step = checkpoints.best_manager(workdir, loaded.stage).latest_step()
    size = loaded.config.image_size
    return {
        "format_version": 1,
        "scenecls_version": scenecls.__version__,
        "classes": list(loaded.classes),
        "input": {
            "name": "images",
            "dtype": "uint8",
            "shape": [None, size, size, 3],
            "layout": "NHWC, RGB, pixel values 0-255",
        },
        "patches_input": {
            "signature": "classify_patches (SavedModel only)",
            "name": "patches",
            "dtype": "uint8",
            "shape": [None, None, None, 3],
            "resize": f"square patches of any size, resized to {size}x{size} (antialiased bilinear)",
        },
        "outputs": {
            "probabilities": "float32 (n, classes), softmax at the calibration temperature",
            "classes": "string (n, classes): the class names, the same row for every image",
        },
        "preprocessing": {
            "kind": lookup_variant(loaded.config.model.variant).preprocessing,
            "inside_the_model": True,
            "temperature": loaded.temperature,
        },
        "model": {
            "variant": loaded.config.model.variant,
            "head": loaded.config.model.head,
            "image_size": size,
        },
        "source": {
            "workdir": os.path.abspath(workdir),
            "checkpoint": os.path.join("checkpoints", f"best_{loaded.stage}", str(step)),
            "stage": loaded.stage,
            "step": step,
        },
        "converter": {
            "saved_model": "jax.experimental.jax2tf (native serialization: StableHLO in XlaCallModule)",
            "tflite": "tf.lite.TFLiteConverter.from_saved_model (StableHLO legalised to TFLite ops)",
            "onnx": "tf2onnx.convert.from_tflite, UnsortedSegmentProd mapped by scenecls.export.formats",
            "opset": opset,
        },
        "verification": {
            "photos": f"{len(data.images)} synthetic scenes of odd sizes; patches {data.patches.shape[1]} px",
            "reference": "the JAX model (exact patch mode's function)",
            "float_tolerance": verify.FLOAT_TOLERANCE,
            "min_quantized_top1_agreement": verify.MIN_QUANTIZED_AGREEMENT,
            "results": results,
        },
        "seconds": seconds,
    }


def _checksums(folder: str) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under ``folder`` (relative paths, sorted)."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            entry = {"sha256": digest, "bytes": os.path.getsize(full)}
            files[os.path.relpath(full, folder)] = entry
    return dict(sorted(files.items()))


def _say_summary(meta: dict[str, Any]) -> None:
    results = meta["verification"]["results"]
    lines = [f"Verification against the JAX model ({meta['verification']['photos']}):"]
    width = max(map(len, results))
    lines.append(f"  {'export':<{width}}  max |dp|  top-1 agreement")
    for name, r in results.items():
        lines.append(f"  {name:<{width}}  {r['max_abs_diff']:8.1e}  {r['top1_agreement']:6.1%}")
    sizes = {SAVED_MODEL: 0}
    for name, entry in meta["files"].items():
        top = name.split(os.sep)[0]
        sizes[top] = sizes.get(top, 0) + entry["bytes"]
    lines.append("Files: " + ", ".join(f"{name} {n / 1e6:.1f} MB" for name, n in sizes.items() if n > 1e4))
    console.say("\n".join(lines))
