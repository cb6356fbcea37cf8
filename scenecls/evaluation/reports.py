"""The evaluation directory: predictions.csv, metrics.json (recomputed from the CSV) and the plots.

predictions.csv has the columns ``file, true_label, predicted_label, prob_<class>...``: labels are class
names, one probability column per class in class order, probabilities as float32 written with 9
significant digits (reads back bit-exactly), so anyone can recompute the metrics from the file.
"""

import csv
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from scenecls.evaluation import metrics, plots

_PROB_PREFIX = "prob_"
_HEADER = ("file", "true_label", "predicted_label")


def write_predictions_csv(
    path: str, files: Sequence[str], labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> None:
    """Writes one row per example: file, true and predicted class names, per-class probabilities."""
    labels, probs = metrics.check_predictions(labels, np.asarray(probs, dtype=np.float32), classes)
    if len(files) != labels.shape[0]:
        raise ValueError(f"{path}: {len(files)} file names for {labels.shape[0]} predictions")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*_HEADER, *(_PROB_PREFIX + name for name in classes)])
        for file, label, row in zip(files, labels, probs, strict=True):
            writer.writerow([file, classes[label], classes[int(np.argmax(row))], *(f"{p:.9g}" for p in row)])


def read_predictions_csv(path: str) -> tuple[list[str], np.ndarray, np.ndarray, tuple[str, ...]]:
    """Reads a predictions.csv back as (files, int labels, float32 probabilities, classes)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0][:3]) != _HEADER or not all(c.startswith(_PROB_PREFIX) for c in rows[0][3:]):
        raise ValueError(
            f"{path}: not a predictions file (expected header {', '.join(_HEADER)}, {_PROB_PREFIX}<class>...)"
        )
    classes = tuple(column[len(_PROB_PREFIX) :] for column in rows[0][3:])
    index = {name: c for c, name in enumerate(classes)}
    files, labels, probs = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]) or row[1] not in index:
            raise ValueError(
                f"{path}: line {line}: expected {len(rows[0])} columns and a true label in "
                f"{list(classes)}, got {row}"
            )
        files.append(row[0])
        labels.append(index[row[1]])
        try:
            probs.append([float(p) for p in row[3:]])
        except ValueError as error:
            raise ValueError(f"{path}: line {line}: {error}") from None
    return (
        files,
        np.asarray(labels, dtype=np.int64),
        np.asarray(probs, dtype=np.float32).reshape(len(files), len(classes)),
        classes,
    )


def evaluate_predictions(
    out_dir: str,
    files: Sequence[str],
    labels: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    extra: dict[str, Any] | None = None,
    uncalibrated: np.ndarray | None = None,
) -> dict[str, Any]:
    """Writes predictions.csv, metrics.json (computed from the saved CSV, plus ``extra``),
    confusion_matrix.png, roc.png, and with ``uncalibrated`` probabilities reliability.png (before and
    after calibration). Returns the metrics.
    """
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, "predictions.csv")
    write_predictions_csv(csv_path, files, labels, probs, classes)
    _, labels, probs, classes = read_predictions_csv(csv_path)
    result = {**metrics.compute_metrics(labels, probs, classes), **(extra or {})}
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2, allow_nan=False)
    plots.plot_confusion_matrix(
        result["confusion_matrix"]["counts"],
        classes,
        os.path.join(out_dir, "confusion_matrix.png"),
        normalized=result["confusion_matrix"]["normalized"],
    )
    plots.plot_roc(labels, probs, classes, os.path.join(out_dir, "roc.png"))
    if uncalibrated is not None:
        curves = {"uncalibrated": uncalibrated, "calibrated": probs}
        plots.plot_reliability(curves, labels, os.path.join(out_dir, "reliability.png"))
    logging.info("Wrote predictions.csv, metrics.json and the plots to %s", out_dir)
    return result
