"""Checkpoints and run metadata in a workdir, with orbax.

Layout::

    <workdir>/config.json             resolved config of the run
    <workdir>/classes.json            class names, in label order
    <workdir>/checkpoints/latest/<n>  full training state after global epoch n (for resume)
    <workdir>/checkpoints/best_<stage>/<n>  params + batch_stats of a stage's best epoch
"""

import json
import os
from typing import Any, NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp

from scenecls.models import Classifier, build_classifier

STAGES = ("stage1", "stage2")
# Config fields that must match for a workdir to be resumed or reused.
_ARCHITECTURE_FIELDS = ("variant", "stage_sizes", "width", "head", "head_filters", "head_kernel_sizes")


class InferenceModel(NamedTuple):
    """Everything needed to run a trained model."""

    config: ml_collections.ConfigDict
    classes: tuple[str, ...]
    model: Classifier
    variables: dict[str, Any]


class WorkdirError(ValueError):
    """A workdir that cannot be used for the requested run."""


def _manager(path: str, max_to_keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(os.path.abspath(path), options=options)


def latest_manager(workdir: str) -> ocp.CheckpointManager:
    """Manager of the resumable training states (keeps the last two)."""
    return _manager(os.path.join(workdir, "checkpoints", "latest"), max_to_keep=2)


def best_manager(workdir: str, stage: str) -> ocp.CheckpointManager:
    """Manager of a stage's best model (keeps one)."""
    return _manager(os.path.join(workdir, "checkpoints", f"best_{stage}"), max_to_keep=1)


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Saves a pytree and its JSON metadata atomically as checkpoint ``step``."""
    manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    )
    manager.wait_until_finished()


def restore_meta(manager: ocp.CheckpointManager, step: int | None = None) -> dict[str, Any] | None:
    """The metadata of checkpoint ``step`` (default: latest), or None if there is none."""
    step = manager.latest_step() if step is None else step
    if step is None:
        return None
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore_state(manager: ocp.CheckpointManager, step: int, target: Any | None = None) -> Any:
    """Restores the pytree of checkpoint ``step`` into the structure of ``target`` (or as saved)."""
    args = ocp.args.StandardRestore(target) if target is not None else ocp.args.StandardRestore()
    return manager.restore(step, args=ocp.args.Composite(state=args))["state"]


def write_run_files(workdir: str, config: ml_collections.ConfigDict, classes: tuple[str, ...]) -> None:
    """Writes config.json and classes.json, refusing a workdir made for another model."""
    check_compatible(workdir, config, classes)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    with open(os.path.join(workdir, "classes.json"), "w") as f:
        json.dump(list(classes), f, indent=2)


def read_run_config(workdir: str) -> tuple[ml_collections.ConfigDict, tuple[str, ...]]:
    """The config and classes stored in a workdir."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            config = ml_collections.ConfigDict(json.load(f))
        with open(os.path.join(workdir, "classes.json")) as f:
            classes = tuple(json.load(f))
    except FileNotFoundError as e:
        raise WorkdirError(
            f"{workdir}: no trained run here ({os.path.basename(e.filename)} missing); run --mode=train first"
        ) from None
    except (json.JSONDecodeError, TypeError) as e:
        raise WorkdirError(f"{workdir}: unreadable run metadata ({e})") from None
    return config, classes


def check_compatible(workdir: str, config: ml_collections.ConfigDict, classes: tuple[str, ...]) -> None:
    """Raises WorkdirError when the workdir holds a run with other classes or architecture."""
    if not os.path.exists(os.path.join(workdir, "config.json")):
        return
    old_config, old_classes = read_run_config(workdir)
    problems = []
    if tuple(old_classes) != tuple(classes):
        problems.append(f"classes {list(old_classes)} != {list(classes)}")
    for field in _ARCHITECTURE_FIELDS:
        old, new = old_config.model.get(field), config.model.get(field)
        if _plain(old) != _plain(new):
            problems.append(f"model.{field} {old!r} != {new!r}")
    if problems:
        raise WorkdirError(
            f"{workdir} holds a run with a different setup ({'; '.join(problems)}); use a new --workdir"
        )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def final_stage(workdir: str) -> str:
    """The last stage with a best checkpoint (the model to evaluate and deploy)."""
    for stage in reversed(STAGES):
        path = os.path.join(workdir, "checkpoints", f"best_{stage}")
        if os.path.isdir(path) and best_manager(workdir, stage).latest_step() is not None:
            return stage
    raise WorkdirError(f"{workdir}: no trained checkpoint found under checkpoints/; run --mode=train first")


def load_for_inference(workdir: str) -> InferenceModel:
    """Config, classes, model and best variables of a trained workdir."""
    config, classes = read_run_config(workdir)
    manager = best_manager(workdir, final_stage(workdir))
    variables = restore_state(manager, manager.latest_step())
    variables = jax.tree_util.tree_map(jax.numpy.asarray, variables)
    model = build_classifier(config.model, num_classes=len(classes))
    return InferenceModel(config=config, classes=classes, model=model, variables=variables)
