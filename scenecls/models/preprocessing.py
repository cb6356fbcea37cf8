"""Pixel preprocessing for each weight family, shared by training, evaluation and inference.

- ``caffe`` (Keras ResNet50): RGB -> BGR, subtract the ImageNet BGR mean, no scaling.
- ``torch`` (torchvision/timm): x / 255, subtract mean and divide by std per RGB channel.
- ``none``: a float32 cast only, for inputs that are not pixels (cached backbone features).

The variant's ``preprocessing`` (scenecls.models.variants) names the kind its weights expect.
"""

import numpy as np

KINDS = ("caffe", "torch", "none")
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def preprocess(images, kind: str):
    """Preprocesses RGB images in [0, 255] (uint8 or float, ``...HWC``, numpy or JAX) to float32."""
    if kind not in KINDS:
        raise ValueError(f"unknown preprocessing {kind!r}; expected one of {KINDS}")
    x = images.astype(np.float32)
    if kind == "none":
        return x
    if kind == "caffe":
        return x[..., ::-1] - np.asarray(_CAFFE_BGR_MEAN, np.float32)
    return (x / 255.0 - np.asarray(_TORCH_MEAN, np.float32)) / np.asarray(_TORCH_STD, np.float32)
