"""The stage-1 feature cache gives the image path's results: same order, same training, same metrics."""

import json
import os

import jax
import numpy as np
import pytest

from scenecls import train
from scenecls.data import builder, pipeline
from scenecls.train import feature_cache
from scenecls.workdir import checkpoints


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


def test_unusable_reason(tiny_config):
    config = _no_augmentation(tiny_config)
    assert feature_cache.unusable_reason(config, "stage1", "output") is None
    assert "backbone" in feature_cache.unusable_reason(config, "stage2", "conv5_block1")
    config.stage1.train_batchnorm = True
    assert "backbone" in feature_cache.unusable_reason(config, "stage1", "output")
    config.stage1.train_batchnorm = False
    config.augment.zoom = 0.1
    assert "augmented" in feature_cache.unusable_reason(config, "stage1", "output")
    config.augment.zoom = 0.0
    config.cache_features = False
    assert "off" in feature_cache.unusable_reason(config, "stage1", "output")


def _run(config, workdir, cache: bool):
    config.cache_features = cache
    metrics = train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "history.json")) as f:
        history = json.load(f)
    manager = checkpoints.best_manager(workdir, "stage1")
    best = jax.device_get(checkpoints.restore_state(manager, manager.latest_step()))
    return metrics, history, best


@pytest.mark.slow
def test_cached_stage1_equals_training_on_images(tiny_config, tmp_path, monkeypatch):
    config = _no_augmentation(tiny_config)
    config.stage1.epochs, config.stage2.epochs = 3, 0
    config.data.prepared_dir = str(tmp_path / "prepared")  # prepared once, shared by both runs
    calls = []
    original = feature_cache.cache_split
    monkeypatch.setattr(feature_cache, "cache_split", lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    plain = _run(config, str(tmp_path / "plain"), cache=False)
    assert calls == []
    cached = _run(config, str(tmp_path / "cached"), cache=True)
    assert calls == ["train", "validation"]
    assert not os.path.exists(tmp_path / "cached" / "feature_cache"), (
        "cache files are removed after the stage"
    )
    for a, b in zip(plain[1]["stage1"], cached[1]["stage1"], strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    jax.tree_util.tree_map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), plain[2], cached[2]
    )
    for key in ("accuracy", "macro_f1", "top2_accuracy", "auc_ovr"):
        assert plain[0][key] == pytest.approx(cached[0][key], rel=1e-4, abs=1e-6), key
