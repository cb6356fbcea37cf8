"""Evaluating a trained run on a labelled folder that lacks some of the model's classes."""

import json
import os
import shutil

import numpy as np
import pytest

from scenecls import evaluation, train
from scenecls.data import synthetic
from scenecls.evaluation import reports


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny trained run (configs/tiny.py) on the five synthetic classes."""
    from conftest import load_config

    path = str(tmp_path_factory.mktemp("run"))
    train.train_and_evaluate(load_config("tiny"), path)
    return path


@pytest.mark.slow
def test_evaluate_on_a_folder_without_some_classes(workdir, tmp_path, caplog):
    from conftest import load_config

    source = str(tmp_path / "follow_up")
    synthetic.write_dataset(source, per_class=3, size=(72, 96), seed=7)
    shutil.rmtree(os.path.join(source, "Labs"))  # no folder at all
    for name in os.listdir(os.path.join(source, "People")):  # an empty folder
        os.remove(os.path.join(source, "People", name))
    config = load_config("tiny")
    config.eval.source_dir = source

    result = evaluation.evaluate(config, workdir)

    assert "classes without images, accepted with no examples: ['Labs', 'People']" in caplog.text
    with open(os.path.join(workdir, "eval", "metrics.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(result))
    present = ["Buildings", "Cars", "Trees"]
    assert saved["num_examples"] == 9 and saved["classes"] == list(synthetic.CLASSES)
    assert {name: row["support"] for name, row in saved["per_class"].items()} == {
        "Buildings": 3,
        "Cars": 3,
        "Labs": 0,
        "People": 0,
        "Trees": 3,
    }
    # Independently of the metrics code, from the saved predictions: which classes the averages cover.
    files, labels, probs, classes = reports.read_predictions_csv(
        os.path.join(workdir, "eval", "predictions.csv")
    )
    assert len(files) == 9 and sorted({classes[c] for c in labels}) == present
    predicted = {classes[c] for c in np.argmax(probs, axis=1)}
    assert saved["macro_f1_classes"] == [name for name in classes if name in present or name in predicted]
    assert saved["macro_f1"] == pytest.approx(
        np.mean([saved["per_class"][name]["f1"] for name in saved["macro_f1_classes"]])
    )
    assert saved["auc_ovr_excluded"] == ["Labs", "People"]
    assert isinstance(saved["auc_ovr"], float) and 0.0 <= saved["auc_ovr"] <= 1.0
