"""The training guard: SIGTERM mid-epoch saves and resumes exactly; non-finite losses are skipped or stop."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scenecls import train
from scenecls.data import builder, pipeline
from scenecls.train import guard
from scenecls.workdir import checkpoints

pytestmark = pytest.mark.slow  # trains tiny runs end to end (minutes in all)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """An uninterrupted tiny run (2 + 1 epochs) and its config, data prepared once for every test here."""
    from conftest import load_config

    config = load_config("tiny")
    config.stage1.epochs = 2
    root = tmp_path_factory.mktemp("guard")
    config.data.prepared_dir = str(root / "prepared")
    workdir = str(root / "baseline")
    metrics = train.train_and_evaluate(config, workdir)
    config.data.source_dir = os.path.join(workdir, "synthetic_source")  # the same data for the other runs
    return config, workdir, metrics


def _history(workdir):
    with open(os.path.join(workdir, "history.json")) as f:
        return json.load(f)


def _best_params(workdir, stage):
    manager = checkpoints.best_manager(workdir, stage)
    return jax.device_get(checkpoints.restore_state(manager, manager.latest_step()))["params"]


def test_sigterm_mid_epoch_saves_and_the_resumed_run_ends_where_the_uninterrupted_one_did(
    baseline, tmp_path, monkeypatch
):
    config, expected_dir, expected_metrics = baseline
    original = pipeline.train_batches
    sent = []

    def batches_with_a_sigterm(prepared, config, epoch, *args, **kwargs):
        for step, batch in enumerate(original(prepared, config, epoch, *args, **kwargs), start=1):
            if epoch == 2 and step == 2 and not sent:  # stage 1, second epoch, during its second step
                sent.append(step)
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    monkeypatch.setattr(pipeline, "train_batches", batches_with_a_sigterm)
    workdir = str(tmp_path / "interrupted")
    with pytest.raises(guard.Interrupted, match="SIGTERM.*stage1 epoch 2 step 2/.*resume") as info:
        train.train_and_evaluate(config, workdir)
    assert info.value.exit_status == 143
    saved = checkpoints.restore_latest(checkpoints.latest_manager(workdir))
    assert saved.meta["stage"] == "stage1" and saved.meta["position"]["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "handlers are restored"

    metrics = train.train_and_evaluate(config, workdir)  # resumes mid-epoch
    expected, got = _history(expected_dir), _history(workdir)
    for stage in ("stage1", "stage2"):
        for a, b in zip(expected[stage], got[stage], strict=True):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (stage, key)
    for stage in ("stage1", "stage2"):
        jax.tree_util.tree_map(
            lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
            _best_params(expected_dir, stage),
            _best_params(workdir, stage),
        )
    assert metrics["accuracy"] == pytest.approx(expected_metrics["accuracy"])


def _nan_class_weights_at(step: int, monkeypatch) -> None:
    """Makes the loss NaN at one optimizer step (counted within a stage) through the class weights."""
    original = train.train_step

    def step_with_a_nan(state, batch, dropout_key, class_weights, **kwargs):
        class_weights = jnp.where(state.step == step, jnp.nan, class_weights)
        return original(state, batch, dropout_key, class_weights, **kwargs)

    monkeypatch.setattr(train.stage, "train_step", step_with_a_nan)  # the step setup_stage jits


def test_nonfinite_loss_stops_with_the_place_and_keeps_a_restorable_checkpoint(
    baseline, tmp_path, monkeypatch
):
    config, _, _ = baseline
    config = config.copy_and_resolve_references()
    steps = pipeline.steps_per_epoch(builder.prepare(config.data, str(tmp_path)), config)
    config.checkpoint_every_minutes = 1e-9  # a checkpoint after every step
    _nan_class_weights_at(steps + 1, monkeypatch)  # stage 1, epoch 2, its second step (state.step from 0)
    workdir = str(tmp_path / "nan")
    with pytest.raises(guard.NonFiniteLoss, match=f"stage1 epoch 2 step 2/{steps}.*last good checkpoint"):
        train.train_and_evaluate(config, workdir)
    saved = checkpoints.restore_latest(checkpoints.latest_manager(workdir))
    assert (saved.meta["progress"]["epochs_done"], saved.meta["position"]["step"]) == (1, 1)
    leaves = jax.tree_util.tree_leaves(saved.state["params"])
    assert leaves and all(np.all(np.isfinite(leaf)) for leaf in leaves)


def test_nonfinite_steps_within_the_limit_are_skipped(baseline, tmp_path, monkeypatch):
    config, _, _ = baseline
    config = config.copy_and_resolve_references()
    config.max_nonfinite_steps = 1
    _nan_class_weights_at(1, monkeypatch)
    workdir = str(tmp_path / "skip")
    metrics = train.train_and_evaluate(config, workdir)
    history = _history(workdir)
    assert all(np.isfinite(r["loss"]) for stage in history.values() for r in stage)
    assert np.isfinite(metrics["accuracy"])
    for stage in ("stage1", "stage2"):
        assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(_best_params(workdir, stage)))
