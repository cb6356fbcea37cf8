"""Test-sized twin of the default config: shallow narrow ResNet, 64 px, one epoch per stage."""

from scenecls.config import default_config


def get_config():
    """Returns a config that trains in seconds on a CPU (for tests)."""
    config = default_config()
    config.data.store_shorter_side = 72
    config.data.synthetic_per_class = 12
    config.data.shuffle_buffer = 64
    config.image_size = 64
    config.batch_size = 8
    config.eval_batch_size = 16
    config.model.stage_sizes = (1, 1, 1, 1)
    config.model.width = 8
    config.model.head_filters = 8
    config.stage1.epochs = 1
    config.stage1.learning_rate = 1e-3
    config.stage2.epochs = 1
    config.stage2.learning_rate = 1e-3
    config.stage2.trainable = ("^head/", "^backbone/conv5_block1_")
    config.log_every_steps = 1
    config.patch.size = 64
    config.patch.stride = 32
    config.patch.chunk_size = 8
    return config
