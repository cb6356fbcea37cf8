"""Models: ResNet-50 backbones (two variants), classification heads, their composition and preprocessing.

Pretrained weights (Keras HDF5, torchvision/timm state dicts, converted checkpoints) load through
``scenecls.models.weights``.
"""

from scenecls.models.classifier import HEADS, Classifier, build_classifier
from scenecls.models.heads import GapHead, InceptionHead
from scenecls.models.precision import DTYPES, compute_dtype, resolve_dtype
from scenecls.models.resnet import ResNet50, block_names
from scenecls.models.variants import VARIANTS, lookup_variant

__all__ = [
    "DTYPES",
    "HEADS",
    "VARIANTS",
    "Classifier",
    "GapHead",
    "InceptionHead",
    "ResNet50",
    "block_names",
    "build_classifier",
    "compute_dtype",
    "lookup_variant",
    "resolve_dtype",
]
