"""``--mode=export``: every exported file gives the JAX model's probabilities, read by its own runtime."""

import hashlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, load_config

from scenecls import train
from scenecls.data import synthetic
from scenecls.data.images import resize
from scenecls.models import calibration
from scenecls.models.preprocessing import preprocess
from scenecls.patches import PatchClassifier
from scenecls.workdir.inference import load_for_inference

TEMPERATURE = 0.5  # a calibration that is not the identity, so that the test sees it applied
CHATTER = ("I0000", "W0000", "E0000", "WARNING:tensorflow", "tf2onnx", "absl::InitializeLog", "Traceback")
# A client's reload of the SavedModel: TensorFlow and numpy only.
FRESH_PROCESS = """
import sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])
out = model.signatures["serving_default"](images=tf.constant(images))
np.save(sys.argv[3], out["probabilities"].numpy())
assert not [m for m in sys.modules if m.startswith(("scenecls", "flax"))]
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny run, calibrated at TEMPERATURE, exported by the command line with quantisation on.

    Width 16 with its BatchNorm statistics trained: configs/tiny.py's width-8 net keeps BatchNorm at its
    initial statistics, and its int8 activations then change the top class of 2-5% of the photos.
    """
    workdir = str(tmp_path_factory.mktemp("export") / "run")
    config = load_config("tiny")
    config.model.width = config.model.head_filters = 16
    config.stage2.update(epochs=2, trainable=(".*",), train_batchnorm=True)
    train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, calibration.FILE), "w") as f:
        json.dump({"temperature": TEMPERATURE, "calibrated": True}, f)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scenecls.main",
            "--config=configs/tiny.py",
            f"--workdir={workdir}",
            "--mode=export",
            "--config.export.quantize=true",
            "--config.export.verify_images=30",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return workdir, result


@pytest.fixture(scope="module")
def photos():
    """Synthetic scenes of odd sizes (another seed than the command's own check), resized to 64 px."""
    rng = np.random.default_rng(123)
    scenes = [
        synthetic.render_scene(name, int(rng.integers(70, 140)) | 1, int(rng.integers(70, 140)) | 1, rng)
        for name in synthetic.CLASSES * 6
    ]
    return np.stack([resize(scene, 64, 64) for scene in scenes])


@pytest.fixture(scope="module")
def expected(exported, photos):
    """The JAX model's probabilities of ``photos``: model.apply, then softmax(logits / T) on the host."""
    loaded = load_for_inference(exported[0])
    logits = loaded.model.apply(loaded.variables, preprocess(jax.numpy.asarray(photos), "caffe"))
    return calibration.probabilities(np.asarray(logits), TEMPERATURE)


def _agree(actual, expected):
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1e-4
    assert (actual.argmax(axis=1) == expected.argmax(axis=1)).all()


@pytest.mark.slow
def test_the_command_prints_its_figures_and_no_library_chatter(exported):
    workdir, result = exported
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("saved_model", "model.tflite", "model_quantized.tflite", "model.onnx"):
        assert any(line.strip().startswith(name) and "%" in line for line in result.stdout.splitlines()), name
    assert "Export took" in result.stdout
    console = result.stdout + result.stderr
    assert not [word for word in CHATTER if word in console], console[-3000:]
    with open(os.path.join(workdir, "log.txt")) as f:
        assert "tf2onnx" in f.read()  # the converters' output went to the log


@pytest.mark.slow
def test_saved_model_signature_matches_the_jax_model_in_a_fresh_process(exported, photos, expected, tmp_path):
    images, out = tmp_path / "images.npy", tmp_path / "probabilities.npy"
    np.save(images, photos)
    saved_model = os.path.join(exported[0], "export", "saved_model")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, saved_model, str(images), str(out)],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _agree(np.load(out), expected)


@pytest.mark.slow
def test_tflite_and_onnx_match_the_jax_model(exported, photos, expected):
    import onnxruntime
    import tensorflow as tf

    folder = os.path.join(exported[0], "export")
    runner = tf.lite.Interpreter(model_path=os.path.join(folder, "model.tflite")).get_signature_runner()
    tflite = runner(images=photos)
    _agree(tflite["probabilities"], expected)
    assert [c.decode() for c in tflite["classes"][0]] == list(synthetic.CLASSES)
    session = onnxruntime.InferenceSession(os.path.join(folder, "model.onnx"))
    probabilities, classes = session.run(["probabilities", "classes"], {"images": photos})
    _agree(probabilities, expected)
    assert classes.shape == (len(photos), 5) and list(classes[0]) == list(synthetic.CLASSES)
    quantized = tf.lite.Interpreter(model_path=os.path.join(folder, "model_quantized.tflite"))
    top1 = quantized.get_signature_runner()(images=photos)["probabilities"].argmax(axis=1)
    assert np.mean(top1 == expected.argmax(axis=1)) >= 0.99
    assert os.path.getsize(os.path.join(folder, "model_quantized.tflite")) < 0.6 * os.path.getsize(
        os.path.join(folder, "model.tflite")
    )


@pytest.mark.slow
def test_patch_signature_gives_exact_mode_probabilities(exported):
    """Patches of an odd size through ``classify_patches`` = exact patch mode's patches (resized inside)."""
    import tensorflow as tf

    workdir = exported[0]
    patch = load_for_inference(workdir).config.patch
    patch.size, patch.stride = 97, 45
    image = synthetic.make_composite(150, 230, seed=5)[0]
    result = PatchClassifier.from_workdir(workdir, patch).predict(image)
    crops = np.stack([image[y0:y1, x0:x1] for x0, y0, x1, y1 in (p["box"] for p in result["patches"])])
    model = tf.saved_model.load(os.path.join(workdir, "export", "saved_model"))
    out = model.signatures["classify_patches"](patches=tf.constant(crops))["probabilities"].numpy()
    assert [p["class"] for p in result["patches"]] == [synthetic.CLASSES[i] for i in out.argmax(axis=1)]
    confidences = np.array([p["confidence"] for p in result["patches"]])
    assert np.abs(out.max(axis=1) - confidences).max() <= 1e-4


@pytest.mark.slow
def test_meta_names_classes_input_source_and_every_files_checksum(exported):
    workdir = exported[0]
    folder = os.path.join(workdir, "export")
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    assert meta["classes"] == list(synthetic.CLASSES)
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["shape"] == [None, 64, 64, 3]
    assert meta["preprocessing"] == {"kind": "caffe", "inside_the_model": True, "temperature": TEMPERATURE}
    assert os.path.isdir(os.path.join(workdir, meta["source"]["checkpoint"]))
    on_disk = {
        os.path.relpath(os.path.join(root, name), folder)
        for root, _, names in os.walk(folder)
        for name in names
        if name != "meta.json"
    }
    assert set(meta["files"]) == on_disk and "saved_model/saved_model.pb" in on_disk
    for name, entry in meta["files"].items():
        with open(os.path.join(folder, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == entry["sha256"], name
    with open(os.path.join(folder, "README.txt")) as f:
        readme = f.read()
    assert all(word in readme for word in ("saved_model.load", "get_signature_runner", "InferenceSession"))
