"""Test-split evaluation of a trained workdir: predictions, metrics and plots in <workdir>/eval/."""

import functools
import json
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
from scenecls.evaluation import html_report, metrics, reports
from scenecls.models import Classifier, calibration, lookup_variant
from scenecls.models.preprocessing import preprocess
from scenecls.workdir import InferenceModel, WorkdirError, load_for_inference, run_files


def eval_step(
    variables: dict[str, Any],
    batch: dict[str, jnp.ndarray],
    *,
    model: Classifier,
    preprocessing: str,
    tta: str = "",
) -> dict[str, jnp.ndarray]:
    """Logits and class probabilities plus masked sums of the (unweighted) loss and correct predictions.

    ``tta`` (test-time augmentation, see ``tta_views``) averages the logits of several views of each image,
    computed together with ``jax.vmap``.
    """
    images = preprocess(batch["image"], preprocessing)
    if tta:
        views = tta_views(images, tta)
        logits = jax.vmap(lambda view: model.apply(variables, view))(views).astype(jnp.float32).mean(axis=0)
    else:
        logits = model.apply(variables, images).astype(jnp.float32)
    mask = batch["mask"].astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {
        "logits": logits,
        "probs": jax.nn.softmax(logits),
        "loss": jnp.sum(losses * mask),
        "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
        "count": jnp.sum(mask),
    }


_CROP_SCALE = 0.875  # crops of flip_crops: the four corners and the centre at this share of each side


def tta_views(images: jnp.ndarray, tta: str) -> jnp.ndarray:
    """The test-time views of a batch (V, N, H, W, C): the images and their mirror images ("flip"), and with
    "flip_crops" also the corner and centre crops (87.5% of each side, resized back) and their mirrors."""
    views = [images]
    if tta == "flip_crops":
        size = images.shape[1]
        crop = round(size * _CROP_SCALE)
        offsets = [(0, 0), (0, size - crop), (size - crop, 0), (size - crop, size - crop)]
        offsets.append(((size - crop) // 2, (size - crop) // 2))
        for y, x in offsets:
            part = images[:, y : y + crop, x : x + crop]
            views.append(jax.image.resize(part, images.shape, "bilinear"))
    views += [view[:, :, ::-1] for view in views]
    return jnp.stack(views)


# Jitted once at module level; the model, preprocessing and TTA are static (hashable), so every epoch's
# validation pass reuses the compiled step.
_jitted_eval_step = jax.jit(eval_step, static_argnames=("model", "preprocessing", "tta"))


def predict_split(
    model: Classifier,
    variables: dict[str, Any],
    batches: Iterator[dict[str, np.ndarray]],
    preprocessing: str,
    mesh: Mesh | None = None,
    tta: str = "",
) -> dict[str, Any]:
    """Runs masked eval batches over the mesh; returns files, labels, logits and probs (padding dropped),
    loss and accuracy (with ``tta``: of the views' mean logits).

    ``batches`` are this process's shard as ``pipeline.eval_batches`` yields it (process p of P holds
    examples p, p + P, ...; every process the same number of equally sized batches). Each global batch is
    split across all devices; the results of every process are gathered back into the data's order, so
    every process returns the whole split, each example once.
    """
    mesh = mesh or parallel.create_mesh()
    step = functools.partial(_jitted_eval_step, model=model, preprocessing=preprocessing, tta=tta)
    variables = parallel.replicate(mesh, variables)
    files, labels, logits, probs, masks = [], [], [], [], []
    totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
    for batch in batches:
        out = step(variables, parallel.shard_batch(mesh, {k: batch[k] for k in ("image", "label", "mask")}))
        files.extend(str(f.decode() if isinstance(f, bytes) else f) for f in batch["file"])
        labels.append(batch["label"])
        masks.append(batch["mask"].astype(bool))
        logits.append(parallel.local_rows(out["logits"]))
        probs.append(parallel.local_rows(out["probs"]))
        for key in totals:
            totals[key] += float(out[key])
    if not labels:  # an empty split
        return {
            "files": [],
            "labels": np.zeros((0,), np.int32),
            "logits": np.zeros((0, 0), np.float32),
            "probs": np.zeros((0, 0), np.float32),
            "loss": 0.0,
            "accuracy": 0.0,
        }
    keep = parallel.gather_interleaved(np.concatenate(masks))
    count = max(totals["count"], 1.0)
    return {
        "files": [f for f, k in zip(parallel.gather_strings(files), keep, strict=True) if k],
        "labels": parallel.gather_interleaved(np.concatenate(labels))[keep],
        "logits": parallel.gather_interleaved(np.concatenate(logits))[keep],
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


def _predict(
    config: ml_collections.ConfigDict,
    trained: InferenceModel,
    prepared: builder.PreparedData,
    split: str,
    desc: str,
) -> dict[str, Any]:
    """``predict_split`` of the trained model over ``split``, with a progress bar and ``config.eval.tta``."""
    eval_config = ml_collections.ConfigDict(config.to_dict())
    eval_config.image_size = trained.config.image_size
    preprocessing = lookup_variant(trained.config.model.variant).preprocessing
    mesh = parallel.create_mesh()
    parallel.check_divisible(eval_config.eval_batch_size, "eval_batch_size", mesh.devices.size)
    batches = pipeline.eval_batches(prepared, split, eval_config, jax.process_index(), jax.process_count())
    examples = -(-sum(prepared.counts[split]) // jax.process_count())
    steps = -(-examples // (eval_config.eval_batch_size // jax.process_count()))
    batches = console.progress(batches, total=steps, desc=desc, unit="batch")
    return predict_split(trained.model, trained.variables, batches, preprocessing, mesh, _tta(config))


def _tta(config: ml_collections.ConfigDict) -> str:
    """``config.eval.tta``; off for a config from before the field (e.g. a run's stored one)."""
    return config.eval.get("tta", "")


def calibrate(config: ml_collections.ConfigDict, workdir: str) -> float:
    """Fits the temperature of the best model on the run's validation split, writes ``calibration.json``
    (T = 1 with ``config.calibrate`` off) and returns it."""
    trained = load_for_inference(workdir)
    record: dict[str, Any] = {"temperature": 1.0, "calibrated": False}
    if config.get("calibrate", True):
        prepared = parallel.primary_first(lambda: builder.prepare(trained.config.data, workdir))
        result = _predict(config, trained, prepared, "validation", "Calibrating (validation)")
        temperature = calibration.fit_temperature(result["logits"], result["labels"])
        summary = calibration.calibration_summary(result["logits"], result["labels"], temperature)
        record = {**summary, "calibrated": True, "fitted_on": "validation", "examples": len(result["labels"])}
        console.say(
            f"Calibration: temperature {temperature:.3f} fitted on {len(result['labels'])} validation images "
            f"(ECE {summary['ece_uncalibrated']:.4f} -> {summary['ece']:.4f}, "
            f"NLL {summary['nll_uncalibrated']:.4f} -> {summary['nll']:.4f})"
        )
    if parallel.is_primary():
        run_files.write_atomically(os.path.join(workdir, calibration.FILE), json.dumps(record, indent=2))
    parallel.barrier("calibration")
    return record["temperature"]


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Evaluates the best checkpoint of ``workdir`` with its calibration; writes and returns the metrics.

    ``metrics.json`` holds the metrics of the calibrated probabilities, and ``ece``/``nll`` with their
    ``_uncalibrated`` twins and the ``temperature``.
    """
    trained = load_for_inference(workdir)
    prepared, split = parallel.primary_first(lambda: evaluation_data(config, workdir, trained))
    if tuple(prepared.classes) != tuple(trained.classes):
        raise WorkdirError(
            f"evaluation data classes {list(prepared.classes)} differ from the "
            f"model's {list(trained.classes)}"
        )
    result = _predict(config, trained, prepared, split, f"Evaluating ({split})")
    temperature = calibration.read_temperature(workdir)
    probs = result["probs"]
    if temperature != 1.0:
        probs = calibration.probabilities(result["logits"], temperature)
    summary = calibration.calibration_summary(result["logits"], result["labels"], temperature)
    summary["tta"] = _tta(config)
    if parallel.is_primary():
        test_metrics = reports.evaluate_predictions(
            os.path.join(workdir, "eval"),
            result["files"],
            result["labels"],
            probs,
            trained.classes,
            extra=summary,
            uncalibrated=result["probs"],
        )
        _write_report(workdir, trained, prepared, split, result, probs, test_metrics)
    else:  # every process has all predictions; only process 0 writes them
        test_metrics = {**metrics.compute_metrics(result["labels"], probs, trained.classes), **summary}
    report = metrics.format_metrics(test_metrics)
    console.say(f"Evaluation on {len(result['files'])} {split} examples:\n{report}")
    return test_metrics


def _shown(path: str) -> str:
    """``path`` relative to the current folder when it lies below it (as a user typed it), else absolute."""
    relative = os.path.relpath(os.path.abspath(path))
    return os.path.abspath(path) if relative.startswith("..") else relative


def _write_report(
    workdir: str,
    trained: InferenceModel,
    prepared: builder.PreparedData,
    split: str,
    result: dict[str, Any],
    probs: np.ndarray,
    test_metrics: dict[str, Any],
) -> None:
    """``eval/report.html`` of an evaluation (see html_report)."""
    eval_dir = os.path.join(workdir, "eval")
    with open(prepared.report_path) as f:
        source_dir = json.load(f)["source_dir"]
    stage = trained.stage  # no checkpoint manager here: only process 0 writes the report
    model = trained.config.model
    run = {
        "Workdir": _shown(workdir),
        "Split": f"{split} of {_shown(source_dir)}",
        "Classes": ", ".join(trained.classes),
        "Images per split": ", ".join(f"{s} {sum(c)}" for s, c in prepared.counts.items()),
        "Checkpoint": f"best of {stage}: {_shown(os.path.join(workdir, 'checkpoints', f'best_{stage}'))}",
        "Model": f"ResNet-50 ({model.variant}), {model.head} head, {trained.config.image_size} px, "
        f"weights from {trained.config.pretrained}",
        "Calibration": f"temperature {trained.temperature:.3f}",
        "Test-time augmentation": test_metrics.get("tta") or "off",
        "Config": _shown(os.path.join(workdir, "config.json")),
    }
    plots = {
        "Confusion matrix (counts and row %)": html_report.png_uri(
            os.path.join(eval_dir, "confusion_matrix.png")
        ),
        "ROC": html_report.png_uri(os.path.join(eval_dir, "roc.png")),
        "Training curves": html_report.png_uri(os.path.join(workdir, "curves.png")),
        "Reliability": html_report.png_uri(os.path.join(eval_dir, "reliability.png")),
    }
    misses = html_report.misclassified(result["files"], result["labels"], probs, trained.classes, source_dir)
    path = os.path.join(eval_dir, "report.html")
    run_files.write_atomically(path, html_report.render(run, test_metrics, plots, misses))
    console.say(f"Report: {path}")
