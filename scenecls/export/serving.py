"""The exported computation, in JAX (no TensorFlow here): uint8 RGB images in, calibrated probabilities out.

The preprocessing of the model's variant, the model and the softmax at the workdir's calibration
temperature are one function of (variables, images), which the writers convert (scenecls.export.formats).
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from scenecls.models import Classifier, calibration
from scenecls.models.variants import lookup_variant
from scenecls.patches.engines import model_input
from scenecls.workdir.inference import InferenceModel

# The SavedModel's signatures and their inputs (scenecls.export.formats): images at the model's size, and
# square patches of any size.
SIGNATURES = {"serving_default": "images", "classify_patches": "patches"}
IMAGES_SIGNATURE, PATCHES_SIGNATURE = SIGNATURES
# (variables, images (n, s, s, 3) in [0, 255]) -> probabilities (n, classes), float32.
ServingFn = Callable[[Any, jnp.ndarray], jnp.ndarray]


def probabilities(
    model: Classifier,
    image_size: int,
    preprocessing: str,
    temperature: float,
    variables: Any,
    images: jnp.ndarray,
) -> jnp.ndarray:
    """Class probabilities of a batch of (n, s, s, 3) images in [0, 255] (uint8 or float32).

    Each image goes through exact patch mode's ``model_input`` (resized to ``image_size`` when s differs,
    then preprocessed), mapped over the batch: per image, every slice is static, so a symbolic batch size
    (jax2tf's polymorphic shapes) lowers to plain slices and no gathers, which TFLite could not convert.
    """
    prepare = functools.partial(model_input, image_size=image_size, preprocessing=preprocessing)
    logits = model.apply(variables, jax.vmap(prepare)(images))
    return calibration.softmax(logits, temperature)


def serving_function(loaded: InferenceModel) -> ServingFn:
    """``probabilities`` of a trained workdir's model: its variant's preprocessing and its temperature."""
    preprocessing = lookup_variant(loaded.config.model.variant).preprocessing
    return functools.partial(
        probabilities, loaded.model, loaded.config.image_size, preprocessing, loaded.temperature
    )
