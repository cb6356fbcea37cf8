"""Evaluation of a trained model: predictions over a split (``evaluate``), metrics, the eval/ directory's
files (``reports``) and plots."""

from scenecls.evaluation.evaluator import calibrate, evaluate, predict_split

__all__ = ["calibrate", "evaluate", "predict_split"]
