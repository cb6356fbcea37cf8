"""The configuration: defaults (the paper's final model, Version 4) and the one validation of every field.

Keras ResNet-50 + Inception head, two-stage transfer learning. It lives in the
package so configs/*.py files (and users' own) can import and adjust it from
any working directory. ``validate`` checks a config before anything runs: a
mistyped override (``--config.batch_size=0``, ``--config.patch.mode=fast``)
fails at once with one line naming the field, instead of minutes later deep
inside JAX or tf.data.
"""

import math
import re
from collections.abc import Callable
from typing import Any

import ml_collections

STAGES = ("stage1", "stage2")  # the two training stages, in order; each has a config section
METRICS = ("val_loss", "val_accuracy")
CACHE_DTYPES = ("float32", "bfloat16")  # storage of cached activations (config.cache_features.dtype)
TTA = ("", "flip", "flip_crops")  # test-time augmentation (config.eval.tta; see evaluation.evaluator)
_MISSING = object()

# The paper's stage 2 trains Keras' "last 30 layers" of the model, counted from its end; as trainable rules
# for each head (BatchNorm layers among them stay frozen unless a stage sets train_batchnorm):
# - inception: the head's 7 layers (3 convs, concatenate, pooling, dropout, dense), conv5_block2 and
#   conv5_block3 (10 layers each) and conv5_block1's last 3 (3_bn, add, out: no weighted layer);
# - gap: the head's 2 layers (pooling, dense), conv5_block2/3 and conv5_block1's last 8 (2_bn, 2_relu,
#   0_conv, 3_conv, 0_bn, 3_bn, add, out), so also conv5_block1's 0_conv and 3_conv.
# tests/train/test_optim.py checks both against tf_keras' ResNet50 layer list.
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
    # "auto": decode the training split once into a uint8 array (image_size, this process's shard) and serve
    # batches by indexing when it fits in_memory_max_gb (1,872 images at 224 px: 0.26 GiB); "true" always,
    # "false" streams the prepared records every epoch.
    config.data.in_memory = "auto"
    config.data.in_memory_max_gb = 4.0

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
    # Where: "device" (in the jitted train step), "host" (the tf.data pipeline) or "auto" (device on GPU/TPU,
    # on CPU what experiments/bench_input.py measured faster: scenecls.data.augment.CPU_PLACE).
    config.augment.where = "auto"

    # Model.
    config.model = ml_collections.ConfigDict()
    config.model.variant = "keras"  # keras | torchvision (selects preprocessing too)
    config.model.stage_sizes = (3, 4, 6, 3)  # ResNet-50
    config.model.width = 64
    config.model.head = "inception"  # inception | gap
    config.model.head_filters = 128
    config.model.head_kernel_sizes = (1, 3, 5)
    config.model.dropout_rate = 0.5
    # Compute dtype: auto (bfloat16 on GPU/TPU; float32 on CPU unless bfloat16 was measured faster there:
    # scenecls/models/precision.py), float32 or bfloat16. Parameters, BatchNorm statistics, logits and the
    # loss stay float32.
    config.model.dtype = "auto"

    # PATH to .h5/.safetensors/.pth or orbax dir, "keras:imagenet", or "none".
    config.pretrained = "none"

    config.class_weights = True  # inverse-frequency weights in the loss
    # Activations at each stage's gradient boundary, computed once (scenecls/train/feature_cache.py).
    # Everything in front of the boundary is frozen, so its output per image is fixed for the stage:
    # validation always uses the cache (exact), and so does training when augmentation is off (exact).
    config.cache_features = ml_collections.ConfigDict()
    config.cache_features.enabled = True
    # > 0 with augmentation on: K augmented views of each training image, cached once; epoch e trains on
    # view (e - 1) mod K. An approximation, off by default: with fewer views than epochs, views repeat.
    config.cache_features.views = 0
    config.cache_features.dtype = "float32"  # or "bfloat16": half the disk, rounded activations

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
    # Test-time augmentation: "" (off), "flip" (mean logits of the image and its mirror image) or
    # "flip_crops" (also 4 corner and a centre crop of 87.5%, and their mirror images: 12 views).
    config.eval.tta = ""
    # After training, fit a temperature on the validation split so that probabilities match accuracy
    # (scenecls/evaluation/calibration.py); evaluation and inference apply it. False: T = 1.
    config.calibrate = True

    # Patch-based inference.
    config.infer = ml_collections.ConfigDict()
    config.infer.inputs = ""  # files, folders or globs, comma separated
    config.infer.output_dir = ""  # empty: <workdir>/infer
    config.infer.demo_composites = 0  # > 0: after training, classify this many synthetic composites
    # "gradcam": also <name>_gradcam.png, Grad-CAM heatmaps of the major and secondary classes.
    config.infer.explain = ""
    config.infer.save_arrays = False  # with explain: also the heatmaps as arrays, <name>_gradcam.npz
    config.patch = ml_collections.ConfigDict()
    config.patch.size = 224
    config.patch.stride = 112
    config.patch.image_scale = 0  # > 0: resize so the shorter side is this first
    config.patch.secondary_threshold = 0.05
    # A patch whose top probability is below this abstains ("uncertain"); 0: every patch counts.
    config.patch.min_confidence = 0.0
    config.patch.mode = "exact"  # exact | shared
    config.patch.chunk_size = 32

    # --mode=serve: the web app and JSON API (scenecls/serve). Localhost only by default.
    config.serve = ml_collections.ConfigDict()
    config.serve.host = "127.0.0.1"
    config.serve.port = 8080
    # Micro-batching: patches of concurrent requests share forward passes of up to max_batch (0: the
    # compiled chunk, patch.chunk_size), collected for at most max_wait_ms. False: one request's chunk a pass.
    config.serve.batching = True
    config.serve.max_batch = 0
    config.serve.max_wait_ms = 5.0
    # Requests being analysed or waiting at once; one more is answered 503 with Retry-After.
    config.serve.max_pending = 64
    config.serve.max_upload_mb = 20.0  # request body limit (413 above)
    config.serve.max_pixels = 50_000_000  # decoded image limit (413 above; 50 Mpx is a 8000x6000 photo)
    config.serve.max_patches = 4096  # per request (413 above): bounds the work of one image
    config.serve.overlay_max_side = 1024  # px of the overlay PNG's longer side
    config.serve.shutdown_timeout_s = 30.0  # on SIGTERM, requests in flight get this long to finish
    # --mode=export: <workdir>/export/ with a SavedModel, TFLite and ONNX (scenecls/export/).
    config.export = ml_collections.ConfigDict()
    config.export.quantize = False  # also model_quantized.tflite (dynamic-range int8 weights)
    config.export.onnx_opset = 17
    # Synthetic photos (odd sizes) on which every export is checked against the JAX model.
    config.export.verify_images = 100
    return config


def _stage(epochs: int, learning_rate: float, trainable: tuple[str, ...]) -> ml_collections.ConfigDict:
    stage = ml_collections.ConfigDict()
    stage.epochs = epochs
    stage.learning_rate = learning_rate
    stage.trainable = trainable
    stage.train_batchnorm = False
    return stage


def _integer(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(low: float, high: float = math.inf, low_open: bool = False) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > low if low_open else v >= low) and v <= high

    return check


def _one_of(choices: Any) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), f"one of {sorted(choices)}"


def _ints(low: int, length: int | None = None) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(map(_integer(low), v))
        return ok and (length is None or len(v) == length)

    return check


def _rules() -> tuple[tuple[str, Callable[[Any], bool], str], ...]:
    """(field, predicate, what it must be), checked in order; choices come from where each concept lives."""
    from scenecls.data.augment import PLACES
    from scenecls.models import DTYPES, HEADS, VARIANTS
    from scenecls.patches.engines import MODES
    from scenecls.patches.explain import METHODS

    return (
        ("seed", _integer(0), "an integer >= 0"),
        ("image_size", _integer(32), "an integer >= 32"),
        ("batch_size", _integer(1), "an integer >= 1"),
        ("eval_batch_size", _integer(1), "an integer >= 1"),
        ("data.store_shorter_side", _integer(0), "an integer >= 0 (0: keep the original size)"),
        ("data.synthetic_per_class", _integer(0), "an integer >= 0"),
        ("data.shuffle_buffer", _integer(1), "an integer >= 1"),
        ("data.split_seed", _integer(0), "an integer >= 0"),
        ("data.in_memory", *_one_of(("auto", "true", "false"))),
        ("data.in_memory_max_gb", _number(0), "a number >= 0 (GiB of RAM for the training images)"),
        ("augment.rotation_degrees", _number(0, 180), "a number in [0, 180]"),
        ("augment.width_shift", _number(0, 1), "a fraction in [0, 1]"),
        ("augment.height_shift", _number(0, 1), "a fraction in [0, 1]"),
        ("augment.zoom", _number(0, 1), "a fraction in [0, 1]"),
        ("augment.where", *_one_of(PLACES)),
        ("model.variant", *_one_of(VARIANTS)),
        ("model.head", *_one_of(HEADS)),
        ("model.dtype", *_one_of(DTYPES)),
        ("model.stage_sizes", _ints(1, length=4), "four integers >= 1 (blocks per ResNet stage)"),
        ("model.width", _integer(1), "an integer >= 1"),
        ("model.head_filters", _integer(1), "an integer >= 1"),
        ("model.head_kernel_sizes", _ints(1), "a non-empty list of integers >= 1"),
        ("model.dropout_rate", lambda v: _number(0, 1)(v) and v < 1, "a number in [0, 1)"),
        ("stage1.epochs", _integer(0), "an integer >= 0"),
        ("stage1.learning_rate", _number(0, low_open=True), "a number > 0"),
        ("stage2.epochs", _integer(0), "an integer >= 0"),
        ("stage2.learning_rate", _number(0, low_open=True), "a number > 0"),
        ("early_stopping.metric", *_one_of(METRICS)),
        ("early_stopping.patience", _integer(1), "an integer >= 1"),
        ("reduce_lr.factor", _number(0, 1, low_open=True), "a number in (0, 1]"),
        ("reduce_lr.patience", _integer(1), "an integer >= 1"),
        ("reduce_lr.min_lr", _number(0), "a number >= 0"),
        ("log_every_steps", _integer(1), "an integer >= 1"),
        ("checkpoint_every_minutes", _number(0), "a number >= 0 (0: checkpoint at epoch ends only)"),
        ("max_nonfinite_steps", _integer(0), "an integer >= 0"),
        ("cache_features.enabled", lambda v: isinstance(v, bool), "True or False"),
        ("cache_features.views", _integer(0), "an integer >= 0 (0: no augmented views)"),
        ("cache_features.dtype", *_one_of(CACHE_DTYPES)),
        ("infer.demo_composites", _integer(0), "an integer >= 0"),
        ("infer.explain", *_one_of(METHODS)),
        ("infer.save_arrays", lambda v: isinstance(v, bool), "True or False"),
        ("eval.tta", *_one_of(TTA)),
        ("calibrate", lambda v: isinstance(v, bool), "True or False"),
        ("patch.size", _integer(32), "an integer >= 32"),
        ("patch.stride", _integer(1), "an integer >= 1"),
        ("patch.image_scale", _integer(0), "an integer >= 0 (0: keep the original size)"),
        ("patch.secondary_threshold", _number(0, 1), "a fraction in [0, 1]"),
        ("patch.min_confidence", _number(0, 1), "a number in [0, 1]"),
        ("patch.mode", *_one_of(MODES)),
        ("patch.chunk_size", _integer(1), "an integer >= 1"),
        ("serve.host", lambda v: isinstance(v, str) and bool(v), "a host name or address"),
        (
            "serve.port",
            lambda v: _integer(1)(v) and v <= 65535,
            "an integer in [1, 65535]",
        ),
        ("serve.batching", lambda v: isinstance(v, bool), "True or False"),
        ("serve.max_batch", _integer(0), "an integer >= 0 (0: patch.chunk_size)"),
        ("serve.max_wait_ms", _number(0, 1000), "a number of milliseconds in [0, 1000]"),
        ("serve.max_pending", _integer(1), "an integer >= 1"),
        ("serve.max_upload_mb", _number(0, low_open=True), "a number > 0"),
        ("serve.max_pixels", _integer(1), "an integer >= 1"),
        ("serve.max_patches", _integer(1), "an integer >= 1"),
        ("serve.overlay_max_side", _integer(16), "an integer >= 16"),
        ("serve.shutdown_timeout_s", _number(0), "a number >= 0"),
        ("export.quantize", lambda v: isinstance(v, bool), "True or False"),
        ("export.onnx_opset", lambda v: _integer(13)(v) and v <= 21, "an integer in [13, 21]"),
        ("export.verify_images", _integer(1), "an integer >= 1"),
    )


def validate(config: ml_collections.ConfigDict | dict) -> None:
    """Checks every field a run uses; fields absent from a (user's reduced) config are not required.

    Raises:
      ValueError: one line, ``config.<field>=<value> is invalid: must be ...``.
    """
    for field, ok, expected in _rules():
        value = _get(config, field)
        if value is not _MISSING and not ok(value):
            raise ValueError(f"config.{field}={value!r} is invalid: must be {expected}")
    _validate_split(_get(config, "data.split"))
    stride, size = _get(config, "patch.stride"), _get(config, "patch.size")
    if _MISSING not in (stride, size) and stride > size:
        raise ValueError(
            f"config.patch.stride={stride} is invalid: must be <= patch.size={size} (every pixel covered)"
        )
    for stage in STAGES:
        for pattern in _get(config, f"{stage}.trainable", ()):
            try:
                re.compile(pattern)
            except (re.error, TypeError) as e:
                raise ValueError(
                    f"config.{stage}.trainable: {pattern!r} is not a valid regex ({e})"
                ) from None


def validate_patch(patch_config: ml_collections.ConfigDict) -> None:
    """``validate`` for a ``patch`` section on its own (patch inference driven from Python)."""
    validate({"patch": patch_config})


def _validate_split(split: Any) -> None:
    if split is _MISSING:
        return
    fractions = _number(0, 1)
    if not isinstance(split, (list, tuple)) or len(split) != 3 or not all(map(fractions, split)):
        raise ValueError(f"config.data.split={split!r} is invalid: must be three fractions in [0, 1]")
    if not math.isclose(sum(split), 1.0, abs_tol=1e-6):
        raise ValueError(f"config.data.split={split!r} is invalid: the fractions must sum to 1")


def _get(config: ml_collections.ConfigDict, field: str, default: Any = _MISSING) -> Any:
    value: Any = config
    for part in field.split("."):
        if not isinstance(value, (ml_collections.ConfigDict, dict)) or part not in value:
            return default
        value = value[part]
    return value
