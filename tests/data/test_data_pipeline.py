"""Input pipeline: determinism, sharding, augmentation semantics, exact evaluation, class weights."""

import json
import os
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from scenecls.data import augment, builder, images, pipeline

SIZE = 32


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The tiny config's synthetic data (12 per class: 8 train, 2 validation, 2 test)."""
    from conftest import load_config

    return builder.prepare(load_config("tiny").data, str(tmp_path_factory.mktemp("work")))


@pytest.fixture
def config(tiny_config):
    tiny_config.image_size = SIZE
    tiny_config.batch_size = 8
    tiny_config.eval_batch_size = 4
    return tiny_config


def _no_augmentation(config):
    config.augment.update(
        rotation_degrees=0.0, width_shift=0.0, height_shift=0.0, zoom=0.0, horizontal_flip=False
    )
    return config


def _images(batches):
    return np.concatenate([b["image"] for b in batches])


def test_class_weights_inverse_frequency():
    np.testing.assert_allclose(pipeline.class_weights([10, 10, 10]), [1, 1, 1])
    np.testing.assert_allclose(pipeline.class_weights([1, 2, 1]), [4 / 3, 2 / 3, 4 / 3], rtol=1e-6)
    weights = pipeline.class_weights([339, 476, 220, 320, 517])
    assert weights.dtype == np.float32
    np.testing.assert_allclose((weights * [339, 476, 220, 320, 517]), 1872 / 5, rtol=1e-5)  # equal class mass
    np.testing.assert_array_equal(pipeline.class_weights([0, 4]), [0, 0.5])


def test_train_batches_shape_count_and_determinism(prepared, config):
    assert pipeline.steps_per_epoch(prepared, config) == 40 // 8
    batches = list(pipeline.train_batches(prepared, config, epoch=0))
    assert len(batches) == 5
    assert batches[0]["image"].shape == (8, SIZE, SIZE, 3) and batches[0]["image"].dtype == np.uint8
    assert batches[0]["label"].shape == (8,) and batches[0]["label"].dtype == np.int32
    assert sorted(np.concatenate([b["label"] for b in batches]).tolist()) == sorted(
        [label for label, n in enumerate(prepared.counts["train"]) for _ in range(n)]
    )
    again = list(pipeline.train_batches(prepared, config, epoch=0))  # a resumed run at epoch 0
    np.testing.assert_array_equal(_images(again), _images(batches))
    next_epoch = list(pipeline.train_batches(prepared, config, epoch=1))
    assert not np.array_equal(
        np.concatenate([b["label"] for b in next_epoch]), np.concatenate([b["label"] for b in batches])
    )
    config.seed = 1
    other_seed = list(pipeline.train_batches(prepared, config, epoch=0))
    assert not np.array_equal(_images(other_seed), _images(batches))


def test_process_shards_are_disjoint_and_make_up_the_global_batches(prepared, config):
    whole = list(pipeline.train_batches(prepared, config, epoch=3))
    shards = [
        list(pipeline.train_batches(prepared, config, epoch=3, process_index=p, process_count=2))
        for p in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == len(whole)
    for step, batch in enumerate(whole):
        parts = [shard[step]["image"] for shard in shards]
        assert parts[0].shape[0] == 4
        np.testing.assert_array_equal(np.concatenate(parts), batch["image"])  # augmented alike


def test_no_augmentation_is_identity_up_to_resizing(prepared, config):
    _no_augmentation(config)
    train_images = _images(pipeline.train_batches(prepared, config, epoch=0))
    reference = list(pipeline.eval_batches(prepared, "train", config))
    by_bytes = {
        image.tobytes(): file for b in reference for image, file in zip(b["image"], b["file"], strict=True)
    }
    assert all(image.tobytes() in by_bytes for image in train_images)
    with open(prepared.report_path) as f:
        source_dir = json.load(f)["source_dir"]
    source = images.load_rgb(os.path.join(source_dir, by_bytes[train_images[0].tobytes()]))
    source = Image.fromarray(source).resize((SIZE, SIZE), Image.BILINEAR)
    assert np.abs(np.asarray(source, np.float32) - train_images[0]).mean() < 8  # JPEG storage + resampler


def test_flip_only_equals_the_mirrored_image(prepared, config):
    plain = _images(pipeline.train_batches(prepared, _no_augmentation(config), epoch=0))
    config.augment.horizontal_flip = True
    flipped = _images(pipeline.train_batches(prepared, config, epoch=0))
    mirrored = [np.array_equal(f, p[:, ::-1]) for f, p in zip(flipped, plain, strict=True)]
    same = [np.array_equal(f, p) for f, p in zip(flipped, plain, strict=True)]
    assert all(m or s for m, s in zip(mirrored, same, strict=True))
    assert 5 <= sum(mirrored) <= 35  # about half of the 40 images


def test_augmentation_matches_keras_apply_affine_transform():
    from tf_keras.preprocessing.image import apply_affine_transform

    image = np.random.default_rng(0).uniform(0, 255, (24, 24, 3)).astype(np.float32)
    image = np.asarray(Image.fromarray(image.astype(np.uint8)).resize((48, 48)), np.float32)  # smooth-ish
    for theta, tx, ty, zx, zy in [
        (10, 0, 0, 1, 1),
        (0, 2.4, -1.5, 1, 1),
        (0, 0, 0, 1.1, 0.9),
        (-7, 1.5, -2, 0.95, 1.08),
    ]:
        expected = apply_affine_transform(
            image,
            theta=theta,
            tx=tx,
            ty=ty,
            zx=zx,
            zy=zy,
            row_axis=0,
            col_axis=1,
            channel_axis=2,
            fill_mode="nearest",
            order=1,
        )
        params = augment.Transform(
            *(tf.constant([v], tf.float32) for v in (theta, tx, ty, zx, zy)), flip=None
        )
        transforms = augment.affine_transforms(params, 48, 48, tf.experimental.numpy)
        actual = tf.raw_ops.ImageProjectiveTransformV3(
            images=image[None],
            transforms=transforms,
            output_shape=[48, 48],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="NEAREST",
        )[0].numpy()
        np.testing.assert_allclose(actual, expected, atol=0.05)


def test_default_augmentation_changes_images_within_paper_ranges(prepared, config):
    plain = _images(
        pipeline.train_batches(prepared, _no_augmentation(config.copy_and_resolve_references()), epoch=0)
    )
    augmented = _images(pipeline.train_batches(prepared, config, epoch=0))  # the paper's default ranges
    differences = np.abs(augmented.astype(np.float32) - plain).mean(axis=(1, 2, 3))
    assert (differences > 0).mean() > 0.9
    # Small transforms: most images stay close to the original or to its mirror image.
    mirrored = np.abs(augmented.astype(np.float32) - plain[:, :, ::-1]).mean(axis=(1, 2, 3))
    assert np.median(np.minimum(differences, mirrored)) < 40


def test_in_memory_batches_equal_streamed_ones_without_augmentation(prepared, config):
    _no_augmentation(config)
    memory = pipeline.load_in_memory(prepared, config)
    assert memory.images.shape == (40, SIZE, SIZE, 3) and memory.images.dtype == np.uint8
    for epoch in (0, 1):
        streamed = list(pipeline.train_batches(prepared, config, epoch))
        held = list(pipeline.train_batches(prepared, config, epoch, memory=memory))
        assert len(held) == len(streamed) == 5
        for a, b in zip(held, streamed, strict=True):
            np.testing.assert_array_equal(a["label"], b["label"])
            np.testing.assert_array_equal(a["image"], b["image"])


def test_in_memory_host_augmentation_is_streamings_up_to_rounding(prepared, config):
    memory = pipeline.load_in_memory(prepared, config)
    streamed = list(pipeline.train_batches(prepared, config, 2))
    held = list(pipeline.train_batches(prepared, config, 2, memory=memory))
    np.testing.assert_array_equal(
        np.concatenate([b["label"] for b in held]), np.concatenate([b["label"] for b in streamed])
    )
    difference = np.abs(_images(held).astype(int) - _images(streamed))
    assert difference.max() <= 1  # rounded to uint8 before the transform instead of after it
    plain = _images(pipeline.train_batches(prepared, _no_augmentation(config), 2, memory=memory))
    assert np.abs(_images(held).astype(int) - plain).mean() > 5  # and it was augmented


def test_device_augmentation_leaves_batches_to_the_step(prepared, config):
    config.augment.where = "device"
    memory = pipeline.load_in_memory(prepared, config)
    left = _images(pipeline.train_batches(prepared, config, 1, memory=memory))
    streamed = _images(pipeline.train_batches(prepared, config, 1))
    config.augment.where = "host"
    plain = _images(pipeline.train_batches(prepared, _no_augmentation(config), 1, memory=memory))
    np.testing.assert_array_equal(left, plain)
    np.testing.assert_array_equal(streamed, plain)


def test_an_epoch_left_early_stops_its_indexing_thread(prepared, config):
    config.augment.where = "device"  # in memory, nothing augmented here: batches come from a thread
    batches = pipeline.train_batches(prepared, config, 1, memory=pipeline.load_in_memory(prepared, config))
    next(batches)  # 1 of 5 taken; the thread has more waiting than the queue holds
    batches.close()  # as a run stopping mid-epoch (non-finite loss, interrupt) leaves it
    deadline = time.monotonic() + 10
    while _prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _prefetch_threads()


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == pipeline.PREFETCH_THREAD and t.is_alive()]


def test_in_memory_processes_hold_and_serve_only_their_shard(prepared, config):
    memories = [pipeline.load_in_memory(prepared, config, p, 2) for p in range(2)]
    assert [len(m.labels) for m in memories] == [20, 20]
    whole = pipeline.load_in_memory(prepared, config)
    np.testing.assert_array_equal(memories[1].images, whole.images[1::2])  # stored examples 1, 3, 5, ...
    for epoch in (1, 2):
        orders = [pipeline.train_order(prepared, config, epoch, p, 2, in_memory=True) for p in range(2)]
        assert all(order.shape == (5, 4) and len(set(order.ravel())) == 20 for order in orders)
        batches = [
            list(pipeline.train_batches(prepared, config, epoch, p, 2, memory=m))
            for p, m in enumerate(memories)
        ]
        assert [len(b) for b in batches] == [5, 5] and batches[0][0]["image"].shape == (4, SIZE, SIZE, 3)
    epochs = [pipeline.train_order(prepared, config, e, 0, 2, in_memory=True) for e in (1, 2)]
    assert not np.array_equal(*epochs)


def test_in_memory_auto_follows_the_budget(prepared, config):
    size = 40 * SIZE * SIZE * 3  # bytes of the 40 training images
    config.data.in_memory_max_gb = 1.01 * size / 2**30
    assert pipeline.in_memory(prepared, config)
    config.data.in_memory_max_gb = 0.99 * size / 2**30
    assert not pipeline.in_memory(prepared, config)
    assert pipeline.in_memory(prepared, config, process_count=2)  # a process holds half
    config.data.in_memory = "true"
    assert pipeline.in_memory(prepared, config)
    config.data.in_memory = "false"
    config.data.in_memory_max_gb = 100.0
    assert not pipeline.in_memory(prepared, config)


def test_eval_yields_every_example_once_with_a_mask(prepared, config):
    batches = list(pipeline.eval_batches(prepared, "test", config))
    assert len(batches) == 3  # 10 examples in batches of 4
    masks = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(masks, [True] * 10 + [False] * 2)
    files = np.concatenate([b["file"] for b in batches])[masks]
    assert sorted(files.tolist()) == sorted(prepared.files["test"])
    labels = np.concatenate([b["label"] for b in batches])[masks]
    assert [prepared.classes[label] for label in labels] == [f.split("/")[0] for f in files]
    assert all(b["image"].shape == (4, SIZE, SIZE, 3) and b["image"].dtype == np.uint8 for b in batches)
    again = np.concatenate([b["file"] for b in pipeline.eval_batches(prepared, "test", config)])
    np.testing.assert_array_equal(again[masks], files)  # fixed order


def test_eval_shards_cover_the_split_once(prepared, config):
    shards = [
        list(pipeline.eval_batches(prepared, "validation", config, process_index=p, process_count=2))
        for p in range(2)
    ]
    assert len(shards[0]) == len(shards[1])
    files = [f for shard in shards for b in shard for f, m in zip(b["file"], b["mask"], strict=True) if m]
    assert sorted(files) == sorted(prepared.files["validation"])


def test_bad_requests_fail_clearly(prepared, config):
    with pytest.raises(ValueError, match="split .* is empty"):
        pipeline.eval_batches(prepared, "holdout", config)
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        pipeline.train_batches(prepared, config, epoch=0, process_count=3)
