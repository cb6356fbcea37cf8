"""Writers of the export formats: the SavedModel (jax2tf), TFLite from it, and ONNX.

Imported only by ``--mode=export`` (it imports TensorFlow and jax2tf).
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from jax.experimental import jax2tf

from scenecls.export.serving import ServingFn

IMAGES_SIGNATURE = "serving_default"
PATCHES_SIGNATURE = "classify_patches"


def _outputs(probabilities: tf.Tensor, classes: tf.Tensor) -> dict[str, tf.Tensor]:
    """The signatures' outputs: probabilities (n, k) and the class names tiled to (n, k), as
    tf.estimator's classification outputs do, so TF Serving's row format (one row per image) works."""
    names = tf.tile(classes[None], [tf.shape(probabilities)[0], 1])
    return {"probabilities": probabilities, "classes": names}


def write_saved_model(
    path: str, serve: ServingFn, variables: Any, image_size: int, classes: Sequence[str]
) -> None:
    """A SavedModel of ``serve`` with the variables as TF variables and two signatures.

    ``serving_default``: ``images`` uint8 (n, image_size, image_size, 3), RGB, any n.
    ``classify_patches``: ``patches`` uint8 (n, s, s, 3), any n and s, resized to image_size first by
    TensorFlow's antialiased bilinear resize (the algorithm of ``jax.image.resize``, which exact patch mode
    uses). Both return ``probabilities`` (n, k) float32 and ``classes`` (n, k) strings.
    """
    # Native serialization (StableHLO in an XlaCallModule op); the batch dimension stays symbolic.
    converted = jax2tf.convert(serve, polymorphic_shapes=[None, "(b, ...)"], with_gradient=False)
    module = tf.Module()
    module.params = tf.nest.map_structure(lambda a: tf.Variable(np.asarray(a), trainable=False), variables)
    module.class_names = tf.constant(list(classes))
    size = (image_size, image_size)

    def classify_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return _outputs(converted(module.params, images), module.class_names)

    def classify_patches(patches: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.image.resize(patches, size, "bilinear", antialias=True)
        return _outputs(converted(module.params, images), module.class_names)

    module.classify_images = tf.function(
        classify_images,
        input_signature=[tf.TensorSpec([None, *size, 3], tf.uint8, name="images")],
        autograph=False,
    )
    module.classify_patches = tf.function(
        classify_patches,
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="patches")],
        autograph=False,
    )
    signatures = {IMAGES_SIGNATURE: module.classify_images, PATCHES_SIGNATURE: module.classify_patches}
    tf.saved_model.save(module, path, signatures=signatures)


def write_tflite(saved_model: str, path: str, quantize: bool = False) -> None:
    """TFLite of the SavedModel's image signature (float32, or dynamic-range int8 weights if ``quantize``)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=[IMAGES_SIGNATURE])
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: dynamic range
    with open(path, "wb") as f:
        f.write(converter.convert())
