"""The two ResNet-50 families the backbone reproduces, and everything that differs between them.

- ``keras``: Keras' ``ResNet50`` (v1: the stride in the first 1x1 conv of a downsampling block, conv biases,
  BatchNorm epsilon 1.001e-5 and momentum 0.99), "caffe" preprocessing; its head starts from Keras'
  ``glorot_uniform`` kernels, as the reference's does.
- ``torchvision``: torchvision's and timm's ResNet-50 (v1.5: the stride in the 3x3 conv, no conv biases,
  epsilon 1e-5, momentum 0.9), "torch" preprocessing; Flax's default ``lecun_normal`` head kernels.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Variant:
    """A backbone family's numerics, preprocessing and head initialisation."""

    name: str
    v1_stride: bool  # stride 2 in the first 1x1 conv of a downsampling block (else in the 3x3 conv)
    conv_bias: bool
    batchnorm_epsilon: float
    batchnorm_momentum: float
    preprocessing: str  # a scenecls.models.preprocessing.KINDS entry
    head_kernel_init: str  # a scenecls.models.heads.KERNEL_INITS key


VARIANTS = {
    "keras": Variant("keras", True, True, 1.001e-5, 0.99, "caffe", "glorot_uniform"),
    "torchvision": Variant("torchvision", False, False, 1e-5, 0.9, "torch", "lecun_normal"),
}


def lookup_variant(name: str) -> Variant:
    """The variant called ``name``; ValueError naming the choices for any other name."""
    if name not in VARIANTS:
        raise ValueError(f"unknown ResNet variant {name!r}; expected one of {sorted(VARIANTS)}")
    return VARIANTS[name]
