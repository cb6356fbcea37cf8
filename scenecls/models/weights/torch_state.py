"""Reads torchvision/timm ResNet-50 state dicts into ``Tensor``s.

torchvision's keys map onto the Keras layer names the model uses:
``conv1`` / ``bn1`` -> ``conv1_conv`` / ``conv1_bn``,
``layer{i}.{j}.conv{k}`` / ``bn{k}`` -> ``conv{i+1}_block{j+1}_{k}_conv`` / ``_bn``,
``layer{i}.{j}.downsample.0`` / ``.1`` -> ``conv{i+1}_block{j+1}_0_conv`` / ``_0_bn``.
Conv weights go from OIHW to HWIO.
"""

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from scenecls.models.weights.strict import Tensor, WeightsError

# The 1000-class classifier and BatchNorm's step counter; a backbone ignores both.
IGNORED = r"(^fc\.|\.num_batches_tracked$)"
SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

_PREFIXES = ("module.", "model.")  # Added by DataParallel and by some training wrappers.
_STEM = {"conv1": "conv1_conv", "bn1": "conv1_bn"}
_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.(?:(conv|bn)([123])|downsample\.([01]))")
_CONV_VARIABLES = {"weight": ("params", "kernel")}
_BN_VARIABLES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A ``.safetensors`` file, or a torch file loaded with ``weights_only=True``, as numpy arrays."""
    if Path(path).suffix == ".safetensors":
        try:
            return safetensors.numpy.load_file(path)
        except (safetensors.SafetensorError, OSError) as e:
            raise WeightsError(f"{path}: cannot read safetensors file ({e})") from e
    try:
        import torch  # Optional: only .pth/.pt/.bin files need it.
    except ImportError as e:
        raise WeightsError(
            f"{path}: reading this file needs torch (pip install torch) or a .safetensors copy"
        ) from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise WeightsError(f"{path}: cannot read torch file ({str(e).splitlines()[0]})") from e
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]  # A training checkpoint that wraps the state dict.
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return {key: value.detach().to(torch.float32).numpy() for key, value in state.items()}


def tensors_from_state_dict(state: Mapping[str, np.ndarray]) -> list[Tensor]:
    """A torchvision-style ResNet state dict as ``Tensor``s on the Keras-named Flax paths."""
    state = _strip_common_prefix(state)
    tensors = []
    for key, value in state.items():
        module, _, variable = key.rpartition(".")
        layer = _layer_name(module)
        variables = _CONV_VARIABLES if layer and layer.endswith("_conv") else _BN_VARIABLES
        target = variables.get(variable) if layer else None
        path = (target[0], layer, target[1]) if target else None
        hwio = np.transpose(value, (2, 3, 1, 0)) if np.ndim(value) == 4 else np.asarray(value)  # From OIHW.
        tensors.append(Tensor(key, path, hwio, source_shape=tuple(np.shape(value))))
    return tensors


def _layer_name(module: str) -> str | None:
    """Keras layer name for a torchvision module name (``layer1.0.bn2`` -> ``conv2_block1_2_bn``)."""
    if module in _STEM:
        return _STEM[module]
    match = _BLOCK.fullmatch(module)
    if not match:
        return None
    stage, block, kind, index, downsample = match.groups()
    prefix = f"conv{int(stage) + 1}_block{int(block) + 1}"
    if downsample is not None:
        return f"{prefix}_0_{'conv' if downsample == '0' else 'bn'}"
    return f"{prefix}_{index}_{kind}"


def _strip_common_prefix(state: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """Drops a ``module.``/``model.`` prefix shared by every key."""
    for prefix in _PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            return {key.removeprefix(prefix): value for key, value in state.items()}
    return state
