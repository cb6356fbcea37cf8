"""Coverage arithmetic: per-patch probabilities -> coverage, major and secondary classes."""

from collections.abc import Sequence
from typing import Any

import numpy as np


def tally(probs: np.ndarray, classes: Sequence[str], threshold: float) -> dict[str, Any]:
    """Coverage statistics of one image from its patch probabilities ``(n, num_classes)``.

    ``coverage`` is the share of patches whose top class it is (the paper's definition, sums to 1);
    ``prob_coverage`` the mean probability. ``major`` has the largest coverage (ties: larger
    prob_coverage, then class order); ``secondary`` lists the other classes with coverage above
    ``threshold`` (strictly: at threshold 0 a class no patch shows is never listed), largest first.
    """
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] != len(classes):
        raise ValueError(f"expected probabilities of shape (n > 0, {len(classes)}), got {probs.shape}")
    labels = probs.argmax(axis=1)
    coverage = np.bincount(labels, minlength=len(classes)) / len(labels)
    prob_coverage = probs.mean(axis=0)
    # Sort by coverage, then prob_coverage, then class order (stable: earlier class first on full ties).
    order = sorted(range(len(classes)), key=lambda c: (-coverage[c], -prob_coverage[c], c))
    major = order[0]
    secondary = [c for c in order[1:] if coverage[c] > threshold]
    return {
        "labels": labels,
        "coverage": {name: float(coverage[c]) for c, name in enumerate(classes)},
        "prob_coverage": {name: float(prob_coverage[c]) for c, name in enumerate(classes)},
        "major": classes[major],
        "secondary": [{"class": classes[c], "coverage": float(coverage[c])} for c in secondary],
    }
