"""Pixel preprocessing for each weight family, shared by training and inference.

- ``caffe`` (Keras ResNet50): RGB -> BGR, subtract the ImageNet BGR mean, no scaling.
- ``torch`` (torchvision/timm): x / 255, subtract mean and divide by std per RGB channel.
- ``none``: a float32 cast only, for inputs that are not pixels (cached backbone features).
"""

import numpy as np

MODES = ("caffe", "torch", "none")
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_MODE_OF_VARIANT = {"keras": "caffe", "torchvision": "torch"}


def mode_for_variant(variant: str) -> str:
    """The preprocessing mode the weights of a backbone variant expect."""
    if variant not in _MODE_OF_VARIANT:
        raise ValueError(f"unknown backbone variant {variant!r}; expected one of {sorted(_MODE_OF_VARIANT)}")
    return _MODE_OF_VARIANT[variant]


def preprocess(images, mode: str):
    """Preprocesses RGB images in [0, 255] (uint8 or float, ``...HWC``) to float32.

    Works on numpy, JAX and TensorFlow arrays alike (only arithmetic and
    channel reversal are used), so every pipeline shares this one definition.
    """
    if mode not in MODES:
        raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of {MODES}")
    x = _to_float32(images)
    if mode == "none":
        return x
    if mode == "caffe":
        return x[..., ::-1] - np.asarray(_CAFFE_BGR_MEAN, np.float32)
    return (x / 255.0 - np.asarray(_TORCH_MEAN, np.float32)) / np.asarray(_TORCH_STD, np.float32)


def _to_float32(images):
    """Casts to float32 in the array's own framework."""
    if hasattr(images, "astype"):
        return images.astype(np.float32)
    import tensorflow as tf  # Only reached for tf.Tensor inputs, i.e. inside tf.data.

    return tf.cast(images, tf.float32)
