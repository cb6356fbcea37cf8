"""Coverage arithmetic: per-patch probabilities -> coverage, abstentions, major and secondary classes."""

from collections.abc import Sequence
from typing import Any

import numpy as np

UNCERTAIN = "uncertain"  # the class name of a patch that abstains (patch.min_confidence)
UNCERTAIN_LABEL = -1  # its label in ``tally``'s labels


def tally(
    probs: np.ndarray, classes: Sequence[str], threshold: float, min_confidence: float = 0.0
) -> dict[str, Any]:
    """Coverage statistics of one image from its patch probabilities ``(n, num_classes)``.

    A patch whose top probability is below ``min_confidence`` abstains: its label is ``UNCERTAIN_LABEL``
    and it counts towards ``uncertain`` (``count`` and ``share`` of all patches) instead of any class.
    ``coverage`` is the share of all patches that are confident and whose top class it is (the paper's
    definition; with ``uncertain["share"]`` it sums to 1); ``prob_coverage`` the mean probability over all
    patches. ``major`` has the largest coverage (ties: larger prob_coverage, then class order), or is None
    when every patch abstains; ``secondary`` lists the other classes with coverage above ``threshold``
    (strictly, and as a share of all patches, so abstaining patches never promote a class), largest first.
    At ``min_confidence`` 0 no patch abstains.
    """
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] != len(classes):
        raise ValueError(f"expected probabilities of shape (n > 0, {len(classes)}), got {probs.shape}")
    confident = probs.max(axis=1) >= min_confidence
    labels = np.where(confident, probs.argmax(axis=1), UNCERTAIN_LABEL)
    coverage = np.bincount(labels[confident], minlength=len(classes)) / len(labels)
    prob_coverage = probs.mean(axis=0)
    # Sort by coverage, then prob_coverage, then class order (stable: earlier class first on full ties).
    order = sorted(range(len(classes)), key=lambda c: (-coverage[c], -prob_coverage[c], c))
    major = order[0] if confident.any() else None
    secondary = [c for c in order if c != major and coverage[c] > threshold]
    abstained = int((~confident).sum())
    return {
        "labels": labels,
        "coverage": {name: float(coverage[c]) for c, name in enumerate(classes)},
        "prob_coverage": {name: float(prob_coverage[c]) for c, name in enumerate(classes)},
        "uncertain": {"count": abstained, "share": abstained / len(labels)},
        "major": None if major is None else classes[major],
        "secondary": [{"class": classes[c], "coverage": float(coverage[c])} for c in secondary],
    }


def class_name(label: int, classes: Sequence[str]) -> str:
    """The name of a ``tally`` label: its class, or ``UNCERTAIN``."""
    return UNCERTAIN if label == UNCERTAIN_LABEL else classes[label]
