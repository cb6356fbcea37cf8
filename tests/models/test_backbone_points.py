"""The backbone split at any point: the layers in front of it, then the rest, is the whole backbone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scenecls.models import Classifier, block_names, build_classifier
from scenecls.models.resnet import OUTPUT


@pytest.fixture(scope="module")
def model_and_variables():
    from conftest import load_config

    config = load_config("tiny")
    config.model.stage_sizes = (1, 2, 1, 1)
    model = build_classifier(config.model, num_classes=5)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
    images = jax.random.uniform(jax.random.PRNGKey(1), (2, 64, 64, 3), minval=-100, maxval=100)
    return model, variables, images


@pytest.mark.parametrize("point", [*block_names((1, 2, 1, 1)), OUTPUT])
def test_split_backbone_equals_the_whole(model_and_variables, point):
    model, variables, images = model_and_variables
    whole = model.apply(variables, images, method=Classifier.features)
    front = model.apply(variables, images, point, method=Classifier.activations)
    rest = model.backbone.apply({k: v["backbone"] for k, v in variables.items()}, front, start=point)
    np.testing.assert_allclose(rest, whole, rtol=1e-5, atol=1e-5)
    on_activations = model.clone(inputs=point)
    np.testing.assert_allclose(
        on_activations.apply(variables, front), model.apply(variables, images), rtol=1e-5, atol=1e-5
    )


def test_activations_have_the_shape_of_the_blocks_input(model_and_variables):
    model, variables, images = model_and_variables
    shape = model.apply(variables, images, "conv3_block2", method=Classifier.activations).shape
    assert shape == (2, 8, 8, 4 * 16)  # after conv3_block1: stride 8, 4 x (width 8 x 2) channels


def test_unknown_point_is_an_error(model_and_variables):
    model, variables, images = model_and_variables
    with pytest.raises(ValueError, match="unknown backbone point 'conv9_block1'"):
        model.apply(variables, images, "conv9_block1", method=Classifier.activations)
