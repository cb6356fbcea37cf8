"""Validation of a training/inference config before anything runs.

A mistyped override (``--config.batch_size=0``, ``--config.patch.mode=fast``) fails at once with one line
naming the field, instead of minutes later deep inside JAX or tf.data.
"""

import math
import re
from collections.abc import Callable
from typing import Any

import ml_collections

from scenecls.models.factory import DTYPES, HEADS
from scenecls.models.resnet import VARIANTS
from scenecls.patches.classifier import MODES

METRICS = ("val_loss", "val_accuracy")
_MISSING = object()


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


# (field, predicate, what it must be). Checked in order; the first failure is reported.
_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("seed", _integer(0), "an integer >= 0"),
    ("image_size", _integer(32), "an integer >= 32"),
    ("batch_size", _integer(1), "an integer >= 1"),
    ("eval_batch_size", _integer(1), "an integer >= 1"),
    ("data.store_shorter_side", _integer(0), "an integer >= 0 (0: keep the original size)"),
    ("data.synthetic_per_class", _integer(0), "an integer >= 0"),
    ("data.shuffle_buffer", _integer(1), "an integer >= 1"),
    ("data.split_seed", _integer(0), "an integer >= 0"),
    ("augment.rotation_degrees", _number(0, 180), "a number in [0, 180]"),
    ("augment.width_shift", _number(0, 1), "a fraction in [0, 1]"),
    ("augment.height_shift", _number(0, 1), "a fraction in [0, 1]"),
    ("augment.zoom", _number(0, 1), "a fraction in [0, 1]"),
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
    ("cache_features", lambda v: isinstance(v, bool), "True or False"),
    ("infer.demo_composites", _integer(0), "an integer >= 0"),
    ("patch.size", _integer(32), "an integer >= 32"),
    ("patch.stride", _integer(1), "an integer >= 1"),
    ("patch.image_scale", _integer(0), "an integer >= 0 (0: keep the original size)"),
    ("patch.secondary_threshold", _number(0, 1), "a fraction in [0, 1]"),
    ("patch.mode", *_one_of(MODES)),
    ("patch.chunk_size", _integer(1), "an integer >= 1"),
)


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every field a run uses; fields absent from a (user's reduced) config are not required.

    Raises:
      ValueError: one line, ``config.<field>=<value> is invalid: must be ...``.
    """
    for field, ok, expected in _RULES:
        value = _get(config, field)
        if value is not _MISSING and not ok(value):
            raise ValueError(f"config.{field}={value!r} is invalid: must be {expected}")
    _validate_split(_get(config, "data.split"))
    for stage in ("stage1", "stage2"):
        for pattern in _get(config, f"{stage}.trainable", ()):
            try:
                re.compile(pattern)
            except (re.error, TypeError) as e:
                raise ValueError(
                    f"config.{stage}.trainable: {pattern!r} is not a valid regex ({e})"
                ) from None


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
