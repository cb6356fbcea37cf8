"""Reads Keras weights in the legacy HDF5 layout into ``Tensor``s.

This is the layout of Keras' published ImageNet files
(``resnet50_weights_tf_dim_ordering_tf_kernels[_notop].h5``), of tf_keras
``save_weights("x.h5")`` and of ``model.save("x.h5")`` (weights under
``model_weights``): the root attribute ``layer_names`` lists the layers, each
layer group's ``weight_names`` attribute its datasets (``conv1_conv/kernel:0``).
Keras kernels are already HWIO, so no reshaping is needed.
"""

import h5py
import numpy as np

from scenecls.models.weights.strict import Tensor, WeightsError

# The 1000-class ImageNet classifier of the with-top file; a backbone ignores it.
IGNORED = r"^predictions/"

# Keras variable name -> (collection, Flax variable name).
_VARIABLES = {
    "kernel": ("params", "kernel"),
    "bias": ("params", "bias"),
    "gamma": ("params", "scale"),
    "beta": ("params", "bias"),
    "moving_mean": ("batch_stats", "mean"),
    "moving_variance": ("batch_stats", "var"),
}


def read_keras_h5(path: str) -> list[Tensor]:
    """Every weight of a legacy-layout Keras HDF5 file, mapped to Flax paths by layer name."""
    try:
        with h5py.File(path, "r") as file:
            return _read_layers(_weights_group(file, path), path)
    except OSError as e:  # h5py's error for truncated, corrupt or unreadable files.
        raise WeightsError(f"{path}: cannot read HDF5 file ({e})") from e


def _weights_group(file: h5py.File, path: str) -> h5py.Group:
    """The group holding ``layer_names``: the root, or ``model_weights`` of a full-model file."""
    group = file["model_weights"] if "model_weights" in file else file
    if "layer_names" in group.attrs:
        return group
    if "layers" in file and "vars" in file:
        raise WeightsError(
            f"{path}: Keras 3 '.weights.h5' files name layers by class (conv2d_52), not by the "
            "ResNet50 layer names; save the model with model.save('model.h5') (legacy HDF5) instead"
        )
    raise WeightsError(f"{path}: not a Keras weights file (no 'layer_names' attribute)")


def _read_layers(group: h5py.Group, path: str) -> list[Tensor]:
    """One ``Tensor`` per entry of every layer's ``weight_names``."""
    tensors = []
    for layer in _strings(group.attrs["layer_names"]):
        if layer not in group:
            raise WeightsError(f"{path}: layer_names lists {layer} but the file has no such group")
        layer_group = group[layer]
        for weight_name in _strings(layer_group.attrs.get("weight_names", [])):
            if weight_name not in layer_group:
                raise WeightsError(
                    f"{path}: layer {layer} lists weight {weight_name} but has no such dataset"
                )
            # "conv1_conv/kernel:0" (Keras 2) or "conv1_conv/kernel" (Keras 3) -> "kernel".
            variable = weight_name.rsplit("/", 1)[-1].split(":")[0]
            target = _VARIABLES.get(variable)
            tensors.append(
                Tensor(
                    source=f"{layer}/{weight_name}",
                    path=(target[0], layer, target[1]) if target else None,
                    value=np.asarray(layer_group[weight_name]),
                )
            )
    return tensors


def _strings(names: np.ndarray) -> list[str]:
    """HDF5 string attributes as ``str`` (h5py returns bytes or str depending on the writer)."""
    return [name.decode("utf8") if isinstance(name, bytes) else str(name) for name in names]
