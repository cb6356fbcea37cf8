"""Default configuration: the paper's final model (Version 4).

Keras ResNet-50 + Inception head, two-stage transfer learning. It lives in the
package so configs/*.py files (and users' own) can import and adjust it from
any working directory.
"""

import ml_collections

# The paper's stage 2 trains Keras' "last 30 layers" of the model, counted from its end; as trainable rules
# for each head (BatchNorm layers among them stay frozen unless a stage sets train_batchnorm):
# - inception: the head's 7 layers (3 convs, concatenate, pooling, dropout, dense), conv5_block2 and
#   conv5_block3 (10 layers each) and conv5_block1's last 3 (3_bn, add, out: no weighted layer);
# - gap: the head's 2 layers (pooling, dense), conv5_block2/3 and conv5_block1's last 8 (2_bn, 2_relu,
#   0_conv, 3_conv, 0_bn, 3_bn, add, out), so also conv5_block1's 0_conv and 3_conv.
# tests/test_freeze.py checks both against tf_keras' ResNet50 layer list.
_LAST_30_LAYERS = {
    "inception": ("^head/", "^backbone/conv5_block2_", "^backbone/conv5_block3_"),
    "gap": (
        "^head/",
        "^backbone/conv5_block1_[03]_conv/",
        "^backbone/conv5_block2_",
        "^backbone/conv5_block3_",
    ),
}


def last_30_layers(head: str) -> tuple[str, ...]:
    """Trainable rules for Keras' last 30 layers of ResNet-50 plus ``head`` ("inception" or "gap")."""
    if head not in _LAST_30_LAYERS:
        raise ValueError(f"unknown head {head!r}; expected one of {sorted(_LAST_30_LAYERS)}")
    return _LAST_30_LAYERS[head]


def default_config() -> ml_collections.ConfigDict:
    """Returns the default training configuration."""
    config = ml_collections.ConfigDict()
    config.seed = 0

    # Data: a folder of class folders, prepared once into a tfds dataset.
    config.data = ml_collections.ConfigDict()
    config.data.source_dir = ""  # e.g. /data/campus with Buildings/, Cars/, ...
    config.data.classes = ()  # empty: sorted class-folder names
    config.data.prepared_dir = ""  # empty: <workdir>/prepared
    config.data.split = (0.7, 0.15, 0.15)  # train / validation / test
    config.data.split_seed = 0
    config.data.store_shorter_side = 256  # images are stored pre-resized
    config.data.synthetic_per_class = 0  # > 0: generate a synthetic scene set first
    config.data.shuffle_buffer = 2048

    config.image_size = 224
    config.batch_size = 32  # global batch size
    config.eval_batch_size = 64

    # Augmentation (train only), Keras ImageDataGenerator semantics.
    config.augment = ml_collections.ConfigDict()
    config.augment.rotation_degrees = 10.0
    config.augment.width_shift = 0.05
    config.augment.height_shift = 0.05
    config.augment.zoom = 0.1
    config.augment.horizontal_flip = True

    # Model.
    config.model = ml_collections.ConfigDict()
    config.model.variant = "keras"  # keras | torchvision (selects preprocessing too)
    config.model.stage_sizes = (3, 4, 6, 3)  # ResNet-50
    config.model.width = 64
    config.model.head = "inception"  # inception | gap
    config.model.head_filters = 128
    config.model.head_kernel_sizes = (1, 3, 5)
    config.model.dropout_rate = 0.5
    config.model.dtype = "float32"  # compute dtype; parameters stay float32

    # PATH to .h5/.safetensors/.pth or orbax dir, "keras:imagenet", or "none".
    config.pretrained = "none"

    config.class_weights = True  # inverse-frequency weights in the loss
    # Stage 1 with no augmentation: run the frozen backbone once per image and train the head on stored
    # features (same results, a fraction of the cost; see scenecls/feature_cache.py).
    config.cache_features = True

    # Two-stage transfer learning. `trainable` is an ordered list of regexes
    # over parameter paths (e.g. "backbone/conv5_block3_2_conv/kernel");
    # everything else is frozen. BatchNorm stays frozen unless train_batchnorm.
    config.stage1 = _stage(epochs=15, learning_rate=1e-5, trainable=("^head/",))
    # Keras' last 30 layers (see last_30_layers; a config that changes model.head sets its own tail).
    config.stage2 = _stage(epochs=10, learning_rate=1e-5, trainable=last_30_layers(config.model.head))

    config.early_stopping = ml_collections.ConfigDict()
    config.early_stopping.metric = "val_loss"  # val_loss | val_accuracy
    config.early_stopping.patience = 5
    config.reduce_lr = ml_collections.ConfigDict()
    config.reduce_lr.factor = 0.2
    config.reduce_lr.patience = 3
    config.reduce_lr.min_lr = 1e-7

    config.log_every_steps = 10
    # The resumable state is saved after every epoch, every this many minutes within one (0: epochs only)
    # and on SIGINT/SIGTERM. Steps whose loss is not finite are skipped (no update); more than this many
    # stop training with the last good checkpoint kept.
    config.checkpoint_every_minutes = 10.0
    config.max_nonfinite_steps = 0

    # Evaluation.
    config.eval = ml_collections.ConfigDict()
    config.eval.source_dir = ""  # another labelled folder to evaluate on instead

    # Patch-based inference.
    config.infer = ml_collections.ConfigDict()
    config.infer.inputs = ""  # files, folders or globs, comma separated
    config.infer.output_dir = ""  # empty: <workdir>/infer
    config.infer.demo_composites = 0  # > 0: after training, classify this many synthetic composites
    config.patch = ml_collections.ConfigDict()
    config.patch.size = 224
    config.patch.stride = 112
    config.patch.image_scale = 0  # > 0: resize so the shorter side is this first
    config.patch.secondary_threshold = 0.05
    config.patch.mode = "exact"  # exact | shared
    config.patch.chunk_size = 32
    return config


def _stage(epochs: int, learning_rate: float, trainable: tuple[str, ...]) -> ml_collections.ConfigDict:
    stage = ml_collections.ConfigDict()
    stage.epochs = epochs
    stage.learning_rate = learning_rate
    stage.trainable = trainable
    stage.train_batchnorm = False
    return stage
