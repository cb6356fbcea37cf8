"""End to end: tiny two-stage training on synthetic data, outputs, resume and refusal of a foreign workdir."""

import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from scenecls import train
from scenecls.workdir import checkpoints, inference

pytestmark = pytest.mark.slow  # trains tiny runs end to end (minutes in all)

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
        assert set(record) == {
            "epoch",
            "loss",
            "accuracy",
            "val_loss",
            "val_accuracy",
            "lr",
            "images_per_s",
            "seconds",
        }
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
    """load_for_inference returns the variables stored in the best stage-2 checkpoint, the best epoch's."""
    import orbax.checkpoint as ocp

    _, workdir, _ = trained
    loaded = inference.load_for_inference(workdir)
    assert loaded.classes == ("Buildings", "Cars", "Labs", "People", "Trees")
    assert inference.final_stage(workdir) == "stage2"
    best_dir = os.path.join(workdir, "checkpoints", "best_stage2")
    (step,) = [int(name) for name in os.listdir(best_dir) if name.isdigit()]
    # Read the checkpoint's arrays directly with orbax, not through scenecls' restore helpers.
    on_disk = ocp.StandardCheckpointer().restore(os.path.join(best_dir, str(step), "state"))
    flat_disk = dict(jax.tree_util.tree_flatten_with_path(on_disk)[0])
    flat_loaded = dict(jax.tree_util.tree_flatten_with_path(loaded.variables)[0])
    assert {jax.tree_util.keystr(k) for k in flat_disk} == {jax.tree_util.keystr(k) for k in flat_loaded}
    by_name = {jax.tree_util.keystr(k): v for k, v in flat_disk.items()}
    for key, value in flat_loaded.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(by_name[jax.tree_util.keystr(key)]))
    # That checkpoint is the stage-2 epoch with the lowest validation loss (early_stopping.metric).
    with open(os.path.join(workdir, "history.json")) as f:
        records = json.load(f)["stage2"]
    best_record = min(records, key=lambda r: r["val_loss"])
    meta = checkpoints.restore_meta(checkpoints.best_manager(workdir, "stage2"), step)
    assert (meta["epoch"], meta["val_loss"]) == (best_record["epoch"], best_record["val_loss"])


def _assert_same_history(expected_dir, got_dir):
    with (
        open(os.path.join(expected_dir, "history.json")) as f,
        open(os.path.join(got_dir, "history.json")) as g,
    ):
        expected, got = json.load(f), json.load(g)
    stages = [stage for stage in ("stage1", "stage2") if stage in expected]
    assert stages and stages == [stage for stage in ("stage1", "stage2") if stage in got], (expected, got)
    for stage in stages:
        for a, b in zip(expected[stage], got[stage], strict=True):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (stage, key)


def _same_data(config, workdir):
    """``config`` reading the data the ``trained`` fixture prepared in ``workdir``."""
    config.data.prepared_dir = os.path.join(workdir, "prepared")
    config.data.source_dir = os.path.join(workdir, "synthetic_source")
    return config


def test_interrupted_between_epochs_then_resumed_equals_uninterrupted(trained, tmp_path, monkeypatch):
    """SIGINT during stage 1's first validation: epoch 1 is saved, the run stops, and re-running it ends
    exactly where the uninterrupted run did (the mid-epoch case is in test_guard.py)."""
    import signal

    from conftest import load_config

    from scenecls.train import guard, loop

    config, workdir, metrics = trained
    full = _same_data(load_config("tiny"), workdir)
    full.stage1.epochs = 2
    original, sent = loop.predict_split, []

    def validation_with_a_sigint(*args, **kwargs):
        if not sent:  # the first validation: stage 1, epoch 1
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "predict_split", validation_with_a_sigint)
    resumed_dir = str(tmp_path / "resumed")
    with pytest.raises(guard.Interrupted, match="SIGINT: stage1 epoch 1 is saved") as info:
        train.train_and_evaluate(full, resumed_dir)
    assert info.value.exit_status == 130
    assert not os.path.exists(os.path.join(resumed_dir, "eval")), "the run stopped before evaluating"
    monkeypatch.setattr(loop, "predict_split", original)
    resumed_metrics = train.train_and_evaluate(full, resumed_dir)
    _assert_same_history(workdir, resumed_dir)
    assert resumed_metrics["accuracy"] == pytest.approx(metrics["accuracy"])
    assert resumed_metrics["macro_f1"] == pytest.approx(metrics["macro_f1"])


def test_extending_a_finished_run_equals_the_longer_run(trained, tmp_path):
    """A finished one-epoch run re-run with more epochs continues from its checkpoint and ends where the
    longer run does."""
    from conftest import load_config

    config, workdir, metrics = trained
    full = _same_data(load_config("tiny"), workdir)
    full.stage1.epochs = 2
    short = _same_data(load_config("tiny"), workdir)
    short.update_from_flattened_dict({"stage1.epochs": 1, "stage2.epochs": 0})
    extended_dir = str(tmp_path / "extended")
    train.train_and_evaluate(short, extended_dir)
    extended_metrics = train.train_and_evaluate(full, extended_dir)
    _assert_same_history(workdir, extended_dir)
    assert extended_metrics["accuracy"] == pytest.approx(metrics["accuracy"])
    assert extended_metrics["macro_f1"] == pytest.approx(metrics["macro_f1"])


def test_device_augmentation_from_memory_resumes_where_the_longer_run_ends(trained, tmp_path):
    """Training images in memory, augmented in the train step: a finished one-epoch run extended to two
    epochs ends where the two-epoch run does (the augmentation keys continue from the step count)."""
    from conftest import load_config

    _, workdir, _ = trained
    full = _same_data(load_config("tiny"), workdir)
    full.update_from_flattened_dict(
        {"stage1.epochs": 2, "stage2.epochs": 0, "data.in_memory": "true", "augment.where": "device"}
    )
    short = full.copy_and_resolve_references()
    short.stage1.epochs = 1
    whole_dir, extended_dir = str(tmp_path / "whole"), str(tmp_path / "extended")
    train.train_and_evaluate(full, whole_dir)
    train.train_and_evaluate(short, extended_dir)
    train.train_and_evaluate(full, extended_dir)
    _assert_same_history(whole_dir, extended_dir)


def test_partial_stage_trains_only_its_own_batchnorm(tmp_path):
    """Stage rules over one block with train_batchnorm=True: every other BatchNorm statistic is
    bit-identical after training (Keras runs frozen layers' BatchNorm in inference mode)."""
    from conftest import load_config

    config = load_config("tiny")
    config.stage1.epochs = 0
    config.stage2.trainable = ("^head/", "^backbone/conv5_block1_")
    config.stage2.train_batchnorm = True
    train.train_and_evaluate(config, str(tmp_path))
    initial = traverse_util.flatten_dict(train.initial_variables(config, 5)["batch_stats"])
    manager = checkpoints.best_manager(str(tmp_path), "stage2")
    trained_stats = checkpoints.restore_state(manager, manager.latest_step())["batch_stats"]
    trained_stats = traverse_util.flatten_dict(jax.device_get(trained_stats))
    changed = {"/".join(k) for k in initial if not np.array_equal(initial[k], trained_stats[k])}
    assert changed == {f"backbone/conv5_block1_{i}_bn/{s}" for i in range(4) for s in ("mean", "var")}


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
    from scenecls import evaluation
    from scenecls.data import synthetic

    config, workdir, _ = trained
    other = str(tmp_path / "new_photos")
    synthetic.write_dataset(other, per_class=2, size=(72, 96), seed=7)
    eval_config = config.copy_and_resolve_references()
    eval_config.eval.source_dir = other
    metrics = evaluation.evaluate(eval_config, workdir)
    assert metrics["num_examples"] == 10
    assert metrics["classes"] == list(inference.load_for_inference(workdir).classes)


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

    from scenecls import evaluation

    _, workdir, metrics = trained
    bare = load_config("tiny")
    bare.data.synthetic_per_class = 0  # on its own this config has no data at all
    again = evaluation.evaluate(bare, workdir)
    assert again["num_examples"] == metrics["num_examples"]
    assert again["accuracy"] == pytest.approx(metrics["accuracy"])


def test_cli_evaluates_with_tta_and_infers_with_abstention_and_gradcam(trained, tmp_path):
    """The new options from the command line: eval.tta, the report, patch.min_confidence, Grad-CAM."""
    import subprocess
    import sys

    from conftest import REPO

    _, workdir, _ = trained
    image = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(os.path.join(workdir, "synthetic_source", "Cars"))
        for name in names
    )[0]
    common = [sys.executable, "-m", "scenecls.main", "--config=configs/tiny.py", f"--workdir={workdir}"]
    evaluate = subprocess.run(
        [*common, "--mode=evaluate", "--config.eval.tta=flip"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    with open(os.path.join(workdir, "eval", "metrics.json")) as f:
        assert json.load(f)["tta"] == "flip"
    assert "eval/report.html" in evaluate.stdout
    out = tmp_path / "infer"
    infer = subprocess.run(
        [
            *common,
            "--mode=infer",
            f"--config.infer.inputs={image}",
            f"--config.infer.output_dir={out}",
            "--config.infer.explain=gradcam",
            "--config.infer.save_arrays=true",
            "--config.patch.min_confidence=0.99",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert infer.returncode == 0, infer.stderr[-2000:]
    stem = os.path.splitext(os.path.basename(image))[0]
    with open(out / f"{stem}.json") as f:
        result = json.load(f)
    assert result["patch"]["min_confidence"] == 0.99 and result["uncertain"]["count"] > 0
    assert (out / f"{stem}_gradcam.png").stat().st_size > 0
    with np.load(out / f"{stem}_gradcam.npz") as arrays:
        assert arrays["heatmaps"].shape[1:] == tuple(result[k] for k in ("height", "width"))
