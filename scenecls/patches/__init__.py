"""Patch-based inference: the major and secondary classes of a photo from a grid of classified patches.

``PatchClassifier`` is the API (``from_workdir(path).predict(image)``); ``run_inference`` is
``scenecls --mode=infer``. Modules: ``grid`` (window geometry), ``engines`` (exact patch probabilities,
vmapped over jitted chunks, and the shared-feature approximation), ``coverage`` (coverage, abstentions,
major and secondary classes), ``explain`` (Grad-CAM heatmaps), ``patch_classifier`` (``PatchClassifier``),
``render`` (overlay and Grad-CAM PNGs), ``run`` (files in, JSON/PNG/CSV/NPZ out) and ``demo`` (the demo's
synthetic composites).
"""

from scenecls.patches.coverage import tally
from scenecls.patches.grid import patch_grid, prepare_image
from scenecls.patches.patch_classifier import PatchClassifier
from scenecls.patches.run import run_inference

__all__ = ["PatchClassifier", "patch_grid", "prepare_image", "run_inference", "tally"]
