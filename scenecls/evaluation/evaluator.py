"""Test-split evaluation of a trained workdir: predictions, metrics and plots in <workdir>/eval/."""

import functools
import os
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from scenecls import console, parallel
from scenecls.data import builder, pipeline
from scenecls.evaluation import metrics, reports
from scenecls.models import Classifier, lookup_variant
from scenecls.models.preprocessing import preprocess
from scenecls.workdir import InferenceModel, WorkdirError, load_for_inference


def eval_step(
    variables: dict[str, Any], batch: dict[str, jnp.ndarray], *, model: Classifier, preprocessing: str
) -> dict[str, jnp.ndarray]:
    """Class probabilities plus masked sums of the (unweighted) loss and correct predictions."""
    logits = model.apply(variables, preprocess(batch["image"], preprocessing)).astype(jnp.float32)
    mask = batch["mask"].astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {
        "probs": jax.nn.softmax(logits),
        "loss": jnp.sum(losses * mask),
        "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
        "count": jnp.sum(mask),
    }


# Jitted once at module level; the model and preprocessing are static (hashable), so every epoch's
# validation pass reuses the compiled step.
_jitted_eval_step = jax.jit(eval_step, static_argnames=("model", "preprocessing"))


def predict_split(
    model: Classifier,
    variables: dict[str, Any],
    batches: Iterator[dict[str, np.ndarray]],
    preprocessing: str,
    mesh: Mesh | None = None,
) -> dict[str, Any]:
    """Runs masked eval batches over the mesh; returns files, labels, probs (padding dropped), loss, accuracy.

    ``batches`` are this process's shard as ``pipeline.eval_batches`` yields it (process p of P holds
    examples p, p + P, ...; every process the same number of equally sized batches). Each global batch is
    split across all devices; the results of every process are gathered back into the data's order, so
    every process returns the whole split, each example once.
    """
    mesh = mesh or parallel.create_mesh()
    step = functools.partial(_jitted_eval_step, model=model, preprocessing=preprocessing)
    variables = parallel.replicate(mesh, variables)
    files, labels, probs, masks = [], [], [], []
    totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
    for batch in batches:
        out = step(variables, parallel.shard_batch(mesh, {k: batch[k] for k in ("image", "label", "mask")}))
        files.extend(str(f.decode() if isinstance(f, bytes) else f) for f in batch["file"])
        labels.append(batch["label"])
        masks.append(batch["mask"].astype(bool))
        probs.append(parallel.local_rows(out["probs"]))
        for key in totals:
            totals[key] += float(out[key])
    if not labels:  # an empty split
        return {
            "files": [],
            "labels": np.zeros((0,), np.int32),
            "probs": np.zeros((0, 0), np.float32),
            "loss": 0.0,
            "accuracy": 0.0,
        }
    keep = parallel.gather_interleaved(np.concatenate(masks))
    count = max(totals["count"], 1.0)
    return {
        "files": [f for f, k in zip(parallel.gather_strings(files), keep, strict=True) if k],
        "labels": parallel.gather_interleaved(np.concatenate(labels))[keep],
        "probs": parallel.gather_interleaved(np.concatenate(probs))[keep],
        "loss": totals["loss"] / count,
        "accuracy": totals["correct"] / count,
    }


def evaluation_data(
    config: ml_collections.ConfigDict, workdir: str, trained: InferenceModel
) -> tuple[Any, str]:
    """The prepared data and split to evaluate on.

    The run's own test split (from the data config stored with the run, so the command line need not
    repeat it), or all of ``config.eval.source_dir`` when that is set. That folder may lack some of the
    model's classes (no folder, or no image in it): a follow-up test set often does. They are accepted
    with a warning and have no examples (see ``metrics.compute_metrics`` for how the averages treat them).
    """
    if not config.eval.source_dir:
        return builder.prepare(trained.config.data, workdir), "test"
    data_config = ml_collections.ConfigDict(trained.config.data.to_dict())
    data_config.source_dir = config.eval.source_dir
    data_config.classes = tuple(trained.classes)
    data_config.prepared_dir = os.path.join(workdir, "eval_prepared")
    data_config.synthetic_per_class = 0
    data_config.split = (0.0, 0.0, 1.0)
    return builder.prepare(data_config, workdir, allow_absent=True), "test"


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Evaluates the best checkpoint of ``workdir``; writes and returns the metrics."""
    trained = load_for_inference(workdir)
    prepared, split = parallel.primary_first(lambda: evaluation_data(config, workdir, trained))
    if tuple(prepared.classes) != tuple(trained.classes):
        raise WorkdirError(
            f"evaluation data classes {list(prepared.classes)} differ from the "
            f"model's {list(trained.classes)}"
        )
    eval_config = ml_collections.ConfigDict(config.to_dict())
    eval_config.image_size = trained.config.image_size
    preprocessing = lookup_variant(trained.config.model.variant).preprocessing
    mesh = parallel.create_mesh()
    parallel.check_divisible(eval_config.eval_batch_size, "eval_batch_size", mesh.devices.size)
    batches = pipeline.eval_batches(prepared, split, eval_config, jax.process_index(), jax.process_count())
    examples = -(-sum(prepared.counts[split]) // jax.process_count())
    steps = -(-examples // (eval_config.eval_batch_size // jax.process_count()))
    batches = console.progress(batches, total=steps, desc=f"Evaluating ({split})", unit="batch")
    result = predict_split(trained.model, trained.variables, batches, preprocessing, mesh)
    if parallel.is_primary():
        test_metrics = reports.evaluate_predictions(
            os.path.join(workdir, "eval"), result["files"], result["labels"], result["probs"], trained.classes
        )
    else:  # every process has all predictions; only process 0 writes them
        test_metrics = metrics.compute_metrics(result["labels"], result["probs"], trained.classes)
    report = metrics.format_metrics(test_metrics)
    console.say(f"Evaluation on {len(result['files'])} {split} examples:\n{report}")
    return test_metrics
