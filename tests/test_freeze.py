"""Freeze rules: labels, BatchNorm handling, gradient boundary."""

import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

from scenecls import freeze
from scenecls.models import block_names, build_classifier


@pytest.fixture
def variables(tiny_config):
    model = build_classifier(tiny_config.model, num_classes=5)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))


def _trainable_layers(labels):
    return sorted({name.rsplit("/", 1)[0] for name in freeze.trainable_names(labels)})


def test_head_only_rule(variables):
    labels = freeze.param_labels(variables["params"], variables["batch_stats"], ("^head/",))
    assert _trainable_layers(labels) == [
        "head/branch_1x1",
        "head/branch_3x3",
        "head/branch_5x5",
        "head/logits",
    ]
    assert freeze.gradient_boundary(labels, block_names((1, 1, 1, 1))) == "output"


def test_default_stage2_rule_on_full_resnet(tiny_config):
    from scenecls.config import default_config

    config = default_config()
    model = build_classifier(config.model, num_classes=5)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
    labels = freeze.param_labels(variables["params"], variables["batch_stats"], config.stage2.trainable)
    layers = _trainable_layers(labels)
    backbone = [layer for layer in layers if layer.startswith("backbone/")]
    # Keras' last 30 layers minus BatchNorm: the three convs of conv5_block2 and conv5_block3.
    assert backbone == [f"backbone/conv5_block{b}_{c}_conv" for b in (2, 3) for c in (1, 2, 3)]
    assert freeze.gradient_boundary(labels, block_names(config.model.stage_sizes)) == "conv5_block2"


def test_batchnorm_frozen_unless_asked(variables):
    rules = (".*",)
    frozen_bn = freeze.param_labels(variables["params"], variables["batch_stats"], rules)
    trained_bn = freeze.param_labels(
        variables["params"], variables["batch_stats"], rules, train_batchnorm=True
    )
    flat = traverse_util.flatten_dict(frozen_bn)
    assert flat[("backbone", "conv1_bn", "scale")] == freeze.FROZEN
    assert flat[("backbone", "conv1_conv", "kernel")] == freeze.TRAINABLE
    assert set(traverse_util.flatten_dict(trained_bn).values()) == {freeze.TRAINABLE}
    assert freeze.gradient_boundary(frozen_bn, block_names((1, 1, 1, 1))) is None


def test_rule_matching_nothing_is_an_error(variables):
    with pytest.raises(ValueError, match="conv9_block1"):
        freeze.param_labels(
            variables["params"], variables["batch_stats"], ("^head/", "^backbone/conv9_block1")
        )
