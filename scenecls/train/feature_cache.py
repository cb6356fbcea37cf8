"""Feature cache: run a frozen backbone once per image, then train the head on its stored features.

When nothing before the head trains (the gradient boundary is the backbone's output and BatchNorm is
frozen) and training images are not augmented, every epoch recomputes the same backbone output for each
image. Computing it once and training the head on the stored maps gives the plain path's results (up to
float summation order) for the cost of one forward pass over the data plus cheap head steps. Features are
kept in memory-mapped ``.npy`` files under ``<workdir>/feature_cache/`` (about 400 KB per image for
ResNet-50 at 224 px), rebuilt at the start of each run of the stage and deleted when it ends.
"""

import functools
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from scenecls import console
from scenecls.data import pipeline
from scenecls.data.builder import PreparedData
from scenecls.models import Classifier
from scenecls.models.preprocessing import preprocess
from scenecls.train.stage import Stage

CACHE_DIR = "feature_cache"  # under the workdir


class CachedSplit(NamedTuple):
    """Backbone features of one split in stored order, with labels and source files."""

    features: np.ndarray  # (N, h, w, C) float32, memory-mapped
    labels: np.ndarray  # (N,) int32
    files: np.ndarray  # (N,) str


def unusable_reason(config: ml_collections.ConfigDict, stage: str, boundary: str | None) -> str | None:
    """Why a stage cannot train on cached features (None when it can, exactly)."""
    if not config.cache_features:
        return "config.cache_features is off"
    if boundary != "output" or config[stage].train_batchnorm:
        return "backbone layers train in this stage"
    if pipeline.augments(config.augment):
        return "training images are augmented (set every config.augment field to 0/False to cache)"
    return None


def _features(model: Classifier, preprocessing: str, variables: Any, images: jnp.ndarray) -> jnp.ndarray:
    return model.apply(variables, preprocess(images, preprocessing), method=Classifier.features)


def cache_split(
    model: Classifier,
    variables: Any,
    prepared: PreparedData,
    split: str,
    config: ml_collections.ConfigDict,
    preprocessing: str,
    directory: str,
) -> CachedSplit:
    """Runs the backbone once over every image of ``split`` (unaugmented, stored order) into ``directory``."""
    features_fn = jax.jit(functools.partial(_features, model, preprocessing))
    total = sum(prepared.counts[split])
    features, labels, files, filled = None, np.zeros((total,), np.int32), np.empty((total,), object), 0
    batches = pipeline.eval_batches(prepared, split, config)
    steps = -(-total // config.eval_batch_size)
    for batch in console.progress(batches, total=steps, desc=f"Caching {split} features", unit="batch"):
        count = int(batch["mask"].sum())
        out = np.asarray(features_fn(variables, batch["image"]))[:count]
        if features is None:
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, f"{split}.npy")
            features = np.lib.format.open_memmap(
                path, mode="w+", dtype=np.float32, shape=(total, *out.shape[1:])
            )
        features[filled : filled + count] = out
        labels[filled : filled + count] = batch["label"][:count]
        files[filled : filled + count] = batch["file"][:count]
        filled += count
    logging.info("Feature cache: %d %s images -> %s %s", total, split, features.shape[1:], directory)
    return CachedSplit(features=features, labels=labels, files=files.astype(str))


def train_batches(
    cached: CachedSplit, prepared: PreparedData, config: ml_collections.ConfigDict, epoch: int
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of ``{"image": features, "label"}`` batches, in the order the image pipeline would use."""
    for indices in pipeline.train_order(prepared, config, epoch):
        yield {"image": cached.features[indices], "label": cached.labels[indices]}


def eval_batches(cached: CachedSplit, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Every cached example once, as masked batches like ``pipeline.eval_batches`` (last one padded)."""
    total = len(cached.labels)
    for start in range(0, total, batch_size):
        indices = np.arange(start, start + batch_size)
        mask = indices < total
        indices = np.where(mask, indices, 0)
        yield {
            "image": cached.features[indices],
            "label": cached.labels[indices],
            "mask": mask,
            "file": np.where(mask, cached.files[indices], ""),
        }


def remove(workdir: str) -> None:
    """Deletes a stage's cached features."""
    shutil.rmtree(os.path.join(workdir, CACHE_DIR), ignore_errors=True)


def cached_inputs(
    config: ml_collections.ConfigDict,
    stage: Stage,
    variables: Any,
    prepared: PreparedData,
    workdir: str,
) -> tuple[Stage, Callable[[int], Iterator], Callable[[], Iterator]]:
    """The stage on cached features, its training batches of an epoch and its validation batches.

    Runs the stage's frozen backbone once over the training and validation splits (call it only when
    ``unusable_reason`` is None).
    """
    logging.info("%s: frozen backbone and no augmentation, caching its features once", stage.name)
    directory = os.path.join(workdir, CACHE_DIR)
    cached = {
        split: cache_split(stage.model, variables, prepared, split, config, stage.preprocessing, directory)
        for split in ("train", "validation")
    }
    return (
        stage.on_features(),
        lambda epoch: train_batches(cached["train"], prepared, config, epoch),
        lambda: eval_batches(cached["validation"], config.eval_batch_size),
    )
