"""ResNet-50 backbones in the layouts of Keras (v1) and torchvision/timm (v1.5) (see variants.py).

Both variants share Keras' layer names (``conv2_block1_1_conv`` ...), so weight
conversion tables and freeze rules read the same whatever the weights' origin.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from scenecls.models.variants import lookup_variant

STAGE_NAMES = ("conv2", "conv3", "conv4", "conv5")
OUTPUT = "output"  # the backbone's final feature map, as a point (after the last block)
FEATURE_STRIDE = 32


class Conv1x1(nn.Module):
    """A 1x1 convolution written as a strided slice plus a channel matmul.

    Equivalent to ``nn.Conv(features, (1, 1), strides)`` with 'VALID' padding and
    the same ``kernel`` shape (1, 1, in, out), but faster on XLA:CPU.
    """

    features: int
    strides: int = 1
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features), jnp.float32
        )
        if self.strides > 1:  # lax.slice, as indexing becomes a gather with a symbolic batch (export)
            x = jax.lax.slice(x, (0, 0, 0, 0), x.shape, (1, self.strides, self.strides, 1))
        y = jnp.dot(x.astype(self.dtype), kernel[0, 0].astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


def bottleneck(
    x: jnp.ndarray,
    name: str,
    filters: int,
    strides: int,
    project_shortcut: bool,
    v1_stride: bool,
    use_bias: bool,
    norm: Any,
    dtype: Any,
) -> jnp.ndarray:
    """One bottleneck block (1x1 -> 3x3 -> 1x1 with x4 expansion, plus shortcut).

    Called inside a compact module so its layers sit flat in the caller's scope
    under Keras' names. ``v1_stride`` (Keras) strides the first 1x1 conv, else
    (v1.5) the 3x3 conv.
    """
    conv1x1 = partial(Conv1x1, use_bias=use_bias, dtype=dtype)
    stride_1x1, stride_3x3 = (strides, 1) if v1_stride else (1, strides)

    shortcut = x
    if project_shortcut:
        shortcut = conv1x1(4 * filters, strides, name=f"{name}_0_conv")(x)
        shortcut = norm(name=f"{name}_0_bn")(shortcut)

    y = conv1x1(filters, stride_1x1, name=f"{name}_1_conv")(x)
    y = nn.relu(norm(name=f"{name}_1_bn")(y))
    y = nn.Conv(
        filters,
        (3, 3),
        strides=stride_3x3,
        padding=((1, 1), (1, 1)),
        use_bias=use_bias,
        dtype=dtype,
        name=f"{name}_2_conv",
    )(y)
    y = nn.relu(norm(name=f"{name}_2_bn")(y))
    y = conv1x1(4 * filters, 1, name=f"{name}_3_conv")(y)
    y = norm(name=f"{name}_3_bn")(y)
    return nn.relu(shortcut + y)


class ResNet50(nn.Module):
    """ResNet backbone returning the last feature map (N, H/32, W/32, 4 * 8 * width).

    ``train=True`` is a training step: BatchNorm layers named in ``trainable_batchnorm`` use and update
    batch statistics, all others stay in inference mode.

    Submodules are flat and named like Keras layers (``conv1_conv``,
    ``conv5_block3_2_bn``) so paths are stable and human-readable. The block
    counts and width are fields so tests can build narrow, shallow twins.
    """

    variant: str = "keras"
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    width: int = 64
    dtype: Any = jnp.float32
    # Name of the first block that trains ("conv5_block2"), "output" when no
    # backbone layer trains, or None for full backprop. Gradients stop in front
    # of it, so frozen layers cost no backward computation at all.
    gradient_boundary: str | None = None
    # BatchNorm layers (e.g. "conv5_block3_1_bn") that train: with train=True they
    # normalise with batch statistics and update their running averages. Every
    # other BatchNorm runs in inference mode, as a frozen Keras layer does.
    trainable_batchnorm: Sequence[str] = ()

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, train: bool = False, start: str | None = None, stop: str = OUTPUT
    ) -> jnp.ndarray:
        """The backbone, or the part of it between two points.

        ``start``: ``x`` is the input of this block (e.g. activations cached there) and the layers in
        front of it are skipped; ``OUTPUT`` returns ``x`` as the final map. ``stop``: return the input of
        this block instead of the final map. Points are block names (``block_names``) or ``OUTPUT``.
        """
        family = lookup_variant(self.variant)
        blocks = block_names(self.stage_sizes)
        for point in (start, stop):
            if point is not None and point != OUTPUT and point not in blocks:
                raise ValueError(f"unknown backbone point {point!r}; expected {OUTPUT!r} or a block name")
        if start is None and (x.shape[1] < FEATURE_STRIDE or x.shape[2] < FEATURE_STRIDE):
            raise ValueError(f"input must be at least {FEATURE_STRIDE}x{FEATURE_STRIDE}, got {x.shape[1:3]}")
        use_bias = family.conv_bias

        def norm(name: str) -> nn.BatchNorm:
            return nn.BatchNorm(
                use_running_average=not (train and name in self.trainable_batchnorm),
                momentum=family.batchnorm_momentum,
                epsilon=family.batchnorm_epsilon,
                dtype=self.dtype,
                name=name,
            )

        x = x.astype(self.dtype)
        if start is None:
            x = nn.Conv(
                self.width,
                (7, 7),
                strides=2,
                padding=((3, 3), (3, 3)),
                use_bias=use_bias,
                dtype=self.dtype,
                name="conv1_conv",
            )(x)
            x = nn.relu(norm(name="conv1_bn")(x))
            # Symmetric padding of 1; after ReLU, -inf and zero padding agree.
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        running = start is None
        for stage, (stage_name, num_blocks) in enumerate(zip(STAGE_NAMES, self.stage_sizes, strict=False)):
            for block in range(num_blocks):
                block_name = f"{stage_name}_block{block + 1}"
                running = running or block_name == start
                if not running:
                    continue
                if block_name == stop:
                    return x
                if block_name == self.gradient_boundary:
                    x = jax.lax.stop_gradient(x)
                x = bottleneck(
                    x,
                    name=block_name,
                    filters=self.width * 2**stage,
                    strides=2 if stage > 0 and block == 0 else 1,
                    project_shortcut=block == 0,
                    v1_stride=family.v1_stride,
                    use_bias=use_bias,
                    norm=norm,
                    dtype=self.dtype,
                )
        if self.gradient_boundary == OUTPUT:
            x = jax.lax.stop_gradient(x)
        return x


def block_names(stage_sizes: Sequence[int]) -> list[str]:
    """Names of the bottleneck blocks in forward order, e.g. ``conv2_block1``."""
    pairs = zip(STAGE_NAMES, stage_sizes, strict=False)
    return [f"{stage}_block{b + 1}" for stage, n in pairs for b in range(n)]
