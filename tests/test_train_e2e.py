"""End to end: tiny two-stage training on synthetic data, outputs, resume and refusal of a foreign workdir."""

import json
import os

import numpy as np
import pytest

from scenecls import checkpoints, train

EVAL_FILES = ("metrics.json", "predictions.csv", "confusion_matrix.png", "roc.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run shared by the tests below (data prepared once)."""
    from conftest import load_config

    config = load_config("tiny")
    config.stage1.epochs = 2
    workdir = str(tmp_path_factory.mktemp("run"))
    metrics = train.train_and_evaluate(config, workdir)
    return config, workdir, metrics


def test_train_writes_every_output(trained):
    config, workdir, metrics = trained
    for name in ("config.json", "classes.json", "history.json", "curves.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    for name in EVAL_FILES:
        assert os.path.getsize(os.path.join(workdir, "eval", name)) > 0, name
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    with open(os.path.join(workdir, "history.json")) as f:
        history = json.load(f)
    assert [len(history[s]) for s in ("stage1", "stage2")] == [2, 1]
    for record in history["stage1"] + history["stage2"]:
        assert set(record) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_per_s"}
        assert np.isfinite(record["loss"]) and 0 <= record["val_accuracy"] <= 1
    with open(os.path.join(workdir, "eval", "metrics.json")) as f:
        saved = json.load(f)
    assert saved["accuracy"] == pytest.approx(metrics["accuracy"])
    assert saved["classes"] == ["Buildings", "Cars", "Labs", "People", "Trees"]
    with open(os.path.join(workdir, "classes.json")) as f:
        assert json.load(f) == saved["classes"]
    assert (
        saved["num_examples"] == len(open(os.path.join(workdir, "eval", "predictions.csv")).readlines()) - 1
    )


def test_inference_model_matches_best_checkpoint(trained):
    _, workdir, _ = trained
    loaded = checkpoints.load_for_inference(workdir)
    assert loaded.classes == ("Buildings", "Cars", "Labs", "People", "Trees")
    assert checkpoints.final_stage(workdir) == "stage2"
    assert set(loaded.variables) == {"params", "batch_stats"}


def test_resume_after_interruption_equals_uninterrupted(trained, tmp_path):
    """A run stopped after stage 1's first epoch and re-run ends exactly where the uninterrupted one did."""
    config, workdir, metrics = trained
    from conftest import load_config

    full = load_config("tiny")
    full.stage1.epochs = 2
    full.data.prepared_dir = os.path.join(workdir, "prepared")
    full.data.source_dir = os.path.join(workdir, "synthetic_source")
    resumed_dir = str(tmp_path / "resumed")
    # Interrupt: stop after one epoch by running a config with fewer epochs, then resume with the full config.
    short = load_config("tiny")
    short.update_from_flattened_dict({"stage1.epochs": 1, "stage2.epochs": 0})
    short.data.prepared_dir, short.data.source_dir = full.data.prepared_dir, full.data.source_dir
    train.train_and_evaluate(short, resumed_dir)
    resumed_metrics = train.train_and_evaluate(full, resumed_dir)
    with (
        open(os.path.join(workdir, "history.json")) as f,
        open(os.path.join(resumed_dir, "history.json")) as g,
    ):
        expected, got = json.load(f), json.load(g)
    for stage in ("stage1", "stage2"):
        for a, b in zip(expected[stage], got[stage], strict=True):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (stage, key)
    assert resumed_metrics["accuracy"] == pytest.approx(metrics["accuracy"])
    assert resumed_metrics["macro_f1"] == pytest.approx(metrics["macro_f1"])


def test_foreign_workdir_is_refused(trained):
    from conftest import load_config

    _, workdir, _ = trained
    other = load_config("tiny")
    other.model.head = "gap"
    other.data.prepared_dir = os.path.join(workdir, "prepared")
    other.data.source_dir = os.path.join(workdir, "synthetic_source")
    with pytest.raises(checkpoints.WorkdirError, match="model.head"):
        train.train_and_evaluate(other, workdir)


def test_evaluate_on_another_labelled_folder(trained, tmp_path):
    from scenecls import evaluate
    from scenecls.data import synthetic

    config, workdir, _ = trained
    other = str(tmp_path / "new_photos")
    synthetic.write_dataset(other, per_class=2, size=(72, 96), seed=7)
    eval_config = config.copy_and_resolve_references()
    eval_config.eval.source_dir = other
    metrics = evaluate.evaluate(eval_config, workdir)
    assert metrics["num_examples"] == 10
    assert metrics["classes"] == list(checkpoints.load_for_inference(workdir).classes)


def test_cli_reports_a_missing_run_in_one_line(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scenecls.main",
            "--config=configs/tiny.py",
            f"--workdir={tmp_path}",
            "--mode=evaluate",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("scenecls: error:")]
    assert len(errors) == 1 and "run --mode=train first" in errors[0]
    assert "Traceback" not in result.stderr


def test_evaluate_uses_the_runs_own_test_split(trained):
    """--mode=evaluate needs no data flags: the run's stored data config finds its test split."""
    from conftest import load_config

    from scenecls import evaluate

    _, workdir, metrics = trained
    bare = load_config("tiny")
    bare.data.synthetic_per_class = 0  # on its own this config has no data at all
    again = evaluate.evaluate(bare, workdir)
    assert again["num_examples"] == metrics["num_examples"]
    assert again["accuracy"] == pytest.approx(metrics["accuracy"])
