"""A training stage, set up in one place (``setup_stage``) for the trainer, the benchmarks and the tests.

A stage is its config section (``stage1``/``stage2``) applied to the classifier's current variables: which
parameters train (``optim``), where gradients stop, which BatchNorm layers train, the model those imply,
the replicated TrainState and the jitted train step.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from jax.sharding import Mesh

from scenecls import parallel
from scenecls.data import augment
from scenecls.models import Classifier, block_names, build_classifier, lookup_variant, weights
from scenecls.train import optim
from scenecls.train.step import TrainState, checkpoint_tree, create_train_state, train_step

# Preprocessing of a model whose inputs are cached activations.
ACTIVATION_PREPROCESSING = "none"


class Stage(NamedTuple):
    """A stage ready to train: ``step(state, batch, dropout_key, class_weights) -> (state, metrics)``."""

    name: str
    labels: Any  # optim.TRAINABLE / optim.FROZEN per parameter
    trains: str  # "training 574,021 of 1,082,821 parameters (8 tensors in 4 layers)"
    boundary: str | None  # where backprop stops in the backbone (optim.gradient_boundary)
    model: Classifier  # the model the step applies: to images, or to cached features
    preprocessing: str
    state: TrainState
    step: Callable
    mesh: Mesh

    def on_activations(self) -> "Stage":
        """The same stage applied to activations cached at its gradient boundary instead of images: the
        layers in front of the boundary are skipped (see feature_cache)."""
        model = self.model.clone(inputs=self.boundary)
        return self._replace(
            model=model,
            preprocessing=ACTIVATION_PREPROCESSING,
            state=self.state.replace(apply_fn=model.apply),
            step=_jit_step(ACTIVATION_PREPROCESSING, self.mesh),
        )


def init_variables(
    model_config: ml_collections.ConfigDict, num_classes: int, image_size: int, seed: int
) -> dict[str, Any]:
    """Freshly initialised classifier variables (host arrays)."""
    model = build_classifier(model_config, num_classes)
    variables = jax.jit(functools.partial(_init, model, image_size))(jax.random.PRNGKey(seed))
    return jax.device_get(dict(variables))


def _init(model: Classifier, image_size: int, key: jax.Array) -> dict[str, Any]:
    return model.init(key, jnp.zeros((1, image_size, image_size, 3), jnp.float32))


def initial_variables(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, Any]:
    """Initialised classifier variables, with the pretrained backbone merged in when configured."""
    variables = init_variables(config.model, num_classes, config.image_size, config.seed)
    if config.pretrained in ("", "none"):
        logging.warning(
            "No pretrained weights (config.pretrained='none'): the backbone starts from random init."
        )
        return variables
    weights_variant = weights.weights_variant(config.pretrained)
    if weights_variant != config.model.variant:
        raise ValueError(
            f"{config.pretrained}: weights are for the {weights_variant!r} ResNet variant but "
            f"config.model.variant={config.model.variant!r}; set --config.model.variant={weights_variant}"
        )
    return weights.merge_backbone(variables, weights.load_backbone(config.pretrained))


def setup_stage(
    config: ml_collections.ConfigDict,
    variables: dict[str, Any],
    stage: str,
    num_classes: int,
    mesh: Mesh | None = None,
) -> Stage:
    """The stage ``stage`` of ``config`` starting from ``variables``, its state replicated over ``mesh``.

    Logs what it trains (every layer, to the log) and where gradients stop.
    """
    mesh = mesh or parallel.create_mesh()
    stage_config = config[stage]
    labels = optim.stage_labels(variables, stage_config)
    trains = optim.log_trainable(stage, labels, variables["params"])
    boundary = optim.gradient_boundary(labels, block_names(config.model.stage_sizes))
    logging.info("%s: gradients stop at %s", stage, boundary or "nothing (full backprop)")
    model = build_classifier(
        config.model,
        num_classes,
        gradient_boundary=boundary,
        trainable_batchnorm=optim.trainable_batchnorm(labels, variables["batch_stats"]),
    )
    state = create_train_state(model, variables, labels, stage_config.learning_rate)
    preprocessing = lookup_variant(config.model.variant).preprocessing
    on_device = augment.on_device(config.augment)
    if on_device:
        logging.info("%s: images are augmented on the device, in the train step", stage)
    return Stage(
        name=stage,
        labels=labels,
        trains=trains,
        boundary=boundary,
        model=model,
        preprocessing=preprocessing,
        state=parallel.replicate(mesh, state),
        step=_jit_step(
            preprocessing, mesh, ml_collections.FrozenConfigDict(config.augment) if on_device else None
        ),
        mesh=mesh,
    )


def _jit_step(
    preprocessing: str, mesh: Mesh, augment_config: ml_collections.ConfigDict | None = None
) -> Callable:
    """The jitted train step (augmenting with ``augment_config`` if given), its new state replicated (the
    old one is donated: its buffers are reused)."""
    return jax.jit(
        functools.partial(train_step, preprocessing=preprocessing, augment=augment_config),
        donate_argnums=0,
        out_shardings=parallel.replicated(mesh),
    )


def restore_target(
    config: ml_collections.ConfigDict, num_classes: int, stage: str, mesh: Mesh, format_version: int
) -> dict[str, Any]:
    """Shapes, dtypes and shardings of a stage's checkpointed state (no computation): what a ``latest``
    checkpoint of ``format_version`` restores into."""

    model = build_classifier(config.model, num_classes)

    def create() -> TrainState:
        variables = _init(model, config.image_size, jax.random.PRNGKey(0))
        return create_train_state(model, variables, optim.stage_labels(variables, config[stage]), 1.0)

    tree = checkpoint_tree(jax.eval_shape(create))
    if format_version < 2:  # before the learning rate lived in the optimizer state
        tree["opt_state"] = tree["opt_state"][0]
    return parallel.with_sharding(tree, parallel.replicated(mesh))


def upgrade_state(restored: dict[str, Any], format_version: int, learning_rate: float, stage: Stage) -> Any:
    """A restored checkpoint tree in the current layout (``format_version`` 1 had no learning rate in it)."""
    if format_version >= 2:
        return restored
    opt_state = optim.set_learning_rate((restored["opt_state"], stage.state.opt_state[1]), learning_rate)
    return {**restored, "opt_state": opt_state}
