"""Builds the classifier described by a config."""

from collections.abc import Sequence

import jax.numpy as jnp
import ml_collections

from scenecls.models.classifier import Classifier
from scenecls.models.heads import KERNEL_INIT_OF_VARIANT, GapHead, InceptionHead
from scenecls.models.resnet import ResNet50

HEADS = ("inception", "gap")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_classifier(
    model_config: ml_collections.ConfigDict,
    num_classes: int,
    gradient_boundary: str | None = None,
    trainable_batchnorm: Sequence[str] = (),
) -> Classifier:
    """Classifier for ``config.model`` with ``num_classes`` outputs.

    ``gradient_boundary`` is where backprop stops in the backbone and ``trainable_batchnorm`` the BatchNorm
    layers that train (see ResNet50); the defaults suit evaluation and inference.
    """
    if model_config.dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {model_config.dtype!r}")
    dtype = DTYPES[model_config.dtype]
    backbone = ResNet50(
        variant=model_config.variant,
        stage_sizes=tuple(model_config.stage_sizes),
        width=model_config.width,
        dtype=dtype,
        gradient_boundary=gradient_boundary,
        trainable_batchnorm=tuple(trainable_batchnorm),
    )
    kernel_init = KERNEL_INIT_OF_VARIANT[model_config.variant]
    if model_config.head == "inception":
        head = InceptionHead(
            num_classes=num_classes,
            filters=model_config.head_filters,
            kernel_sizes=tuple(model_config.head_kernel_sizes),
            dropout_rate=model_config.dropout_rate,
            dtype=dtype,
            kernel_init=kernel_init,
        )
    elif model_config.head == "gap":
        head = GapHead(
            num_classes=num_classes,
            dropout_rate=model_config.dropout_rate,
            dtype=dtype,
            kernel_init=kernel_init,
        )
    else:
        raise ValueError(f"model.head must be one of {HEADS}, got {model_config.head!r}")
    return Classifier(backbone=backbone, head=head)
