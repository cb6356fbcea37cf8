"""predictions.csv round trip and the evaluation directory."""

import csv
import json
import os

import numpy as np
import pytest

from scenecls.evaluation import metrics, reports


def predictions(num_examples=40, classes=("Buildings", "Cars", "Labs, indoor", 'say "tree"'), seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_examples) % len(classes))
    logits = rng.normal(size=(num_examples, len(classes))) * 3
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    probs[0] = np.float32([1e-30, 1 - 2e-7, 1e-7, 1e-7])  # extreme values still round-trip
    files = [f"dir, with comma/img_{i}.jpg" for i in range(num_examples)]
    return files, labels, probs, classes


def test_csv_round_trip_is_exact(tmp_path):
    files, labels, probs, classes = predictions()
    path = os.path.join(tmp_path, "predictions.csv")
    reports.write_predictions_csv(path, files, labels, probs, classes)
    files2, labels2, probs2, classes2 = reports.read_predictions_csv(path)
    assert files2 == files and classes2 == classes
    np.testing.assert_array_equal(labels2, labels)
    assert probs2.dtype == np.float32
    np.testing.assert_array_equal(probs2, probs)


def test_csv_columns(tmp_path):
    files, labels, probs, classes = predictions()
    path = os.path.join(tmp_path, "predictions.csv")
    reports.write_predictions_csv(path, files, labels, probs, classes)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "true_label", "predicted_label", *(f"prob_{c}" for c in classes)]
    assert [r[1] for r in rows[1:]] == [classes[i] for i in labels]
    assert [r[2] for r in rows[1:]] == [classes[i] for i in probs.argmax(axis=1)]


def test_read_refuses_bad_files(tmp_path):
    path = os.path.join(tmp_path, "bad.csv")
    with open(path, "w") as f:
        f.write("name,label\nx.jpg,Cars\n")
    with pytest.raises(ValueError, match=r"bad\.csv: not a predictions file"):
        reports.read_predictions_csv(path)
    with open(path, "w") as f:
        f.write("file,true_label,predicted_label,prob_a,prob_b\nx.jpg,c,a,0.5,0.5\n")
    with pytest.raises(ValueError, match=r"bad\.csv: line 2"):
        reports.read_predictions_csv(path)
    with open(path, "w") as f:
        f.write("file,true_label,predicted_label,prob_a,prob_b\nx.jpg,a,a,0.5,half\n")
    with pytest.raises(ValueError, match=r"bad\.csv: line 2"):
        reports.read_predictions_csv(path)


def test_write_refuses_mismatched_files(tmp_path):
    files, labels, probs, classes = predictions()
    with pytest.raises(ValueError, match="file names"):
        reports.write_predictions_csv(os.path.join(tmp_path, "p.csv"), files[1:], labels, probs, classes)


def test_evaluate_predictions_writes_everything(tmp_path):
    files, labels, probs, classes = predictions()
    out_dir = os.path.join(tmp_path, "eval")
    result = reports.evaluate_predictions(out_dir, files, labels, probs, classes)
    expected_files = ["confusion_matrix.png", "metrics.json", "predictions.csv", "roc.png"]
    assert sorted(os.listdir(out_dir)) == expected_files
    with open(os.path.join(out_dir, "metrics.json")) as f:
        assert json.load(f) == result
    assert result == metrics.compute_metrics(labels, probs, classes)
    # Anyone can recompute the same numbers from the saved predictions.
    _, labels2, probs2, classes2 = reports.read_predictions_csv(os.path.join(out_dir, "predictions.csv"))
    assert metrics.compute_metrics(labels2, probs2, classes2) == result
    for name in ("confusion_matrix.png", "roc.png"):
        assert os.path.getsize(os.path.join(out_dir, name)) > 1000
