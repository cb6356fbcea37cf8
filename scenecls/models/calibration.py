"""Honest probabilities: temperature scaling, expected calibration error and negative log-likelihood.

A network trained with cross-entropy is often over-confident: its top probability exceeds how often it is
right. Temperature scaling (Guo et al., 2017) divides the logits by one scalar T > 0, fitted on the
validation split to minimise the NLL. The predicted class never changes (dividing by T keeps the order of
the logits); only the confidence does. ``<workdir>/calibration.json`` holds the fitted T; evaluation,
inference and the report apply it, and a workdir without the file uses T = 1 (no calibration).
"""

import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

FILE = "calibration.json"
ECE_BINS = 15
_LOG_T_RANGE = (math.log(0.05), math.log(20.0))  # the temperatures searched


def softmax(logits: Any, temperature: float = 1.0) -> Any:
    """Class probabilities of (JAX) ``logits`` at ``temperature``, in float32 (T = 1: plain softmax)."""
    logits = logits.astype(jnp.float32)
    return jax.nn.softmax(logits if temperature == 1.0 else logits / temperature)


def _log_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    scaled = np.asarray(logits, np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    return scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels under ``softmax(logits / temperature)``."""
    log_probs = _log_softmax(logits, temperature)
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the NLL of ``labels`` (a bounded 1-D search over log T).

    When the labels have no error to calibrate against (every top class right, as on a small, easy
    validation split), the NLL only falls as T shrinks: no optimum exists and sharpening would claim
    certainty the data cannot support, so T stays 1 (with a warning).
    """
    from scipy.optimize import minimize_scalar

    if len(labels) == 0:
        return 1.0
    if np.all(np.asarray(logits).argmax(axis=1) == labels):
        logging.warning(
            "Calibration: all %d labels are the top class, so the NLL keeps falling as the temperature "
            "shrinks: no optimum to fit, temperature left at 1",
            len(labels),
        )
        return 1.0
    result = minimize_scalar(
        lambda log_t: nll(logits, labels, math.exp(log_t)), bounds=_LOG_T_RANGE, method="bounded"
    )
    return float(math.exp(result.x))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per confidence bin (equal width over [0, 1]): mean confidence, accuracy and count of top-1 guesses."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore"):
        return {
            "confidence": np.bincount(index, confidence, bins) / count,
            "accuracy": np.bincount(index, correct, bins) / count,
            "count": count,
        }


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean gap between accuracy and confidence over ``bins`` confidence bins."""
    table = reliability(probs, labels, bins)
    used = table["count"] > 0
    gaps = np.abs(table["accuracy"][used] - table["confidence"][used])
    return float((gaps * table["count"][used]).sum() / max(table["count"].sum(), 1))


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` on the host, float32."""
    return np.exp(_log_softmax(logits, temperature)).astype(np.float32)


def read_temperature(workdir: str) -> float:
    """The workdir's fitted temperature; 1.0 when it has none (calibration off, or a run from before)."""
    path = os.path.join(workdir, FILE)
    if not os.path.exists(path):
        return 1.0
    with open(path) as f:
        return float(json.load(f)["temperature"])


def calibration_summary(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, float]:
    """ECE and NLL before and after ``temperature``, as ``metrics.json`` reports them."""
    return {
        "temperature": temperature,
        "ece": expected_calibration_error(probabilities(logits, temperature), labels),
        "ece_uncalibrated": expected_calibration_error(probabilities(logits), labels),
        "nll": nll(logits, labels, temperature),
        "nll_uncalibrated": nll(logits, labels),
    }
