"""Activations at a stage's gradient boundary, computed once per stage instead of once per epoch.

Everything in front of a stage's gradient boundary is frozen: it gets no update and its BatchNorm layers run
in inference mode (see ``optim``). The activations entering the boundary (the backbone's output in stage one,
the input of conv5_block2 in the default stage two) are therefore a fixed function of each input image for
the whole stage, and recomputing them every epoch is wasted work:

- **Validation** is never augmented, so its activations are always cached (exact).
- **Training without augmentation** is cached the same way (exact): an epoch then runs only the layers from
  the boundary on.
- **Training with augmentation** trains on images, unless ``config.cache_features.views`` = K > 0 (opt-in):
  K augmented views of every image (``pipeline.eval_batches(view=k)``, deterministic from the seed) are
  cached once, and epoch e trains on view (e - 1) mod K of every image. This is an approximation: the
  model sees K distinct augmentations of an image instead of one per epoch, so views repeat when a stage
  has more epochs than views.

"Exact" means the plain path's results up to float summation order (the tests compare histories at 1e-4).
The activations live in memory-mapped files under ``<workdir>/feature_cache/`` (float32, or bfloat16 to halve
the disk at the cost of rounding), rebuilt when a stage starts and deleted when it ends. A cache that would
not fit the free disk is refused before any compute. Multi-process runs do not cache.
"""

import functools
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np
from absl import logging

from scenecls import console
from scenecls.data import augment, pipeline
from scenecls.data.builder import PreparedData
from scenecls.models import Classifier
from scenecls.models.preprocessing import preprocess
from scenecls.train.stage import Stage

CACHE_DIR = "feature_cache"  # under the workdir
_STORAGE = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
_DISK_MARGIN = 0.9  # use at most this share of the free disk


class CachedSplit(NamedTuple):
    """Activations of one split at a backbone point, in stored order: (views, N, h, w, C), labels, files."""

    activations: np.ndarray  # memory-mapped; one view unless augmented views were cached
    labels: np.ndarray  # (N,) int32
    files: np.ndarray  # (N,) str


class Plan(NamedTuple):
    """What a stage caches: its validation split, and ``views`` of its training split (0: on images)."""

    validation: bool
    views: int  # training views cached: 1 when exact (no augmentation), K with augmented views, else 0
    approximate: bool  # augmented views stand in for on-the-fly augmentation
    reason: str  # why training is not cached, or how it is


def plan(config: ml_collections.ConfigDict, boundary: str | None) -> Plan:
    """What a stage with gradient ``boundary`` caches under ``config`` (see the module docstring)."""
    if not config.cache_features.enabled:
        return Plan(False, 0, False, "config.cache_features.enabled is off")
    if boundary is None:
        return Plan(False, 0, False, "the whole backbone trains (no frozen layers in front of a boundary)")
    if jax.process_count() > 1:
        return Plan(False, 0, False, "a multi-process run")
    if not augment.augments(config.augment):
        return Plan(True, 1, False, "no augmentation: training activations cached exactly")
    views = config.cache_features.views
    if views:
        return Plan(
            True,
            views,
            True,
            f"{views} augmented view(s) of each training image cached (an approximation: with fewer views "
            "than epochs, views repeat; set config.cache_features.views=0 for on-the-fly augmentation)",
        )
    return Plan(True, 0, False, "training images are augmented on the fly (config.cache_features.views=0)")


def _activations(
    model: Classifier, preprocessing: str, point: str, variables: Any, images: jnp.ndarray
) -> jnp.ndarray:
    return model.apply(variables, preprocess(images, preprocessing), point, method=Classifier.activations)


def cache_split(
    stage: Stage,
    variables: Any,
    prepared: PreparedData,
    split: str,
    config: ml_collections.ConfigDict,
    views: int,
    directory: str,
) -> CachedSplit:
    """Runs the frozen layers in front of ``stage``'s boundary over every image of ``split`` into
    ``directory``: the plain images (``views`` = 0), or ``views`` augmented views of them."""
    point = stage.boundary
    fn = jax.jit(functools.partial(_activations, stage.model, stage.preprocessing, point))
    total = sum(prepared.counts[split])
    shape = activation_shape(stage, variables, config.image_size)
    storage = _STORAGE[config.cache_features.dtype]
    path = os.path.join(directory, f"{split}.bin")
    os.makedirs(directory, exist_ok=True)
    activations = np.memmap(path, dtype=storage, mode="w+", shape=(max(views, 1), total, *shape))
    labels, files = np.zeros((total,), np.int32), np.empty((total,), object)
    steps = -(-total // config.eval_batch_size)
    for view in range(max(views, 1)):
        batches = pipeline.eval_batches(prepared, split, config, view=view if views else None)
        desc = f"Caching {split} activations" + (f" (view {view + 1}/{views})" if views else "")
        filled = 0
        for batch in console.progress(batches, total=steps, desc=desc, unit="batch"):
            count = int(batch["mask"].sum())
            out = np.asarray(fn(variables, batch["image"]))[:count]
            activations[view, filled : filled + count] = out.astype(storage)
            labels[filled : filled + count] = batch["label"][:count]
            files[filled : filled + count] = batch["file"][:count]
            filled += count
    activations.flush()
    logging.info("Cached %d %s images at %s: %s x %s %s", total, split, point, max(views, 1), shape, path)
    return CachedSplit(activations=activations, labels=labels, files=files.astype(str))


def activation_shape(stage: Stage, variables: Any, image_size: int) -> tuple[int, ...]:
    """Shape (h, w, C) of one image's activations at the stage's boundary (no computation)."""
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.uint8)
    fn = functools.partial(_activations, stage.model, stage.preprocessing, stage.boundary)
    return tuple(jax.eval_shape(fn, variables, images).shape[1:])


def check_disk(directory: str, needed: int) -> None:
    """Raises ValueError, before any compute, when ``needed`` bytes would not fit the free disk there."""
    os.makedirs(directory, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if needed > _DISK_MARGIN * free:
        raise ValueError(
            f"the feature cache needs {needed / 2**30:.2f} GiB in {directory} but only "
            f"{free / 2**30:.2f} GiB are free; free some space, or set "
            "--config.cache_features.dtype=bfloat16 (half the size), fewer --config.cache_features.views, "
            "or --config.cache_features.enabled=false"
        )


def train_batches(
    cached: CachedSplit, prepared: PreparedData, config: ml_collections.ConfigDict, epoch: int
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of ``{"image": activations, "label"}`` batches, in the order the image pipeline would use;
    from view (epoch - 1) mod K when K views were cached."""
    view = (epoch - 1) % cached.activations.shape[0]
    for indices in pipeline.train_order(prepared, config, epoch):
        yield {"image": cached.activations[view, indices].astype(np.float32), "label": cached.labels[indices]}


def eval_batches(cached: CachedSplit, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Every cached example once, as masked batches like ``pipeline.eval_batches`` (last one padded)."""
    total = len(cached.labels)
    for start in range(0, total, batch_size):
        indices = np.arange(start, start + batch_size)
        mask = indices < total
        indices = np.where(mask, indices, 0)
        yield {
            "image": cached.activations[0, indices].astype(np.float32),
            "label": cached.labels[indices],
            "mask": mask,
            "file": np.where(mask, cached.files[indices], ""),
        }


def cached_inputs(
    config: ml_collections.ConfigDict,
    stage: Stage,
    variables: Any,
    prepared: PreparedData,
    workdir: str,
    stage_plan: Plan,
) -> tuple[Stage, Callable[[int], Iterator] | None, Stage, Callable[[], Iterator]]:
    """Caches what ``stage_plan`` says; returns the stage that trains and its epoch batches (None when it
    trains on images), and the stage that validates and its batches (on activations at the boundary)."""
    directory = os.path.join(workdir, CACHE_DIR)
    rows = stage_plan.views * sum(prepared.counts["train"]) + sum(prepared.counts["validation"])
    item = int(np.prod(activation_shape(stage, variables, config.image_size)))
    check_disk(directory, rows * item * _STORAGE[config.cache_features.dtype].itemsize)
    validation = cache_split(stage, variables, prepared, "validation", config, 0, directory)
    on_activations = stage.on_activations()
    validation_batches = functools.partial(eval_batches, validation, config.eval_batch_size)
    if not stage_plan.views:
        return stage, None, on_activations, validation_batches
    views = stage_plan.views if stage_plan.approximate else 0  # 0: the plain images, once
    train = cache_split(stage, variables, prepared, "train", config, views, directory)
    return (
        on_activations,
        functools.partial(train_batches, train, prepared, config),
        on_activations,
        validation_batches,
    )


def remove(workdir: str) -> None:
    """Deletes a stage's cached activations."""
    shutil.rmtree(os.path.join(workdir, CACHE_DIR), ignore_errors=True)
