"""A run's folder: checkpoints (orbax, verified), run files and their compatibility, the lock, and loading
the trained model for evaluation and inference."""

from scenecls.workdir.checkpoints import CorruptCheckpointError, WorkdirError, WriteError
from scenecls.workdir.inference import InferenceModel, load_for_inference

__all__ = ["CorruptCheckpointError", "InferenceModel", "WorkdirError", "WriteError", "load_for_inference"]
