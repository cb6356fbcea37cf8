"""Metrics against hand-computed values and independent scikit-learn calls."""

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from scenecls.evaluation import metrics

CLASSES = ("Buildings", "Cars", "Labs")


def tiny_case():
    """6 examples, 3 classes: argmax right on 4 (acc 4/6), true class in the top 2 on 5 (top-2 5/6)."""
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # 0 -> 0
            [0.3, 0.6, 0.1],  # 0 -> 1, second choice 0
            [0.1, 0.8, 0.1],  # 1 -> 1
            [0.2, 0.5, 0.3],  # 1 -> 1
            [0.1, 0.1, 0.8],  # 2 -> 2
            [0.6, 0.3, 0.1],  # 2 -> 0, true class last
        ]
    )
    return labels, probs


def random_case(num_examples=60, num_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_examples) % num_classes)
    logits = rng.normal(size=(num_examples, num_classes))
    logits[np.arange(num_examples), labels] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs.astype(np.float32)


def test_tiny_case_by_hand():
    labels, probs = tiny_case()
    m = metrics.compute_metrics(labels, probs, CLASSES)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["top2_accuracy"] == pytest.approx(5 / 6)
    # Predictions 0,1,1,1,2,0: class 0 P=1/2 R=1/2; class 1 P=2/3 R=1; class 2 P=1 R=1/2.
    expected_f1 = {"Buildings": 0.5, "Cars": 0.8, "Labs": 2 / 3}
    for name, f1 in expected_f1.items():
        assert m["per_class"][name]["f1"] == pytest.approx(f1)
        assert m["per_class"][name]["support"] == 2
    assert m["per_class"]["Cars"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["Labs"]["recall"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx(sum(expected_f1.values()) / 3)
    assert m["weighted_f1"] == pytest.approx(sum(expected_f1.values()) / 3)  # equal supports
    assert m["confusion_matrix"]["counts"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["confusion_matrix"]["normalized"] == [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]
    assert m["classes"] == list(CLASSES)
    assert m["num_examples"] == 6


def test_matches_scikit_learn():
    labels, probs = random_case()
    classes = ("a", "b", "c", "d")
    m = metrics.compute_metrics(labels, probs, classes)
    predicted = probs.argmax(axis=1)
    report = skm.classification_report(labels, predicted, output_dict=True, zero_division=0)
    assert set(m) == {
        "accuracy",
        "macro_f1",
        "macro_f1_classes",
        "weighted_f1",
        "top2_accuracy",
        "auc_ovr",
        "auc_ovr_excluded",
        "per_class",
        "confusion_matrix",
        "classes",
        "num_examples",
    }
    assert m["accuracy"] == skm.accuracy_score(labels, predicted)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(labels, predicted, average="macro"), abs=1e-12)
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(labels, predicted, average="weighted"), abs=1e-12)
    assert m["top2_accuracy"] == skm.top_k_accuracy_score(labels, probs, k=2)
    assert m["auc_ovr"] == pytest.approx(skm.roc_auc_score(labels, probs, multi_class="ovr"), abs=1e-12)
    assert m["macro_f1_classes"] == list(classes) and m["auc_ovr_excluded"] == []
    for c, name in enumerate(classes):
        for key, sk_key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert m["per_class"][name][key] == pytest.approx(report[str(c)][sk_key], abs=1e-12)
        assert m["per_class"][name]["support"] == report[str(c)]["support"]
    assert m["confusion_matrix"]["counts"] == skm.confusion_matrix(labels, predicted).tolist()
    np.testing.assert_allclose(
        m["confusion_matrix"]["normalized"],
        skm.confusion_matrix(labels, predicted, normalize="true"),
        atol=1e-12,
    )
    assert 0.0 < m["accuracy"] < 1.0 and 0.5 < m["auc_ovr"] < 1.0  # a non-degenerate case


def test_plain_json_types():
    labels, probs = random_case()
    m = metrics.compute_metrics(labels, probs, ("a", "b", "c", "d"))
    assert json.loads(json.dumps(m, allow_nan=False)) == m


def test_auc_ovr_and_top2_by_hand():
    labels = np.array([0, 1, 2, 2])
    probs = np.array(
        [
            [0.5, 0.3, 0.2],  # true 0, top two {0, 1}: hit
            [0.6, 0.1, 0.3],  # true 1, top two {0, 2}: miss
            [0.2, 0.3, 0.5],  # true 2, top two {2, 1}: hit
            [0.5, 0.4, 0.1],  # true 2, top two {0, 1}: miss
        ]
    )
    m = metrics.compute_metrics(labels, probs, CLASSES)
    assert m["top2_accuracy"] == pytest.approx(2 / 4)
    # AUC of a class = share of (positive, negative) pairs where the positive scores higher, ties 1/2.
    # Class 0: positive 0.5 vs negatives 0.6, 0.2, 0.5 -> 0 + 1 + 1/2 = 1.5 of 3 pairs = 1/2.
    # Class 1: positive 0.1 vs negatives 0.3, 0.3, 0.4 -> 0 of 3 = 0.
    # Class 2: positives 0.5, 0.1 vs negatives 0.2, 0.3 -> 0.5 wins twice, 0.1 never: 2 of 4 = 1/2.
    # Macro: (1/2 + 0 + 1/2) / 3 = 1/3.
    assert m["auc_ovr"] == pytest.approx(1 / 3)
    assert m["auc_ovr_excluded"] == []


def absent_class_case(last_row):
    """4 examples of Buildings and Cars only (no Labs); ``last_row`` is the 4th row's probabilities."""
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], last_row])
    return labels, probs


def test_absent_class_never_predicted_is_left_out_of_macro_f1_and_auc(caplog):
    labels, probs = absent_class_case([0.2, 0.5, 0.3])  # predictions 0, 1, 1, 1: Labs never predicted
    m = metrics.compute_metrics(labels, probs, CLASSES)
    # Buildings: TP 1, FP 0, FN 1 -> P 1, R 1/2, F1 2/3. Cars: TP 2, FP 1, FN 0 -> P 2/3, R 1, F1 4/5.
    assert m["per_class"]["Buildings"]["f1"] == pytest.approx(2 / 3)
    assert m["per_class"]["Cars"]["f1"] == pytest.approx(4 / 5)
    assert m["per_class"]["Labs"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1_classes"] == ["Buildings", "Cars"]
    assert m["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)  # 11/15, not (2/3 + 4/5 + 0) / 3
    assert m["weighted_f1"] == pytest.approx((2 * 2 / 3 + 2 * 4 / 5) / 4)
    # Buildings: positives 0.7, 0.3 vs negatives 0.1, 0.2 -> 4 of 4 pairs = 1.
    # Cars: positives 0.8, 0.5 vs negatives 0.2, 0.6 -> 0.8 wins twice, 0.5 once: 3 of 4 = 3/4.
    # Labs has no positive example: excluded. Macro over the other two: (1 + 3/4) / 2 = 7/8.
    assert m["auc_ovr"] == pytest.approx(7 / 8)
    assert m["auc_ovr_excluded"] == ["Labs"]
    assert m["confusion_matrix"]["counts"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert m["confusion_matrix"]["normalized"][2] == [0.0, 0.0, 0.0]
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert "['Labs']" in caplog.text
    json.dumps(m, allow_nan=False)


def test_absent_class_that_is_predicted_counts_with_f1_0():
    labels, probs = absent_class_case([0.2, 0.3, 0.5])  # predictions 0, 1, 1, 2: Labs predicted once
    m = metrics.compute_metrics(labels, probs, CLASSES)
    # Buildings: TP 1, FP 0, FN 1 -> F1 2/3. Cars: TP 1, FP 1, FN 1 -> F1 1/2. Labs: TP 0, FP 1 -> F1 0.
    assert m["macro_f1_classes"] == list(CLASSES)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert m["weighted_f1"] == pytest.approx((2 * 2 / 3 + 2 * 1 / 2 + 0 * 0) / 4)
    assert m["per_class"]["Labs"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # Cars: positives 0.8, 0.3 vs negatives 0.2, 0.6 -> 3 of 4; Buildings 1 as above: (1 + 3/4) / 2.
    assert m["auc_ovr"] == pytest.approx(7 / 8) and m["auc_ovr_excluded"] == ["Labs"]


def test_auc_is_none_with_a_single_class_in_the_labels(caplog):
    labels = np.array([1, 1])
    probs = np.array([[0.2, 0.7, 0.1], [0.5, 0.4, 0.1]])  # predictions Cars, Buildings
    m = metrics.compute_metrics(labels, probs, CLASSES)
    assert m["auc_ovr"] is None and m["auc_ovr_excluded"] == list(CLASSES)
    assert "auc_ovr is undefined" in caplog.text
    # Cars: TP 1, FN 1 -> F1 2/3; Buildings: FP 1 -> F1 0; Labs neither present nor predicted.
    assert m["macro_f1_classes"] == ["Buildings", "Cars"]
    assert m["macro_f1"] == pytest.approx((0 + 2 / 3) / 2)


def test_two_classes():
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.45, 0.55], [0.8, 0.2]])
    m = metrics.compute_metrics(labels, probs, ("x", "y"))
    assert m["top2_accuracy"] == 1.0
    assert m["auc_ovr"] == pytest.approx(skm.roc_auc_score(labels, probs[:, 1]))
    assert m["accuracy"] == pytest.approx(3 / 5)


def test_single_class_has_no_auc():
    m = metrics.compute_metrics(np.array([0, 0]), np.ones((2, 1)), ("only",))
    assert m["auc_ovr"] is None and m["accuracy"] == 1.0


@pytest.mark.parametrize(
    "labels, probs, message",
    [
        (np.array([0, 1]), np.full((2, 2), 0.5), "shape"),
        (np.array([0, 1, 2]), np.full((2, 3), 1 / 3), "labels must have shape"),
        (np.array([0, 3]), np.full((2, 3), 1 / 3), r"\[0, 3\)"),
        (np.array([0, -1]), np.full((2, 3), 1 / 3), r"\[0, 3\)"),
        (np.array([0.0, 1.0]), np.full((2, 3), 1 / 3), "integers"),
        (np.zeros((0,), int), np.zeros((0, 3)), "no examples"),
    ],
)
def test_bad_input_is_refused(labels, probs, message):
    with pytest.raises(ValueError, match=message):
        metrics.compute_metrics(labels, probs, CLASSES)


def test_duplicate_class_names_are_refused():
    with pytest.raises(ValueError, match="unique"):
        metrics.compute_metrics(np.array([0, 1]), np.full((2, 2), 0.5), ("a", "a"))


def test_format_metrics_lists_summary_and_classes():
    labels, probs = tiny_case()
    text = metrics.format_metrics(metrics.compute_metrics(labels, probs, CLASSES))
    assert "accuracy        0.6667" in text and "top-2 accuracy  0.8333" in text
    for name in CLASSES:
        assert any(line.startswith(name) and line.rstrip().endswith("2") for line in text.splitlines())
    absent = metrics.format_metrics(metrics.compute_metrics(labels[:4], probs[:4], CLASSES))
    assert "macro F1        0.7333 (without Labs: absent, never predicted)" in absent
    assert "AUC (OvR macro) 0.8750 (without Labs: no positive or no negative example)" in absent
    single = metrics.format_metrics(metrics.compute_metrics(labels[:2], probs[:2], CLASSES))
    assert "AUC (OvR macro) n/a (without Buildings, Cars, Labs" in single
