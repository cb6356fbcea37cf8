"""Train step semantics: frozen layers stay bit-identical, the configured tail trains, class weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from scenecls import train
from scenecls.models import build_classifier
from scenecls.train import optim, schedule


def _setup(config, rules, train_batchnorm=False):
    """A stage-2 stage of ``config`` training ``rules`` (the trainer's own setup_stage), and a batch."""
    config.stage2.update(trainable=rules, train_batchnorm=train_batchnorm, learning_rate=1e-2)
    variables = train.stage.init_variables(config.model, 5, 64, seed=0)
    stage = train.setup_stage(config, variables, "stage2", num_classes=5)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8),
        "label": rng.integers(0, 5, (8,)).astype(np.int32),
    }
    return stage.state, stage.step, batch, stage.labels


def _run(state, step, batch, steps=3):
    for _ in range(steps):
        state, metrics = step(state, batch, jax.random.PRNGKey(1), jnp.ones((5,)))
    return state, metrics


def _changed(before, after):
    flat_before, flat_after = traverse_util.flatten_dict(before), traverse_util.flatten_dict(after)
    return {"/".join(k) for k in flat_before if not np.array_equal(flat_before[k], flat_after[k])}


def test_stage1_leaves_backbone_bit_identical(tiny_config):
    state, step, batch, labels = _setup(tiny_config, tiny_config.stage1.trainable)
    params, stats = jax.device_get(state.params), jax.device_get(state.batch_stats)
    new_state, metrics = _run(state, step, batch)
    changed = _changed(params, jax.device_get(new_state.params))
    assert changed == set(optim.trainable_names(labels))
    assert all(name.startswith("head/") for name in changed)
    assert _changed(stats, jax.device_get(new_state.batch_stats)) == set()
    assert int(metrics["count"]) == 8 and np.isfinite(float(metrics["loss"]))


def test_stage2_changes_exactly_the_tail(tiny_config):
    state, step, batch, labels = _setup(tiny_config, tiny_config.stage2.trainable)
    params, stats = jax.device_get(state.params), jax.device_get(state.batch_stats)
    new_state, _ = _run(state, step, batch)
    changed = _changed(params, jax.device_get(new_state.params))
    expected = set(optim.trainable_names(labels))
    assert changed == expected
    assert any(name.startswith("backbone/conv5_block1_") for name in changed)
    assert not any("_bn/" in name for name in changed)  # BatchNorm frozen: gamma/beta untouched
    assert _changed(stats, jax.device_get(new_state.batch_stats)) == set()


def test_trainable_batchnorm_updates_statistics(tiny_config):
    state, step, batch, _ = _setup(tiny_config, (".*",), train_batchnorm=True)
    stats = jax.device_get(state.batch_stats)
    new_state, _ = _run(state, step, batch, steps=1)
    assert _changed(stats, jax.device_get(new_state.batch_stats))


def test_partially_trained_batchnorm_leaves_other_statistics_bit_identical(tiny_config):
    """With rules that train one block and train_batchnorm, only that block's BatchNorm statistics move."""
    rules = ("^head/", "^backbone/conv5_block1_")
    state, step, batch, _ = _setup(tiny_config, rules, train_batchnorm=True)
    stats = jax.device_get(state.batch_stats)
    new_state, _ = _run(state, step, batch, steps=1)
    changed = _changed(stats, jax.device_get(new_state.batch_stats))
    trained_bn = {f"backbone/conv5_block1_{i}_bn/{stat}" for i in (0, 1, 2, 3) for stat in ("mean", "var")}
    assert changed == trained_bn


def test_frozen_batchnorm_normalises_with_running_statistics(tiny_config):
    """A step's loss equals the loss of a model whose frozen BatchNorm layers run in inference mode.

    Checked through the logits: with only the head training, the training-mode forward (dropout off) must
    equal the inference-mode forward, which it would not if any BatchNorm used batch statistics.
    """
    tiny_config.model.dropout_rate = 0.0
    state, _, batch, _ = _setup(tiny_config, ("^head/",), train_batchnorm=True)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    images = jnp.asarray(batch["image"], jnp.float32)
    train_logits, _ = state.apply_fn(variables, images, train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(train_logits, state.apply_fn(variables, images, train=False))


def test_gradient_boundary_matches_full_backprop(tiny_config):
    """Stopping gradients in front of the first trainable block gives the same update as full backprop."""
    state, step, batch, labels = _setup(tiny_config, tiny_config.stage2.trainable)
    full_model = build_classifier(tiny_config.model, num_classes=5, gradient_boundary=None)
    # A copy: the jitted step donates (deletes) the state it is given.
    full_state = jax.tree_util.tree_map(jnp.copy, state).replace(apply_fn=full_model.apply)
    a, _ = _run(state, step, batch, steps=2)
    b, _ = _run(full_state, step, batch, steps=2)
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params), strict=False):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_class_weights_scale_the_loss():
    logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0]])
    labels = jnp.array([0, 1, 1, 2])
    ones = train.weighted_cross_entropy(logits, labels, jnp.ones((3,)))
    weights = jnp.array([1.0, 3.0, 0.5])
    weighted = train.weighted_cross_entropy(logits, labels, weights)
    per_example = -jax.nn.log_softmax(logits)[jnp.arange(4), labels]
    assert float(ones) == pytest.approx(float(per_example.mean()), rel=1e-6)
    assert float(weighted) == pytest.approx(float((weights[labels] * per_example).mean()), rel=1e-6)
    assert float(weighted) != pytest.approx(float(ones))


def test_plateau_bookkeeping(tiny_config):
    config = tiny_config
    config.early_stopping.metric = "val_loss"
    config.early_stopping.patience = 3
    config.reduce_lr.patience = 2
    config.reduce_lr.factor = 0.5
    config.reduce_lr.min_lr = 1e-4
    progress = schedule.StageProgress(epochs_done=0, learning_rate=1e-3)
    improved = [schedule.update_progress(progress, v, config, max_epochs=10) for v in (1.0, 0.9, 0.95, 0.97)]
    assert improved == [True, True, False, False]
    assert progress.learning_rate == pytest.approx(5e-4) and not progress.stopped_early
    schedule.update_progress(progress, 0.99, config, max_epochs=10)
    assert progress.stopped_early and progress.best == 0.9 and progress.best_epoch == 2


def test_device_augmentation_in_the_step_follows_the_step_count(tiny_config):
    """With augment.where="device" the step augments, from a key of (seed, stage) and the state's step
    count: the same step count gives the same update (deterministic, resumable), another one another
    (without dropout, nothing else in the step depends on the count)."""
    tiny_config.model.dropout_rate = 0.0
    tiny_config.augment.where = "device"
    state, step, batch, _ = _setup(tiny_config, tiny_config.stage1.trainable)
    losses = []
    for at in (0, 0, 7):
        copy = jax.tree_util.tree_map(jnp.copy, state)  # the step donates its state
        _, metrics = step(
            copy.replace(step=jnp.asarray(at, state.step.dtype)), batch, jax.random.PRNGKey(1), jnp.ones((5,))
        )
        losses.append(float(metrics["loss"]))
    assert losses[0] == losses[1] and losses[0] != losses[2]
