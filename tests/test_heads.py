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
