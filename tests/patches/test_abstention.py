"""Abstention (``patch.min_confidence``): uncertain patches, coverage, major/secondary, JSON, overlay, CSV.

Every expected value below is worked out by hand from the crafted probabilities, not by ``tally``.
"""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from scenecls import config as config_lib
from scenecls.patches import PatchClassifier, run_inference, tally
from scenecls.patches import run as infer_run
from scenecls.patches.explain import explained_classes
from scenecls.patches.render import overlay, render, title

ABC = ("a", "b", "c")
# Ten patches, min_confidence 0.5: top probabilities 0.45, 0.40, 0.34, 0.49 are below it (uncertain);
# 0.50 (patch 8) is not below it. Confident: a = patches 0, 1, 7; b = 3, 8; c = 5.
TEN = np.array(
    [
        [0.90, 0.05, 0.05],
        [0.80, 0.10, 0.10],
        [0.45, 0.30, 0.25],
        [0.20, 0.60, 0.20],
        [0.35, 0.40, 0.25],
        [0.10, 0.20, 0.70],
        [0.33, 0.33, 0.34],
        [0.55, 0.25, 0.20],
        [0.25, 0.50, 0.25],
        [0.30, 0.21, 0.49],
    ]
)


def test_tally_with_abstentions_hand_computed():
    counts = tally(TEN, ABC, threshold=0.15, min_confidence=0.5)
    assert counts["labels"].tolist() == [0, 0, -1, 1, -1, 2, -1, 0, 1, -1]
    assert counts["coverage"] == pytest.approx({"a": 0.3, "b": 0.2, "c": 0.1}, abs=1e-12)
    assert counts["uncertain"] == {"count": 4, "share": 0.4}
    # Mean probability over all ten patches (column sums 4.23, 2.94, 2.83), abstaining or not.
    assert counts["prob_coverage"] == pytest.approx({"a": 0.423, "b": 0.294, "c": 0.283}, abs=1e-12)
    assert counts["major"] == "a"
    assert counts["secondary"] == [{"class": "b", "coverage": pytest.approx(0.2, abs=1e-12)}]  # c: 0.1


def test_abstention_can_change_the_major_class():
    """b tops four of six patches, but only at 0.55: at min_confidence 0.6 they abstain and a is major."""
    probs = np.array([[0.9, 0.1]] * 2 + [[0.45, 0.55]] * 4)
    plain = tally(probs, ("a", "b"), threshold=0.05)
    assert plain["major"] == "b" and plain["coverage"] == pytest.approx({"a": 1 / 3, "b": 2 / 3})
    assert plain["secondary"] == [{"class": "a", "coverage": pytest.approx(1 / 3)}]
    abstaining = tally(probs, ("a", "b"), threshold=0.05, min_confidence=0.6)
    assert abstaining["major"] == "a" and abstaining["coverage"] == pytest.approx({"a": 1 / 3, "b": 0.0})
    assert abstaining["secondary"] == [] and abstaining["uncertain"] == {"count": 4, "share": 4 / 6}


def test_the_secondary_threshold_is_a_share_of_all_patches():
    """b is 1 of 4 confident patches (25%) but 1 of 10 patches (10%): not above a 15% threshold."""
    probs = np.array([[0.9, 0.1]] * 3 + [[0.1, 0.9]] + [[0.5, 0.5]] * 6)
    counts = tally(probs, ("a", "b"), threshold=0.15, min_confidence=0.6)
    assert counts["major"] == "a" and counts["coverage"] == pytest.approx({"a": 0.3, "b": 0.1})
    assert counts["secondary"] == []
    assert tally(probs, ("a", "b"), threshold=0.09, min_confidence=0.6)["secondary"] == [
        {"class": "b", "coverage": pytest.approx(0.1)}
    ]


def _paper_tally(probs: np.ndarray, classes, threshold: float) -> dict:
    """The rule before abstention, written out apart from ``tally``: argmax shares, ties by mean prob."""
    n = len(probs)
    coverage = {name: float(np.sum(probs.argmax(1) == c)) / n for c, name in enumerate(classes)}
    mean = dict(zip(classes, probs.mean(0), strict=True))
    ranked = sorted(classes, key=lambda name: (-coverage[name], -mean[name], classes.index(name)))
    secondary = [
        {"class": name, "coverage": coverage[name]} for name in ranked[1:] if coverage[name] > threshold
    ]
    return {"major": ranked[0], "secondary": secondary, "coverage": coverage}


@pytest.mark.parametrize("seed", range(5))
def test_min_confidence_zero_is_the_old_rule_exactly(seed):
    rng = np.random.default_rng(seed)
    classes = ("a", "b", "c", "d", "e")
    probs = rng.dirichlet(np.full(5, 0.7), size=int(rng.integers(1, 40)))
    counts = tally(probs, classes, threshold=0.1, min_confidence=0.0)
    expected = _paper_tally(probs, list(classes), 0.1)
    assert {k: counts[k] for k in expected} == expected
    assert counts["labels"].tolist() == probs.argmax(1).tolist()
    assert counts["uncertain"] == {"count": 0, "share": 0.0}
    assert tally(probs, classes, threshold=0.1).keys() == counts.keys()  # the default is 0


def test_every_patch_uncertain():
    probs = np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.34, 0.33, 0.33]])
    counts = tally(probs, ABC, threshold=0.0, min_confidence=0.6)
    assert counts["major"] is None and counts["secondary"] == []
    assert counts["coverage"] == {"a": 0.0, "b": 0.0, "c": 0.0}
    assert counts["uncertain"] == {"count": 3, "share": 1.0}
    assert counts["labels"].tolist() == [-1, -1, -1]


# --- PatchClassifier, overlay and the infer loop, on a 2x3 grid of 64 px cells --------------------------

# Cell i of an image (row-major) is painted red = 20 + 40 i; the oracle returns CELL_PROBS[i] for it.
CELL_PROBS = np.array(
    [
        [0.90, 0.05, 0.05],  # a
        [0.40, 0.35, 0.25],  # uncertain at 0.5
        [0.10, 0.80, 0.10],  # b
        [0.20, 0.20, 0.60],  # c
        [0.30, 0.30, 0.40],  # uncertain at 0.5
        [0.70, 0.20, 0.10],  # a
    ]
)
ALL_UNCERTAIN = [1] * 6  # every cell shows cell 1's probabilities


def _cells_image(cells) -> np.ndarray:
    """A 128x192 image of 2x3 flat 64 px cells, cell i (row-major) with red 20 + 40 * cells[i]."""
    image = np.zeros((128, 192, 3), np.uint8)
    for i, cell in enumerate(cells):
        row, col = divmod(i, 3)
        image[64 * row : 64 * (row + 1), 64 * col : 64 * (col + 1)] = (20 + 40 * cell, 200, 50)
    return image


def _cell_oracle(chunk: np.ndarray) -> np.ndarray:
    """The probabilities of the cell each patch shows (by its mean red)."""
    cells = np.rint((chunk[..., 0].reshape(len(chunk), -1).mean(1) - 20) / 40).astype(int)
    return CELL_PROBS[cells]


def _classifier(tiny_config, min_confidence: float, whole_image=None) -> PatchClassifier:
    patch = tiny_config.patch
    patch.size = patch.stride = 64
    patch.min_confidence = min_confidence
    return PatchClassifier.from_patch_fn(_cell_oracle, ABC, patch, whole_image=whole_image)


def test_predict_reports_uncertain_patches(tiny_config):
    result = _classifier(tiny_config, 0.5).predict(_cells_image(range(6)))
    assert [p["class"] for p in result["patches"]] == ["a", "uncertain", "b", "c", "uncertain", "a"]
    assert [p["confidence"] for p in result["patches"]] == pytest.approx([0.9, 0.4, 0.8, 0.6, 0.4, 0.7])
    assert result["coverage"] == pytest.approx({"a": 2 / 6, "b": 1 / 6, "c": 1 / 6})
    assert result["uncertain"] == {"count": 2, "share": 2 / 6}
    assert result["major"] == "a"
    # b and c tie on coverage; b's mean probability (1.9 / 6) beats c's (1.5 / 6).
    assert [s["class"] for s in result["secondary"]] == ["b", "c"]
    assert result["patch"]["min_confidence"] == 0.5


def test_min_confidence_zero_equals_a_patch_config_without_it(tiny_config):
    """A run saved before abstention existed (no patch.min_confidence) predicts exactly as 0 does."""
    image = _cells_image(range(6))
    with_zero = _classifier(tiny_config, 0.0).predict(image)
    old = tiny_config.patch.copy_and_resolve_references()
    with old.unlocked():
        del old["min_confidence"]
    without = PatchClassifier.from_patch_fn(_cell_oracle, ABC, old).predict(image)
    for result in (with_zero, without):
        del result["seconds"]
    assert with_zero == without
    assert [p["class"] for p in with_zero["patches"]] == ["a", "a", "b", "c", "c", "a"]
    assert with_zero["uncertain"] == {"count": 0, "share": 0.0} and not with_zero["whole_image"]["uncertain"]


@pytest.mark.parametrize("min_confidence,uncertain", [(0.0, False), (0.5, False), (0.6, True)])
def test_whole_image_says_whether_it_is_uncertain(tiny_config, min_confidence, uncertain):
    classifier = _classifier(tiny_config, min_confidence, whole_image=lambda image: np.array([0.3, 0.5, 0.2]))
    whole = classifier.predict(_cells_image(range(6)))["whole_image"]
    assert whole == {"class": "b", "confidence": 0.5, "uncertain": uncertain}  # 0.5 is not below 0.5


def test_a_class_named_uncertain_needs_min_confidence_zero(tiny_config):
    tiny_config.patch.min_confidence = 0.5
    with pytest.raises(ValueError, match="min_confidence"):
        PatchClassifier.from_patch_fn(_cell_oracle, ("a", "uncertain", "c"), tiny_config.patch)
    tiny_config.patch.min_confidence = 0.0
    PatchClassifier.from_patch_fn(_cell_oracle, ("a", "uncertain", "c"), tiny_config.patch)


@pytest.mark.parametrize("value", [1.5, -0.1, "0.5", True, float("nan")])
def test_min_confidence_must_be_a_number_in_0_1(value):
    config_lib.validate({"patch": {"min_confidence": 0.5}})
    with pytest.raises(ValueError, match=r"^config.patch.min_confidence=.* a number in \[0, 1\]"):
        config_lib.validate({"patch": {"min_confidence": value}})  # a dict: ConfigDict would coerce some


def _achromatic(pixels: np.ndarray) -> np.ndarray:
    return (pixels[..., 0] == pixels[..., 1]) & (pixels[..., 1] == pixels[..., 2])


def test_overlay_greys_and_hatches_uncertain_cells(tiny_config, tmp_path):
    image = _cells_image(range(6))
    sure = _classifier(tiny_config, 0.0).predict(image)
    unsure = _classifier(tiny_config, 0.5).predict(image)
    drawn = overlay(image, unsure)
    for row, col in ((0, 1), (1, 1)):  # the uncertain cells: grey, with dark hatch lines
        cell = drawn[64 * row : 64 * (row + 1), 64 * col : 64 * (col + 1)]
        assert _achromatic(cell).all()
        assert len(np.unique(cell[..., 0])) >= 2 and cell[..., 0].min() < 60
    for row, col in ((0, 0), (0, 2), (1, 0), (1, 2)):  # confident cells keep colour
        assert not _achromatic(drawn[64 * row + 2 : 64 * row + 62, 64 * col + 2 : 64 * col + 62]).any()
    assert not _achromatic(overlay(image, sure)).any()
    render(image, sure, str(tmp_path / "sure.png"))
    render(image, unsure, str(tmp_path / "unsure.png"))
    assert (tmp_path / "sure.png").read_bytes() != (tmp_path / "unsure.png").read_bytes()
    assert _achromatic(np.asarray(Image.open(tmp_path / "unsure.png").convert("RGB"))).any()


def test_an_all_uncertain_result_renders_and_reads(tiny_config, tmp_path):
    result = _classifier(tiny_config, 0.5).predict(_cells_image(ALL_UNCERTAIN))
    assert result["major"] is None and result["uncertain"] == {"count": 6, "share": 1.0}
    assert "Major: none (every patch uncertain)" in title(result) and "uncertain: 100%" in title(result)
    render(_cells_image(ALL_UNCERTAIN), result, str(tmp_path / "all.png"))
    assert Image.open(tmp_path / "all.png").size[0] >= 400
    row = infer_run.csv_row(result, "all.png", "all")
    assert row["major"] == "" and row["uncertain"] == "1.0000" and row["secondary"] == ""
    assert explained_classes(result) == []


def test_run_inference_writes_abstentions(tiny_config, tmp_path, monkeypatch, capsys):
    photos, workdir = tmp_path / "photos", tmp_path / "run"
    os.makedirs(photos)
    Image.fromarray(_cells_image(range(6))).save(photos / "mixed.png")
    Image.fromarray(_cells_image(ALL_UNCERTAIN)).save(photos / "unsure.png")
    classifier = _classifier(tiny_config, 0.5)
    monkeypatch.setattr(PatchClassifier, "from_workdir", staticmethod(lambda workdir, patch: classifier))
    tiny_config.infer.inputs = str(photos)

    assert run_inference(tiny_config, str(workdir)) == 0

    out = capsys.readouterr()
    assert not out.err and "uncertain: 33%" in out.out and "none (every patch uncertain)" in out.out
    infer_dir = workdir / "infer"
    assert sorted(os.listdir(infer_dir)) == [
        "mixed.json",
        "mixed.png",
        "summary.csv",
        "unsure.json",
        "unsure.png",
    ]
    mixed = json.loads((infer_dir / "mixed.json").read_text())
    assert mixed["uncertain"] == {"count": 2, "share": pytest.approx(1 / 3)}
    assert [p["class"] for p in mixed["patches"]] == ["a", "uncertain", "b", "c", "uncertain", "a"]
    assert mixed["patches"][1]["confidence"] == pytest.approx(0.4)
    assert mixed["major"] == "a" and mixed["patch"]["min_confidence"] == 0.5
    assert set(mixed["whole_image"]) == {"class", "confidence", "uncertain"}
    unsure = json.loads((infer_dir / "unsure.json").read_text())
    assert unsure["major"] is None and unsure["secondary"] == []
    assert unsure["uncertain"] == {"count": 6, "share": 1.0}
    with open(infer_dir / "summary.csv") as f:
        rows = {os.path.basename(row["file"]): row for row in csv.DictReader(f)}
    assert rows["mixed.png"]["major"] == "a" and rows["mixed.png"]["uncertain"] == "0.3333"
    assert rows["unsure.png"]["major"] == "" and rows["unsure.png"]["uncertain"] == "1.0000"
    assert not rows["unsure.png"]["error"]
