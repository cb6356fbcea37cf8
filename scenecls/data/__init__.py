"""Data: robust image loading, synthetic scenes, dataset preparation (tfds) and the tf.data input pipeline.

Modules: ``images`` (decode any image to upright RGB), ``synthetic`` (demo/test scenes), ``folder`` (scan,
fingerprint, stratified split), ``builder`` (``prepare``: folder -> versioned tfds dataset + report) and
``pipeline`` (train/eval batches as numpy). Only ``builder`` and ``pipeline`` import TensorFlow.
"""
