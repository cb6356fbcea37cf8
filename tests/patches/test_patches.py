"""Patch-based inference: grid geometry, coverage arithmetic, exact and shared modes, the infer CLI path."""

import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config
from PIL import Image

from scenecls.data import synthetic
from scenecls.models import build_classifier
from scenecls.models.preprocessing import preprocess
from scenecls.patches import PatchClassifier, patch_grid, prepare_image, run_inference, tally
from scenecls.patches.run import output_names
from scenecls.workdir import checkpoints, run_files

CLASSES = synthetic.CLASSES
JSON_FIELDS = {
    "image",
    "width",
    "height",
    "classes",
    "patch",
    "grid",
    "patches",
    "coverage",
    "prob_coverage",
    "major",
    "secondary",
    "whole_image",
    "seconds",
}


def _coverage_counts(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """How many boxes cover each pixel (2-D difference array, then cumulative sums)."""
    diff = np.zeros((height + 1, width + 1), np.int64)
    for x0, y0, x1, y1 in boxes:
        diff[y0, x0] += 1
        diff[y0, x1] -= 1
        diff[y1, x0] -= 1
        diff[y1, x1] += 1
    return diff.cumsum(0).cumsum(1)[:height, :width]


def _check_grid(height: int, width: int, size: int, stride: int) -> None:
    grid = patch_grid(height, width, size, stride)
    boxes = grid.boxes
    assert len(boxes) == grid.rows * grid.cols
    assert (boxes[:, 2] - boxes[:, 0] == size).all() and (boxes[:, 3] - boxes[:, 1] == size).all()
    assert boxes.min() >= 0 and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert _coverage_counts(boxes, height, width).min() >= 1
    xs, ys = np.unique(boxes[:, 0]), np.unique(boxes[:, 1])
    assert len(xs) == grid.cols and len(ys) == grid.rows
    assert xs[-1] == width - size and ys[-1] == height - size  # last column and row flush with the border
    assert (np.diff(xs) <= stride).all() and (np.diff(ys) <= stride).all()


@pytest.mark.parametrize(
    "height,width", [(225, 1000), (224, 224), (448, 672), (336, 560), (224, 4000), (1000, 225)]
)
def test_grid_covers_every_pixel(height, width):
    _check_grid(height, width, size=224, stride=112)


@pytest.mark.parametrize(
    "height,width,expected",
    [(223, 223, (224, 224)), (1, 4000, (224, 4000)), (100, 150, (224, 336)), (5, 5, (224, 224))],
)
def test_small_images_are_upscaled_then_covered(height, width, expected):
    image = np.zeros((height, width, 3), np.uint8)
    prepared, notes = prepare_image(image, patch_size=224)
    assert prepared.shape[:2] == expected
    assert len(notes) == 1 and "upscaled" in notes[0]
    _check_grid(*prepared.shape[:2], size=224, stride=112)


def test_image_scale_resizes_shorter_side():
    image = np.zeros((600, 800, 3), np.uint8)
    assert prepare_image(image, 224)[0] is image  # large enough: untouched, no note
    prepared, notes = prepare_image(image, 224, image_scale=300)
    assert prepared.shape[:2] == (300, 400) and "image_scale" in notes[0]


def test_stride_larger_than_patch_is_refused():
    with pytest.raises(ValueError, match="stride"):
        patch_grid(300, 300, 64, 65)


def test_tally_coverage_threshold_and_order():
    classes = ("a", "b", "c", "d")
    labels = [0] * 10 + [2] * 6 + [1] * 3 + [3]  # 20 patches: a 50%, c 30%, b 15%, d 5%
    probs = np.eye(4)[labels] * 0.7 + 0.075
    counts = tally(probs, classes, threshold=0.05)
    assert counts["coverage"] == pytest.approx({"a": 0.5, "b": 0.15, "c": 0.3, "d": 0.05})
    assert sum(counts["prob_coverage"].values()) == pytest.approx(1.0)
    assert counts["major"] == "a"
    assert [s["class"] for s in counts["secondary"]] == ["c", "b"]  # d's 5% is not above the threshold
    assert [s["class"] for s in tally(probs, classes, threshold=0.04)["secondary"]] == ["c", "b", "d"]
    assert [s["class"] for s in tally(probs, classes, threshold=0.2)["secondary"]] == ["c"]
    tie = tally(np.array([[0.6, 0.4], [0.3, 0.7]]), ("x", "y"), threshold=0.05)
    assert tie["major"] == "y"  # equal coverage: larger mean probability wins


def test_secondary_classes_must_exceed_the_threshold():
    """Secondary means coverage strictly above the threshold: equal is not enough, zero never is."""
    classes = ("a", "b", "c", "d")
    # 8 patches, top classes a a a a b b c c: coverage a 1/2, b 1/4, c 1/4, d 0 (exact binary fractions).
    probs = np.array([[0.7, 0.1, 0.1, 0.1]] * 4 + [[0.1, 0.6, 0.2, 0.1]] * 2 + [[0.1, 0.2, 0.6, 0.1]] * 2)

    def secondary(threshold):
        return [s["class"] for s in tally(probs, classes, threshold)["secondary"]]

    assert secondary(0.25) == []  # b and c sit exactly on it
    assert secondary(0.25 - 1e-9) == ["b", "c"]  # b before c: equal coverage and mean probability
    assert secondary(0.0) == ["b", "c"]  # d covers nothing, so it is not listed even at threshold 0
    assert tally(np.array([[0.9, 0.1], [0.8, 0.2]]), ("x", "y"), 0.0)["secondary"] == []


def _mask_oracle(chunk: np.ndarray) -> np.ndarray:
    """Knows the truth: pixels encode the class (40 * index); probabilities are each class's area share."""
    labels = np.rint(chunk[..., 0] / 40).astype(int).reshape(len(chunk), -1)
    return np.stack([np.bincount(row, minlength=len(CLASSES)) for row in labels]) / labels.shape[1]


def _window_starts(length: int, size: int, stride: int) -> list[int]:
    """Window offsets every ``stride`` plus one flush with the end (written apart from ``grid``)."""
    return sorted(set(range(0, length - size, stride)) | {length - size})


def _majority_labels(mask: np.ndarray, boxes: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Each box's majority class in ``mask`` (ties: the lower index) and its per-class pixel counts.

    Counts come from per-class summed-area tables, not from the oracle's per-patch bincount.
    """
    table = np.pad((mask[..., None] == np.arange(num_classes)).cumsum(0).cumsum(1), ((1, 0), (1, 0), (0, 0)))
    x0, y0, x1, y1 = boxes.T
    counts = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    labels = np.array([max(range(num_classes), key=lambda c: (row[c], -c)) for row in counts])
    return labels, counts


def _check_oracle_result(result: dict, mask: np.ndarray, size: int, stride: int, threshold: float) -> None:
    """Patch labels, coverage, prob_coverage, major and secondary are those of the mask's majority labels."""
    height, width = mask.shape
    boxes = np.array(
        [
            [x, y, x + size, y + size]
            for y in _window_starts(height, size, stride)
            for x in _window_starts(width, size, stride)
        ]
    )
    labels, counts = _majority_labels(mask, boxes, len(CLASSES))
    assert [p["box"] for p in result["patches"]] == boxes.tolist()
    assert [p["class"] for p in result["patches"]] == [CLASSES[label] for label in labels]
    n = len(boxes)
    coverage = {name: int((labels == c).sum()) / n for c, name in enumerate(CLASSES)}
    prob_coverage = {name: counts[:, c].sum() / (n * size * size) for c, name in enumerate(CLASSES)}
    assert result["coverage"] == coverage  # exactly: count of patches / number of patches
    assert result["prob_coverage"] == pytest.approx(prob_coverage, rel=1e-12)
    ranked = sorted(CLASSES, key=lambda name: (-coverage[name], -prob_coverage[name], CLASSES.index(name)))
    assert result["major"] == ranked[0]
    assert result["secondary"] == [
        {"class": name, "coverage": coverage[name]} for name in ranked[1:] if coverage[name] > threshold
    ]


def _encoded_composite(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 260x390 composite's class mask and the image that encodes it for ``_mask_oracle``."""
    mask = synthetic.make_composite(260, 390, seed, regions=5)[1]
    return mask, np.repeat((mask * 40).astype(np.uint8)[..., None], 3, axis=-1)


@pytest.mark.parametrize("seed", range(6))
def test_oracle_coverage_is_the_share_of_patches_of_each_true_label(tiny_config, seed):
    """A perfect patch classifier: every patch gets its majority class, and coverage counts exactly those.

    Two thresholds: the configured 5%, and the largest coverage below the second-ranked class's, so one
    class sits exactly on the threshold (not secondary) and one is above it.
    """
    patch = tiny_config.patch  # 64 px patches, stride 32
    mask, encoded = _encoded_composite(seed)
    result = PatchClassifier.from_patch_fn(_mask_oracle, CLASSES, patch).predict(encoded)
    _check_oracle_result(result, mask, patch.size, patch.stride, patch.secondary_threshold)
    coverages = result["coverage"].values()
    second = sorted(coverages, reverse=True)[1]
    patch.secondary_threshold = max(c for c in coverages if c < second)  # a class exactly on the threshold
    result = PatchClassifier.from_patch_fn(_mask_oracle, CLASSES, patch).predict(encoded)
    _check_oracle_result(result, mask, patch.size, patch.stride, patch.secondary_threshold)
    assert result["secondary"]  # and one above it


@pytest.mark.parametrize("seed", range(6))
def test_oracle_check_rejects_an_oracle_blind_to_the_major_class(tiny_config, seed):
    """The check above can fail: an oracle that never predicts one class (the true major) does not pass."""
    patch = tiny_config.patch
    mask, encoded = _encoded_composite(seed)
    truth = PatchClassifier.from_patch_fn(_mask_oracle, CLASSES, patch).predict(encoded)
    major = CLASSES.index(truth["major"])

    def blind_oracle(chunk):
        probs = _mask_oracle(chunk)
        probs[:, major] = 0.0
        return probs

    result = PatchClassifier.from_patch_fn(blind_oracle, CLASSES, patch).predict(encoded)
    with pytest.raises(AssertionError):
        _check_oracle_result(result, mask, patch.size, patch.stride, patch.secondary_threshold)


def _random_variables(model, size: int, seed: int = 0):
    """He-normal kernels, zero biases, identity BatchNorm: like ``model.init`` without its slow compile."""
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            scale = np.sqrt(2 / np.prod(leaf.shape[:-1]))
            return (rng.standard_normal(leaf.shape) * scale).astype(np.float32)
        return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

    return jax.tree_util.tree_map_with_path(fill, dict(shapes))


@pytest.fixture(scope="module")
def tiny_model():
    """The tiny classifier with random weights, first layer scaled to the +-128 caffe-preprocessed pixels."""
    config = load_config("tiny")
    model = build_classifier(config.model, len(CLASSES))
    variables = _random_variables(model, config.image_size)
    variables["params"]["backbone"]["conv1_conv"]["kernel"] /= 60.0  # confidences 0.3-0.95, not saturated
    return config, model, variables


@pytest.fixture(scope="module")
def composite():
    return synthetic.make_composite(150, 230, seed=3)[0]


def _patches(result):
    """(box, class) pairs and confidences of a result's patches."""
    patches = result["patches"]
    return [(p["box"], p["class"]) for p in patches], np.array([p["confidence"] for p in patches])


@pytest.mark.parametrize("size,stride", [(64, 32), (96, 40)])
def test_exact_mode_equals_classifying_each_patch_alone(tiny_model, composite, size, stride):
    config, model, variables = tiny_model
    config = config.copy_and_resolve_references()
    config.patch.size, config.patch.stride = size, stride
    result = PatchClassifier.from_model(model, variables, CLASSES, config).predict(composite)

    @jax.jit
    def one_patch(crop):  # the plain model on one patch at its input size, batch of 1
        x = jax.image.resize(crop.astype(jnp.float32), (config.image_size, config.image_size, 3), "bilinear")
        return jax.nn.softmax(model.apply(variables, preprocess(x, "caffe")[None])[0])

    boxes = patch_grid(*composite.shape[:2], size, stride).boxes
    assert [p["box"] for p in result["patches"]] == boxes.tolist()
    for patch, (x0, y0, x1, y1) in zip(result["patches"], boxes, strict=True):
        probs = np.asarray(one_patch(composite[y0:y1, x0:x1]))
        assert patch["class"] == CLASSES[probs.argmax()]
        assert patch["confidence"] == pytest.approx(probs.max(), abs=1e-4)
    assert np.ptp([p["confidence"] for p in result["patches"]]) > 1e-3  # patches differ: a real comparison


def test_chunk_size_does_not_change_results(tiny_model, composite):
    config, model, variables = tiny_model
    outputs = []
    for chunk_size in (1, 3, 7, 64):
        config = config.copy_and_resolve_references()
        config.patch.chunk_size = chunk_size
        classifier = PatchClassifier.from_model(model, variables, CLASSES, config)
        outputs.append(_patches(classifier.predict(composite)))
    for labels, confidences in outputs[1:]:
        assert labels == outputs[0][0]
        np.testing.assert_allclose(confidences, outputs[0][1], atol=1e-5)


def _check_result(result, height, width):
    assert JSON_FIELDS <= set(result)
    assert (result["width"], result["height"]) == (width, height)
    assert len(result["patches"]) == result["grid"]["rows"] * result["grid"]["cols"]
    assert sum(result["coverage"].values()) == pytest.approx(1.0)
    assert sum(result["prob_coverage"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["major"] in CLASSES and result["whole_image"]["class"] in CLASSES
    boxes = np.array([p["box"] for p in result["patches"]])
    assert boxes.min() >= 0 and boxes[:, 2].max() == width and boxes[:, 3].max() == height
    assert _coverage_counts(boxes, height, width).min() >= 1
    coverages = [s["coverage"] for s in result["secondary"]]
    assert coverages == sorted(coverages, reverse=True) and result["major"] not in [
        s["class"] for s in result["secondary"]
    ]


def test_shared_mode_returns_a_valid_result(tiny_model, composite):
    config, model, variables = tiny_model
    config = config.copy_and_resolve_references()
    config.patch.mode = "shared"
    result = PatchClassifier.from_model(model, variables, CLASSES, config).predict(composite)
    _check_result(result, *composite.shape[:2])
    assert result["patch"]["mode"] == "shared"
    # An image of exactly one patch: the backbone sees just the patch, so shared equals exact mode.
    single = composite[:64, :64]
    shared = PatchClassifier.from_model(model, variables, CLASSES, config).predict(single)["patches"]
    config.patch.mode = "exact"
    exact = PatchClassifier.from_model(model, variables, CLASSES, config).predict(single)["patches"]
    assert len(shared) == len(exact) == 1 and shared[0]["class"] == exact[0]["class"]
    assert shared[0]["confidence"] == pytest.approx(exact[0]["confidence"], abs=1e-5)


def _write_workdir(workdir, config, model_variables) -> None:
    """A trained-looking workdir: run files and a best stage-2 checkpoint."""
    run_files.write_run_files(str(workdir), config, CLASSES)
    manager = checkpoints.best_manager(str(workdir), "stage2")
    checkpoints.save(manager, 1, model_variables, {"stage": "stage2"})


def test_run_inference_reports_bad_files_and_continues(tiny_model, tmp_path, capsys):
    config, _, variables = tiny_model
    workdir, photos = tmp_path / "run", tmp_path / "photos"
    _write_workdir(workdir, config, variables)
    for folder, fmt in (("a", "PNG"), ("b", "JPEG")):  # same stem in two folders
        os.makedirs(photos / folder)
        Image.fromarray(synthetic.make_composite(130, 170, seed=len(folder) + ord(folder))[0]).save(
            photos / folder / f"photo.{fmt.lower().replace('jpeg', 'jpg')}", format=fmt
        )
    Image.fromarray((np.arange(20 * 30).reshape(20, 30) * 100).astype(np.uint16)).save(photos / "small16.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (photos / ".hidden.jpg").write_bytes(b"ignored")
    config = config.copy_and_resolve_references()
    config.infer.inputs = f"{photos}, {tmp_path / 'missing'}/*.jpg"

    status = run_inference(config, str(workdir))

    out = capsys.readouterr()
    assert status == 1
    failures = [line for line in out.err.splitlines() if line.startswith("FAILED")]
    assert len(failures) == 2
    assert any("broken.jpg" in line for line in failures) and any("missing" in line for line in failures)
    infer_dir = workdir / "infer"
    assert sorted(os.listdir(infer_dir)) == sorted(
        [f"{n}.{e}" for n in ("a_photo", "b_photo", "small16") for e in ("json", "png")] + ["summary.csv"]
    )
    for name, (height, width) in (("a_photo", (130, 170)), ("b_photo", (130, 170)), ("small16", (20, 30))):
        result = json.loads((infer_dir / f"{name}.json").read_text())
        _check_result(result, height, width)
        assert result["classes"] == list(CLASSES) and os.path.exists(result["image"])
        assert Image.open(infer_dir / f"{name}.png").size[0] >= 400
    assert "upscaled" in json.loads((infer_dir / "small16.json").read_text())["notes"][0]
    with open(infer_dir / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and sum(bool(row["error"]) for row in rows) == 1
    assert sum(line.count(" patches in ") for line in out.out.splitlines()) == 3


def test_output_names_never_collide():
    paths = ["x/a/photo.jpg", "x/b/photo.jpg", "x/c.png", "x/a/C.PNG", "x/q/photo.png", "x/q/photo.jpg"]
    names = output_names(paths)
    assert names[:2] == ["a_photo", "b_photo"] and len({n.lower() for n in names}) == len(paths)
