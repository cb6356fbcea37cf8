"""Checkpoints in a workdir, with orbax; corrupt checkpoints are detected, never loaded.

Layout::

    <workdir>/checkpoints/latest/<n>  full training state at global step n (for resume)
    <workdir>/checkpoints/best_<stage>/<n>  params + batch_stats of a stage's best epoch

Every checkpoint's metadata carries the format version and a checksum of the saved arrays, so a truncated,
garbled or half-written checkpoint is recognised on restore: ``restore_latest`` then falls back to the
previous good one with a warning. Write failures (full disk, read-only workdir) raise one-line OSErrors.
"""

import errno
import os
import shutil
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

# Of checkpoint metadata (and run.json); bump on incompatible layout changes. 2: the optimizer state holds
# the learning rate (version-1 training states are upgraded on resume by scenecls.train.stage).
FORMAT_VERSION = 2
_INTEGRITY = "_integrity"  # metadata key holding format version and checksum


class Restored(NamedTuple):
    """A checkpoint read back and verified: its step, metadata and state pytree."""

    step: int
    meta: dict[str, Any]
    state: Any
    format_version: int  # of the checkpoint (FORMAT_VERSION's history says what changed)


class WorkdirError(ValueError):
    """A workdir that cannot be used for the requested run."""


class CorruptCheckpointError(WorkdirError):
    """A checkpoint whose files are missing, truncated or do not match their checksum."""


class WriteError(OSError):
    """A file or checkpoint that could not be written; ``str(e)`` is one line naming the path and reason."""

    def __str__(self) -> str:
        return str(self.strerror)


def _manager(path: str, max_to_keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,  # half-written saves of a killed run
    )
    return ocp.CheckpointManager(os.path.abspath(path), options=options)


def latest_manager(workdir: str) -> ocp.CheckpointManager:
    """Manager of the resumable training states (keeps the last two)."""
    return _manager(os.path.join(workdir, "checkpoints", "latest"), max_to_keep=2)


def best_manager(workdir: str, stage: str) -> ocp.CheckpointManager:
    """Manager of a stage's best model (keeps one)."""
    return _manager(os.path.join(workdir, "checkpoints", f"best_{stage}"), max_to_keep=1)


def _step_path(manager: ocp.CheckpointManager, step: int) -> str:
    return os.path.join(os.fspath(manager.directory), str(step))


def checksum(tree: Any) -> str:
    """CRC32s of every array (dtype, shape, bytes), independent of leaf order and container types."""
    digests = sorted(
        f"{a.dtype.str}{a.shape}{zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1)):08x}"
        for a in map(np.asarray, jax.tree_util.tree_leaves(jax.device_get(tree)))
    )
    return f"{zlib.crc32(';'.join(digests).encode()):08x}:{len(digests)}"


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Saves a pytree and its JSON metadata atomically as checkpoint ``step`` (replacing one of that step).

    Raises:
      WriteError: the checkpoint could not be written (full disk, read-only or unwritable workdir); earlier
        checkpoints are intact and no partial step is left behind.
    """
    if step in manager.all_steps():  # written by a run killed before its resume point; redo it
        manager.delete(step)
    meta = {**meta, _INTEGRITY: {"format_version": FORMAT_VERSION, "checksum": checksum(state)}}
    try:
        manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        )
        manager.wait_until_finished()
    except (OSError, ValueError) as e:
        if isinstance(e, ocp.checkpoint_manager.StepAlreadyExistsError):
            raise
        _remove_partial(manager, step)
        raise WriteError(
            _errno_of(e), f"cannot write checkpoint {_step_path(manager, step)}: {_reason(e)}"
        ) from None


def _remove_partial(manager: ocp.CheckpointManager, step: int) -> None:
    """Removes what a failed save of ``step`` left (its tmp dir, or an unfinished step dir)."""
    directory = os.fspath(manager.directory)
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        if name == str(step) or name.startswith(f"{step}."):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    manager.reload()


def _errno_of(e: Exception) -> int:
    if isinstance(e, OSError) and e.errno:
        return e.errno
    text = str(e)
    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
        if os.strerror(code) in text:
            return code
    return errno.EIO


def _reason(e: Exception) -> str:
    """A one-line reason: the OS error text when there is one, else the exception's first line."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    code = _errno_of(e)
    if code != errno.EIO:
        return os.strerror(code)
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def restore_meta(manager: ocp.CheckpointManager, step: int | None = None) -> dict[str, Any] | None:
    """The metadata of checkpoint ``step`` (default: latest), or None if there is none.

    Raises:
      CorruptCheckpointError: the metadata is missing or unreadable.
      WorkdirError: the checkpoint was written by a newer scenecls.
    """
    step = manager.latest_step() if step is None else step
    return None if step is None else _read_meta(manager, step)[0]


def _read_meta(manager: ocp.CheckpointManager, step: int) -> tuple[dict[str, Any], int]:
    """(metadata, format version) of checkpoint ``step``; see ``restore_meta`` for the errors."""
    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001 -- orbax and tensorstore raise many types for damaged files
        raise CorruptCheckpointError(
            f"{_step_path(manager, step)}: unreadable checkpoint metadata ({_reason(e)})"
        ) from None
    if not isinstance(meta, dict):
        raise CorruptCheckpointError(f"{_step_path(manager, step)}: checkpoint metadata is not a JSON object")
    version = meta.get(_INTEGRITY, {}).get("format_version", 1)
    check_version(version, _step_path(manager, step))
    return {k: v for k, v in meta.items() if k != _INTEGRITY}, version


def restore_state(manager: ocp.CheckpointManager, step: int, target: Any | None = None) -> Any:
    """Restores the pytree of checkpoint ``step`` into the structure of ``target`` (or as saved), verified.

    Raises:
      CorruptCheckpointError: files are missing or damaged, or the arrays do not match their checksum.
    """
    path = _step_path(manager, step)
    if step not in manager.all_steps():
        raise CorruptCheckpointError(f"{path}: no such checkpoint")
    args = ocp.args.StandardRestore(target) if target is not None else ocp.args.StandardRestore()
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=args, meta=ocp.args.JsonRestore()))
        state, meta = restored["state"], restored["meta"]
    except Exception as e:  # noqa: BLE001 -- orbax and tensorstore raise many types for damaged files
        raise CorruptCheckpointError(f"{path}: unreadable checkpoint ({_reason(e)})") from None
    expected = meta.get(_INTEGRITY, {}).get("checksum") if isinstance(meta, dict) else None
    if expected is not None and checksum(state) != expected:
        raise CorruptCheckpointError(f"{path}: checkpoint data does not match its checksum (damaged files)")
    return state


def restore_latest(
    manager: ocp.CheckpointManager, target_for: Callable[[dict[str, Any], int], Any] | None = None
) -> Restored | None:
    """The newest checkpoint that reads back intact, falling back over corrupt ones with a warning.

    Args:
      manager: e.g. ``latest_manager(workdir)``.
      target_for: maps a checkpoint's metadata and format version to the pytree to restore into (None: as
        saved).

    Returns:
      The restored step, metadata and state, or None when there is no checkpoint at all.

    Raises:
      CorruptCheckpointError: checkpoints exist but none is readable.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    for step in steps:
        try:
            meta, version = _read_meta(manager, step)
            state = restore_state(manager, step, target_for(meta, version) if target_for else None)
        except CorruptCheckpointError as e:
            logging.warning("%s; falling back to the previous checkpoint", e)
            continue
        if step != steps[0]:
            logging.warning("Resuming from checkpoint %d, the newest intact one", step)
        return Restored(step=step, meta=meta, state=state, format_version=version)
    if steps:
        raise CorruptCheckpointError(
            f"{os.fspath(manager.directory)}: none of the checkpoints {steps} is readable (see warnings); "
            "move that folder away to start over"
        )
    return None


def check_version(version: Any, path: str) -> None:
    """Raises WorkdirError when ``path`` was written by a newer scenecls (format version above ours)."""
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise WorkdirError(
            f"{path}: written by a newer scenecls (format version {version!r}, this one reads up to "
            f"{FORMAT_VERSION}); upgrade scenecls or use another --workdir"
        )


def best_variables(workdir: str, stage: str) -> dict[str, Any]:
    """The best params and batch_stats of a finished stage, as host arrays."""
    manager = best_manager(workdir, stage)
    return jax.device_get(restore_state(manager, manager.latest_step()))
