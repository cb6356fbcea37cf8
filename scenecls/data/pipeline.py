"""tf.data input pipeline: prepared tfds data -> numpy batches of uint8 images for JAX.

Images are resized to ``image_size`` x ``image_size`` ignoring the aspect ratio (as Keras'
``flow_from_directory(target_size=...)``, which the reference used), bilinear with antialiasing, the same for
training and evaluation. Training adds the paper's augmentation with Keras ``ImageDataGenerator`` semantics
(rotation, width/height shift, zoom, horizontal flip; bilinear, fill mode 'nearest'). Normalisation
(caffe/torch) is done by the model step on device, so batches stay uint8.

Determinism: the shuffle order and every random augmentation parameter derive from (config.seed, epoch),
so epoch e yields the same batches whether or not the run was interrupted before it.
"""

import math
from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from scenecls import parallel
from scenecls.data.builder import PreparedData

try:  # tf.data only: keep TensorFlow off the accelerators JAX uses.
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # already initialised by the caller (main.py hides GPUs first)
    pass

_AUTOTUNE = tf.data.AUTOTUNE


def class_weights(train_counts: Sequence[int]) -> np.ndarray:
    """Inverse-frequency class weights, ``w_c = n_total / (n_classes * n_c)`` (Keras/sklearn "balanced").

    A balanced set gets all ones; the weighted loss then counts every class as much as in a balanced set.
    Classes without training images get weight 0 (they never appear in the loss).
    """
    counts = np.asarray(train_counts, dtype=np.float64)
    weights = np.divide(counts.sum(), len(counts) * counts, out=np.zeros_like(counts), where=counts > 0)
    return weights.astype(np.float32)


def augments(augment: ml_collections.ConfigDict) -> bool:
    """Whether ``config.augment`` changes training images at all."""
    return _geometric(augment) or bool(augment.horizontal_flip)


def _geometric(augment: ml_collections.ConfigDict) -> bool:
    return bool(augment.rotation_degrees or augment.width_shift or augment.height_shift or augment.zoom)


def steps_per_epoch(prepared: PreparedData, config: ml_collections.ConfigDict) -> int:
    """Full training batches per epoch (the remainder is dropped, a different one each epoch)."""
    return sum(prepared.counts["train"]) // config.batch_size


def epoch_seeds(seed: int, epoch: int) -> tuple[int, int]:
    """(shuffle seed, augmentation seed) for one epoch, derived from the run's seed."""
    shuffle_seed, augment_seed = np.random.SeedSequence([seed, epoch]).generate_state(2)
    return int(shuffle_seed), int(augment_seed)


def train_batches(
    prepared: PreparedData,
    config: ml_collections.ConfigDict,
    epoch: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of augmented training batches ``{"image": uint8 (B, S, S, 3), "label": int32 (B,)}``.

    ``B = config.batch_size // process_count``: all processes shuffle identically, keep the same number of
    whole global batches, and process p takes rows [p * B, (p + 1) * B) of each (disjoint shards). Those
    rows get the augmentation they get in a single-process run (parameters are drawn for the whole global
    batch), so the processes' batches put together are the single-process batch, whatever the count.
    """
    parallel.check_divisible(config.batch_size, "batch_size", process_count, "processes")
    shuffle_seed, augment_seed = epoch_seeds(config.seed, epoch)
    size = config.image_size

    def decode(example):
        return {"image": _decode_resize(example["image"], size), "label": tf.cast(example["label"], tf.int32)}

    local_batch = config.batch_size // process_count

    def augment(index, batch):
        seed = tf.stack([tf.constant(augment_seed, tf.int64), index])
        images = _augment(
            batch["image"], config.augment, seed, process_index * local_batch, config.batch_size
        )
        return {"image": images, "label": batch["label"]}

    ds = _epoch_selection(
        _read(prepared, "train"), prepared, config, shuffle_seed, process_index, process_count
    )
    ds = ds.map(decode, num_parallel_calls=_AUTOTUNE)
    ds = ds.batch(local_batch, drop_remainder=True).enumerate()
    return ds.map(augment, num_parallel_calls=_AUTOTUNE).prefetch(_AUTOTUNE).as_numpy_iterator()


def train_order(
    prepared: PreparedData,
    config: ml_collections.ConfigDict,
    epoch: int,
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
    """Stored-order indices of the examples ``train_batches`` yields for ``epoch``, shape (steps, B).

    The same shuffle over a range of indices instead of the examples (tf.data's shuffle order depends only
    on its seed, buffer and length), so cached per-example data can be served in the images' order.
    """
    shuffle_seed, _ = epoch_seeds(config.seed, epoch)
    indices = tf.data.Dataset.range(sum(prepared.counts["train"]))
    ds = _epoch_selection(indices, prepared, config, shuffle_seed, process_index, process_count)
    order = np.fromiter(ds.as_numpy_iterator(), np.int64)
    return order.reshape(-1, config.batch_size // process_count)


def _epoch_selection(
    ds: tf.data.Dataset,
    prepared: PreparedData,
    config: ml_collections.ConfigDict,
    shuffle_seed: int,
    process_index: int,
    process_count: int,
) -> tf.data.Dataset:
    """An epoch's shuffled whole batches of the training split, this process's rows of each of them."""
    ds = ds.shuffle(config.data.shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    ds = ds.take(steps_per_epoch(prepared, config) * config.batch_size)
    if process_count == 1:
        return ds
    return ds.batch(config.batch_size // process_count).shard(process_count, process_index).unbatch()


def eval_batches(
    prepared: PreparedData,
    split: str,
    config: ml_collections.ConfigDict,
    process_index: int = 0,
    process_count: int = 1,
    view: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example of ``split`` exactly once, in a fixed order; without augmentation, or as ``view``.

    Batches hold ``config.eval_batch_size // process_count`` examples: ``image`` uint8, ``label`` int32,
    ``mask`` bool (False on the padding that fills the last batch) and ``file`` (source-relative paths).
    Every process yields the same number of batches; process p holds examples p, p + P, p + 2P, ...
    ``view`` (an integer) applies the training augmentation with parameters drawn from
    ``view_seed(config.seed, view)``: a fixed augmented view of every image (see train.feature_cache).
    """
    total = sum(prepared.counts.get(split, []))
    if not total:
        raise ValueError(f"the {split!r} split of {prepared.data_dir} is empty; check data.split")
    parallel.check_divisible(config.eval_batch_size, "eval_batch_size", process_count, "processes")
    batch_size = config.eval_batch_size // process_count
    size = config.image_size

    def decode(example):
        return {
            "image": _decode_resize(example["image"], size),
            "label": tf.cast(example["label"], tf.int32),
            "mask": tf.constant(True),
            "file": example["file"],
        }

    def finish(index, batch):
        if view is None:
            image = tf.cast(tf.round(batch["image"]), tf.uint8)
        else:
            seed = tf.stack([tf.constant(view_seed(config.seed, view), tf.int64), index])
            image = _augment(batch["image"], config.augment, seed)
        return {**batch, "image": image}

    padding = {
        "image": tf.zeros((size, size, 3), tf.float32),
        "label": tf.constant(0, tf.int32),
        "mask": tf.constant(False),
        "file": tf.constant(""),
    }
    ds = _read(prepared, split).shard(process_count, process_index).map(decode, num_parallel_calls=_AUTOTUNE)
    padded = math.ceil(math.ceil(total / process_count) / batch_size) * batch_size
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat()).take(padded)
    ds = ds.batch(batch_size).enumerate().map(finish, num_parallel_calls=_AUTOTUNE)
    return _decode_files(ds.prefetch(_AUTOTUNE).as_numpy_iterator())


def view_seed(seed: int, view: int) -> int:
    """The augmentation seed of augmented view ``view``: a stream of its own, apart from every epoch's."""
    return int(np.random.SeedSequence(seed, spawn_key=(1, view)).generate_state(1)[0])


def _decode_files(batches: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Turns the ``file`` bytes of each batch into a numpy array of str."""
    for batch in batches:
        batch["file"] = np.array([f.decode() for f in batch["file"]])
        yield batch


def _read(prepared: PreparedData, split: str) -> tf.data.Dataset:
    """The split's examples in their stored (fixed) order, images still encoded."""
    return prepared.builder.as_dataset(
        split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )


def _decode_resize(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """JPEG/PNG bytes -> float32 (size, size, 3) in [0, 255], whole image resized (aspect ignored)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def affine_transforms(
    theta_degrees: tf.Tensor,
    shift_x: tf.Tensor,
    shift_y: tf.Tensor,
    zoom_x: tf.Tensor,
    zoom_y: tf.Tensor,
    height: int,
    width: int,
) -> tf.Tensor:
    """Keras ``apply_affine_transform(x, theta, tx=shift_x, ty=shift_y, zx=zoom_x, zy=zoom_y)`` as (B, 8)
    ImageProjectiveTransform rows.

    As in Keras 2.x, M = rotation @ shift @ zoom maps output to input pixel coordinates (x = column,
    y = row) about the image centre; shifts are in pixels, zoom > 1 zooms out.
    """
    theta = theta_degrees * (math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    a00, a01, a02 = cos * zoom_x, -sin * zoom_y, cos * shift_x - sin * shift_y
    a10, a11, a12 = sin * zoom_x, cos * zoom_y, sin * shift_x + cos * shift_y
    # About the centre: C @ M @ C^-1, C translating by the centre (cx, cy). (Keras uses (h, w) for (x, y)
    # here, the same for the square images this pipeline transforms.)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    a02 += cx - a00 * cx - a01 * cy
    a12 += cy - a10 * cx - a11 * cy
    zeros = tf.zeros_like(theta)
    return tf.stack([a00, a01, a02, a10, a11, a12, zeros, zeros], axis=1)


def _augment(
    images: tf.Tensor,
    augment: ml_collections.ConfigDict,
    seed: tf.Tensor,
    offset: int = 0,
    global_batch: int | None = None,
) -> tf.Tensor:
    """Random Keras-style affine transform and horizontal flip of a float batch; returns uint8.

    The parameters are drawn for a batch of ``global_batch`` (default: this one) and rows
    ``[offset, offset + len(images))`` of them used: a process's slice of a global batch.
    """
    batch = tf.shape(images)[0]
    total = global_batch or batch

    def draw(key, low=0.0, high=1.0):
        return tf.random.stateless_uniform([total], key, low, high)[offset : offset + batch]

    height, width = images.shape[1], images.shape[2]
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 6))
    if _geometric(augment):

        def uniform(key, limit, center=0.0):
            return draw(key, center - limit, center + limit)

        # Keras 2.x draws the horizontal shift from height_shift_range (its x/y swap); for square images
        # and equal ranges, as in the paper, the two are the same distribution. Here each shifts its axis.
        transforms = affine_transforms(
            uniform(seeds[0], augment.rotation_degrees),
            uniform(seeds[1], augment.width_shift) * width,
            uniform(seeds[2], augment.height_shift) * height,
            uniform(seeds[3], augment.zoom, 1.0),
            uniform(seeds[4], augment.zoom, 1.0),
            height,
            width,
        )
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=transforms,
            output_shape=[height, width],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="NEAREST",
        )
    if augment.horizontal_flip:
        flip = draw(seeds[5]) < 0.5
        images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    return tf.cast(tf.round(tf.clip_by_value(images, 0.0, 255.0)), tf.uint8)
