"""A workdir's run files: its format version, the run's config and classes, and the compatibility check.

Layout::

    <workdir>/run.json      format version of the workdir (absent in version-1 workdirs)
    <workdir>/config.json   resolved config of the run
    <workdir>/classes.json  class names, in label order
"""

import json
import os
from typing import Any

import ml_collections

from scenecls.workdir.checkpoints import FORMAT_VERSION, WorkdirError, WriteError, check_version

# Config fields that must match for a workdir to be resumed or reused.
_ARCHITECTURE_FIELDS = ("variant", "stage_sizes", "width", "head", "head_filters", "head_kernel_sizes")


def write_run_files(workdir: str, config: ml_collections.ConfigDict, classes: tuple[str, ...]) -> None:
    """Writes run.json, config.json and classes.json, refusing a workdir made for another model.

    Raises:
      WorkdirError: the workdir holds another run, or one of a newer format.
      WriteError: the files could not be written (one line naming the path and reason).
    """
    check_compatible(workdir, config, classes)
    files = {
        "run.json": json.dumps({"format_version": FORMAT_VERSION}, indent=2),
        "config.json": config.to_json(indent=2),
        "classes.json": json.dumps(list(classes), indent=2),
    }
    for name, text in files.items():
        write_atomically(os.path.join(workdir, name), text)


def write_atomically(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` via a temporary file and a rename, so a failure never leaves a truncated
    file (WriteError, one line, when it cannot be written)."""
    tmp_path = path + ".tmp"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp_path, "w") as f:
            f.write(text)
        os.replace(tmp_path, path)
    except OSError as e:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise WriteError(e.errno, f"cannot write {path}: {e.strerror or e}") from None


def read_run_config(workdir: str) -> tuple[ml_collections.ConfigDict, tuple[str, ...]]:
    """The config and classes stored in a workdir (of this format version or older)."""
    try:
        check_version(_format_version(workdir), os.path.join(workdir, "run.json"))
        with open(os.path.join(workdir, "config.json")) as f:
            config = ml_collections.ConfigDict(json.load(f))
        with open(os.path.join(workdir, "classes.json")) as f:
            classes = tuple(json.load(f))
    except FileNotFoundError as e:
        raise WorkdirError(
            f"{workdir}: no trained run here ({os.path.basename(e.filename)} missing); run --mode=train first"
        ) from None
    except (json.JSONDecodeError, TypeError, AttributeError) as e:
        raise WorkdirError(f"{workdir}: unreadable run metadata ({e})") from None
    return config, classes


def _format_version(workdir: str) -> Any:
    """The workdir's format version; 1 for workdirs written before run.json existed."""
    path = os.path.join(workdir, "run.json")
    if not os.path.exists(path):
        return 1
    with open(path) as f:
        return json.load(f).get("format_version", 1)


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
