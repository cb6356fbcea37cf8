"""Keeping a stage's work safe: checkpoints per epoch, every few minutes and on SIGINT/SIGTERM, and the stop
on non-finite losses; the errors that end a run early."""

import dataclasses
import signal
import threading
import time
from types import FrameType
from typing import Any

import orbax.checkpoint as ocp
from absl import logging

from scenecls.train.schedule import EpochPosition, StageProgress
from scenecls.train.step import TrainState, checkpoint_tree
from scenecls.workdir import checkpoints

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


@dataclasses.dataclass
class StageGuard:
    """Keeps a stage's work safe: resumable checkpoints (per epoch, every few minutes, on SIGINT/SIGTERM)
    and the stop on non-finite losses."""

    stage: str
    epoch_offset: int
    steps: int
    progress: StageProgress
    history: dict[str, list[dict[str, Any]]]
    latest: ocp.CheckpointManager
    best: ocp.CheckpointManager  # the stage's best model
    stop: StopRequests
    timer: SaveTimer
    max_nonfinite_steps: int

    def save(self, state: TrainState, position: EpochPosition, epoch: int) -> None:
        """Checkpoints the state at ``position`` of stage epoch ``epoch``, numbered by global step."""
        checkpoints.save(
            self.latest,
            (self.epoch_offset + epoch - 1) * self.steps + position.step,
            checkpoint_tree(state),
            {
                "stage": self.stage,
                "progress": dataclasses.asdict(self.progress),
                "position": dataclasses.asdict(position),
                "history": self.history,
            },
        )
        self.timer.reset()

    def raise_if_stop_requested(self, saved: str) -> None:
        """Ends the run with Interrupted when a signal arrived (after ``saved`` was checkpointed)."""
        if self.stop.signum is not None:
            raise Interrupted(
                f"interrupted by {signal.Signals(self.stop.signum).name}: {saved} in "
                f"{self.latest.directory}; run the same command again to resume",
                self.stop.signum,
            )

    def after_step(self, state: TrainState, position: EpochPosition, finite: bool) -> None:
        """Within an epoch: counts non-finite steps, saves when due or asked to stop."""
        epoch = self.progress.epochs_done + 1
        where = f"{self.stage} epoch {epoch} step {position.step}/{self.steps}"
        if not finite:
            self.progress.nonfinite_steps += 1
            logging.warning("Non-finite loss at %s: update skipped", where)
            if self.progress.nonfinite_steps > self.max_nonfinite_steps:
                kept = self.latest.latest_step()
                advice = "lower the learning rate or check the data"
                raise NonFiniteLoss(
                    f"non-finite loss at {where} ({self.progress.nonfinite_steps} such steps, "
                    f"config.max_nonfinite_steps={self.max_nonfinite_steps}); training stopped. "
                    + (
                        f"The last good checkpoint ({self.latest.directory}/{kept}) is kept: {advice}, "
                        "then rerun to resume from it"
                        if kept is not None
                        else f"No checkpoint was written yet: {advice}"
                    )
                )
        if self.stop.signum is not None:
            self.save(state, position, epoch)
            self.raise_if_stop_requested(f"{where} is saved")
        if self.timer.due() and position.step < self.steps:
            self.save(state, position, epoch)
