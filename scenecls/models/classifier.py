"""Backbone + head classifier with separate entry points for features and head, and its factory."""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from scenecls.models.heads import GapHead, InceptionHead
from scenecls.models.precision import compute_dtype
from scenecls.models.resnet import OUTPUT, ResNet50
from scenecls.models.variants import lookup_variant

HEADS = ("inception", "gap")
IMAGES = "images"  # Classifier.inputs of a model applied to images


class Classifier(nn.Module):
    """Preprocessed NHWC images -> class logits.

    ``features``, ``activations`` and ``classify`` are separate entry points (use with
    ``apply(..., method=...)``) so patch inference can run the backbone once and the head on many windows
    of its feature map, and training can start from activations cached at a point of the backbone.
    """

    backbone: ResNet50
    head: InceptionHead | GapHead
    # "images", or the backbone point (a block name, or resnet.OUTPUT) whose activations the inputs are
    # (a cache at a stage's gradient boundary): the layers in front of it are skipped.
    inputs: str = IMAGES

    def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """Logits; ``train`` enables dropout and trains the backbone's ``trainable_batchnorm`` layers."""
        if self.inputs == OUTPUT:
            features = images
        else:
            start = None if self.inputs == IMAGES else self.inputs
            features = self.backbone(images, train=train, start=start)
        return self.head(features, train=train)

    def features(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """The backbone's final feature map (N, H/32, W/32, C)."""
        return self.backbone(images, train=train)

    def activations(self, images: jnp.ndarray, point: str) -> jnp.ndarray:
        """The activations entering backbone ``point`` (a block name, or OUTPUT: the final map), inference
        mode."""
        return self.backbone(images, stop=point)

    def classify(self, features: jnp.ndarray, train: bool = False, window: int | None = None) -> jnp.ndarray:
        """Head logits for a batch of feature maps, or for each ``window``-cell square of them."""
        return self.head(features, train=train, window=window)


def build_classifier(
    model_config: ml_collections.ConfigDict,
    num_classes: int,
    gradient_boundary: str | None = None,
    trainable_batchnorm: Sequence[str] = (),
) -> Classifier:
    """Classifier for ``config.model`` (checked by ``scenecls.config.validate``) with ``num_classes`` outputs.

    ``gradient_boundary`` is where backprop stops in the backbone and ``trainable_batchnorm`` the BatchNorm
    layers that train (see ResNet50); the defaults suit evaluation and inference.
    """
    dtype = compute_dtype(model_config.dtype)
    backbone = ResNet50(
        variant=model_config.variant,
        stage_sizes=tuple(model_config.stage_sizes),
        width=model_config.width,
        dtype=dtype,
        gradient_boundary=gradient_boundary,
        trainable_batchnorm=tuple(trainable_batchnorm),
    )
    kernel_init = lookup_variant(model_config.variant).head_kernel_init
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
