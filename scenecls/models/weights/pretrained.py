"""ImageNet ResNet-50 weights for the backbone, loaded strictly.

Accepted sources (``config.pretrained``):

- ``keras:imagenet``: Keras' published no-top file, taken from the Keras cache
  (``$KERAS_HOME/models`` or ``~/.keras/models``) or downloaded there.
- ``*.h5`` / ``*.hdf5``: Keras ResNet50 weights in the legacy HDF5 layout
  (the published files with or without top, tf_keras ``save_weights``).
- ``*.safetensors`` (or ``*.pth`` / ``*.pt`` / ``*.bin`` through
  ``torch.load(weights_only=True)``): a torchvision/timm ResNet-50 state dict.
- a directory written by ``convert``: an orbax checkpoint of the converted
  backbone plus its variant.

The Keras files load into ``ResNet50(variant="keras")``, the torch ones into
``variant="torchvision"``; ``weights_variant`` tells which, so callers can pick
the matching model and preprocessing, and ``merge_backbone`` puts the loaded
backbone into a Classifier's variables. ``convert`` writes a file once as a checkpoint for fast reuse
(``scenecls --mode=convert``).
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from absl import logging

from scenecls.models.variants import VARIANTS
from scenecls.models.weights import cache, keras_h5, torch_state
from scenecls.models.weights.strict import WeightsError, assemble, backbone_shapes, shapes_of, tensors_of

__all__ = ["KERAS_IMAGENET", "WeightsError", "convert", "load_backbone", "merge_backbone", "weights_variant"]

KERAS_IMAGENET = "keras:imagenet"
_KERAS_SUFFIXES = (".h5", ".hdf5")
_COLLECTIONS = ("params", "batch_stats")


def weights_variant(path_or_name: str) -> str:
    """The ResNet50 variant ("keras" or "torchvision") that a weights source loads into."""
    if path_or_name == KERAS_IMAGENET:
        return "keras"
    path = Path(path_or_name)
    if path.is_dir():
        return _read_checkpoint(path, with_variables=False)[0]
    if path.suffix in _KERAS_SUFFIXES:
        return "keras"
    if path.suffix in torch_state.SUFFIXES:
        return "torchvision"
    raise WeightsError(
        f"{path_or_name}: unknown weights source; expected {KERAS_IMAGENET!r}, a converted checkpoint "
        f"directory or a file ending in {', '.join(_KERAS_SUFFIXES + torch_state.SUFFIXES)}"
    )


def load_backbone(path_or_name: str) -> dict[str, Any]:
    """``{"params": ..., "batch_stats": ...}`` (float32 numpy) for ``ResNet50(weights_variant(...))``.

    Every backbone parameter and BatchNorm statistic is filled exactly once;
    anything missing, extra or mis-shaped raises one ``WeightsError``.
    """
    path = _resolve(path_or_name)
    if path.is_dir():
        variant, variables = _read_checkpoint(path, with_variables=True)
        tensors, ignore = tensors_of(variables), None
    elif not path.is_file():
        raise WeightsError(f"{path}: no such file")
    elif (variant := weights_variant(path_or_name)) == "keras":
        tensors, ignore = keras_h5.read_keras_h5(str(path)), keras_h5.IGNORED
    else:
        state = torch_state.read_state_dict(str(path))
        tensors, ignore = torch_state.tensors_from_state_dict(state), torch_state.IGNORED
    variables = assemble(
        tensors, backbone_shapes(variant), origin=f"{path} ({variant} ResNet-50)", ignore=ignore
    )
    logging.info("Loaded the %s ResNet-50 backbone from %s", variant, path)
    return variables


def merge_backbone(
    classifier_variables: Mapping[str, Any], backbone_variables: Mapping[str, Any]
) -> dict[str, Any]:
    """``classifier_variables`` with its ``backbone`` replaced by ``backbone_variables``.

    The two backbone trees must match exactly (paths and shapes), otherwise a
    ``WeightsError`` lists the differences; the head stays as initialised.
    """
    missing = [c for c in _COLLECTIONS if "backbone" not in classifier_variables.get(c, {})]
    if missing:
        raise WeightsError(f"classifier variables have no 'backbone' in {missing}")
    expected = shapes_of({c: classifier_variables[c]["backbone"] for c in _COLLECTIONS})
    backbone = assemble(
        tensors_of(backbone_variables), expected, origin="loaded backbone vs classifier backbone"
    )
    merged = dict(classifier_variables)
    for collection in _COLLECTIONS:
        merged[collection] = {**classifier_variables[collection], "backbone": backbone[collection]}
    return merged


def convert(src: str, dst_dir: str | Path, overwrite: bool = False) -> Path:
    """Loads ``src`` strictly and writes it as an orbax checkpoint that ``load_backbone`` reads fast."""
    dst = Path(dst_dir).absolute()
    if dst.exists() and not overwrite:
        raise WeightsError(f"{dst}: already exists; choose a new directory or pass overwrite=True")
    variables, variant = load_backbone(src), weights_variant(src)
    _checkpointer().save(
        dst,
        args=ocp.args.Composite(
            variables=ocp.args.StandardSave(variables),
            meta=ocp.args.JsonSave({"variant": variant, "source": str(src)}),
        ),
        force=overwrite,
    )
    logging.info("Wrote %s backbone from %s to %s", variant, src, dst)
    return dst


def _resolve(path_or_name: str) -> Path:
    """The local file or directory behind a weights source, fetching ``keras:imagenet`` if needed."""
    if path_or_name == KERAS_IMAGENET:
        return cache.cached_file(cache.KERAS_RESNET50_NOTOP, cache.keras_cache_dir(), cache.download_url)
    return Path(path_or_name)


def _read_checkpoint(path: Path, with_variables: bool) -> tuple[str, dict[str, Any] | None]:
    """(variant, variables or None) of a directory written by ``convert``."""
    if not (path / "meta").is_dir():
        raise WeightsError(
            f"{path}: not a converted backbone checkpoint (no 'meta' item); create one with convert()"
        )
    items = {"meta": ocp.args.JsonRestore()}
    if with_variables:
        items["variables"] = ocp.args.StandardRestore()
    try:
        restored = _checkpointer().restore(path.absolute(), args=ocp.args.Composite(**items))
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: cannot read checkpoint ({e})") from e
    variant = restored["meta"].get("variant") if isinstance(restored["meta"], Mapping) else None
    if variant not in VARIANTS:
        raise WeightsError(f"{path}: checkpoint metadata has no valid 'variant' ({restored['meta']!r})")
    return variant, restored["variables"] if with_variables else None


def _checkpointer() -> ocp.Checkpointer:
    """A synchronous checkpointer for the (variables, meta) composite."""
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())
