"""An exclusive lock on a workdir, so two runs never write the same checkpoints and data at once.

``<workdir>/.lock`` is held with ``fcntl.flock`` for the life of the run: the kernel releases it when the
process exits or is killed, so a crashed run never leaves a stale lock. The file records the holder's pid,
host and start time for the refusal message. Only writers (train, prepare) lock; evaluate and infer read a
finished run and do not, so they can run beside each other (an evaluate during a training run reads the
best checkpoint saved so far).
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterator

LOCK_NAME = ".lock"


class WorkdirLockedError(OSError):
    """The workdir is locked by another live run; ``str(e)`` names it."""


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
    """Holds the workdir's lock for the ``with`` body.

    Raises:
      WorkdirLockedError: another process holds it (the message names its pid, host and start time).
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirLockedError(
                f"{workdir} is in use by {_holder(fd)}; wait for it to finish, or stop it, "
                "or use another --workdir"
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a waiting run)


def _holder(fd: int) -> str:
    """Who holds the lock, from the file's content (best effort: it may be mid-write)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on host {info['host']} since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "another process"
