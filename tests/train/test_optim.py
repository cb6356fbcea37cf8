"""Freeze rules: labels, BatchNorm handling, gradient boundary."""

import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

from scenecls.models import block_names, build_classifier
from scenecls.train import optim


@pytest.fixture
def variables(tiny_config):
    model = build_classifier(tiny_config.model, num_classes=5)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))


def _trainable_layers(labels):
    return sorted({name.rsplit("/", 1)[0] for name in optim.trainable_names(labels)})


def test_head_only_rule(variables):
    labels = optim.param_labels(variables["params"], variables["batch_stats"], ("^head/",))
    assert _trainable_layers(labels) == [
        "head/branch_1x1",
        "head/branch_3x3",
        "head/branch_5x5",
        "head/logits",
    ]
    assert optim.gradient_boundary(labels, block_names((1, 1, 1, 1))) == "output"


def test_default_stage2_rule_on_full_resnet(tiny_config):
    from scenecls.config import default_config

    config = default_config()
    model = build_classifier(config.model, num_classes=5)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
    labels = optim.param_labels(variables["params"], variables["batch_stats"], config.stage2.trainable)
    layers = _trainable_layers(labels)
    backbone = [layer for layer in layers if layer.startswith("backbone/")]
    # Keras' last 30 layers minus BatchNorm: the three convs of conv5_block2 and conv5_block3.
    assert backbone == [f"backbone/conv5_block{b}_{c}_conv" for b in (2, 3) for c in (1, 2, 3)]
    assert optim.gradient_boundary(labels, block_names(config.model.stage_sizes)) == "conv5_block2"


def test_batchnorm_frozen_unless_asked(variables):
    rules = (".*",)
    frozen_bn = optim.param_labels(variables["params"], variables["batch_stats"], rules)
    trained_bn = optim.param_labels(
        variables["params"], variables["batch_stats"], rules, train_batchnorm=True
    )
    flat = traverse_util.flatten_dict(frozen_bn)
    assert flat[("backbone", "conv1_bn", "scale")] == optim.FROZEN
    assert flat[("backbone", "conv1_conv", "kernel")] == optim.TRAINABLE
    assert set(traverse_util.flatten_dict(trained_bn).values()) == {optim.TRAINABLE}
    assert optim.gradient_boundary(frozen_bn, block_names((1, 1, 1, 1))) is None


def test_rule_matching_nothing_is_an_error(variables):
    with pytest.raises(ValueError, match="conv9_block1"):
        optim.param_labels(
            variables["params"], variables["batch_stats"], ("^head/", "^backbone/conv9_block1")
        )


def _keras_model(head: str, dropout_rate: float):
    """tf_keras ResNet50(include_top=False) + ``head``, one flat model, head layers named like ours."""
    import os

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tf_keras as keras

    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    x = base.output
    if head == "inception":
        branches = [
            keras.layers.Conv2D(8, k, padding="same", activation="relu", name=f"branch_{k}x{k}")(x)
            for k in (1, 3, 5)
        ]
        x = keras.layers.Concatenate()(branches)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if dropout_rate:
        x = keras.layers.Dropout(dropout_rate)(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="logits")(x)
    return keras.Model(base.input, outputs), {layer.name for layer in base.layers}


@pytest.mark.parametrize("config_name", ["default", "baseline"])
def test_stage2_rules_select_keras_last_30_layers(config_name):
    """The trainable layers of stage 2 are the weighted non-BatchNorm layers of Keras' model.layers[-30:]."""
    import tf_keras as keras
    from conftest import load_config

    config = load_config(config_name)
    keras_model, backbone_layers = _keras_model(config.model.head, config.model.dropout_rate)
    expected = {
        f"{'backbone' if layer.name in backbone_layers else 'head'}/{layer.name}"
        for layer in keras_model.layers[-30:]
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    }
    model = build_classifier(config.model, num_classes=5)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
    labels = optim.param_labels(
        variables["params"], variables["batch_stats"], config.stage2.trainable, config.stage2.train_batchnorm
    )
    assert set(_trainable_layers(labels)) == expected


@pytest.mark.parametrize(("version", "config_name"), [("v2", "baseline"), ("v4", "default")])
def test_paper_versions_share_the_configs_stage2_rules(version, config_name):
    import importlib.util

    from conftest import REPO, load_config

    spec = importlib.util.spec_from_file_location("paper_versions", f"{REPO}/experiments/paper_versions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    paper = module.get_config(version)
    config = load_config(config_name)
    assert (paper.model.head, tuple(paper.stage2.trainable)) == (
        config.model.head,
        tuple(config.stage2.trainable),
    )
