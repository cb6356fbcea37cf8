"""The two ways of getting patch probabilities: exact (every patch through the whole model) and shared.

Exact mode crops patches on the host one fixed-size chunk at a time (the last chunk zero-padded), so a
single compiled function serves every image size and memory stays at one chunk of patches however large
the photo; each chunk is split across this process's devices. Each patch is resized to the model's input
size (``config.image_size``) inside that function when ``patch.size`` differs, so the model always sees the
scale it was trained at.

Shared mode runs the backbone and the head's convolutions once on the whole image, then the head's average
pool and dense layer on each patch's window of that map. It is an approximation of exact mode:

- the image is scaled by ``image_size / patch.size`` and then to multiples of 32 px (at most 16 px
  distortion per side), so a patch is exactly ``image_size / 32`` feature cells;
- a window's features see context beyond the patch (the backbone's receptive field), and the backbone
  and the head's convolutions zero-pad only at the image border, not at patch borders;
- the stride is rounded to whole cells (32 px at model scale), ties towards the denser grid;
- images whose model-scale size exceeds ``SHARED_MAX_PIXELS`` are shrunk to it (the backbone's activations
  on the whole image are what costs memory), so their patches cover more of the photo; set
  ``patch.image_scale`` to control this. Each distinct feature-map size compiles the backbone once.
"""

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from scenecls import parallel
from scenecls.data.images import resize
from scenecls.models import Classifier, calibration
from scenecls.models.preprocessing import preprocess
from scenecls.models.resnet import FEATURE_STRIDE
from scenecls.patches.grid import patch_grid

MODES = ("exact", "shared")
# uint8 patches (n, size, size, 3) -> class probabilities (n, num_classes).
PatchFn = Callable[[np.ndarray], Any]
SHARED_MAX_PIXELS = 4096 * 3072  # 12.6 Mpx: a 4000x3000 photo peaks at about 5 GB (ResNet-50, float32, CPU)


class Analysis(NamedTuple):
    """Patch probabilities of one image; boxes (n, 4) float [x0, y0, x1, y1] in that image's pixels."""

    boxes: np.ndarray
    rows: int
    cols: int
    probs: np.ndarray
    notes: tuple[str, ...] = ()


def classify_boxes(
    image: np.ndarray, boxes: np.ndarray, patch_fn: PatchFn, chunk_size: int, pad: bool = True
) -> np.ndarray:
    """Probabilities (n, num_classes) of equal-sized square integer ``boxes`` of ``image``, chunk by chunk.

    The last chunk is zero-padded to ``chunk_size`` (one compiled shape) unless ``pad`` is False, for a
    ``patch_fn`` that pads batches itself (the server's micro-batcher).
    """
    size = int(boxes[0, 2] - boxes[0, 0]) if len(boxes) else 0
    outputs = []
    for start in range(0, len(boxes), chunk_size):
        chunk_boxes = boxes[start : start + chunk_size]
        rows = chunk_size if pad else len(chunk_boxes)
        chunk = np.zeros((rows, size, size, 3), np.uint8)  # new: the device may still read the last
        for i, (x0, y0, x1, y1) in enumerate(chunk_boxes):
            chunk[i] = image[y0:y1, x0:x1]
        outputs.append((patch_fn(chunk), len(chunk_boxes)))  # asynchronous: crop the next chunk meanwhile
    return np.concatenate([np.asarray(out)[:count] for out, count in outputs])


def analyse_exact(
    image: np.ndarray, patch_fn: PatchFn, size: int, stride: int, chunk_size: int, pad: bool = True
) -> Analysis:
    """Classifies every ``size`` patch of ``image`` (``stride`` px apart) with ``patch_fn``, by chunks
    (the last one padded unless not ``pad``: see ``classify_boxes``)."""
    grid = patch_grid(image.shape[0], image.shape[1], size, stride)
    probs = classify_boxes(image, grid.boxes, patch_fn, chunk_size, pad)
    return Analysis(boxes=grid.boxes.astype(np.float64), rows=grid.rows, cols=grid.cols, probs=probs)


def model_input(patch: jnp.ndarray, image_size: int, preprocessing: str) -> jnp.ndarray:
    """One (s, s, 3) patch in [0, 255] as the model's input: resized to ``image_size`` (antialiased bilinear)
    if needed, then preprocessed. Exact mode and the exported model (scenecls.export) share it."""
    x = patch.astype(jnp.float32)
    if x.shape[:2] != (image_size, image_size):
        x = jax.image.resize(x, (image_size, image_size, 3), "bilinear")
    return preprocess(x, preprocessing)


def _classify_patch(
    model: Classifier,
    image_size: int,
    preprocessing: str,
    temperature: float,
    variables: Any,
    patch: jnp.ndarray,
) -> jnp.ndarray:
    """Class probabilities of one uint8 (s, s, 3) patch, resized to the model's input size if needed."""
    logits = model.apply(variables, model_input(patch, image_size, preprocessing)[None])[0]
    return calibration.softmax(logits, temperature)


def model_patch_fn(
    model: Classifier,
    variables: Any,
    image_size: int,
    preprocessing: str,
    mesh: Mesh | None = None,
    temperature: float = 1.0,
) -> PatchFn:
    """The exact-mode patch function of a model: one jitted function, vmapped over a chunk of patches;
    probabilities at ``temperature`` (the model's calibration).

    Each chunk is split across the devices of ``mesh`` (default: this process's devices; a chunk is padded
    to a multiple of their count).
    """
    mesh = mesh or parallel.create_mesh(jax.local_devices())
    batched = jax.jit(
        jax.vmap(
            functools.partial(_classify_patch, model, image_size, preprocessing, temperature),
            in_axes=(None, 0),
        )
    )
    variables = parallel.replicate(mesh, variables)
    sharding, devices = parallel.batch_sharded(mesh), mesh.devices.size

    def patch_fn(patches: np.ndarray) -> jax.Array:
        count = len(patches)
        padded = np.pad(patches, [(0, -count % devices)] + [(0, 0)] * (patches.ndim - 1))
        return batched(variables, jax.device_put(padded, sharding))[:count]

    return patch_fn


def device_multiple(chunk_size: int) -> int:
    """``chunk_size`` rounded up to a multiple of this process's device count (no idle device per chunk)."""
    return -(-chunk_size // jax.local_device_count()) * jax.local_device_count()


def _window_probs(
    model: Classifier,
    preprocessing: str,
    window: int,
    rows: NamedSharding,
    temperature: float,
    variables: Any,
    image: jnp.ndarray,
) -> jnp.ndarray:
    """Class probabilities (h - window + 1, w - window + 1, classes) of every window of one uint8 image.

    The backbone and the head's convolutions run once over the whole image; only the head's average pool
    and dense layer are per window (one pooling pass). The feature map is split by rows over the devices
    of ``rows``, so the head's windows are spread across them (XLA exchanges the overlapping borders).
    """
    features = model.apply(variables, preprocess(image[None], preprocessing), method=Classifier.features)
    features = jax.lax.with_sharding_constraint(features, rows)
    logits = model.apply(variables, features, window=window, method=Classifier.classify)[0]
    return calibration.softmax(logits, temperature)


def model_scale_size(
    height: int, width: int, image_size: int, patch_size: int, max_pixels: int = SHARED_MAX_PIXELS
) -> tuple[tuple[int, int], list[str]]:
    """The size (multiples of 32 px) at which a whole image is run through the backbone, and notes.

    A ``patch_size`` patch becomes ``image_size`` px (the scale the model was trained at), so the aspect
    ratio is kept up to 16 px per side; at least one patch each way; shrunk to ``max_pixels`` if larger.
    """
    window = image_size // FEATURE_STRIDE
    ratio = image_size / patch_size
    cells_h, cells_w = (max(window, round(s * ratio / FEATURE_STRIDE)) for s in (height, width))
    notes = []
    if cells_h * cells_w * FEATURE_STRIDE**2 > max_pixels:
        shrink = math.sqrt(max_pixels / (cells_h * cells_w * FEATURE_STRIDE**2))
        cells_h, cells_w = (max(window, math.floor(c * shrink)) for c in (cells_h, cells_w))
        notes.append(
            f"shared mode: analysed at {cells_w * FEATURE_STRIDE}x{cells_h * FEATURE_STRIDE} px "
            f"(memory cap {max_pixels / 1e6:.1f} Mpx), so patches cover "
            f"{1 / shrink:.2f}x more of the image; set patch.image_scale to choose the scale"
        )
    return (cells_h * FEATURE_STRIDE, cells_w * FEATURE_STRIDE), notes


class SharedModel:
    """Shared-feature analysis with a model: the backbone once per image, the head once per window."""

    def __init__(
        self,
        model: Classifier,
        variables: Any,
        image_size: int,
        preprocessing: str,
        max_pixels: int = SHARED_MAX_PIXELS,
        mesh: Mesh | None = None,
        temperature: float = 1.0,
    ):
        if image_size % FEATURE_STRIDE:
            raise ValueError(
                f"shared mode needs config.image_size divisible by {FEATURE_STRIDE}, got {image_size}"
            )
        mesh = mesh or parallel.create_mesh(jax.local_devices())
        self.variables = parallel.replicate(mesh, variables)
        self.image_size, self.max_pixels = image_size, max_pixels
        self.window = image_size // FEATURE_STRIDE
        rows = NamedSharding(mesh, P(None, parallel.AXIS))
        self._window_probs = jax.jit(
            functools.partial(_window_probs, model, preprocessing, self.window, rows, temperature)
        )

    def model_scale_size(self, height: int, width: int, patch_size: int) -> tuple[tuple[int, int], list[str]]:
        """Size (multiples of 32 px) the backbone sees so a patch is ``window`` cells, and notes."""
        return model_scale_size(height, width, self.image_size, patch_size, self.max_pixels)

    def stride_cells(self, stride: int, patch_size: int) -> int:
        """The stride in feature cells: nearest whole cell at model scale, ties to the smaller stride."""
        return max(1, math.ceil(stride * self.image_size / patch_size / FEATURE_STRIDE - 0.5))

    def analyse(self, image: np.ndarray, size: int, stride: int) -> Analysis:
        """Patch probabilities of ``image`` with the backbone run once (see the module docstring)."""
        height, width = image.shape[:2]
        (model_h, model_w), notes = self.model_scale_size(height, width, size)
        window_probs = np.asarray(self._window_probs(self.variables, resize(image, model_h, model_w)))
        step = self.stride_cells(stride, size)
        effective_stride = step * FEATURE_STRIDE * size / self.image_size
        if effective_stride != stride:
            notes.append(
                f"shared mode: stride {stride} px rounded to {effective_stride:g} px ({step} feature cells)"
            )
        cells_h, cells_w = (n + self.window - 1 for n in window_probs.shape[:2])
        grid = patch_grid(cells_h, cells_w, self.window, step)
        probs = window_probs[grid.boxes[:, 1].astype(int), grid.boxes[:, 0].astype(int)]
        cell_px = FEATURE_STRIDE * np.array([width / model_w, height / model_h] * 2)
        return Analysis(
            boxes=grid.boxes * cell_px, rows=grid.rows, cols=grid.cols, probs=probs, notes=tuple(notes)
        )
