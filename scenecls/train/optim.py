"""What a stage trains, and the optimizer that trains it: one home for the stage's freeze.

1. **Rules -> labels.** A stage's ``trainable`` rules are regexes over parameter paths such as
   ``backbone/conv5_block3_2_conv/kernel`` or ``head/logits/bias``. A parameter trains when a rule matches
   its path, unless it belongs to a BatchNorm layer and the stage keeps BatchNorm frozen. A rule that
   matches nothing is an error, so a typo fails loudly instead of silently training the wrong layers.
2. **The optimizer.** ``make_optimizer`` gives trainable leaves Adam's update and frozen ones none
   (``optax.partition`` with ``set_to_zero``, which also keeps no Adam state for them), then scales by a
   learning rate held in the optimizer state (``optax.inject_hyperparams``): a plateau writes a new rate
   with ``set_learning_rate``, with no new state and no recompilation.
3. **The gradient boundary.** Masking the update alone would still pay for the frozen layers' backward
   pass. ``gradient_boundary`` names the first backbone block with a trainable parameter; the model puts
   ``jax.lax.stop_gradient`` in front of it (``ResNet50.gradient_boundary``), so nothing before it is
   differentiated ("output" in stage one: the backbone costs one forward pass). Updates are the same as
   with full backprop (tests/train/test_step.py checks it).
4. **BatchNorm mode.** ``trainable_batchnorm`` names the BatchNorm layers with a trainable parameter: only
   they normalise with batch statistics and update their running averages in a training step
   (``ResNet50.trainable_batchnorm``); every other one runs in inference mode, as Keras runs a frozen
   layer's.
"""

import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
import optax
from absl import logging

TRAINABLE = "trainable"
FROZEN = "frozen"


def path_name(path: Sequence[str]) -> str:
    """``("backbone", "conv1_conv", "kernel")`` -> ``"backbone/conv1_conv/kernel"``."""
    return "/".join(path)


def param_labels(
    params: Mapping[str, Any],
    batch_stats: Mapping[str, Any],
    trainable: Sequence[str],
    train_batchnorm: bool = False,
) -> Any:
    """A pytree like ``params`` with TRAINABLE or FROZEN at every leaf.

    BatchNorm layers are recognised as the modules that own ``batch_stats``.
    Raises ValueError when a rule matches no parameter.
    """
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    batchnorm_modules = {
        path[:-1] for path in flax.traverse_util.flatten_dict(flax.core.unfreeze(batch_stats))
    }
    patterns = [re.compile(rule) for rule in trainable]
    used = [False] * len(patterns)
    labels = {}
    for path in flat:
        name = path_name(path)
        hits = [i for i, pattern in enumerate(patterns) if pattern.search(name)]
        for i in hits:
            used[i] = True
        is_frozen_bn = path[:-1] in batchnorm_modules and not train_batchnorm
        labels[path] = TRAINABLE if hits and not is_frozen_bn else FROZEN
    unused = [rule for rule, hit in zip(trainable, used, strict=False) if not hit]
    if unused:
        raise ValueError(
            f"trainable rule(s) {unused} match no parameter; parameter paths look like "
            f"{path_name(next(iter(flat)))!r}"
        )
    return flax.traverse_util.unflatten_dict(labels)


def trainable_names(labels: Any) -> list[str]:
    """Paths of the trainable parameters, in tree order."""
    flat = flax.traverse_util.flatten_dict(labels)
    return [path_name(path) for path, label in flat.items() if label == TRAINABLE]


def trainable_batchnorm(labels: Any, batch_stats: Mapping[str, Any]) -> tuple[str, ...]:
    """Backbone BatchNorm layers with a trainable parameter, sorted.

    These normalise with batch statistics and update their running averages in a training step; every other
    BatchNorm runs in inference mode, as Keras runs the BatchNorm of a frozen layer.
    """
    flat = flax.traverse_util.flatten_dict(labels)
    batchnorm_modules = {
        path[:-1] for path in flax.traverse_util.flatten_dict(flax.core.unfreeze(batch_stats))
    }
    return tuple(
        sorted(
            {
                path[1]
                for path, label in flat.items()
                if path[0] == "backbone" and path[:-1] in batchnorm_modules and label == TRAINABLE
            }
        )
    )


def gradient_boundary(labels: Any, block_names: Sequence[str]) -> str | None:
    """Where backprop may stop in the backbone: the first block with a trainable parameter.

    Returns ``"output"`` when no backbone parameter trains and ``None`` when the
    stem (conv1) trains, i.e. full backprop is needed.
    """
    backbone = [
        path[1]
        for path, label in flax.traverse_util.flatten_dict(labels).items()
        if path[0] == "backbone" and label == TRAINABLE
    ]
    if not backbone:
        return "output"
    if any(not layer.startswith(tuple(block_names)) for layer in backbone):
        return None
    return next(block for block in block_names if any(layer.startswith(block + "_") for layer in backbone))


def log_trainable(stage: str, labels: Any, params: Any) -> str:
    """Logs every layer a stage trains; returns a one-line summary (parameter and layer counts)."""
    flat_labels = flax.traverse_util.flatten_dict(labels)
    flat_params = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    names = trainable_names(labels)
    count = sum(flat_params[p].size for p, label in flat_labels.items() if label == TRAINABLE)
    total = sum(leaf.size for leaf in flat_params.values())
    layers = sorted({name.rsplit("/", 1)[0] for name in names})
    summary = f"training {count:,} of {total:,} parameters ({len(names)} tensors in {len(layers)} layers)"
    logging.info("%s: %s: %s", stage, summary, ", ".join(layers))
    return summary


def stage_labels(variables: Mapping[str, Any], stage_config: ml_collections.ConfigDict) -> Any:
    """TRAINABLE/FROZEN per parameter for a stage (its ``trainable`` rules and ``train_batchnorm``)."""
    return param_labels(
        variables["params"],
        variables["batch_stats"],
        stage_config.trainable,
        stage_config.train_batchnorm,
    )


def make_optimizer(labels: Any, learning_rate: float) -> optax.GradientTransformation:
    """Adam (epsilon 1e-7, as Keras) for the leaves labelled TRAINABLE, no update for FROZEN ones, then the
    learning rate, held in the state so that ``set_learning_rate`` can change it."""
    return optax.chain(
        optax.partition({TRAINABLE: optax.scale_by_adam(eps=1e-7), FROZEN: optax.set_to_zero()}, labels),
        optax.inject_hyperparams(optax.scale_by_learning_rate)(learning_rate=learning_rate),
    )


def set_learning_rate(opt_state: Any, value: float) -> Any:
    """A ``make_optimizer`` state that applies ``value`` from the next step on."""
    schedule = opt_state[1]
    rate = schedule.hyperparams["learning_rate"]
    new_rate = np.asarray(value, rate.dtype)
    if isinstance(rate, jax.Array):  # the state's placement (replicated over the mesh), with no collective
        new_rate = jax.make_array_from_callback(new_rate.shape, rate.sharding, lambda index: new_rate[index])
    return (opt_state[0], schedule._replace(hyperparams={**schedule.hyperparams, "learning_rate": new_rate}))
