"""Synthetic scenes: determinism, dataset layout, learnability, composites, CLI."""

import os
import subprocess
import sys

import numpy as np
import pytest

from scenecls.data import images, synthetic


def test_render_scene_is_deterministic_per_rng():
    for name in synthetic.CLASSES:
        a = synthetic.render_scene(name, 30, 40, np.random.default_rng(7))
        b = synthetic.render_scene(name, 30, 40, np.random.default_rng(7))
        c = synthetic.render_scene(name, 30, 40, np.random.default_rng(8))
        assert a.dtype == np.uint8 and a.shape == (30, 40, 3)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="unknown synthetic class"):
        synthetic.render_scene("Boats", 8, 8, np.random.default_rng(0))


def _tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def test_write_dataset_layout_and_determinism(tmp_path):
    files = synthetic.write_dataset(str(tmp_path / "a"), per_class=10, size=(30, 40), seed=3)
    synthetic.write_dataset(str(tmp_path / "b"), per_class=10, size=(30, 40), seed=3)
    assert list(files) == list(synthetic.CLASSES) and all(len(v) == 10 for v in files.values())
    listing = _tree(tmp_path / "a")
    assert listing == _tree(tmp_path / "b")
    assert all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in listing)
    assert synthetic.MARKER in listing
    image_paths = [p for p in listing if p != synthetic.MARKER]
    suffixes = {os.path.splitext(p)[1] for p in image_paths}
    assert suffixes >= {".jpg", ".JPG", ".jpeg", ".png", ".webp", ".bmp", ".tif"}
    assert any(os.sep + "more" + os.sep in p for p in image_paths)  # nested folders
    shapes = [images.load_rgb(tmp_path / "a" / p).shape for p in image_paths]
    assert len(set(shapes)) > 10 and any(h > w for h, w, _ in shapes) and any(h < w for h, w, _ in shapes)
    other = synthetic.write_dataset(str(tmp_path / "a"), per_class=2, size=(30, 40), seed=4)  # replaces it
    assert sum(map(len, other.values())) == len(_tree(tmp_path / "a")) - 1


def test_write_dataset_never_overwrites_a_foreign_folder(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        synthetic.write_dataset(str(tmp_path / "photos"), per_class=1)
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"precious"


def _features(image: np.ndarray) -> np.ndarray:
    """Colour statistics: per-channel mean and standard deviation on a 4x4 grid."""
    cells = image.reshape(4, image.shape[0] // 4, 4, image.shape[1] // 4, 3).astype(np.float32)
    return np.concatenate([cells.mean(axis=(1, 3)).ravel(), cells.std(axis=(1, 3)).ravel()])


def test_classes_are_learnable_by_a_tiny_model():
    """A nearest-centroid classifier on colour statistics separates the classes of fresh scenes."""

    def sample(seed):
        rng = np.random.default_rng(seed)
        return [
            (_features(synthetic.render_scene(name, 48, 64, rng)), label)
            for label, name in enumerate(synthetic.CLASSES)
            for _ in range(12)
        ]

    train, test = sample(0), sample(1)
    centroids = np.stack([np.mean([f for f, y in train if y == c], axis=0) for c in range(5)])
    predictions = [np.argmin(np.linalg.norm(centroids - f, axis=1)) for f, _ in test]
    accuracy = np.mean([p == y for p, (_, y) in zip(predictions, test, strict=True)])
    assert accuracy >= 0.9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_composite_fractions_equal_mask_shares(seed):
    image, mask, fractions = synthetic.make_composite(90, 120, seed, regions=4)
    assert image.shape == (90, 120, 3) and image.dtype == np.uint8
    assert mask.shape == (90, 120) and mask.dtype == np.int32
    assert list(fractions) == list(synthetic.CLASSES)
    for label, name in enumerate(synthetic.CLASSES):
        assert fractions[name] == np.mean(mask == label)
    assert sum(fractions.values()) == pytest.approx(1.0)
    assert sum(v > 0 for v in fractions.values()) == 4  # the first regions get distinct classes
    again = synthetic.make_composite(90, 120, seed, regions=4)
    np.testing.assert_array_equal(again[0], image)


def test_composite_regions_show_their_class():
    """Each region has its class's texture: the Trees region is much greener than the Buildings one."""
    classes = ("Buildings", "Trees")
    image, mask, fractions = synthetic.make_composite(64, 128, seed=5, classes=classes, regions=2)
    assert fractions["Buildings"] > 0 and fractions["Trees"] > 0
    pixels = [image[mask == c].astype(float) for c in range(2)]
    greenness = [p[:, 1].mean() - p[:, 0].mean() for p in pixels]
    assert greenness[1] > greenness[0] + 20


def test_cli_synth_mode_writes_the_layout(tmp_path):
    from conftest import REPO

    command = [sys.executable, "-m", "scenecls.main", "--config=configs/tiny.py", "--mode=synth"]
    result = subprocess.run(
        [*command, f"--workdir={tmp_path}", "--config.data.synthetic_per_class=2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "synthetic_source"
    assert f"Synthetic dataset in {out}" in result.stdout
    assert sorted(os.listdir(out)) == sorted([synthetic.MARKER, *synthetic.CLASSES])
    assert sum(len(os.listdir(out / name)) for name in synthetic.CLASSES) >= 10
