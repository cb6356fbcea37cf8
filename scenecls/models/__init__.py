"""Model zoo: ResNet-50 backbones, classification heads and their composition."""

from scenecls.models.classifier import Classifier
from scenecls.models.factory import build_classifier
from scenecls.models.heads import GapHead, InceptionHead
from scenecls.models.resnet import VARIANTS, ResNet50, block_names

__all__ = [
    "VARIANTS",
    "Classifier",
    "GapHead",
    "InceptionHead",
    "ResNet50",
    "block_names",
    "build_classifier",
]
