"""Plots write readable PNG files of sane size without touching pyplot's state."""

import os

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from scenecls.evaluation import plots

CLASSES = ("Buildings", "Cars", "Labs", "People", "Trees")


def read_png(path):
    """The image, after checking it is a non-blank PNG of a sane size."""
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert 300 <= width <= 3000 and 300 <= height <= 3000, image.shape
    assert image[..., :3].std() > 0.01  # something is drawn
    return image


def record(epoch, **values):
    return {
        "epoch": epoch,
        "loss": 1.0 / epoch,
        "accuracy": 1 - 0.5 / epoch,
        "val_loss": 1.1 / epoch,
        "val_accuracy": 1 - 0.6 / epoch,
        "lr": 1e-5,
        "images_per_s": 10.0,
        **values,
    }


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(CLASSES), 50)
    logits = rng.normal(size=(50, len(CLASSES)))
    logits[np.arange(50), labels] += 2
    return labels, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_confusion_matrix(tmp_path):
    path = os.path.join(tmp_path, "cm.png")
    counts = [[5, 1, 0, 0, 0], [0, 7, 1, 0, 0], [0, 0, 4, 0, 0], [2, 0, 0, 6, 0], [0, 0, 0, 0, 0]]
    plots.plot_confusion_matrix(counts, CLASSES, path)
    read_png(path)


def test_confusion_matrix_many_long_class_names(tmp_path):
    classes = [f"a rather long class name {i}" for i in range(12)]
    counts = np.diag(np.arange(1, 13)).tolist()
    path = os.path.join(tmp_path, "cm.png")
    plots.plot_confusion_matrix(counts, classes, path, normalized=np.eye(12).tolist())
    read_png(path)


def test_roc(tmp_path, predictions):
    labels, probs = predictions
    path = os.path.join(tmp_path, "roc.png")
    plots.plot_roc(labels, probs, CLASSES, path)
    read_png(path)


def test_roc_with_absent_class(tmp_path, predictions):
    labels, probs = predictions
    labels = np.where(labels == 2, 0, labels)
    path = os.path.join(tmp_path, "roc.png")
    plots.plot_roc(labels, probs, CLASSES, path)
    read_png(path)


@pytest.mark.parametrize(
    "history",
    [
        {"stage1": [record(e) for e in range(1, 6)], "stage2": [record(e) for e in range(1, 4)]},
        {"stage1": [record(e) for e in range(1, 4)]},
        {"stage1": [record(1)], "stage2": []},
        {
            "stage1": [record(1, val_loss=None), {"epoch": 2, "loss": 0.4, "accuracy": 0.8}],
            "stage2": [record(1)],
        },
        {"stage1": [], "stage2": [record(1), record(2)]},
        {},
    ],
    ids=["two-stages", "one-stage", "single-epoch", "missing-validation", "empty-stage1", "empty"],
)
def test_curves(tmp_path, history):
    path = os.path.join(tmp_path, "curves.png")
    plots.plot_curves(history, path)
    image = read_png(path)
    assert image.shape[1] > image.shape[0]  # two panels side by side


def test_no_pyplot_figures_left(tmp_path, predictions):
    labels, probs = predictions
    before = plt.get_fignums()
    plots.plot_roc(labels, probs, CLASSES, os.path.join(tmp_path, "roc.png"))
    plots.plot_confusion_matrix(np.eye(5, dtype=int).tolist(), CLASSES, os.path.join(tmp_path, "cm.png"))
    plots.plot_curves({"stage1": [record(1)]}, os.path.join(tmp_path, "curves.png"))
    assert plt.get_fignums() == before
