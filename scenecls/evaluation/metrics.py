"""Classification metrics from predicted probabilities (scikit-learn), as plain JSON-ready values."""

from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging
from sklearn import metrics as skm


def compute_metrics(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, F1, top-2, one-vs-rest AUC, per-class report and confusion matrix of ``probs``.

    Evaluation data may lack some of the model's classes, so every average says what it covers:

    - Every class of ``classes`` gets a per-class row even when absent from ``labels`` (support 0).
    - ``macro_f1`` averages the F1 of the classes in ``macro_f1_classes``: those present in the labels or
      predicted at least once (scikit-learn's default label set). An absent class the model never predicts
      has no F1 to speak of and is left out; an absent class it does predict counts, with F1 0, as the
      penalty for its false positives.
    - ``weighted_f1`` weights each class's F1 by its support, so absent classes weigh nothing.
    - ``auc_ovr`` is the macro average of the one-vs-rest ROC AUC over the classes that have both positive
      and negative examples; ``auc_ovr_excluded`` lists the others. With fewer than two such classes it
      is None, with a logged reason.
    """
    labels, probs = check_predictions(labels, probs, classes)
    class_ids = list(range(len(classes)))
    predicted = np.argmax(probs, axis=1)
    absent = [classes[c] for c in class_ids if not np.any(labels == c)]
    if absent:
        logging.warning(
            "Classes absent from the labels (support 0; out of the AUC, and out of the macro F1 "
            "unless predicted): %s",
            absent,
        )
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=class_ids, zero_division=0
    )
    f1_ids = [c for c in class_ids if support[c] > 0 or np.any(predicted == c)]
    auc, auc_excluded = _auc_ovr(labels, probs)
    counts = skm.confusion_matrix(labels, predicted, labels=class_ids)
    return {
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "macro_f1": float(np.mean(f1[f1_ids])),
        "macro_f1_classes": [classes[c] for c in f1_ids],
        "weighted_f1": float(np.average(f1, weights=support)),
        "top2_accuracy": _top2_accuracy(labels, probs),
        "auc_ovr": auc,
        "auc_ovr_excluded": [classes[c] for c in auc_excluded],
        "per_class": {
            name: {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c, name in enumerate(classes)
        },
        "confusion_matrix": {"counts": counts.tolist(), "normalized": row_normalized(counts).tolist()},
        "classes": list(classes),
        "num_examples": int(labels.shape[0]),
    }


def row_normalized(counts: np.ndarray) -> np.ndarray:
    """Confusion counts as shares of each true class (rows sum to 1; a class without examples gives 0s)."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)


def format_metrics(metrics: dict[str, Any]) -> str:
    """A readable summary, per-class table and confusion matrix of ``compute_metrics``' output."""
    classes = metrics["classes"]
    auc = metrics["auc_ovr"]
    f1_left_out = [name for name in classes if name not in metrics["macro_f1_classes"]]
    width = max([len("class")] + [len(name) for name in classes])
    lines = [
        f"examples        {metrics['num_examples']}",
        f"accuracy        {metrics['accuracy']:.4f}",
        f"macro F1        {metrics['macro_f1']:.4f}" + _left_out(f1_left_out, "absent, never predicted"),
        f"weighted F1     {metrics['weighted_f1']:.4f}",
        f"top-2 accuracy  {metrics['top2_accuracy']:.4f}",
        f"AUC (OvR macro) {'n/a' if auc is None else f'{auc:.4f}'}"
        + _left_out(metrics["auc_ovr_excluded"], "no positive or no negative example"),
        "",
        f"{'class':<{width}} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}",
    ]
    for name in classes:
        row = metrics["per_class"][name]
        lines.append(
            f"{name:<{width}} {row['precision']:>9.4f} {row['recall']:>7.4f} {row['f1']:>7.4f} "
            f"{row['support']:>8d}"
        )
    cell = max([6] + [len(name) for name in classes])
    lines += [
        "",
        "confusion matrix (rows: true, columns: predicted)",
        " " * width + "".join(f" {name:>{cell}}" for name in classes),
    ]
    for name, row in zip(classes, metrics["confusion_matrix"]["counts"], strict=True):
        lines.append(f"{name:<{width}}" + "".join(f" {count:>{cell}d}" for count in row))
    return "\n".join(lines)


def _left_out(names: Sequence[str], reason: str) -> str:
    """`` (without A, B: reason)`` for a summary line, or nothing."""
    return f" (without {', '.join(names)}: {reason})" if names else ""


def check_predictions(
    labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities as arrays, or a ValueError saying what does not fit ``classes``."""
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names must be unique, got {list(classes)}")
    labels = np.asarray(labels)
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(
            f"probabilities must have shape (examples, {len(classes)} classes), got {probs.shape}"
        )
    if labels.shape != (probs.shape[0],):
        raise ValueError(
            f"labels must have shape ({probs.shape[0]},) to match the probabilities, got {labels.shape}"
        )
    if labels.size == 0:
        raise ValueError("no examples to compute metrics on")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(
            f"labels must be integers in [0, {len(classes)}), got {labels.dtype} "
            f"in [{labels.min()}, {labels.max()}]"
        )
    return labels, probs


def _top2_accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Share of examples whose true class is among the two most probable; 1.0 with two classes or fewer."""
    num_classes = probs.shape[1]
    if num_classes <= 2:
        return 1.0
    return float(skm.top_k_accuracy_score(labels, probs, k=2, labels=list(range(num_classes))))


def _auc_ovr(labels: np.ndarray, probs: np.ndarray) -> tuple[float | None, list[int]]:
    """Macro one-vs-rest ROC AUC over the classes with positive and negative examples, and the others.

    The AUC is None (logged) when fewer than two classes qualify (all labels of one class).
    """
    usable, excluded = [], []
    for c in range(probs.shape[1]):
        (usable if 0 < np.sum(labels == c) < labels.size else excluded).append(c)
    if len(usable) < 2:
        logging.warning(
            "auc_ovr is undefined: no two classes have both positive and negative examples "
            "(%d classes, labels %s)",
            probs.shape[1],
            sorted(set(labels.tolist())),
        )
        return None, excluded
    aucs = [skm.roc_auc_score(labels == c, probs[:, c]) for c in usable]
    return float(np.mean(aucs)), excluded
