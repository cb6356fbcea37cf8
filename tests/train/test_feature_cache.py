"""The stage-1 feature cache gives the image path's results: same order, same training, same metrics."""

import collections
import json
import os

import jax
import numpy as np
import pytest

from scenecls import train
from scenecls.data import builder, pipeline
from scenecls.train import feature_cache
from scenecls.workdir import checkpoints

shutil_usage = collections.namedtuple("usage", "total used free")


def _no_augmentation(config):
    config.augment.rotation_degrees = 0.0
    config.augment.width_shift = config.augment.height_shift = config.augment.zoom = 0.0
    config.augment.horizontal_flip = False
    return config


def test_train_order_is_the_image_pipelines_order(tiny_config, tmp_path):
    prepared = builder.prepare(tiny_config.data, str(tmp_path))
    stored_labels = np.concatenate(
        [b["label"][b["mask"]] for b in pipeline.eval_batches(prepared, "train", tiny_config)]
    )
    orders = []
    for epoch in (1, 2):
        order = pipeline.train_order(prepared, tiny_config, epoch)
        labels = np.stack([b["label"] for b in pipeline.train_batches(prepared, tiny_config, epoch)])
        assert order.shape == labels.shape == (pipeline.steps_per_epoch(prepared, tiny_config), 8)
        np.testing.assert_array_equal(stored_labels[order], labels)
        orders.append(order)
    assert not np.array_equal(*orders), "epochs should be shuffled differently"
    halves = [pipeline.train_order(prepared, tiny_config, 1, p, 2) for p in (0, 1)]
    assert set(halves[0].ravel()).isdisjoint(halves[1].ravel())


def test_plan(tiny_config):
    config = _no_augmentation(tiny_config)
    exact = feature_cache.plan(config, "output")
    assert (exact.validation, exact.views, exact.approximate) == (True, 1, False)
    assert feature_cache.plan(config, "conv5_block1").views == 1  # stage two's boundary: cached as well
    assert feature_cache.plan(config, None) == (False, 0, False, feature_cache.plan(config, None).reason)
    config.augment.zoom = 0.1
    augmented = feature_cache.plan(config, "output")
    assert (augmented.validation, augmented.views, augmented.approximate) == (True, 0, False)
    config.cache_features.views = 3
    views = feature_cache.plan(config, "conv5_block1")
    assert (views.validation, views.views, views.approximate) == (True, 3, True)
    assert "approximation" in views.reason and "repeat" in views.reason
    config.cache_features.enabled = False
    assert feature_cache.plan(config, "output")[:2] == (False, 0)


def _run(config, workdir, cache: bool):
    config.cache_features.enabled = cache
    metrics = train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "history.json")) as f:
        history = json.load(f)
    best = {stage: checkpoints.best_variables(workdir, stage) for stage in history}
    return metrics, history, best


def _assert_same_run(plain, cached):
    for stage in plain[1]:
        for a, b in zip(plain[1][stage], cached[1][stage], strict=True):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (stage, key)
    jax.tree_util.tree_map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), plain[2], cached[2]
    )
    for key in ("accuracy", "macro_f1", "top2_accuracy", "auc_ovr"):
        assert plain[0][key] == pytest.approx(cached[0][key], rel=1e-4, abs=1e-6), key


def _count_caching(monkeypatch):
    """Records (split, views, boundary) of every cache_split call."""
    calls, original = [], feature_cache.cache_split

    def counted(stage, variables, prepared, split, config, views, directory):
        calls.append((split, views, stage.boundary))
        return original(stage, variables, prepared, split, config, views, directory)

    monkeypatch.setattr(feature_cache, "cache_split", counted)
    return calls


@pytest.mark.slow
def test_cached_stages_equal_training_on_images(tiny_config, tmp_path, monkeypatch):
    """No augmentation: both stages train and validate on activations at their boundaries (the backbone's
    output, then the input of conv5_block1), with the image path's results."""
    config = _no_augmentation(tiny_config)
    config.stage1.epochs, config.stage2.epochs = 2, 2
    config.data.prepared_dir = str(tmp_path / "prepared")  # prepared once, shared by both runs
    calls = _count_caching(monkeypatch)
    plain = _run(config, str(tmp_path / "plain"), cache=False)
    assert calls == []
    cached = _run(config, str(tmp_path / "cached"), cache=True)
    assert calls == [
        ("validation", 0, "output"),
        ("train", 0, "output"),
        ("validation", 0, "conv5_block1"),
        ("train", 0, "conv5_block1"),
    ]
    assert not os.path.exists(tmp_path / "cached" / "feature_cache"), "removed after each stage"
    _assert_same_run(plain, cached)


@pytest.mark.slow
def test_validation_is_cached_while_training_is_augmented(tiny_config, tmp_path, monkeypatch):
    config = tiny_config  # augmentation on, as configured
    config.stage1.epochs, config.stage2.epochs = 2, 1
    config.data.prepared_dir = str(tmp_path / "prepared")
    calls = _count_caching(monkeypatch)
    plain = _run(config, str(tmp_path / "plain"), cache=False)
    cached = _run(config, str(tmp_path / "cached"), cache=True)
    assert calls == [("validation", 0, "output"), ("validation", 0, "conv5_block1")]
    _assert_same_run(plain, cached)


def test_an_epoch_trains_on_view_epoch_minus_one_mod_k(tiny_config, tmp_path):
    prepared = builder.prepare(tiny_config.data, str(tmp_path))
    total = sum(prepared.counts["train"])
    views = np.arange(3, dtype=np.float32)[:, None, None, None, None] * np.ones(
        (3, total, 1, 1, 1), np.float32
    )
    cached = feature_cache.CachedSplit(views, np.arange(total, dtype=np.int32), np.array([""] * total))
    for epoch, view in ((1, 0), (2, 1), (3, 2), (4, 0), (7, 0)):
        for batch in feature_cache.train_batches(cached, prepared, tiny_config, epoch):
            assert np.all(batch["image"] == view), (epoch, view)
        first = next(feature_cache.train_batches(cached, prepared, tiny_config, epoch))["label"]
        np.testing.assert_array_equal(first, pipeline.train_order(prepared, tiny_config, epoch)[0])


def test_views_are_fixed_distinct_augmentations(tiny_config, tmp_path):
    prepared = builder.prepare(tiny_config.data, str(tmp_path))

    def images(view):
        return np.concatenate(
            [b["image"] for b in pipeline.eval_batches(prepared, "train", tiny_config, view=view)]
        )

    plain = np.concatenate([b["image"] for b in pipeline.eval_batches(prepared, "train", tiny_config)])
    first, again, second = images(0), images(0), images(1)
    np.testing.assert_array_equal(first, again)
    assert (
        first.shape == plain.shape and not np.array_equal(first, plain) and not np.array_equal(first, second)
    )
    tiny_config.seed = 1
    assert not np.array_equal(images(0), first), "views derive from the seed"


@pytest.mark.slow
def test_augmented_views_train_deterministically(tiny_config, tmp_path, monkeypatch):
    config = tiny_config
    config.stage1.epochs, config.stage2.epochs = 3, 0
    config.cache_features.update(views=2, dtype="bfloat16")
    config.data.prepared_dir = str(tmp_path / "prepared")
    calls = _count_caching(monkeypatch)
    first = _run(config, str(tmp_path / "a"), cache=True)
    assert calls == [("validation", 0, "output"), ("train", 2, "output")]
    second = _run(config, str(tmp_path / "b"), cache=True)
    for a, b in zip(first[1]["stage1"], second[1]["stage1"], strict=True):
        timings = ("images_per_s", "seconds")
        assert {k: a[k] for k in a if k not in timings} == {k: b[k] for k in b if k not in timings}


def test_a_cache_that_does_not_fit_the_disk_is_refused_before_any_compute(tiny_config, tmp_path, monkeypatch):
    config = _no_augmentation(tiny_config)
    config.stage2.epochs = 0
    calls = _count_caching(monkeypatch)
    monkeypatch.setattr(
        feature_cache.shutil,
        "disk_usage",
        lambda path: shutil_usage(total=10**9, used=10**9 - 1000, free=1000),
    )
    with pytest.raises(ValueError, match=r"feature cache needs .* GiB in .*feature_cache but only"):
        train.train_and_evaluate(config, str(tmp_path))
    assert calls == []
