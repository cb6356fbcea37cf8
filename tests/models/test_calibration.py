"""Temperature scaling: ECE and NLL by hand, an over-confident model calibrated, accuracy untouched."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from scenecls.models import calibration


def test_ece_by_hand():
    # Four predictions: confidences 0.9, 0.9 (bin 13: 0.8667-0.9333) and 0.6, 0.6 (bin 9: 0.6-0.6667).
    # Bin 13: both right -> accuracy 1.0, confidence 0.9, gap 0.1; bin 9: one right -> 0.5 vs 0.6, gap 0.1.
    # ECE = (2 * 0.1 + 2 * 0.1) / 4 = 0.1.
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 0])
    assert calibration.expected_calibration_error(probs, labels) == pytest.approx(0.1)
    table = calibration.reliability(probs, labels)
    assert table["count"].sum() == 4 and table["count"][13] == 2 and table["count"][9] == 2


def test_nll_by_hand_and_temperature():
    logits = np.array([[2.0, 0.0], [0.0, 1.0]])
    labels = np.array([0, 0])
    # -log softmax: row 1: log(1 + e^-2) = 0.126928; row 2: log(1 + e^1) = 1.313262; mean 0.720095.
    assert calibration.nll(logits, labels) == pytest.approx(
        (math.log1p(math.exp(-2)) + math.log1p(math.e)) / 2
    )
    # At T = 2 the logits halve: log(1 + e^-1) = 0.313262 and log(1 + e^0.5) = 0.974077.
    assert calibration.nll(logits, labels, 2.0) == pytest.approx(
        (math.log1p(math.exp(-1)) + math.log1p(math.exp(0.5))) / 2
    )
    np.testing.assert_allclose(calibration.probabilities(logits, 2.0).sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(calibration.softmax(jnp.asarray(logits), 2.0)),
        calibration.probabilities(logits, 2.0),
        rtol=1e-6,
    )


def test_an_over_confident_model_is_calibrated_on_held_out_data():
    """Labels drawn from softmax(z) make z calibrated; logits 5z are over-confident. A temperature fitted
    on one half cuts the other half's ECE by at least half, and never changes a prediction."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (6000, 5))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in p])
    logits = 5 * z
    fit, held_out = slice(0, 3000), slice(3000, None)
    temperature = calibration.fit_temperature(logits[fit], labels[fit])
    assert 4.0 < temperature < 6.0, temperature
    before = calibration.expected_calibration_error(
        calibration.probabilities(logits[held_out]), labels[held_out]
    )
    after = calibration.expected_calibration_error(
        calibration.probabilities(logits[held_out], temperature), labels[held_out]
    )
    assert after <= before / 2, (before, after)
    assert calibration.nll(logits[held_out], labels[held_out], temperature) < calibration.nll(
        logits[held_out], labels[held_out]
    )
    np.testing.assert_array_equal(
        calibration.probabilities(logits, temperature).argmax(1), calibration.probabilities(logits).argmax(1)
    )


def test_a_workdir_without_calibration_reads_temperature_one(tmp_path):
    assert calibration.read_temperature(str(tmp_path)) == 1.0


def test_errorless_labels_leave_the_temperature_at_one():
    """With no wrong top class the NLL falls as T -> 0: no optimum, so no sharpening."""
    logits = np.array([[3.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.5, 0.0, 4.0]])
    labels = np.array([0, 1, 2])
    assert calibration.nll(logits, labels, 0.5) < calibration.nll(logits, labels, 1.0)  # sharper is "better"
    assert calibration.fit_temperature(logits, labels) == 1.0
