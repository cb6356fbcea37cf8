"""Strict assembly of converted tensors into a model's variable tree.

Readers turn a weight file into a list of ``Tensor`` (source name, model path,
value); ``assemble`` checks them against the model's expected shapes and
refuses to continue while anything is missing, extra, mis-shaped or doubled.
"""

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from scenecls.models import ResNet50

VarPath = tuple[str, ...]  # ("params", "conv1_conv", "kernel")


class WeightsError(ValueError):
    """A weight file or variable tree that cannot be loaded, with the reason."""


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One tensor read from a weight file.

    ``source`` is its name in the file (for messages and ignore rules),
    ``path`` where it goes in the model's variables, None when no rule maps it,
    ``source_shape`` its shape in the file when the reader transposed it.
    """

    source: str
    path: VarPath | None
    value: np.ndarray
    source_shape: tuple[int, ...] | None = None

    def describe_shape(self) -> str:
        """The tensor's shape, and its shape in the file when that differs."""
        shape = tuple(self.value.shape)
        return f"{self.source_shape} as {shape}" if self.source_shape not in (None, shape) else str(shape)


def backbone_shapes(variant: str) -> dict[VarPath, tuple[int, ...]]:
    """Shape of every variable of the full-size ``ResNet50(variant)``, by path."""
    abstract = jax.eval_shape(
        ResNet50(variant=variant).init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    )
    return shapes_of(abstract)


def shapes_of(variables: Mapping[str, Any]) -> dict[VarPath, tuple[int, ...]]:
    """Flat ``{path: shape}`` of a nested variable tree."""
    return {path: tuple(np.shape(leaf)) for path, leaf in traverse_util.flatten_dict(variables).items()}


def tensors_of(variables: Mapping[str, Any]) -> list[Tensor]:
    """A nested variable tree as ``Tensor``s that map to their own paths."""
    return [
        Tensor("/".join(path), path, np.asarray(leaf))
        for path, leaf in traverse_util.flatten_dict(variables).items()
    ]


def assemble(
    tensors: Iterable[Tensor],
    expected: Mapping[VarPath, tuple[int, ...]],
    origin: str,
    ignore: str | None = None,
) -> dict[str, Any]:
    """Nested float32 variables with every ``expected`` path filled exactly once.

    Tensors whose source matches the ``ignore`` regex (e.g. the 1000-class top)
    are skipped. Any other problem raises one ``WeightsError`` that names
    ``origin`` and lists every missing, extra, mis-shaped and doubled tensor.
    """
    kept, ignored = [], []
    for tensor in tensors:
        (ignored if ignore and re.search(ignore, tensor.source) else kept).append(tensor)
    if ignored:
        names = ", ".join(t.source for t in ignored)
        logging.info("%s: ignoring %d tensors outside the model: %s", origin, len(ignored), names)
    if not any(t.path in expected for t in kept):
        sample = ", ".join(t.source for t in kept[:4])
        raise WeightsError(
            f"{origin}: wrong architecture, none of its {len(kept)} tensors fits ({sample} ...)"
        )
    filled: dict[VarPath, Tensor] = {}
    problems = []
    for tensor in kept:
        if tensor.path not in expected:
            problems.append(f"extra: {tensor.source} {tensor.describe_shape()} has no place in the model")
        elif tensor.path in filled:
            problems.append(
                f"doubled: {_name(tensor.path)} from both {filled[tensor.path].source} and {tensor.source}"
            )
        else:
            filled[tensor.path] = tensor
            if tensor.value.shape != expected[tensor.path]:
                problems.append(
                    f"shape mismatch: {_name(tensor.path)} (from {tensor.source}): "
                    f"file {tensor.describe_shape()} vs model {expected[tensor.path]}"
                )
    problems += [f"missing: {_name(path)} {shape}" for path, shape in expected.items() if path not in filled]
    if problems:
        raise WeightsError(f"{origin}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return traverse_util.unflatten_dict({path: np.asarray(t.value, np.float32) for path, t in filled.items()})


def _name(path: VarPath) -> str:
    """A variable path as ``collection/layer/variable``."""
    return "/".join(path)
