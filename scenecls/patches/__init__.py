"""Patch-based inference: the major and secondary classes of a photo from a grid of classified patches.

``PatchClassifier`` is the API (``from_workdir(path).predict(image)``); ``run_inference`` is
``scenecls --mode=infer``. Modules: ``grid`` (window geometry), ``engines`` (exact and shared-feature
patch probabilities), ``summary`` (coverage arithmetic), ``render`` (overlay PNG), ``run`` (files in,
JSON/PNG/CSV out).
"""

from scenecls.patches.classifier import PatchClassifier
from scenecls.patches.grid import patch_grid, prepare_image
from scenecls.patches.run import run_inference
from scenecls.patches.summary import summarize

__all__ = ["PatchClassifier", "patch_grid", "prepare_image", "run_inference", "summarize"]
