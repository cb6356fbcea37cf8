"""Backbone + head classifier with separate entry points for features and head."""

import flax.linen as nn
import jax.numpy as jnp

from scenecls.models.heads import GapHead, InceptionHead
from scenecls.models.resnet import ResNet50


class Classifier(nn.Module):
    """Preprocessed NHWC images -> class logits.

    ``features`` and ``classify`` are separate entry points (use with
    ``apply(..., method=...)``) so patch inference can run the backbone once
    and the head on many windows of its feature map.
    """

    backbone: ResNet50
    head: InceptionHead | GapHead
    # "features": inputs are already the backbone's feature maps (a feature cache); the backbone is skipped.
    inputs: str = "images"

    def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """Logits; ``train`` enables dropout and trains the backbone's ``trainable_batchnorm`` layers."""
        features = images if self.inputs == "features" else self.backbone(images, train=train)
        return self.head(features, train=train)

    def features(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """The backbone's final feature map (N, H/32, W/32, C)."""
        return self.backbone(images, train=train)

    def classify(self, features: jnp.ndarray, train: bool = False, window: int | None = None) -> jnp.ndarray:
        """Head logits for a batch of feature maps, or for each ``window``-cell square of them."""
        return self.head(features, train=train, window=window)
