"""What a run records of its training: history.json, the curves, TensorBoard scalars, a stage's table,
and each epoch's progress bar.

TensorBoard event files are written with tf.summary (TensorFlow is already a dependency).
"""

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging

from scenecls import console, parallel
from scenecls.evaluation import plots
from scenecls.train.schedule import StageProgress

HISTORY = "history.json"


class TensorBoard:
    """Writes scalar dicts as TensorBoard event files under ``logdir`` (on process 0; a no-op elsewhere)."""

    def __init__(self, logdir: str):
        self._writer = None
        if parallel.is_primary():
            import tensorflow as tf

            tf.config.set_visible_devices([], "GPU")
            self._tf = tf
            self._writer = tf.summary.create_file_writer(logdir)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Writes one value per name at ``step``."""
        if self._writer is None:
            return
        with self._writer.as_default(step=step):
            for name, value in values.items():
                self._tf.summary.scalar(name, float(value))
        self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        if self._writer is not None:
            self._writer.close()


def write_history(workdir: str, history: dict[str, list[dict[str, Any]]], curves: bool = False) -> None:
    """Writes ``history.json`` (and with ``curves`` the plot ``curves.png``) on process 0."""
    if not parallel.is_primary():
        return
    with open(os.path.join(workdir, HISTORY), "w") as f:
        json.dump(history, f, indent=2)
    if curves:
        plots.plot_curves(history, os.path.join(workdir, "curves.png"))


def stage_table(stage: str, records: list[dict[str, Any]], progress: StageProgress) -> str:
    """A table of a stage's epochs for the log."""
    stopped = ", stopped early" if progress.stopped_early else ""
    lines = [
        f"{stage} summary (best epoch {progress.best_epoch}{stopped}):",
        f"{'epoch':>5} {'loss':>8} {'acc':>7} {'val_loss':>9} {'val_acc':>8} {'lr':>9} {'img/s':>7}",
    ]
    lines += [
        f"{r['epoch']:>5} {r['loss']:>8.4f} {r['accuracy']:>7.4f} {r['val_loss']:>9.4f} "
        f"{r['val_accuracy']:>8.4f} {r['lr']:>9.2e} {r['images_per_s']:>7.1f}"
        for r in records
    ]
    return "\n".join(lines)


class EpochBar:
    """An epoch's progress bar (loss, accuracy, images/s, ETA) and periodic lines in the log."""

    def __init__(
        self, stage: str, epoch: int, epochs: int, steps: int, config: ml_collections.ConfigDict, done: int
    ):
        self.stage, self.epoch, self.epochs, self.steps = stage, epoch, epochs, steps
        self.batch_size, self.every = config.batch_size, max(config.log_every_steps, 1)
        self.start, self.done_at_start = time.perf_counter(), done
        self.bar = console.progress(
            total=steps, initial=done, desc=f"{stage} epoch {epoch}/{epochs}", unit="step", leave=False
        )

    def step(self, step: int, totals: dict[str, float]) -> None:
        """Reports the epoch's ``step``-th step done, with the running sums ``totals``."""
        elapsed = time.perf_counter() - self.start
        rate = (step - self.done_at_start) * self.batch_size / max(elapsed, 1e-9)
        loss = totals["loss"] / max(totals["count"], 1.0)
        accuracy = totals["correct"] / max(totals["count"], 1.0)
        self.bar.set_postfix_str(f"loss {loss:.4f} acc {accuracy:.4f} {rate:.1f} img/s", refresh=False)
        self.bar.update()
        if step == self.steps:
            self.bar.refresh()  # the bar is cleared when the epoch ends: show it complete first
        if step % self.every and step != self.steps:
            return
        eta = (self.steps - step) * self.batch_size / max(rate, 1e-9)
        logging.info(
            "%s epoch %d/%d step %d/%d: loss %.4f acc %.4f, %.1f img/s, ETA %.0fs",
            self.stage,
            self.epoch,
            self.epochs,
            step,
            self.steps,
            loss,
            accuracy,
            rate,
            eta,
        )

    def close(self) -> None:
        self.bar.close()
