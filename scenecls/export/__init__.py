"""Deployment files of a trained model: ``scenecls --mode=export`` writes ``<workdir>/export/``.

Modules: ``serving`` (the exported computation in JAX: preprocessing, model, calibrated softmax),
``formats`` (the SavedModel via jax2tf, TFLite and ONNX writers; imports TensorFlow), ``verify`` (each file
against the JAX model, including a fresh TensorFlow-only process), ``readme`` (the folder's README.txt) and
``run`` (the mode).
"""

from scenecls.export.run import ExportError, export_workdir

__all__ = ["ExportError", "export_workdir"]
