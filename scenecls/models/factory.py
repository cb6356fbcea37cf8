"""Builds the classifier described by a config."""

import jax.numpy as jnp
import ml_collections

from scenecls.models.classifier import Classifier
from scenecls.models.heads import GapHead, InceptionHead
from scenecls.models.resnet import ResNet50

HEADS = ("inception", "gap")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_classifier(
    model_config: ml_collections.ConfigDict, num_classes: int, gradient_boundary: str | None = None
) -> Classifier:
    """Classifier for ``config.model`` with ``num_classes`` outputs.

    ``gradient_boundary`` is where backprop stops in the backbone (see ResNet50).
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
    )
    if model_config.head == "inception":
        head = InceptionHead(
            num_classes=num_classes,
            filters=model_config.head_filters,
            kernel_sizes=tuple(model_config.head_kernel_sizes),
            dropout_rate=model_config.dropout_rate,
            dtype=dtype,
        )
    elif model_config.head == "gap":
        head = GapHead(num_classes=num_classes, dropout_rate=model_config.dropout_rate, dtype=dtype)
    else:
        raise ValueError(f"model.head must be one of {HEADS}, got {model_config.head!r}")
    return Classifier(backbone=backbone, head=head)
