"""Heads: pooling every window at once equals pooling each window of the head's own pre-pool map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scenecls.models.heads import GapHead, InceptionHead


def _pre_pool_map(head, variables, features):
    """The map the head averages: the features (GAP head) or its concatenated ReLU branches."""
    if isinstance(head, GapHead):
        return features
    _, state = head.apply(variables, features, capture_intermediates=True, mutable=["intermediates"])
    branches = [state["intermediates"][f"branch_{k}x{k}"]["__call__"][0] for k in head.kernel_sizes]
    return jnp.concatenate([jax.nn.relu(b) for b in branches], axis=-1)


@pytest.mark.parametrize("head", [InceptionHead(num_classes=3, filters=4), GapHead(num_classes=3)])
def test_window_logits_equal_pooling_each_window(head):
    features = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 5, 8))
    variables = head.init(jax.random.PRNGKey(1), features)
    window = 3
    logits = head.apply(variables, features, window=window)
    assert logits.shape == (2, 4, 3, 3)
    pre_pool = _pre_pool_map(head, variables, features)
    dense = variables["params"]["logits"]
    for r in range(4):
        for c in range(3):
            pooled = pre_pool[:, r : r + window, c : c + window].mean(axis=(1, 2))
            expected = pooled @ dense["kernel"] + dense["bias"]
            np.testing.assert_allclose(logits[:, r, c], expected, rtol=1e-5, atol=1e-5)
    # A window as large as the map is the ordinary head.
    small = features[:, :3, :3]
    np.testing.assert_allclose(
        head.apply(variables, small, window=window)[:, 0, 0],
        head.apply(variables, small),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("head_name", ["inception", "gap"])
def test_keras_variant_head_starts_like_the_keras_layers(head_name):
    """Kernels spread like tf_keras' Conv2D/Dense defaults (glorot_uniform) of equal shapes; zero biases."""
    import os

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tf_keras as keras

    from scenecls.config import default_config
    from scenecls.models import build_classifier

    config = default_config()
    config.model.head = head_name
    head = build_classifier(config.model, num_classes=5).head
    features = jnp.zeros((1, 7, 7, 2048))
    params = head.init(jax.random.PRNGKey(0), features)["params"]
    keras_layers = {"logits": (keras.layers.Dense(5), (None, 384 if head_name == "inception" else 2048))}
    if head_name == "inception":
        for k in (1, 3, 5):
            keras_layers[f"branch_{k}x{k}"] = (keras.layers.Conv2D(128, k, padding="same"), features.shape)
    for layer, input_shape in keras_layers.values():
        layer.build(input_shape)
    keras_layers = {name: layer for name, (layer, _) in keras_layers.items()}
    assert set(params) == set(keras_layers)
    for name, layer in keras_layers.items():
        keras_kernel, keras_bias = (w.numpy() for w in layer.weights)
        kernel, bias = np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"])
        assert kernel.shape == keras_kernel.shape, name
        np.testing.assert_allclose(kernel.std(), keras_kernel.std(), rtol=0.05, err_msg=name)
        np.testing.assert_allclose(np.abs(kernel).max(), np.abs(keras_kernel).max(), rtol=0.03, err_msg=name)
        assert not bias.any() and not keras_bias.any(), name
