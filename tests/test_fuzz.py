"""Fuzzing image inputs: random and mutated bytes into image loading, dataset preparation, patch inference.

Every input must either decode to an RGB array or fail with one clear line naming the file and a reason:
no other exception, no hang, and one bad file never stops a batch. Hypothesis runs are bounded
(max_examples), a watchdog alarm turns a hang into a failure.

Each input carries its expected outcome, decided by how it was made, never by the loader under test: an
untouched valid image must decode (to its known shape); bytes damaged in a way no decoder can survive
(empty, plain text, cut inside the pixel data, declared size over the limit) must fail; for the others
(random bytes, flipped bits, garbage after a header), whose decodability cannot be known in advance,
only the contract is checked.
"""

import contextlib
import csv
import io
import json
import os
import random
import signal
import struct
import warnings
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from scenecls.data import builder
from scenecls.data.images import MAX_PIXELS, ImageError, load_rgb
from scenecls.models import build_classifier
from scenecls.patches import run_inference
from scenecls.workdir import checkpoints, run_files

FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF")
WATCHDOG_S = 30  # far above any single decode of these small inputs; only a hang reaches it


def _valid_image(fmt: str, seed: int = 0, size: tuple[int, int] = (40, 28)) -> bytes:
    """A small encoded image with some structure (gradient plus noise)."""
    rng = np.random.default_rng(seed)
    width, height = size
    gradient = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    pixels = np.clip(gradient + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


VALID = {fmt: _valid_image(fmt) for fmt in FORMATS}
VALID_SHAPE = (28, 40, 3)  # _valid_image's default size, as (height, width, channels)
DECODES, FAILS, EITHER = "decodes", "fails", "either"  # expected outcomes
# A cut before this share of the file loses pixel data. Only the trailer (PNG's IEND, GIF's terminator) may
# be missing for a lenient decoder, and it lies in the last 1% of these small files.
CUT_INSIDE_THE_DATA = 0.9


def _png_with_size(width: int, height: int, body: bytes) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (valid CRCs) followed by ``body`` as image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@contextlib.contextmanager
def watchdog(seconds: int = WATCHDOG_S):
    """Fails the test (TimeoutError) if the body runs longer than ``seconds``: a hang, not slowness."""

    def expire(signum, frame):
        raise TimeoutError(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _flip_bits(data: bytes, positions: list[int]) -> bytes:
    out = bytearray(data)
    for position in positions:
        out[position % len(out)] ^= 1 << (position % 8)
    return bytes(out)


def _cut(data: bytes, share: float) -> bytes:
    return data[: int(len(data) * share)]


def _declared_size(width: int, height: int, body: bytes) -> tuple[bytes, str]:
    """A PNG declaring ``width`` x ``height``: refused when over the pixel limit, else unknowable."""
    return _png_with_size(width, height, body), FAILS if width * height > MAX_PIXELS else EITHER


# (bytes, expected outcome): valid images; random bytes; valid images bit-flipped, cut inside the pixel data
# or later, with a garbage body after the header, or with huge declared dimensions (decompression bombs).
FORMAT = st.sampled_from(FORMATS)
HOSTILE_BYTES = st.one_of(
    st.builds(lambda f: (VALID[f], DECODES), FORMAT),
    st.builds(lambda d: (d, EITHER), st.binary(max_size=4096)),  # random bytes may even be a valid TGA
    st.builds(
        lambda f, p: (_flip_bits(VALID[f], p), EITHER),  # flipped pixel bits usually still decode
        FORMAT,
        st.lists(st.integers(0, 10**6), min_size=1, max_size=8),
    ),
    st.builds(
        lambda f, r: (_cut(VALID[f], r), FAILS), FORMAT, st.floats(0, CUT_INSIDE_THE_DATA, exclude_max=True)
    ),
    st.builds(lambda f, r: (_cut(VALID[f], r), EITHER), FORMAT, st.floats(CUT_INSIDE_THE_DATA, 0.999)),
    st.builds(
        lambda f, n, g: (VALID[f][:n] + g, EITHER), FORMAT, st.integers(2, 64), st.binary(max_size=2048)
    ),
    st.builds(
        _declared_size,
        st.integers(1, 2**31 - 1),
        st.integers(1, 2**31 - 1),
        st.one_of(st.binary(max_size=256), st.just(zlib.compress(b"\0" * 4096))),
    ),
)


def _check_decoded_or_clear_error(data: bytes, expected: str, name: str, decode) -> None:
    """``decode(data)`` gives an RGB uint8 image or an ImageError of one line starting with ``name``,
    whichever ``expected`` (DECODES, FAILS or EITHER) allows."""
    try:
        with watchdog(), warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning escaping as an exception must not crash either
            image = decode(data)
    except ImageError as e:
        message = str(e)
        assert expected != DECODES, f"an untouched valid image was refused: {message}"
        assert message.startswith(f"{name}: ") and len(message) > len(name) + 3, message
        assert "\n" not in message and "Traceback" not in message, message
        return
    assert expected != FAILS, f"{len(data)} bytes damaged beyond decoding gave a {image.shape} image"
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, image.shape
    assert min(image.shape[:2]) >= 1 and image.shape[0] * image.shape[1] <= MAX_PIXELS
    if expected == DECODES:
        assert image.shape == VALID_SHAPE, image.shape


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HOSTILE_BYTES)
def test_load_rgb_never_crashes_on_hostile_bytes(hostile):
    data, expected = hostile
    _check_decoded_or_clear_error(data, expected, "<bytes>", load_rgb)


@settings(max_examples=40, deadline=None)
@given(HOSTILE_BYTES, st.sampled_from((".jpg", ".png", ".gif", ".webp", ".tif", ".bmp")))
def test_load_rgb_from_files_names_the_file(tmp_path_factory, hostile, extension):
    data, expected = hostile
    path = str(tmp_path_factory.mktemp("fuzz") / f"photo{extension}")
    with open(path, "wb") as f:
        f.write(data)
    _check_decoded_or_clear_error(data, expected, path, lambda _: load_rgb(path, draft_shorter_side=16))


def test_declared_dimensions_beyond_the_limit_are_refused_before_decoding():
    with watchdog():
        with pytest.raises(ImageError, match="too many pixels|over the .* Mpx limit"):
            load_rgb(_png_with_size(100_000, 100_000, zlib.compress(b"\0" * 4096)))


def _hostile_files(seed: int, count: int) -> dict[str, tuple[bytes, str]]:
    """``count`` deterministic hostile files (name -> (bytes, expected outcome)) drawn like HOSTILE_BYTES,
    plus edge cases that must fail."""
    rng = random.Random(seed)
    files = {
        "empty.jpg": (b"", FAILS),
        "text.png": (b"not an image at all\n", FAILS),
        "bomb.png": (_png_with_size(90_000, 90_000, b""), FAILS),
    }
    for i in range(count):
        fmt = rng.choice(FORMATS)
        valid = VALID[fmt]
        kind = rng.choice(["random", "flip", "cut", "garbage_body"])
        if kind == "random":
            data, expected = rng.randbytes(rng.randint(1, 3000)), EITHER
        elif kind == "flip":
            data = _flip_bits(valid, [rng.randrange(8 * len(valid)) for _ in range(rng.randint(1, 6))])
            expected = EITHER
        elif kind == "cut":
            data, expected = _cut(valid, rng.uniform(0, CUT_INSIDE_THE_DATA)), FAILS
        else:
            data, expected = valid[: rng.randint(2, 64)] + rng.randbytes(rng.randint(0, 2000)), EITHER
        files[f"{kind}_{i}.{fmt.lower().replace('jpeg', 'jpg').replace('tiff', 'tif')}"] = (data, expected)
    return files


def _check_outcomes(files: dict[str, str], failed: set[str], succeeded: set[str]) -> None:
    """Each of ``files`` (name -> expected outcome) failed or succeeded once, as its expectation allows."""
    assert failed.isdisjoint(succeeded) and failed | succeeded == set(files)
    assert {name for name, expected in files.items() if expected == FAILS} <= failed
    assert {name for name, expected in files.items() if expected == DECODES} <= succeeded


def test_prepare_keeps_good_images_and_skips_each_bad_one_with_a_reason(tmp_path, tiny_config):
    source = tmp_path / "source"
    expected = {}
    for c, class_name in enumerate(("Cars", "Trees")):
        os.makedirs(source / class_name)
        for i in range(8):
            (source / class_name / f"good_{i}.png").write_bytes(_valid_image("PNG", seed=10 * c + i))
            expected[f"{class_name}/good_{i}.png"] = DECODES
        for name, (data, outcome) in _hostile_files(seed=c, count=10).items():
            (source / class_name / f"bad_{name}").write_bytes(data)
            expected[f"{class_name}/bad_{name}"] = outcome
    tiny_config.data.source_dir = str(source)
    tiny_config.data.synthetic_per_class = 0

    with watchdog(300):
        prepared = builder.prepare(tiny_config.data, str(tmp_path / "work"))

    with open(prepared.report_path) as f:
        report = json.load(f)
    skipped = {path: reason for path, reason in report["skipped"]}
    for path, reason in skipped.items():
        assert reason and "\n" not in reason and "Traceback" not in reason, (path, reason)
    kept = {path for files in prepared.files.values() for path in files}
    _check_outcomes(expected, set(skipped), kept)
    assert sum(map(sum, prepared.counts.values())) == len(kept)


def test_patch_inference_reports_each_bad_file_and_classifies_the_good_ones(tmp_path, tiny_config, capsys):
    classes = ("Cars", "Trees")
    model = build_classifier(tiny_config.model, num_classes=len(classes))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
    rng = np.random.default_rng(0)  # positive random values (valid BatchNorm variances), no init compile
    variables = jax.tree_util.tree_map(lambda s: rng.uniform(0.01, 0.1, s.shape).astype(s.dtype), shapes)
    workdir = str(tmp_path / "run")
    run_files.write_run_files(workdir, tiny_config, classes)
    checkpoints.save(checkpoints.best_manager(workdir, "stage2"), 1, variables, {"stage": "stage2"})
    photos = tmp_path / "photos"
    os.makedirs(photos)
    expected = {}
    for i in range(2):
        (photos / f"good_{i}.jpg").write_bytes(_valid_image("JPEG", seed=i))  # one shape: one compilation
        expected[f"good_{i}.jpg"] = DECODES
    for name, (data, outcome) in _hostile_files(seed=7, count=12).items():
        (photos / name).write_bytes(data)
        expected[name] = outcome
    tiny_config.infer.inputs = str(photos)

    with watchdog(300):
        status = run_inference(tiny_config, workdir)

    err = capsys.readouterr().err
    failed_lines = [line for line in err.splitlines() if line.startswith("FAILED ")]
    with open(os.path.join(workdir, "infer", "summary.csv")) as f:
        rows = {os.path.basename(row["file"]): row for row in csv.DictReader(f)}
    failed = {name for name, row in rows.items() if row["error"]}
    assert status == 1 and len(failed_lines) == len(failed) and "Traceback" not in err
    assert len(rows) == len(os.listdir(photos))
    _check_outcomes(expected, failed, set(rows) - failed)
    for name, row in rows.items():
        if name in failed:
            assert row["error"].startswith(str(photos / name) + ": ") and not row["major"], row
        else:
            assert row["major"] in classes, row
