"""After training: calibration.json, calibrated metrics, and eval/report.html, read by a real browser."""

import json
import os
import re
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from scenecls import train
from scenecls.evaluation import evaluator, html_report
from scenecls.models import build_classifier, calibration

SECTIONS = ("header", "run", "metrics", "per-class", "confused", "plots", "calibration", "gallery")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = load_config("tiny")
    workdir = str(tmp_path_factory.mktemp("report_run"))
    metrics = train.train_and_evaluate(config, workdir)
    return config, workdir, metrics


@pytest.mark.slow
def test_training_calibrates_and_reports_both(trained):
    _, workdir, metrics = trained
    with open(os.path.join(workdir, "calibration.json")) as f:
        fitted = json.load(f)
    assert fitted["calibrated"] and fitted["fitted_on"] == "validation" and fitted["temperature"] > 0
    with open(os.path.join(workdir, "eval", "metrics.json")) as f:
        saved = json.load(f)
    for key in ("ece", "ece_uncalibrated", "nll", "nll_uncalibrated", "temperature"):
        assert saved[key] == pytest.approx(metrics[key]), key
    assert saved["temperature"] == pytest.approx(fitted["temperature"])
    # The calibrated probabilities in predictions.csv predict what the uncalibrated logits predict.
    _, labels, probs, _ = evaluator.reports.read_predictions_csv(
        os.path.join(workdir, "eval", "predictions.csv")
    )
    assert saved["accuracy"] == pytest.approx(float(np.mean(probs.argmax(1) == labels)))
    assert os.path.getsize(os.path.join(workdir, "eval", "reliability.png")) > 0


@pytest.mark.slow
def test_report_is_one_self_contained_page(trained):
    _, workdir, metrics = trained
    with open(os.path.join(workdir, "eval", "report.html")) as f:
        page = f.read()
    for section in SECTIONS:
        assert f"id='{section}'" in page, section
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page), "no network resources"
    assert page.count("src='data:image/png;base64,") >= 4  # confusion, ROC, curves, reliability
    wrong = int(round(metrics["num_examples"] * (1 - metrics["accuracy"])))
    assert page.count("<figure class='miss'>") == min(wrong, html_report.GALLERY_LIMIT)
    assert page.count("src='data:image/jpeg;base64,") == min(wrong, html_report.GALLERY_LIMIT)


@pytest.mark.slow
def test_calibration_off_keeps_temperature_one(trained, tmp_path):
    config, workdir, _ = trained
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    config = config.copy_and_resolve_references()
    config.calibrate = False
    assert evaluator.calibrate(config, copy) == 1.0
    with open(os.path.join(copy, "calibration.json")) as f:
        assert json.load(f) == {"temperature": 1.0, "calibrated": False}
    assert evaluator.evaluate(config, copy)["temperature"] == 1.0


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_a_real_browser_opens_the_report(trained, tmp_path):
    """Headless Chromium loads the file offline, builds its DOM with every section, and takes a screenshot
    (kept as tests' artifact in the run's eval/ folder)."""
    _, workdir, _ = trained
    page = os.path.join(workdir, "eval", "report.html")
    flags = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", f"file://{page}"], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    for section in SECTIONS:
        assert f'id="{section}"' in dom.stdout, section
    assert "scenecls evaluation report" in dom.stdout
    screenshot = os.path.join(workdir, "eval", "report_screenshot.png")
    shot = subprocess.run(
        [*flags, f"--screenshot={screenshot}", "--window-size=1280,2000", f"file://{page}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.returncode == 0 and os.path.getsize(screenshot) > 10_000, shot.stderr[-2000:]


def test_tta_views_and_the_averaged_logits(tiny_config):
    images = jax.random.uniform(jax.random.PRNGKey(0), (2, 64, 64, 3), minval=0, maxval=255)
    flip = evaluator.tta_views(images, "flip")
    assert flip.shape == (2, 2, 64, 64, 3)
    np.testing.assert_array_equal(flip[1], images[:, :, ::-1])
    assert evaluator.tta_views(images, "flip_crops").shape == (12, 2, 64, 64, 3)
    model = build_classifier(tiny_config.model, num_classes=5)
    variables = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 64, 64, 3)))
    batch = {"image": images, "label": jnp.array([0, 1]), "mask": jnp.array([True, True])}
    out = evaluator.eval_step(variables, batch, model=model, preprocessing="none", tta="flip")
    expected = (model.apply(variables, images) + model.apply(variables, images[:, :, ::-1])) / 2
    np.testing.assert_allclose(out["logits"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["probs"], calibration.softmax(expected), rtol=1e-5, atol=1e-6)


def test_confused_pairs_are_sorted():
    counts = [[5, 2, 0], [3, 4, 1], [0, 3, 6]]
    assert html_report.confused_pairs(counts, ["a", "b", "c"]) == [
        ("b", "a", 3),
        ("c", "b", 3),
        ("a", "b", 2),
        ("b", "c", 1),
    ]
