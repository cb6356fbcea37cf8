"""A workdir written before the package was restructured (format version 1) still loads and resumes.

``tests/fixtures/run_v1`` was trained by the code before the move (configs/tiny.py, width 4, head filters 4,
one stage-1 epoch, no stage 2): its run files, best stage-1 and latest checkpoints (the latest one holds the
optimizer state of version 1, without a learning rate in it).
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import REPO, load_config

from scenecls import evaluation, train
from scenecls.data import synthetic
from scenecls.patches import PatchClassifier
from scenecls.workdir import checkpoints, inference, run_files

FIXTURE = os.path.join(REPO, "tests", "fixtures", "run_v1")


def _config(stage1_epochs: int, stage2_epochs: int):
    config = load_config("tiny")
    config.model.update(width=4, head_filters=4)
    config.stage1.epochs, config.stage2.epochs = stage1_epochs, stage2_epochs
    config.data.in_memory = "false"  # as the fixture was trained (in memory rounds before augmenting)
    return config


@pytest.fixture
def old_run(tmp_path):
    workdir = str(tmp_path / "old_run")
    shutil.copytree(FIXTURE, workdir)
    return workdir


def test_the_fixture_is_of_the_old_format(old_run):
    with open(os.path.join(old_run, "run.json")) as f:
        assert json.load(f)["format_version"] == 1
    restored = checkpoints.restore_latest(checkpoints.latest_manager(old_run))
    assert restored.format_version == 1 and restored.meta["stage"] == "stage1"


def test_old_workdir_loads_for_inference_and_evaluation(old_run, tmp_path):
    loaded = inference.load_for_inference(old_run)
    config, classes = run_files.read_run_config(old_run)
    assert loaded.classes == classes == ("Buildings", "Cars", "Labs", "People", "Trees")
    assert inference.final_stage(old_run) == "stage1"
    with open(os.path.join(old_run, "history.json")) as f:
        assert len(json.load(f)["stage1"]) == 1
    image, _, _ = synthetic.make_composite(128, 192, seed=3)
    result = PatchClassifier.from_workdir(old_run).predict(image)
    assert result["major"] in classes and sum(result["coverage"].values()) == pytest.approx(1.0)
    metrics = evaluation.evaluate(config, old_run)  # the run's own test split, prepared again
    assert metrics["num_examples"] == 10 and 0.0 <= metrics["accuracy"] <= 1.0


@pytest.mark.slow
def test_resuming_an_old_checkpoint_ends_where_an_uninterrupted_run_does(old_run, tmp_path):
    """The old latest checkpoint (stage 1, epoch 1 done) resumes into two more epochs of stage 1 and one of
    stage 2, and ends where the same run from scratch does."""
    resumed = train.train_and_evaluate(_config(2, 1), old_run)
    fresh_dir = str(tmp_path / "fresh")
    fresh = train.train_and_evaluate(_config(2, 1), fresh_dir)
    with open(os.path.join(old_run, "history.json")) as f, open(os.path.join(fresh_dir, "history.json")) as g:
        got, expected = json.load(f), json.load(g)
    assert [len(got[s]) for s in ("stage1", "stage2")] == [2, 1]
    for stage in ("stage1", "stage2"):
        for a, b in zip(expected[stage], got[stage], strict=True):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (stage, key)
    assert resumed["accuracy"] == pytest.approx(fresh["accuracy"])
    best = [jax.device_get(checkpoints.best_variables(d, "stage2")) for d in (old_run, fresh_dir)]
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), *best)
    with open(os.path.join(old_run, "run.json")) as f:
        assert json.load(f)["format_version"] == checkpoints.FORMAT_VERSION  # upgraded by the run
