"""Evaluation and training plots written as PNG files.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas), never pyplot, so no figure or backend
state outlives a call.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn import metrics as skm

from scenecls.evaluation import metrics

_DPI = 120


def plot_confusion_matrix(
    counts: Sequence[Sequence[int]],
    classes: Sequence[str],
    path: str,
    normalized: Sequence[Sequence[float]] | None = None,
) -> None:
    """Heatmap of the confusion matrix: colour = row-normalised share, text = count and row %."""
    counts = np.asarray(counts, dtype=np.int64)
    shares = metrics.row_normalized(counts) if normalized is None else np.asarray(normalized, np.float64)
    size = min(24.0, max(4.5, 0.9 * len(classes) + 2.5))
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, labels=classes, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, labels=classes)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(f"Confusion matrix ({counts.sum()} examples)")
    fontsize = 10 if len(classes) <= 8 else 7
    for (row, col), count in np.ndenumerate(counts):
        color = "white" if shares[row, col] > 0.5 else "black"
        ax.text(
            col,
            row,
            f"{count}\n{100 * shares[row, col]:.1f}%",
            ha="center",
            va="center",
            color=color,
            fontsize=fontsize,
        )
    _save(fig, path)


def plot_roc(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: str) -> None:
    """One-vs-rest ROC curve per class with its AUC in the legend.

    A class without positive or negative examples has no ROC curve; the legend says so.
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs)
    fig = _figure(6.5, 5.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
    for c, name in enumerate(classes):
        positives = labels == c
        if positives.all() or not positives.any():
            ax.plot(
                [],
                [],
                linestyle="none",
                label=f"{name} (no ROC: {int(positives.sum())} of {labels.size} examples)",
            )
            continue
        fpr, tpr, _ = skm.roc_curve(positives, probs[:, c])
        auc = skm.roc_auc_score(positives, probs[:, c])
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {auc:.3f})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title("ROC curves (one class vs. rest)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_reliability(curves: Mapping[str, np.ndarray], labels: np.ndarray, path: str) -> None:
    """Reliability diagram: accuracy against confidence per bin for each set of probabilities in ``curves``
    (e.g. before and after calibration), with each one's ECE in the legend and the bin counts below."""
    from scenecls.models import calibration

    fig = _figure(6.5, 6.0)
    ax, counts = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    width = 1 / calibration.ECE_BINS
    centres = (np.arange(calibration.ECE_BINS) + 0.5) * width
    for index, (name, probs) in enumerate(curves.items()):
        table = calibration.reliability(probs, labels)
        used = table["count"] > 0
        ece = calibration.expected_calibration_error(probs, labels)
        ax.plot(
            table["confidence"][used], table["accuracy"][used], marker="o", label=f"{name} (ECE {ece:.3f})"
        )
        shift = (index - (len(curves) - 1) / 2) * width / len(curves)
        counts.bar(centres + shift, table["count"], width=width / len(curves), label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("Accuracy")
    ax.set_title("Reliability (top-1 confidence vs. accuracy)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    counts.set_xlabel("Confidence of the top class")
    counts.set_ylabel("Images")
    counts.grid(alpha=0.3)
    _save(fig, path)


def plot_curves(history: Mapping[str, Sequence[Mapping[str, Any]]], path: str) -> None:
    """Accuracy and loss per epoch, train and validation, all stages on one continuous epoch axis.

    Stages are drawn in the order of ``history``; each later stage is shaded and labelled at its start.
    Missing or None values leave a gap; empty stages are skipped.
    """
    fig = _figure(11.0, 4.5)
    axes = fig.subplots(1, 2)
    stages = [(name, records) for name, records in history.items() if records]
    spans = _stage_spans(stages)
    for ax, metric, title in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss")):
        lines = ((metric, "train", "tab:blue"), (f"val_{metric}", "validation", "tab:orange"))
        for key, label, color in lines:
            epochs = [
                start + record["epoch"]
                for (_, records), (start, _) in zip(stages, spans, strict=True)
                for record in records
            ]
            values = [_value(record, key) for _, records in stages for record in records]
            ax.plot(epochs, values, color=color, marker="o", markersize=3, label=label)
        for index, ((name, _), (start, end)) in enumerate(zip(stages, spans, strict=True)):
            if index % 2:
                ax.axvspan(start + 0.5, end + 0.5, color="grey", alpha=0.12, linewidth=0)
            if index:
                ax.axvline(start + 0.5, color="grey", linestyle="--", linewidth=1)
            ax.annotate(
                f"{name} ({end - start} ep.)",
                xy=(start + 0.6, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, -4),
                textcoords="offset points",
                va="top",
                fontsize=8,
                color="dimgrey",
            )
        ax.set_title(title)
        ax.set_xlabel("Epoch (all stages)")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        if stages:
            ax.set_xlim(0.5, spans[-1][1] + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        else:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no epochs recorded", ha="center", va="center", transform=ax.transAxes)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=9)
    _save(fig, path)


def _stage_spans(stages: list[tuple[str, Sequence[Mapping[str, Any]]]]) -> list[tuple[int, int]]:
    """(offset, last epoch) of each stage on the continuous axis; a stage starts after the previous one."""
    spans, offset = [], 0
    for _, records in stages:
        last = offset + max(record["epoch"] for record in records)
        spans.append((offset, last))
        offset = last
    return spans


def _value(record: Mapping[str, Any], key: str) -> float:
    """A record's value as a float, NaN (a gap in the line) when missing."""
    value = record.get(key)
    return math.nan if value is None else float(value)


def _figure(width: float, height: float) -> Figure:
    """A new Agg-backed figure, independent of pyplot."""
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str) -> None:
    """Writes ``fig`` as PNG and releases its artists."""
    fig.savefig(path, format="png", dpi=_DPI)
    fig.clear()
