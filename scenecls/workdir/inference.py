"""A trained workdir's model for evaluation and inference: config, classes, model and best variables."""

import os
from typing import Any, NamedTuple

import jax
import ml_collections

from scenecls.config import STAGES
from scenecls.models import Classifier, build_classifier, calibration
from scenecls.workdir import checkpoints
from scenecls.workdir.run_files import read_run_config


class InferenceModel(NamedTuple):
    """Everything needed to run a trained model."""

    config: ml_collections.ConfigDict
    classes: tuple[str, ...]
    model: Classifier
    variables: dict[str, Any]
    temperature: float = 1.0  # fitted on validation after training (models.calibration); 1: none
    stage: str = ""  # whose best checkpoint the variables are


def final_stage(workdir: str) -> str:
    """The last stage with a best checkpoint (the model to evaluate and deploy)."""
    for stage in reversed(STAGES):
        path = os.path.join(workdir, "checkpoints", f"best_{stage}")
        if os.path.isdir(path) and checkpoints.best_manager(workdir, stage).latest_step() is not None:
            return stage
    raise checkpoints.WorkdirError(
        f"{workdir}: no trained checkpoint found under checkpoints/; run --mode=train first"
    )


def load_for_inference(workdir: str) -> InferenceModel:
    """Config, classes, model and best variables of a trained workdir.

    Raises:
      WorkdirError: no trained run, a newer format, or a corrupt best checkpoint (named in the message).
    """
    config, classes = read_run_config(workdir)
    stage = final_stage(workdir)
    manager = checkpoints.best_manager(workdir, stage)
    variables = checkpoints.restore_state(manager, manager.latest_step())
    variables = jax.tree_util.tree_map(jax.numpy.asarray, variables)
    model = build_classifier(config.model, num_classes=len(classes))
    temperature = calibration.read_temperature(workdir)
    return InferenceModel(config, classes, model, variables, temperature, stage)
