"""The paper's training augmentation, defined once for both places it can run.

Keras ``ImageDataGenerator`` semantics: rotation, width/height shift, zoom (one affine transform about the
image centre, bilinear, fill mode 'nearest') and a horizontal flip. ``sample_transform`` is the one
definition of the random parameters (which, their ranges, how they are drawn) and ``affine_transforms`` the
one definition of their matrix; both are written with array operators only, so the host pipeline
(``pipeline``, TensorFlow) and the device (``device_augment``, JAX, inside the train step) share them and
cannot drift. Only the random number generator and the resampler differ: TensorFlow's stateless generator
and ``ImageProjectiveTransformV3`` on the host, JAX's and a bilinear gather here.

``config.augment.where`` picks the place: ``device`` augments inside the jitted train step, ``host`` in the
tf.data pipeline, ``auto`` on the device on GPU/TPU and on the host on CPU (see ``CPU_PLACE``).
No TensorFlow here.
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

PLACES = ("auto", "device", "host")  # config.augment.where
# On a CPU both places share the same cores. experiments/bench_input.py on the 2-core Intel Xeon (Sapphire
# Rapids flags) of docs/benchmarks.md, quiet machine: the stage-1 step with the augmentation inside runs at
# 10.4 img/s against 12.4 without, and end to end the host's augmentation kept 12.4 img/s against 9.9 for
# the device's, so a CPU augments on the host (also its results stay those of earlier versions).
CPU_PLACE = "host"

# uniform(stream, low, high) -> this batch's draws of one parameter (a backend's random generator).
Uniform = Callable[[int, float, float], Any]


class Transform(NamedTuple):
    """Per-image augmentation parameters of a batch, each (B,): Keras ``apply_affine_transform`` arguments
    (degrees, pixels, scale factors; zoom > 1 zooms out) and whether to mirror the image."""

    theta: Any
    shift_x: Any
    shift_y: Any
    zoom_x: Any
    zoom_y: Any
    flip: Any  # bool (B,); None when flipping is off


def augments(augment: ml_collections.ConfigDict) -> bool:
    """Whether ``config.augment`` changes training images at all."""
    return geometric(augment) or bool(augment.horizontal_flip)


def geometric(augment: ml_collections.ConfigDict) -> bool:
    """Whether ``config.augment`` asks for an affine transform (rotation, shift or zoom)."""
    return bool(augment.rotation_degrees or augment.width_shift or augment.height_shift or augment.zoom)


def on_device(augment: ml_collections.ConfigDict, backend: str | None = None) -> bool:
    """Whether training images are augmented in the train step (True) or by the host pipeline (False),
    as ``augment.where`` says for ``backend`` (default: JAX's); False when nothing is augmented."""
    if not augments(augment):
        return False
    place = augment.get("where", "host")
    if place == "auto":
        place = CPU_PLACE if (backend or jax.default_backend()) == "cpu" else "device"
    return place == "device"


def sample_transform(
    augment: ml_collections.ConfigDict, height: int, width: int, uniform: Uniform
) -> Transform:
    """The random transform of a batch under ``config.augment``: each parameter uniform in its range.

    ``uniform(stream, low, high)`` draws one parameter for every image of the batch from random stream
    ``stream`` (0-5, one per parameter). Disabled parameters are constants (no draw).
    """

    def around(stream: int, limit: float, center: float = 0.0) -> Any:
        return uniform(stream, center - limit, center + limit)

    # Keras 2.x draws the horizontal shift from height_shift_range (its x/y swap); for square images and
    # equal ranges, as in the paper, the two are the same distribution. Here each shifts its own axis.
    return Transform(
        theta=around(0, augment.rotation_degrees),
        shift_x=around(1, augment.width_shift) * width,
        shift_y=around(2, augment.height_shift) * height,
        zoom_x=around(3, augment.zoom, 1.0),
        zoom_y=around(4, augment.zoom, 1.0),
        flip=uniform(5, 0.0, 1.0) < 0.5 if augment.horizontal_flip else None,
    )


def affine_transforms(transform: Transform, height: int, width: int, xp: Any) -> Any:
    """Keras ``apply_affine_transform(x, theta, tx=shift_x, ty=shift_y, zx=zoom_x, zy=zoom_y)`` as (B, 8)
    ImageProjectiveTransform rows, with array module ``xp`` (``jax.numpy``, or ``tf.experimental.numpy``).

    As in Keras 2.x, M = rotation @ shift @ zoom maps output to input pixel coordinates (x = column,
    y = row) about the image centre; shifts are in pixels, zoom > 1 zooms out.
    """
    theta = transform.theta * (math.pi / 180.0)
    cos, sin = xp.cos(theta), xp.sin(theta)
    zoom_x, zoom_y, shift_x, shift_y = (
        transform.zoom_x,
        transform.zoom_y,
        transform.shift_x,
        transform.shift_y,
    )
    a00, a01, a02 = cos * zoom_x, -sin * zoom_y, cos * shift_x - sin * shift_y
    a10, a11, a12 = sin * zoom_x, cos * zoom_y, sin * shift_x + cos * shift_y
    # About the centre: C @ M @ C^-1, C translating by the centre (cx, cy). (Keras uses (h, w) for (x, y)
    # here, the same for the square images this project transforms.)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    a02 += cx - a00 * cx - a01 * cy
    a12 += cy - a10 * cx - a11 * cy
    zeros = xp.zeros_like(theta)
    return xp.stack([a00, a01, a02, a10, a11, a12, zeros, zeros], axis=1)


def device_augment(images: jnp.ndarray, key: jax.Array, augment: ml_collections.ConfigDict) -> jnp.ndarray:
    """The augmentation of a uint8 batch (B, H, W, 3) on the device, parameters drawn from ``key``;
    returns uint8 like the host pipeline (traceable: the train step calls it under ``jax.jit``)."""
    batch, height, width = images.shape[:3]

    def uniform(stream: int, low: float, high: float) -> jnp.ndarray:
        return jax.random.uniform(jax.random.fold_in(key, stream), (batch,), minval=low, maxval=high)

    transform = sample_transform(augment, height, width, uniform)
    return apply_transform(images.astype(jnp.float32), transform, geometric(augment))


def apply_transform(images: jnp.ndarray, transform: Transform, affine: bool = True) -> jnp.ndarray:
    """``transform`` applied to a float batch (B, H, W, C) in [0, 255]: the affine part (if ``affine``,
    bilinear, fill mode 'nearest' as ``ImageProjectiveTransformV3``), then the flip; rounded to uint8."""
    height, width = images.shape[1:3]
    if affine:
        rows = affine_transforms(transform, height, width, jnp)
        images = jax.vmap(_warp)(images, rows)
    if transform.flip is not None:
        images = jnp.where(transform.flip[:, None, None, None], images[:, :, ::-1], images)
    return jnp.round(jnp.clip(images, 0.0, 255.0)).astype(jnp.uint8)


def _warp(image: jnp.ndarray, row: jnp.ndarray) -> jnp.ndarray:
    """One image through one projective row: output (x, y) samples the input at M (x, y, 1), coordinates
    clamped to the image (fill mode 'nearest'), bilinear."""
    height, width = image.shape[:2]
    y, x = jnp.meshgrid(
        jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
    )
    in_x = jnp.clip(row[0] * x + row[1] * y + row[2], 0.0, width - 1)
    in_y = jnp.clip(row[3] * x + row[4] * y + row[5], 0.0, height - 1)
    x0, y0 = jnp.floor(in_x), jnp.floor(in_y)
    wx, wy = (in_x - x0)[..., None], (in_y - y0)[..., None]
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    x1, y1 = jnp.minimum(x0 + 1, width - 1), jnp.minimum(y0 + 1, height - 1)
    top = image[y0, x0] * (1 - wx) + image[y0, x1] * wx
    bottom = image[y1, x0] * (1 - wx) + image[y1, x1] * wx
    return top * (1 - wy) + bottom * wy
