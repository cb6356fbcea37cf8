"""Stopping training safely: signal requests, checkpoint timing and the errors that end a run early."""

import signal
import threading
import time
from types import FrameType

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; ``str()`` says how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """The shell's status for a process ended by this signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class NonFiniteLoss(ValueError):
    """The loss became NaN or infinite more often than ``config.max_nonfinite_steps`` allows."""


class StopRequests:
    """While active, SIGINT/SIGTERM only set ``signum`` so the loop can save and stop at a safe point.

    A second signal interrupts at once (KeyboardInterrupt). Outside the main thread (where Python cannot
    install handlers) signals keep their default behaviour.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in _SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class SaveTimer:
    """Says when ``minutes`` have passed since the last checkpoint (never when ``minutes`` <= 0)."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60.0
        self.reset()

    def reset(self) -> None:
        self._last = time.monotonic()

    def due(self) -> bool:
        return self.seconds > 0 and time.monotonic() - self._last >= self.seconds
