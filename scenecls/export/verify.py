"""Checks of the exported files against the JAX model on synthetic photos of odd sizes.

The reference is exact patch mode's own function (``scenecls.patches.engines.model_patch_fn``), a separate
path from the exported serving function; each runtime (TensorFlow, TFLite, onnxruntime) is imported only
when its file is checked.
"""

import json
import os
import subprocess
import sys
import tempfile
from typing import Any, NamedTuple

import numpy as np

from scenecls.data import synthetic
from scenecls.data.images import resize
from scenecls.export.serving import SIGNATURES
from scenecls.models.variants import lookup_variant
from scenecls.patches.engines import model_patch_fn
from scenecls.workdir.inference import InferenceModel

FRESH_PROCESS_TIMEOUT_S = 600  # reloading the SavedModel in a TensorFlow-only process

FLOAT_TOLERANCE = 1e-4  # max |p_export - p_jax| of a float32 export
MIN_QUANTIZED_AGREEMENT = 0.99  # top-1 agreement of the dynamic-range quantised TFLite
_CHUNK = 16  # images per call of an exported model


class Photos(NamedTuple):
    """Verification inputs: images at the model's size, and square patches of an odd size."""

    images: np.ndarray  # uint8 (n, image_size, image_size, 3)
    patches: np.ndarray  # uint8 (n, s, s, 3), s odd and neither image_size nor a multiple of it


class Agreement(NamedTuple):
    """How an export's probabilities compare with the JAX model's."""

    max_abs_diff: float
    top1_agreement: float
    count: int

    def as_dict(self) -> dict[str, Any]:
        return {"max_abs_diff": self.max_abs_diff, "top1_agreement": self.top1_agreement, "count": self.count}


def photos(count: int, image_size: int, seed: int = 0) -> Photos:
    """``count`` synthetic scenes (each class in turn) rendered at odd sizes, resized and centre-cropped."""
    rng = np.random.default_rng(seed)
    patch_size = (3 * image_size // 2) | 1  # odd, about 1.5x: resized down (antialiased)
    images, patches = [], []
    for i in range(count):
        height, width = (int(rng.integers(patch_size, 2 * patch_size)) | 1 for _ in range(2))
        scene = synthetic.render_scene(synthetic.CLASSES[i % len(synthetic.CLASSES)], height, width, rng)
        images.append(resize(scene, image_size, image_size))
        top, left = (height - patch_size) // 2, (width - patch_size) // 2
        patches.append(scene[top : top + patch_size, left : left + patch_size])
    return Photos(np.stack(images), np.stack(patches))


def reference(loaded: InferenceModel, inputs: np.ndarray) -> np.ndarray:
    """The JAX model's probabilities (exact patch mode's function) of uint8 (n, s, s, 3) ``inputs``."""
    preprocessing = lookup_variant(loaded.config.model.variant).preprocessing
    patch_fn = model_patch_fn(
        loaded.model,
        loaded.variables,
        loaded.config.image_size,
        preprocessing,
        temperature=loaded.temperature,
    )
    return _chunked(lambda chunk: np.asarray(patch_fn(chunk)), inputs)


def compare(expected: np.ndarray, actual: np.ndarray) -> Agreement:
    """Max absolute difference and top-1 agreement of two (n, k) probability arrays."""
    if actual.shape != expected.shape:
        raise ValueError(f"export returned probabilities of shape {actual.shape}, expected {expected.shape}")
    top1 = float(np.mean(actual.argmax(axis=1) == expected.argmax(axis=1)))
    return Agreement(float(np.abs(actual - expected).max()), top1, len(expected))


def _chunked(fn, inputs: np.ndarray) -> np.ndarray:
    return np.concatenate([fn(inputs[i : i + _CHUNK]) for i in range(0, len(inputs), _CHUNK)])


def saved_model_probabilities(path: str, inputs: np.ndarray, signature: str) -> np.ndarray:
    """Probabilities from a SavedModel's ``signature`` (a serving.SIGNATURES key) in this process."""
    import tensorflow as tf

    fn, name = tf.saved_model.load(path).signatures[signature], SIGNATURES[signature]
    return _chunked(lambda chunk: fn(**{name: tf.constant(chunk)})["probabilities"].numpy(), inputs)


def tflite_probabilities(path: str, images: np.ndarray) -> np.ndarray:
    """Probabilities from a TFLite file's serving signature (TensorFlow's interpreter)."""
    from scenecls.export.formats import tflite_interpreter

    runner = tflite_interpreter(path).get_signature_runner()
    return _chunked(lambda chunk: runner(images=chunk)["probabilities"], images)


def onnx_probabilities(path: str, images: np.ndarray) -> np.ndarray:
    """Probabilities from an ONNX file with onnxruntime (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return _chunked(lambda chunk: session.run(["probabilities"], {"images": chunk})[0], images)


# Run by a fresh interpreter: TensorFlow and numpy only, no scenecls or Flax (a client's view of the
# SavedModel). TensorFlow 2.21 itself imports JAX when it is installed (tensorflow.lite.tools), so JAX may be
# there; the model's computation is in the SavedModel.
_FRESH_PROCESS = """
import sys
import numpy as np
import tensorflow as tf
saved_model, inputs, outputs = sys.argv[1:]
model = tf.saved_model.load(saved_model)
with np.load(inputs) as arrays:
    results = {
        signature: np.concatenate([
            model.signatures[signature](**{name: tf.constant(arrays[signature][i : i + 16])})["probabilities"]
            for i in range(0, len(arrays[signature]), 16)
        ])
        for signature, name in (("serving_default", "images"), ("classify_patches", "patches"))
    }
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("scenecls", "flax"))
np.savez(outputs, loaded=np.array(loaded, dtype=str), **results)
"""


def fresh_process_probabilities(path: str, data: Photos) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of the images and patches from the SavedModel loaded in a new Python process that
    imports only TensorFlow and numpy.

    Raises:
      ValueError: the process failed, or it imported scenecls or Flax.
    """
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = os.path.join(tmp, "inputs.npz"), os.path.join(tmp, "outputs.npz")
        np.savez(inputs, serving_default=data.images, classify_patches=data.patches)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.pop("PYTHONPATH", None)
        result = subprocess.run(
            [sys.executable, "-c", _FRESH_PROCESS, path, inputs, outputs],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp,
            timeout=FRESH_PROCESS_TIMEOUT_S,
        )
        if result.returncode != 0:  # (a process past its time raises subprocess.TimeoutExpired)
            raise ValueError(f"{path}: reloading in a fresh process failed: {result.stderr.strip()[-2000:]}")
        with np.load(outputs) as arrays:
            if len(arrays["loaded"]):
                raise ValueError(f"the fresh process imported {json.dumps(arrays['loaded'].tolist())}")
            return arrays["serving_default"], arrays["classify_patches"]
