"""tf.data input pipeline: prepared tfds data -> numpy batches of uint8 images for JAX.

Images are resized to ``image_size`` x ``image_size`` ignoring the aspect ratio (as Keras'
``flow_from_directory(target_size=...)``, which the reference used), bilinear with antialiasing, the same for
training and evaluation. Training adds the paper's augmentation with Keras ``ImageDataGenerator`` semantics
(rotation, width/height shift, zoom, horizontal flip; bilinear, fill mode 'nearest'; defined in
``augment``), here on the host unless ``config.augment.where`` puts it in the train step. Normalisation
(caffe/torch) is done by the model step on device, so batches stay uint8.

The training split is streamed from the prepared records, or decoded once into this process's uint8 array
(``load_in_memory``, when ``config.data.in_memory`` says so) and served by indexing, in the same order.

Determinism: the shuffle order and every random augmentation parameter derive from (config.seed, epoch),
so epoch e yields the same batches whether or not the run was interrupted before it.
"""

import math
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import NamedTuple, TypeVar

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from scenecls import parallel
from scenecls.data.augment import (
    Transform,
    affine_transforms,
    augments,
    geometric,
    on_device,
    sample_transform,
)
from scenecls.data.builder import PreparedData

try:  # tf.data only: keep TensorFlow off the accelerators JAX uses.
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # already initialised by the caller (main.py hides GPUs first)
    pass

_AUTOTUNE = tf.data.AUTOTUNE
_PREFETCH = 2  # in-memory batches indexed ahead of the step
PREFETCH_THREAD = "scenecls-prefetch"  # the name of the thread that indexes them
T = TypeVar("T")


class InMemory(NamedTuple):
    """This process's shard of the decoded training split: stored examples p, p + P, ... of process p."""

    images: np.ndarray  # uint8 (n, S, S, 3), resized as the pipeline resizes
    labels: np.ndarray  # int32 (n,)


def class_weights(train_counts: Sequence[int]) -> np.ndarray:
    """Inverse-frequency class weights, ``w_c = n_total / (n_classes * n_c)`` (Keras/sklearn "balanced").

    A balanced set gets all ones; the weighted loss then counts every class as much as in a balanced set.
    Classes without training images get weight 0 (they never appear in the loss).
    """
    counts = np.asarray(train_counts, dtype=np.float64)
    weights = np.divide(counts.sum(), len(counts) * counts, out=np.zeros_like(counts), where=counts > 0)
    return weights.astype(np.float32)


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
    memory: InMemory | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of training batches ``{"image": uint8 (B, S, S, 3), "label": int32 (B,)}``, streamed, or
    indexed from ``memory`` (``load_in_memory``); augmented here unless ``augment.on_device(config.augment)``.

    ``B = config.batch_size // process_count``: all processes shuffle identically, keep the same number of
    whole global batches, and process p takes rows [p * B, (p + 1) * B) of each (disjoint shards). Those
    rows get the augmentation they get in a single-process run (parameters are drawn for the whole global
    batch), so the processes' batches put together are the single-process batch, whatever the count.
    From memory, each process shuffles its own shard instead (``train_order``): the same batches as
    streaming with one process, a different (equally random) order with several.

    In memory, images are rounded to uint8 before the augmentation, streamed after it: with the same order
    and parameters, augmented pixels differ by at most 1.
    """
    parallel.check_divisible(config.batch_size, "batch_size", process_count, "processes")
    shuffle_seed, augment_seed = epoch_seeds(config.seed, epoch)
    size = config.image_size
    local_batch = config.batch_size // process_count
    host_augment = augments(config.augment) and not on_device(config.augment)

    def augment(index, batch):
        seed = tf.stack([tf.constant(augment_seed, tf.int64), index])
        images = tf.cast(batch["image"], tf.float32)
        if host_augment:
            images = _augment(images, config.augment, seed, process_index * local_batch, config.batch_size)
        return {"image": _to_uint8(images), "label": batch["label"]}

    if memory is None:

        def decode(example):
            image = _decode_resize(example["image"], size)
            return {"image": image, "label": tf.cast(example["label"], tf.int32)}

        ds = _epoch_selection(
            _read(prepared, "train"), prepared, config, shuffle_seed, process_index, process_count
        )
        ds = ds.map(decode, num_parallel_calls=_AUTOTUNE).batch(local_batch, drop_remainder=True)
    else:
        order = train_order(prepared, config, epoch, process_index, process_count, in_memory=True)
        rows = ({"image": memory.images[i], "label": memory.labels[i]} for i in order)
        if not host_augment:  # already uint8: indexed in a thread, ahead of the step (7x tf.data's rate)
            return _prefetched(rows, _PREFETCH)
        signature = {
            "image": tf.TensorSpec((local_batch, size, size, 3), tf.uint8),
            "label": tf.TensorSpec((local_batch,), tf.int32),
        }
        ds = tf.data.Dataset.from_generator(lambda: rows, output_signature=signature)
    return ds.enumerate().map(augment, num_parallel_calls=_AUTOTUNE).prefetch(_AUTOTUNE).as_numpy_iterator()


def _prefetched(items: Iterator[T], size: int) -> Iterator[T]:
    """``items``, produced by a background thread up to ``size`` ahead; its exceptions re-raised here.

    The thread ends when the items do, or soon after the consumer stops early (the generator is closed).
    """
    ready: queue.Queue = queue.Queue(size)
    done, stopped = object(), threading.Event()

    def put(item: object) -> bool:
        """Queues ``item`` unless the consumer has stopped; whether it did."""
        while not stopped.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer
            put(e)
            return
        put(done)

    threading.Thread(target=produce, name=PREFETCH_THREAD, daemon=True).start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopped.set()


def in_memory(prepared: PreparedData, config: ml_collections.ConfigDict, process_count: int = 1) -> bool:
    """Whether the training split is decoded into memory: ``config.data.in_memory`` "true"/"false", or
    "auto": when a process's shard (uint8 at ``image_size``) fits ``config.data.in_memory_max_gb``."""
    choice = config.data.in_memory
    if choice != "auto":
        return choice == "true"
    rows = -(-sum(prepared.counts["train"]) // process_count)
    return rows * config.image_size**2 * 3 <= config.data.in_memory_max_gb * 2**30


def load_in_memory(
    prepared: PreparedData, config: ml_collections.ConfigDict, process_index: int = 0, process_count: int = 1
) -> InMemory:
    """Decodes this process's shard of the training split once (as ``eval_batches`` decodes it)."""
    total = sum(prepared.counts["train"])
    rows = len(range(process_index, total, process_count))
    images = np.empty((rows, config.image_size, config.image_size, 3), np.uint8)
    labels = np.empty((rows,), np.int32)
    filled = 0
    for batch in eval_batches(prepared, "train", config, process_index, process_count):
        count = int(batch["mask"].sum())  # the padding comes last
        images[filled : filled + count] = batch["image"][:count]
        labels[filled : filled + count] = batch["label"][:count]
        filled += count
    return InMemory(images=images, labels=labels)


def train_order(
    prepared: PreparedData,
    config: ml_collections.ConfigDict,
    epoch: int,
    process_index: int = 0,
    process_count: int = 1,
    in_memory: bool = False,
) -> np.ndarray:
    """Indices of the examples ``train_batches`` yields for ``epoch``, shape (steps, B): stored-order
    indices, or with ``in_memory`` rows of this process's ``InMemory`` shard.

    The same shuffle over a range of indices instead of the examples (tf.data's shuffle order depends only
    on its seed, buffer and length), so cached per-example data can be served in the images' order. In
    memory with several processes, each shuffles its own shard with the epoch's seed instead.
    """
    shuffle_seed, _ = epoch_seeds(config.seed, epoch)
    local_batch = config.batch_size // process_count
    total = sum(prepared.counts["train"])
    if in_memory and process_count > 1:
        rows = tf.data.Dataset.range(len(range(process_index, total, process_count)))
        ds = _shuffled(rows, prepared, config, shuffle_seed, local_batch)
    else:
        indices = tf.data.Dataset.range(total)
        ds = _epoch_selection(indices, prepared, config, shuffle_seed, process_index, process_count)
    return np.fromiter(ds.as_numpy_iterator(), np.int64).reshape(-1, local_batch)


def _epoch_selection(
    ds: tf.data.Dataset,
    prepared: PreparedData,
    config: ml_collections.ConfigDict,
    shuffle_seed: int,
    process_index: int,
    process_count: int,
) -> tf.data.Dataset:
    """An epoch's shuffled whole batches of the training split, this process's rows of each of them."""
    ds = _shuffled(ds, prepared, config, shuffle_seed, config.batch_size)
    if process_count == 1:
        return ds
    return ds.batch(config.batch_size // process_count).shard(process_count, process_index).unbatch()


def _shuffled(
    ds: tf.data.Dataset, prepared: PreparedData, config: ml_collections.ConfigDict, seed: int, batch: int
) -> tf.data.Dataset:
    """An epoch's shuffle of ``ds``, cut to ``steps_per_epoch`` batches of ``batch`` examples."""
    ds = ds.shuffle(config.data.shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
    return ds.take(steps_per_epoch(prepared, config) * batch)


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
        image = batch["image"]
        if view is not None:
            seed = tf.stack([tf.constant(view_seed(config.seed, view), tf.int64), index])
            image = _augment(image, config.augment, seed)
        return {**batch, "image": _to_uint8(image)}

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


def _augment(
    images: tf.Tensor,
    augment: ml_collections.ConfigDict,
    seed: tf.Tensor,
    offset: int = 0,
    global_batch: int | None = None,
) -> tf.Tensor:
    """``augment.sample_transform`` drawn with TensorFlow's stateless generator and applied to a float batch.

    The parameters are drawn for a batch of ``global_batch`` (default: this one) and rows
    ``[offset, offset + len(images))`` of them used: a process's slice of a global batch.
    """
    batch = tf.shape(images)[0]
    total = global_batch or batch
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 6))

    def uniform(stream: int, low: float, high: float) -> tf.Tensor:
        return tf.random.stateless_uniform([total], seeds[stream], low, high)[offset : offset + batch]

    return apply_transform(
        images, sample_transform(augment, images.shape[1], images.shape[2], uniform), geometric(augment)
    )


def apply_transform(images: tf.Tensor, transform: Transform, affine: bool = True) -> tf.Tensor:
    """``transform`` applied to a float batch (B, H, W, C): the affine part (if ``affine``; bilinear, fill
    mode 'nearest'), then the flip. The host twin of ``augment.apply_transform``; not rounded."""
    height, width = images.shape[1], images.shape[2]
    if affine:
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=affine_transforms(transform, height, width, tf.experimental.numpy),
            output_shape=[height, width],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="NEAREST",
        )
    if transform.flip is not None:
        images = tf.where(transform.flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    return images


def _to_uint8(images: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.round(tf.clip_by_value(images, 0.0, 255.0)), tf.uint8)
