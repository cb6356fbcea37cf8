"""Scalar summaries for TensorBoard, written with tf.summary (TensorFlow is already a dependency)."""

from collections.abc import Mapping


class SummaryWriter:
    """Writes scalar dicts as TensorBoard event files under ``logdir``."""

    def __init__(self, logdir: str):
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
        self._tf = tf
        self._writer = tf.summary.create_file_writer(logdir)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Writes one value per name at ``step``."""
        with self._writer.as_default(step=step):
            for name, value in values.items():
                self._tf.summary.scalar(name, float(value))
        self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        self._writer.close()
