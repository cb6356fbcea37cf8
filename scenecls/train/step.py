"""The training state and one jitted optimisation step."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from scenecls.data.augment import device_augment
from scenecls.models.preprocessing import preprocess
from scenecls.train import optim

_AUGMENT_STREAM = 1  # the augmentation's key: folded from the step's dropout key


class TrainState(train_state.TrainState):
    """Flax TrainState plus BatchNorm statistics."""

    batch_stats: Any


def checkpoint_tree(state: TrainState) -> dict[str, Any]:
    """The checkpointed part of a TrainState (functions and optimizer definition excluded)."""
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
    }


def weighted_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
    """Mean over the batch of ``weight[label] * softmax cross-entropy`` (Keras' class_weight)."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return jnp.mean(weights[labels] * losses)


def create_train_state(
    model: nn.Module, variables: dict[str, Any], labels: Any, learning_rate: float
) -> TrainState:
    """A fresh TrainState for ``model`` whose optimizer trains the leaves labelled trainable."""
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=optim.make_optimizer(labels, learning_rate),
        batch_stats=variables["batch_stats"],
    )


def train_step(
    state: TrainState,
    batch: dict[str, jnp.ndarray],
    dropout_key: jax.Array,
    class_weights: jnp.ndarray,
    *,
    preprocessing: str,
    augment: ml_collections.ConfigDict | None = None,
) -> tuple[TrainState, dict[str, jnp.ndarray]]:
    """One optimisation step; returns the new state and summed batch metrics.

    With ``augment`` (a ``config.augment``) the step first augments the uint8 images itself
    (``augment.device_augment``), from a key derived from ``dropout_key`` (seed and stage) and the state's
    step count (epoch and step): deterministic, and the same after a resume.

    Only the BatchNorm layers the model was built to train (``trainable_batchnorm``) change their
    statistics; the others normalise with their running averages. A step whose loss or updated parameters
    are not finite leaves parameters, optimizer and BatchNorm state unchanged and reports ``finite=False``
    (the caller decides whether to stop).
    """
    key = jax.random.fold_in(dropout_key, state.step)
    images = batch["image"]
    if augment is not None:
        images = device_augment(images, jax.random.fold_in(key, _AUGMENT_STREAM), augment)
    images = preprocess(images, preprocessing)
    labels = batch["label"]

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        logits, updates = state.apply_fn(
            variables, images, train=True, rngs={"dropout": key}, mutable=["batch_stats"]
        )
        return weighted_cross_entropy(logits, labels, class_weights), (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updated = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    finite = jnp.isfinite(loss) & jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(updated.params)])
    )
    keep_if_finite = functools.partial(jax.tree_util.tree_map, lambda new, old: jnp.where(finite, new, old))
    new_state = updated.replace(
        params=keep_if_finite(updated.params, state.params),
        opt_state=keep_if_finite(updated.opt_state, state.opt_state),
        batch_stats=keep_if_finite(updated.batch_stats, state.batch_stats),
    )
    count = labels.shape[0]
    metrics = {
        "loss": loss * count,
        "correct": jnp.sum(jnp.argmax(logits, -1) == labels),
        "count": jnp.asarray(count),
        "finite": finite,
    }
    return new_state, metrics
