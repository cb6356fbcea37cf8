"""Grad-CAM (``infer.explain=gradcam``): the maps themselves, where they fall, and the infer loop's outputs.

The maps are checked against a closed form (a GAP head's Grad-CAM is its class-weighted feature map) and a
full Jacobian (the Inception head); where they fall is measured on half/half composites of synthetic
textures with exact masks, with a tiny model trained here on crops of those textures.
"""

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config
from PIL import Image

from scenecls import config as config_lib
from scenecls.data import synthetic
from scenecls.models import Classifier, build_classifier
from scenecls.models.preprocessing import preprocess
from scenecls.patches import PatchClassifier, run_inference
from scenecls.patches import run as infer_run
from scenecls.patches.explain import explained_classes, feature_gradcam, gradcam
from scenecls.train import setup_stage

TEXTURES = ("Buildings", "Cars", "Trees")
UNIT = 12.0  # scene element size in px: a 64 px patch shows about five
HALF = 128  # each composite is two HALF x HALF squares of different textures
MIN_MASS = 0.6  # the bar: at least this share of a class's heatmap inside its mask


def _init(config, num_classes: int, seed: int = 0):
    model = build_classifier(config.model, num_classes)
    return model, jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((1, 64, 64, 3)))


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


@pytest.fixture(scope="module")
def random_model():
    """The tiny classifier (Inception head, 5 classes), randomly initialised."""
    return _init(load_config("tiny"), 5)


def _features(model, variables, image: np.ndarray) -> np.ndarray:
    """The backbone's final feature map (1, h, w, C) of a uint8 image."""
    apply = jax.jit(functools.partial(model.apply, method=Classifier.features))
    return np.asarray(apply(variables, preprocess(image[None], "caffe")))


def test_gap_head_gradcam_is_the_class_weighted_feature_map(random_model):
    """GAP head: logit_k = mean(A) . W_k + b_k, so d logit_k / d A = W_k / hw everywhere, and the map is
    relu(A . W_k) / hw."""
    inception, variables = random_model
    config = load_config("tiny")
    config.model.head = "gap"
    model = build_classifier(config.model, 4)
    features = _features(inception, variables, image := _noise(96, 160))[0]  # the same backbone
    kernel = np.random.default_rng(0).standard_normal((features.shape[-1], 4)).astype(np.float32)
    gap_head = {"logits": {"kernel": kernel, "bias": np.zeros(4, np.float32)}}
    variables = {**variables, "params": {**variables["params"], "head": gap_head}}
    height, width = features.shape[:2]
    expected = np.maximum(np.einsum("hwc,ck->khw", features, kernel), 0) / (height * width)
    maps = feature_gradcam(model, variables, image, [3, 1], "caffe")
    assert (height, width) == (3, 5) and maps.shape == (2, 3, 5)
    np.testing.assert_allclose(maps, expected[[3, 1]], rtol=1e-4, atol=1e-7)
    assert (maps > 0).any(axis=(1, 2)).all() and (maps == 0).any()  # relu cut some cells, kept others
    heatmaps = gradcam(model, variables, image, [3, 1], "caffe", image_size=64, patch_size=64)
    assert heatmaps.shape == (2, 96, 160) and heatmaps.min() >= 0
    assert heatmaps.max(axis=(1, 2)).tolist() == [1, 1]
    for heatmap, cells in zip(heatmaps, expected[[3, 1]], strict=True):  # peaks in the strongest cell
        row, col = np.unravel_index(heatmap.argmax(), heatmap.shape)
        assert (row // 32, col // 32) == np.unravel_index(cells.argmax(), cells.shape)


def test_inception_head_gradcam_matches_the_jacobian_and_batches(random_model):
    model, variables = random_model
    image = _noise(64, 128, seed=1)
    features = _features(model, variables, image)
    head = jax.jit(jax.jacrev(lambda f: model.apply(variables, f, method=Classifier.classify)[0]))
    jacobian = head(features)  # (classes, 1, h, w, C)
    weights = np.asarray(jacobian)[:, 0].mean(axis=(1, 2))  # (classes, C)
    expected = np.maximum(np.einsum("hwc,kc->khw", np.asarray(features[0]), weights), 0)
    maps = feature_gradcam(model, variables, image, [2, 0, 2, 4], "caffe")
    np.testing.assert_allclose(maps, expected[[2, 0, 2, 4]], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(maps[0], maps[2])
    np.testing.assert_allclose(maps[1:2], feature_gradcam(model, variables, image, [0], "caffe"), rtol=1e-5)
    assert gradcam(model, variables, image, [], "caffe", 64).shape == (0, 64, 128)


def test_gradcam_works_at_the_patch_scale(random_model):
    """With 128 px patches on a 64 px model, a 256x384 photo is analysed at 128x192 (4x6 cells), then
    upsampled to the photo."""
    model, variables = random_model
    image = _noise(256, 384, seed=2)
    heatmaps = gradcam(model, variables, image, [1], "caffe", image_size=64, patch_size=128)
    assert heatmaps.shape == (1, 256, 384) and heatmaps.max() == 1
    expected = feature_gradcam(
        model, variables, np.asarray(Image.fromarray(image).resize((192, 128))), [1], "caffe"
    )
    assert expected.shape == (1, 4, 6)
    row, col = np.unravel_index(heatmaps[0].argmax(), (256, 384))
    assert (row // 64, col // 64) == np.unravel_index(expected[0].argmax(), (4, 6))


def test_only_a_classifier_with_a_model_can_explain(tiny_config, tmp_path, monkeypatch):
    classifier = PatchClassifier.from_patch_fn(
        lambda chunk: np.ones((len(chunk), 5)) / 5, TEXTURES + ("a", "b"), tiny_config.patch
    )
    assert not classifier.can_explain
    with pytest.raises(ValueError, match="from_model or from_workdir"):
        classifier.explain(_noise(64, 64), ["Cars"])
    monkeypatch.setattr(PatchClassifier, "from_workdir", staticmethod(lambda workdir, patch: classifier))
    Image.fromarray(_noise(64, 64)).save(tmp_path / "photo.png")
    tiny_config.infer.inputs, tiny_config.infer.explain = str(tmp_path / "photo.png"), "gradcam"
    with pytest.raises(ValueError, match="infer.explain=gradcam"):
        run_inference(tiny_config, str(tmp_path / "run"))


@pytest.mark.parametrize(
    "field,value", [("explain", "lime"), ("explain", True), ("save_arrays", "yes"), ("save_arrays", 1)]
)
def test_explain_options_are_checked(field, value):
    config_lib.validate({"infer": {"explain": "gradcam", "save_arrays": True}})
    with pytest.raises(ValueError, match=f"^config.infer.{field}="):
        config_lib.validate({"infer": {field: value}})


# --- a tiny model trained on three synthetic textures ---------------------------------------------------


def _train_on_textures(steps: int = 200, batch_size: int = 16, seed: int = 0):
    """(config, model, initial variables, trained variables) of the tiny ResNet trained from scratch on 64 px
    crops of TEXTURES."""
    config = load_config("tiny")
    # torchvision variant: its BatchNorm momentum (0.9) settles the running statistics within a short run.
    config.model.update(variant="torchvision", dropout_rate=0.0)
    config.stage2.update(trainable=(".*",), train_batchnorm=True, learning_rate=2e-3)
    model, variables = _init(config, len(TEXTURES), seed)
    initial = jax.tree_util.tree_map(np.array, variables)  # host copies: training donates its buffers
    stage = setup_stage(config, variables, "stage2", len(TEXTURES))  # everything trains, BatchNorm too
    rng = np.random.default_rng(seed)
    labels = np.arange(12 * len(TEXTURES)) % len(TEXTURES)
    pool = np.stack(
        [synthetic.render_scene(TEXTURES[c], 96, 96, rng, unit=UNIT * rng.uniform(0.8, 1.25)) for c in labels]
    )
    state, class_weights = stage.state, jnp.ones(len(TEXTURES))
    for step in range(steps):
        picks = rng.integers(len(pool), size=batch_size)
        ys, xs = rng.integers(0, 96 - 64 + 1, (2, batch_size))
        crops = np.stack([pool[p, y : y + 64, x : x + 64] for p, y, x in zip(picks, ys, xs, strict=True)])
        batch = {"image": crops, "label": labels[picks]}
        state, _ = stage.step(state, batch, jax.random.PRNGKey(step), class_weights)
    return config, model, initial, {"params": state.params, "batch_stats": state.batch_stats}


@pytest.fixture(scope="module")
def trained():
    start = time.perf_counter()
    trained = _train_on_textures()
    print(f"\ntrained the tiny model on {TEXTURES} in {time.perf_counter() - start:.1f}s")
    return trained


def _half_and_half(first: int, second: int, vertical: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A composite of two HALF px squares (``first`` left or on top), and its exact class mask."""
    rng = np.random.default_rng(seed)
    halves = [synthetic.render_scene(TEXTURES[c], HALF, HALF, rng, unit=UNIT) for c in (first, second)]
    axis = 0 if vertical else 1
    image = np.concatenate(halves, axis=axis)
    mask = np.concatenate([np.full((HALF, HALF), c) for c in (first, second)], axis=axis)
    return image, mask


PAIRS = [(a, b) for a in range(len(TEXTURES)) for b in range(len(TEXTURES)) if a != b]


def _mean_mass_in_mask(model, variables) -> dict[str, float]:
    """Per class, the mean share of its heatmap inside its mask over composites of it with each other class,
    both orders, split both ways (8 composites per class)."""
    masses: dict[str, list[float]] = {name: [] for name in TEXTURES}
    for index, (first, second) in enumerate(PAIRS * 2):
        image, mask = _half_and_half(first, second, vertical=index >= len(PAIRS), seed=100 + index)
        heatmaps = gradcam(model, variables, image, [first, second], "torch", image_size=64, patch_size=64)
        for k, heatmap in zip((first, second), heatmaps, strict=True):
            masses[TEXTURES[k]].append(float(heatmap[mask == k].sum() / heatmap.sum()))
    return {name: float(np.mean(values)) for name, values in masses.items()}


@pytest.mark.slow  # with the training they share: about 30 s on 2 cores
def test_gradcam_mass_lies_inside_each_class_mask(trained):
    _, model, initial, variables = trained
    measured = _mean_mass_in_mask(model, variables)
    print("Grad-CAM mass in mask, trained model:", {k: round(v, 3) for k, v in measured.items()})
    assert all(mass >= MIN_MASS for mass in measured.values()), measured
    # The measure can fail: the same model before training does not place every class's mass in its mask.
    untrained = _mean_mass_in_mask(model, initial)
    print("Grad-CAM mass in mask, untrained model:", {k: round(v, 3) for k, v in untrained.items()})
    assert not all(mass >= MIN_MASS for mass in untrained.values()), untrained


@pytest.mark.slow  # with the training they share: about 30 s on 2 cores
def test_run_inference_writes_gradcam_figures_and_arrays(trained, tmp_path, monkeypatch, capsys):
    config, model, _, variables = trained
    config = config.copy_and_resolve_references()
    classifier = PatchClassifier.from_model(model, variables, TEXTURES, config)
    monkeypatch.setattr(PatchClassifier, "from_workdir", staticmethod(lambda workdir, patch: classifier))
    photos, workdir = tmp_path / "photos", tmp_path / "run"
    os.makedirs(photos)
    masks = {}
    for name, (first, second, vertical) in {
        "cars_trees": (1, 2, False),
        "buildings_cars": (0, 1, True),
    }.items():
        image, masks[name] = _half_and_half(first, second, vertical, seed=7)
        Image.fromarray(image).save(photos / f"{name}.png")
    config.infer.update(inputs=str(photos), explain="gradcam", save_arrays=True)

    assert run_inference(config, str(workdir)) == 0

    out = capsys.readouterr()
    assert not out.err and out.out.count("/_gradcam.png/_gradcam.npz") == 2
    infer_dir = workdir / "infer"
    expected = {f"{n}{s}" for n in masks for s in (".json", ".png", "_gradcam.png", "_gradcam.npz")}
    assert set(os.listdir(infer_dir)) == expected | {"summary.csv"}
    for name, mask in masks.items():
        result = json.loads((infer_dir / f"{name}.json").read_text())
        arrays = np.load(infer_dir / f"{name}_gradcam.npz")
        assert arrays["classes"].tolist() == explained_classes(result)
        assert set(arrays["classes"].tolist()) == {TEXTURES[c] for c in np.unique(mask)}  # both halves found
        heatmaps = arrays["heatmaps"]
        assert heatmaps.dtype == np.float16 and heatmaps.shape == (2, *mask.shape)
        assert heatmaps.min() >= 0 and heatmaps.max(axis=(1, 2)).tolist() == [1, 1]
        with Image.open(infer_dir / f"{name}_gradcam.png") as figure:
            assert 800 <= figure.size[0] <= 1700 and figure.size[1] <= 2100


@pytest.mark.slow  # with the training they share: about 30 s on 2 cores
def test_a_gradcam_that_fails_keeps_the_json_and_overlay(trained, tmp_path, monkeypatch, capsys):
    config, model, _, variables = trained
    classifier = PatchClassifier.from_model(model, variables, TEXTURES, config)
    paths = []
    for index, name in enumerate(("first", "second")):
        Image.fromarray(_half_and_half(1, 2, False, seed=index)[0]).save(tmp_path / f"{name}.png")
        paths.append(str(tmp_path / f"{name}.png"))
    real = infer_run.render_gradcam

    def fail_on_first(image, result, classes, heatmaps, path):
        if result["image"] == paths[0]:
            raise MemoryError("Unable to allocate 3.0 GiB")
        return real(image, result, classes, heatmaps, path)

    monkeypatch.setattr(infer_run, "render_gradcam", fail_on_first)
    out_dir = tmp_path / "out"

    rows = infer_run.infer_files(classifier, paths, str(out_dir), gradcam=True, save_arrays=True)

    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"FAILED {paths[0]}: Grad-CAM not drawn (out of memory")
    assert sorted(os.listdir(out_dir)) == [
        "first.json",
        "first.png",
        "second.json",
        "second.png",
        "second_gradcam.npz",
        "second_gradcam.png",
    ]
    assert [bool(row["error"]) for row in rows] == [True, False] and rows[0]["major"] in TEXTURES
