"""Grad-CAM: where in a photo the model sees a class, as a heatmap over the image.

Standard Grad-CAM (Selvaraju et al., 2017) on the backbone's final feature map A (h, w, C), through the
model's own split (``Classifier.features``, then ``Classifier.classify`` pooling the whole map): the
weight of channel c for class k is the spatial mean of d logit_k / d A_c, the map is
relu(sum_c weight_c * A_c). The head's backward pass runs once per class, batched over a vector of class
indices (``jax.vmap`` of one pullback), in one jitted function; the backbone runs once per image.

The image is analysed whole at the scale patch inference sees it (a ``patch.size`` patch becomes
``config.image_size`` px, as in shared mode; ``engines.model_scale_size``), so its textures are at the
scale the model was trained at. Maps are upsampled bilinearly to the image's resolution and each is
divided by its maximum (an all-zero map, a class without positive evidence anywhere, stays zero).
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from scenecls.data.images import resize
from scenecls.models import Classifier
from scenecls.models.preprocessing import preprocess
from scenecls.patches.engines import model_scale_size

METHODS = ("", "gradcam")  # config.infer.explain: off, or Grad-CAM heatmaps of the reported classes
# A prepared uint8 image (H, W, 3) and class indices -> heatmaps (k, H, W) in [0, 1].
ExplainFn = Callable[[np.ndarray, Sequence[int]], np.ndarray]


def _class_maps(
    model: Classifier, preprocessing: str, variables: Any, image: jnp.ndarray, class_indices: jnp.ndarray
) -> jnp.ndarray:
    """Unnormalised Grad-CAM maps (k, h, w) at feature resolution of one uint8 image (H, W, 3)."""
    features = model.apply(variables, preprocess(image[None], preprocessing), method=Classifier.features)

    def logits(feature_map: jnp.ndarray) -> jnp.ndarray:
        return model.apply(variables, feature_map, method=Classifier.classify)[0]

    outputs, pullback = jax.vjp(logits, features)
    one_hot = jax.nn.one_hot(class_indices, outputs.shape[-1], dtype=outputs.dtype)
    (gradients,) = jax.vmap(pullback)(one_hot)  # (k, 1, h, w, C): d logit_k / d features
    weights = gradients[:, 0].astype(jnp.float32).mean(axis=(1, 2))  # (k, C)
    return jax.nn.relu(jnp.einsum("hwc,kc->khw", features[0].astype(jnp.float32), weights))


# Compiled once per (model, preprocessing, image size, number of classes).
_class_maps_jit = jax.jit(_class_maps, static_argnums=(0, 1))


def feature_gradcam(
    model: Classifier, variables: Any, image: np.ndarray, class_indices: Sequence[int], preprocessing: str
) -> np.ndarray:
    """Unnormalised Grad-CAM maps (k, h, w) of a uint8 image (H, W, 3) as it is, at feature resolution
    (h, w = H / 32, W / 32 rounded up: one cell per 32 px)."""
    indices = jnp.asarray(np.asarray(class_indices, np.int32).reshape(-1))
    return np.asarray(_class_maps_jit(model, preprocessing, variables, image, indices))


def resize_maps(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Float maps (k, h, w) resized bilinearly to (k, height, width) (antialiased when shrinking)."""
    maps = np.asarray(maps, np.float32)
    if maps.shape[1:] == (height, width):
        return maps
    if not len(maps):
        return np.zeros((0, height, width), np.float32)
    size, bilinear = (width, height), Image.Resampling.BILINEAR
    return np.stack([np.asarray(Image.fromarray(m).resize(size, bilinear)) for m in maps])


def normalise(maps: np.ndarray) -> np.ndarray:
    """Each map (k, H, W) divided by its maximum, so it peaks at 1; all-zero maps stay zero."""
    peaks = maps.max(axis=(1, 2), keepdims=True) if len(maps) else np.zeros((0, 1, 1), maps.dtype)
    return np.divide(maps, peaks, out=np.zeros_like(maps), where=peaks > 0)


def gradcam(
    model: Classifier,
    variables: Any,
    image: np.ndarray,
    class_indices: Sequence[int],
    preprocessing: str,
    image_size: int,
    patch_size: int | None = None,
) -> np.ndarray:
    """Grad-CAM heatmaps (len(class_indices), H, W) in [0, 1] of a uint8 image (H, W, 3), at its resolution.

    Args:
      model, variables: the classifier and its variables.
      image: the photo, any size.
      class_indices: the classes to explain (any number, repeats allowed).
      preprocessing: the model variant's pixel preprocessing.
      image_size: the model's input size (``config.image_size``).
      patch_size: the image is scaled so a patch of this size is ``image_size`` px (aspect kept, sides
        multiples of 32 px); default ``image_size``: the image's own scale.
    """
    height, width = image.shape[:2]
    (model_height, model_width), _ = model_scale_size(height, width, image_size, patch_size or image_size)
    if not len(class_indices):
        return np.zeros((0, height, width), np.float32)
    maps = feature_gradcam(
        model, variables, resize(image, model_height, model_width), class_indices, preprocessing
    )
    return normalise(resize_maps(maps, height, width))


def explained_classes(result: dict[str, Any]) -> list[str]:
    """The classes a patch-inference result reports, to explain: its major class, then its secondary ones."""
    major = [] if result["major"] is None else [result["major"]]  # None: every patch abstained
    return major + [entry["class"] for entry in result["secondary"]]
