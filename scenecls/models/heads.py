"""Classification heads applied to the backbone's feature map."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# Kernel initialisers of a head's convolutions and dense layer (biases start at zero); each backbone
# variant names its own (scenecls.models.variants).
KERNEL_INITS = {
    "glorot_uniform": nn.initializers.glorot_uniform(),
    "lecun_normal": nn.initializers.lecun_normal(),
}


class InceptionHead(nn.Module):
    """Parallel 'same' convs (1x1, 3x3, 5x5 by default) -> concat -> GAP -> dropout -> dense.

    The paper's head: 128 filters per branch with ReLU; logits are returned
    (softmax belongs to the loss).
    """

    num_classes: int
    filters: int = 128
    kernel_sizes: Sequence[int] = (1, 3, 5)
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    kernel_init: str = "glorot_uniform"  # a KERNEL_INITS key

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = False, window: int | None = None) -> jnp.ndarray:
        branches = [
            nn.relu(
                nn.Conv(
                    self.filters,
                    (k, k),
                    padding="SAME",
                    dtype=self.dtype,
                    kernel_init=KERNEL_INITS[self.kernel_init],
                    name=f"branch_{k}x{k}",
                )(features)
            )
            for k in self.kernel_sizes
        ]
        x = jnp.concatenate(branches, axis=-1)
        return _pool_and_classify(self, x, train, window)


class GapHead(nn.Module):
    """Baseline head (paper's Version 2): GAP -> dropout -> dense logits."""

    num_classes: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    kernel_init: str = "glorot_uniform"  # a KERNEL_INITS key

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = False, window: int | None = None) -> jnp.ndarray:
        return _pool_and_classify(self, features, train, window)


def _pool_and_classify(
    head: InceptionHead | GapHead, x: jnp.ndarray, train: bool, window: int | None
) -> jnp.ndarray:
    """Average pool, dropout and the dense logits layer, in float32.

    ``window=None`` pools the whole map (logits (N, classes)); ``window=w`` pools every w x w window of it
    (logits (N, h - w + 1, w_ - w + 1, classes)), i.e. the head's output for each window at once.
    """
    x = x.astype(jnp.float32)
    if window is None:
        x = jnp.mean(x, axis=(1, 2))
    else:
        x = nn.avg_pool(x, (window, window), strides=(1, 1), padding="VALID")
    x = nn.Dropout(head.dropout_rate, deterministic=not train)(x)
    return nn.Dense(
        head.num_classes, dtype=jnp.float32, kernel_init=KERNEL_INITS[head.kernel_init], name="logits"
    )(x)
