"""Data: robust image loading, synthetic scenes, dataset preparation (tfds) and the tf.data input pipeline.

Modules: ``images`` (decode any image to upright RGB), ``synthetic`` (demo/test scenes), ``folder`` (scan,
fingerprint, stratified split), ``builder`` (``prepare``: folder -> versioned tfds dataset + report) and
``augment`` (the training augmentation's one definition, and its JAX twin for the train step) and
``pipeline`` (train/eval batches as numpy, streamed or from memory). Only ``builder`` and ``pipeline`` import
TensorFlow.
"""
