"""Two-stage transfer learning.

Modules: ``loop`` (``train_and_evaluate`` sequences the stages, ``run_stage`` runs one), ``stage``
(``setup_stage``: what a stage trains, its model, state and jitted step), ``step`` (TrainState and the train
step), ``optim`` (freeze rules, the gradient boundary and the masked optax transform), ``schedule`` (early
stopping, reduce-LR-on-plateau), ``guard`` (checkpoints, signals, non-finite losses), ``feature_cache``
(frozen-backbone features computed once) and ``history`` (history.json, curves, TensorBoard).

The step and the stage setup need no TensorFlow; ``loop`` and ``feature_cache`` read prepared data through
the tf.data pipeline, so ``train_and_evaluate`` is imported on first use (a serving or export box, or a GPU
image without TensorFlow, can still ``import scenecls.train``).
"""

from typing import Any

from scenecls.train.stage import Stage, initial_variables, setup_stage
from scenecls.train.step import TrainState, create_train_state, train_step, weighted_cross_entropy


def __getattr__(name: str) -> Any:
    """``train_and_evaluate`` on first use: its input pipeline imports TensorFlow; stage and step do not."""
    if name == "train_and_evaluate":
        from scenecls.train.loop import train_and_evaluate

        return train_and_evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Stage",
    "TrainState",
    "create_train_state",
    "initial_variables",
    "setup_stage",
    "train_and_evaluate",
    "train_step",
    "weighted_cross_entropy",
]
