"""The augmentation's one definition: the device (JAX) transform equals the host (TensorFlow) one for the
same parameters, every kind of transform happens, parameters stay in the paper's ranges, and the
place (host or device) resolves as configured."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from scenecls.data import augment, pipeline

SIZE = 48


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Four smooth-ish random RGB images, uint8 (4, 48, 48, 3)."""
    noise = np.random.default_rng(0).uniform(0, 255, (4, 12, 12, 3)).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(n).resize((SIZE, SIZE), Image.BILINEAR)) for n in noise])


def _transform(theta=0.0, shift_x=0.0, shift_y=0.0, zoom_x=1.0, zoom_y=1.0, flip=None, batch=4):
    values = [np.full((batch,), v, np.float32) for v in (theta, shift_x, shift_y, zoom_x, zoom_y)]
    return augment.Transform(*values, flip=None if flip is None else np.asarray(flip))


def _host(images, transform, affine=True):
    tensors = augment.Transform(*(None if v is None else tf.constant(v) for v in transform))
    result = pipeline.apply_transform(tf.constant(images, tf.float32), tensors, affine)
    return tf.cast(tf.round(tf.clip_by_value(result, 0.0, 255.0)), tf.uint8).numpy()


def _device(images, transform, affine=True):
    jax_transform = augment.Transform(*(None if v is None else jnp.asarray(v) for v in transform))
    return np.asarray(
        jax.jit(augment.apply_transform, static_argnums=2)(images.astype(np.float32), jax_transform, affine)
    )


@pytest.mark.parametrize(
    "kind, params",
    [
        ("rotation", {"theta": 10.0}),
        ("rotation", {"theta": -7.5}),
        ("shift", {"shift_x": 2.4, "shift_y": -1.5}),
        ("zoom in", {"zoom_x": 0.9, "zoom_y": 0.95}),
        ("zoom out", {"zoom_x": 1.1, "zoom_y": 1.08}),
        ("all", {"theta": -9.0, "shift_x": -2.0, "shift_y": 2.2, "zoom_x": 1.07, "zoom_y": 0.93}),
    ],
)
def test_device_transform_matches_the_host_transform(images, kind, params):
    transform = _transform(**params)
    host, device = _host(images, transform), _device(images, transform)
    assert np.abs(host.astype(int) - images).mean() > 2, f"{kind} should change the images"
    difference = np.abs(host.astype(int) - device)
    assert difference.max() <= 1, kind  # float rounding at .5 only
    assert (difference > 0).mean() < 0.01, kind


def test_flip_mirrors_exactly_the_chosen_images(images):
    transform = _transform(flip=[True, False, True, False])
    host, device = _host(images, transform, affine=False), _device(images, transform, affine=False)
    np.testing.assert_array_equal(device, host)
    np.testing.assert_array_equal(device[0], images[0][:, ::-1])
    np.testing.assert_array_equal(device[1], images[1])


def test_sampled_parameters_cover_the_paper_ranges(tiny_config):
    config = tiny_config.augment  # the paper's: 10 degrees, 5% shifts, 10% zoom, flips
    draws = augment.sample_transform(
        config,
        200,
        100,
        lambda stream, low, high: jax.random.uniform(
            jax.random.PRNGKey(stream), (2000,), minval=low, maxval=high
        ),
    )
    for values, low, high in [
        (draws.theta, -10, 10),
        (draws.shift_x, -5, 5),  # 5% of the width, 100
        (draws.shift_y, -10, 10),  # 5% of the height, 200
        (draws.zoom_x, 0.9, 1.1),
        (draws.zoom_y, 0.9, 1.1),
    ]:
        values = np.asarray(values)
        assert (
            low <= values.min() < low + 0.1 * (high - low)
            and high - 0.1 * (high - low) < values.max() <= high
        )
    assert 0.45 < np.asarray(draws.flip).mean() < 0.55


def test_device_augment_is_deterministic_per_key_and_changes_images(images, tiny_config):
    key = jax.random.PRNGKey(3)
    first = np.asarray(augment.device_augment(images, key, tiny_config.augment))
    np.testing.assert_array_equal(first, augment.device_augment(images, key, tiny_config.augment))
    other = np.asarray(augment.device_augment(images, jax.random.PRNGKey(4), tiny_config.augment))
    assert not np.array_equal(first, other)
    assert first.dtype == np.uint8 and first.shape == images.shape
    assert all(np.abs(f.astype(int) - i).mean() > 1 for f, i in zip(first, images, strict=True))


def test_where_resolves_by_backend(tiny_config):
    config = tiny_config.augment
    config.where = "auto"
    assert augment.on_device(config, "gpu") and augment.on_device(config, "tpu")
    assert augment.on_device(config, "cpu") == (augment.CPU_PLACE == "device")
    config.where = "host"
    assert not augment.on_device(config, "gpu")
    config.where = "device"
    assert augment.on_device(config, "cpu")
    config.update(rotation_degrees=0.0, width_shift=0.0, height_shift=0.0, zoom=0.0, horizontal_flip=False)
    assert not augment.on_device(config, "gpu")  # nothing to augment
