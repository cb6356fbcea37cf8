"""Demo: synthetic scenes generated into the workdir on first use; no download, a few minutes on a CPU.

With no pretrained weights the backbone starts from random init, so the demo
uses a small ResNet (one block per stage) at 64 px and trains it whole, with
BatchNorm, in stage 2. The recipe (two stages, frozen backbone first) is the
paper's; only sizes differ.
"""

from scenecls.config import default_config


def get_config():
    """Returns the demo config."""
    config = default_config()
    config.data.synthetic_per_class = 120
    config.data.store_shorter_side = 80
    config.image_size = 64
    config.batch_size = 16
    config.model.stage_sizes = (1, 1, 1, 1)
    config.model.width = 16
    config.model.head_filters = 32
    config.model.dropout_rate = 0.3
    config.stage1.epochs = 3
    config.stage1.learning_rate = 3e-3
    config.stage2.epochs = 10
    config.stage2.learning_rate = 1e-3
    config.stage2.trainable = (".*",)
    config.stage2.train_batchnorm = True
    config.early_stopping.patience = 4
    config.reduce_lr.patience = 2
    config.log_every_steps = 20
    config.infer.demo_composites = 3
    config.patch.size = 64
    config.patch.stride = 32
    return config
