"""ImageNet ResNet-50 weights for the backbone, loaded strictly (see ``pretrained``).

``pretrained`` is the entry point (``load_backbone``, ``merge_backbone``, ``convert``, ``weights_variant``);
``keras_h5``, ``torch_state`` and ``cache`` read the files and ``strict`` assembles them into a variable tree.
"""

from scenecls.models.weights.pretrained import (
    KERAS_IMAGENET,
    WeightsError,
    convert,
    load_backbone,
    merge_backbone,
    weights_variant,
)

__all__ = ["KERAS_IMAGENET", "WeightsError", "convert", "load_backbone", "merge_backbone", "weights_variant"]
