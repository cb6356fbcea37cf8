"""A stage's schedule: where it stands, early stopping and reduce-LR-on-plateau (Keras semantics)."""

import dataclasses

import ml_collections
from absl import logging


@dataclasses.dataclass
class StageProgress:
    """Where a stage stands: epochs done, learning rate and plateau bookkeeping (JSON-able)."""

    epochs_done: int
    learning_rate: float
    best: float | None = None
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    epochs_since_lr_change: int = 0
    stopped_early: bool = False
    nonfinite_steps: int = 0


@dataclasses.dataclass
class EpochPosition:
    """Steps done in the current epoch and their summed metrics (kept in mid-epoch checkpoints)."""

    step: int = 0
    totals: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"loss": 0.0, "correct": 0.0, "count": 0.0}
    )


def update_progress(
    progress: StageProgress, value: float, config: ml_collections.ConfigDict, max_epochs: int
) -> bool:
    """Advances plateau bookkeeping after an epoch; returns True when ``value`` is a new best.

    Early stopping and the LR reduction follow Keras' EarlyStopping and
    ReduceLROnPlateau (no min_delta, no cooldown).
    """
    sign = -1.0 if config.early_stopping.metric == "val_loss" else 1.0
    progress.epochs_done += 1
    improved = progress.best is None or sign * value > sign * progress.best
    if improved:
        progress.best, progress.best_epoch = value, progress.epochs_done
        progress.epochs_without_improvement = progress.epochs_since_lr_change = 0
    else:
        progress.epochs_without_improvement += 1
        progress.epochs_since_lr_change += 1
        if progress.epochs_since_lr_change >= config.reduce_lr.patience:
            new_lr = max(progress.learning_rate * config.reduce_lr.factor, config.reduce_lr.min_lr)
            if new_lr < progress.learning_rate:
                logging.info("Reducing learning rate %.3g -> %.3g", progress.learning_rate, new_lr)
            progress.learning_rate, progress.epochs_since_lr_change = new_lr, 0
        if (
            progress.epochs_without_improvement >= config.early_stopping.patience
            and progress.epochs_done < max_epochs
        ):
            logging.info(
                "Early stopping: no %s improvement for %d epochs",
                config.early_stopping.metric,
                progress.epochs_without_improvement,
            )
            progress.stopped_early = True
    return improved
