"""``--mode=infer`` survives any one image: odd shapes get bounded overlays, failures one FAILED line each."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from scenecls.data import synthetic
from scenecls.patches import PatchClassifier, run_inference
from scenecls.patches import run as infer_run
from scenecls.patches.render import figure_size, figure_title, letterbox

CLASSES = synthetic.CLASSES
# (width, height): a pixel, thin strips both ways, extreme panoramas both ways, a large photo.
SHAPES = [(1, 1), (1, 4000), (4000, 1), (20000, 100), (100, 20000), (8000, 6000)]
PNG_CAP = (1700, 2100)  # (width, height) in pixels: no overlay figure may be larger, whatever the image
BROKEN = {
    "empty.png": b"",
    "noise.jpg": np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes(),
    "notes.png": b"a text file with an image's name\n",
}


def _brightness_classes(chunk: np.ndarray) -> np.ndarray:
    """A cheap patch function: class probabilities peak at the class whose brightness band holds the mean."""
    brightness = chunk.reshape(len(chunk), -1).mean(axis=1) / 255
    scores = -40 * (brightness[:, None] - np.linspace(0, 1, len(CLASSES))) ** 2
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)


def _classifier(config) -> PatchClassifier:
    """Exact mode with the brightness patch function; 64 px patches, stride 64, to keep big images cheap."""
    config.patch.size = config.patch.stride = 64
    config.patch.chunk_size = 512
    return PatchClassifier.from_patch_fn(_brightness_classes, CLASSES, config.patch)


def _save_gradient(path, width: int, height: int) -> None:
    """A grey ramp along the longer side (so patches differ), saved fast."""
    ramp = Image.linear_gradient("L").resize((256, 256))
    ramp = ramp if height >= width else ramp.transpose(Image.Transpose.ROTATE_90)
    ramp.resize((width, height), Image.Resampling.NEAREST).save(path, compress_level=1)


def _write_broken(folder) -> list[str]:
    """The unreadable files; a truncated PNG besides the fixed byte strings."""
    os.makedirs(folder)
    for name, data in BROKEN.items():
        (folder / name).write_bytes(data)
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)
    Image.fromarray(noise).save(folder / "truncated.png")
    data = (folder / "truncated.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    return sorted([*BROKEN, "truncated.png"])


def test_odd_shapes_and_broken_files_in_one_run(tiny_config, tmp_path, monkeypatch, capsys):
    odd, broken, workdir = tmp_path / "odd", tmp_path / "broken", tmp_path / "run"
    os.makedirs(odd)
    for width, height in SHAPES:
        _save_gradient(odd / f"img_{width}x{height}.png", width, height)
    broken_names = _write_broken(broken)
    classifier = _classifier(tiny_config)
    monkeypatch.setattr(PatchClassifier, "from_workdir", staticmethod(lambda workdir, patch: classifier))
    tiny_config.infer.inputs = f"{odd},{broken}"

    status = run_inference(tiny_config, str(workdir))

    out = capsys.readouterr()
    assert status == 1
    assert "Traceback" not in out.err + out.out
    failed = [line for line in out.err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == len(broken_names)
    for name in broken_names:  # one line each, naming the file
        assert sum(name in line for line in out.err.splitlines()) == 1, name
        assert sum(name in line for line in failed) == 1, name
    infer_dir = workdir / "infer"
    for width, height in SHAPES:
        name = f"img_{width}x{height}"
        result = json.loads((infer_dir / f"{name}.json").read_text())
        assert (result["width"], result["height"]) == (width, height)
        with Image.open(infer_dir / f"{name}.png") as png:
            assert png.size[0] <= PNG_CAP[0] and png.size[1] <= PNG_CAP[1], (name, png.size)
    with open(infer_dir / "summary.csv") as f:
        errors = {os.path.basename(row["file"]): row["error"] for row in csv.DictReader(f)}
    assert sorted(name for name, error in errors.items() if error) == broken_names
    assert len(errors) == len(SHAPES) + len(broken_names)


@pytest.fixture
def two_photos(tmp_path):
    """Two small composites on disk, paths in order."""
    paths = []
    for seed, name in enumerate(("first.png", "second.png")):
        Image.fromarray(synthetic.make_composite(130, 170, seed)[0]).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    return paths


def test_an_overlay_that_fails_keeps_the_json_and_the_batch_goes_on(
    tiny_config, two_photos, tmp_path, monkeypatch, capsys
):
    real_render = infer_run.render

    def render_out_of_memory_on_first(image, result, path):
        if result["image"] != two_photos[0]:
            return real_render(image, result, path)
        with open(path, "wb") as f:
            f.write(b"\x89PNG half")  # a partial file, as savefig may leave
        raise MemoryError("Unable to allocate 29.9 GiB for an array\nwith shape (2, 3)")

    monkeypatch.setattr(infer_run, "render", render_out_of_memory_on_first)
    out_dir = tmp_path / "out"

    rows = infer_run.infer_files(_classifier(tiny_config), two_photos, str(out_dir))

    out = capsys.readouterr()
    assert "Traceback" not in out.err
    err_lines = out.err.splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith(f"FAILED {two_photos[0]}: ")
    assert "out of memory" in err_lines[0] and "29.9 GiB" in err_lines[0]
    assert sorted(os.listdir(out_dir)) == ["first.json", "second.json", "second.png"]
    assert json.loads((out_dir / "first.json").read_text())["image"] == two_photos[0]
    assert "second.png" in out.out
    first, second = rows
    assert first["error"] and first["major"] in CLASSES  # predicted, so the row keeps its classes
    assert not second["error"] and second["major"] in CLASSES


def test_a_prediction_that_fails_is_one_line_and_the_batch_goes_on(tiny_config, two_photos, tmp_path, capsys):
    calls = []

    def patch_fn_out_of_memory_once(chunk):
        calls.append(len(chunk))
        if len(calls) == 1:
            raise MemoryError("Unable to allocate 12.0 GiB for an array with shape (512, 64, 64, 3)")
        return _brightness_classes(chunk)

    tiny_config.patch.size = tiny_config.patch.stride = 64
    classifier = PatchClassifier.from_patch_fn(patch_fn_out_of_memory_once, CLASSES, tiny_config.patch)
    out_dir = tmp_path / "out"

    rows = infer_run.infer_files(classifier, two_photos, str(out_dir))

    out = capsys.readouterr()
    assert out.err.splitlines() == [
        f"FAILED {two_photos[0]}: out of memory (Unable to allocate 12.0 GiB for an array with shape "
        "(512, 64, 64, 3))"
    ]
    assert sorted(os.listdir(out_dir)) == ["second.json", "second.png"]
    assert [bool(row["error"]) for row in rows] == [True, False]


def test_a_json_that_cannot_be_written_is_one_line_and_the_batch_goes_on(
    tiny_config, two_photos, tmp_path, capsys
):
    out_dir = tmp_path / "out"
    os.makedirs(out_dir / "first.json")  # a folder where the file should go

    rows = infer_run.infer_files(_classifier(tiny_config), two_photos, str(out_dir))

    err_lines = capsys.readouterr().err.splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith(f"FAILED {two_photos[0]}: cannot write ")
    assert sorted(os.listdir(out_dir)) == ["first.json", "second.json", "second.png"]
    assert (out_dir / "first.json").is_dir()
    assert [bool(row["error"]) for row in rows] == [True, False] and rows[0]["major"] in CLASSES


@pytest.mark.parametrize(
    "shape,expected",
    [((1600, 1), (1600, 400)), ((1, 1600), (400, 1600)), ((10, 1600), (400, 1600)), ((7, 2), (7, 2))],
)
def test_letterbox_pads_thin_overlays_to_four_to_one(shape, expected):
    drawn = np.full((*shape, 3), 7, np.uint8)
    shown = letterbox(drawn)
    assert shown.shape == (*expected, 3)
    assert (shown == 7).all(axis=-1).sum() == drawn.shape[0] * drawn.shape[1]  # the overlay, whole
    top, left = (expected[0] - shape[0]) // 2, (expected[1] - shape[1]) // 2
    assert (shown[top : top + shape[0], left : left + shape[1]] == 7).all()  # centred


def test_the_title_says_when_the_image_is_letterboxed(tiny_config):
    result = _classifier(tiny_config).predict(np.zeros((4000, 1, 3), np.uint8))
    assert "shown letterboxed: 1x4000 image padded to 4:1" in figure_title(result, letterboxed=True)
    assert "letterboxed" not in figure_title(result, letterboxed=False)


@pytest.mark.parametrize(
    "height,width", [(1, 1), (1600, 400), (400, 1600), (1200, 1600), (1600, 1200), (1600, 1600), (1600, 1)]
)
def test_figure_size_is_bounded_whatever_the_picture(height, width):
    fig_width, fig_height = figure_size(height, width)
    assert 800 <= fig_width * 100 <= PNG_CAP[0] and fig_height * 100 <= PNG_CAP[1]  # at 100 dpi
