"""The JSON API in process: --mode=infer's results, every kind of bad upload, parameters out of range,
503 on a full queue, and micro-batching that shares forward passes without mixing up requests."""

import base64
import io
import math
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from served import send, serve_config, service, workdir  # noqa: F401 (fixtures)

import scenecls
from scenecls.data import synthetic
from scenecls.data.images import encode_jpeg, load_rgb
from scenecls.patches import PatchClassifier
from scenecls.serve import Service, create_app

CLASSES = ("Buildings", "Cars", "Labs", "People", "Trees")


@pytest.fixture(scope="module")
def app(service):  # noqa: F811
    return create_app(service)


@pytest.fixture(scope="module")
def photo():
    """A synthetic scene as JPEG bytes and the image the server decodes from them."""
    data = encode_jpeg(synthetic.make_composite(150, 230, seed=3)[0])
    return data, load_rgb(data)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _post(app, data=b"", query="", **kwargs):
    [response] = send(app, ("POST", f"/api/classify{query}", {"content": data} if data else kwargs))
    return response


def _assert_same_result(served, expected):
    """The served JSON is infer's: every field, patches in order, probabilities to float tolerance."""
    for key in set(expected) - {"image", "seconds", "patches", "prob_coverage", "whole_image"}:
        assert served[key] == expected[key], key
    assert [(p["box"], p["class"]) for p in served["patches"]] == [
        (p["box"], p["class"]) for p in expected["patches"]
    ]
    confidences = [[p["confidence"] for p in result["patches"]] for result in (served, expected)]
    np.testing.assert_allclose(*confidences, atol=1e-5)
    whole, expected_whole = served["whole_image"], expected["whole_image"]
    assert whole["class"] == expected_whole["class"]
    assert whole["confidence"] == pytest.approx(expected_whole["confidence"], abs=1e-5)
    for name, value in expected["prob_coverage"].items():
        assert served["prob_coverage"][name] == pytest.approx(value, abs=1e-5)


def test_a_photo_gets_infers_json_and_the_overlay(app, workdir, photo):  # noqa: F811
    data, image = photo
    config = serve_config()
    expected = PatchClassifier.from_workdir(workdir, config.patch).predict(image)
    multipart = _post(app, files={"file": ("scene.jpg", data, "image/jpeg")})
    raw = _post(app, data)
    assert multipart.status_code == raw.status_code == 200, multipart.text
    for response, name in ((multipart, "scene.jpg"), (raw, "upload")):
        result = response.json()
        _assert_same_result(result, expected)
        assert result["image"] == name
        overlay = Image.open(io.BytesIO(base64.b64decode(result["overlay_png"])))
        assert overlay.format == "PNG" and overlay.size == (230, 150)  # under overlay_max_side: full size
        top = result["whole_image_top_k"]
        assert top[0]["class"] == expected["whole_image"]["class"] and len(top) == len(CLASSES)
        assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
        assert set(result["timing"]) == {"decode_s", "analysis_s", "overlay_s", "total_s"}
    assert _post(app, data, "?overlay=false").json()["overlay_png"] is None


def test_mode_stride_and_threshold_apply(app, workdir, photo):  # noqa: F811
    data, image = photo
    patch = serve_config().patch
    patch.update(mode="shared", stride=48, secondary_threshold=0.25)
    expected = PatchClassifier.from_workdir(workdir, patch).predict(image)
    response = _post(app, data, "?mode=shared&stride=48&threshold=0.25")
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["patch"]["mode"] == "shared" and result["patch"]["stride"] == 48
    assert all(s["coverage"] > 0.25 for s in result["secondary"])
    _assert_same_result(result, expected)


@pytest.mark.parametrize(
    "query,reason",
    [
        ("?stride=0", "greater than or equal to 1"),
        ("?stride=65", "stride=65 is invalid: must be <= patch.size=64"),
        ("?stride=two", "valid integer"),
        ("?threshold=1.5", "less than or equal to 1"),
        ("?threshold=-0.1", "greater than or equal to 0"),
        ("?mode=fast", "'exact' or 'shared'"),
    ],
)
def test_parameters_out_of_range_are_refused_with_the_reason(app, photo, query, reason):
    response = _post(app, photo[0], query)
    assert response.status_code == 422
    assert reason in str(response.json()["detail"])


def _truncated_jpeg() -> bytes:
    data = encode_jpeg(synthetic.make_composite(96, 96, seed=1)[0])
    return data[: len(data) // 2]


def _declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (its data is one pixel's)."""
    data = bytearray(_png(np.zeros((1, 1, 3), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


BAD_FILES = {
    "text": (b"this is not an image\n" * 10, 400, "not a recognised image format"),
    "truncated": (_truncated_jpeg(), 400, "truncated"),
    "empty": (b"", 400, "empty upload"),
    "bomb": (_declaring(40000, 40000), 413, "too many pixels to decode safely"),  # Pillow's own limit
    "absurd_size": (_declaring(200_000, 20), 413, "200000x20 pixels is over the 1 Mpx limit"),
    "too_many_pixels": (_png(np.zeros((1100, 1000, 3), np.uint8)), 413, "1000x1100 pixels is over the 1 Mpx"),
    "over_body_limit": (np.random.default_rng(0).bytes(600_000), 413, "over the limit of 500000"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_files_are_refused_with_the_reason(app, kind):
    data, status, reason = BAD_FILES[kind]
    for response in (
        _post(app, files={"file": (f"{kind}.jpg", data, "image/jpeg")}),
        send(app, ("POST", "/api/classify", {"content": data}))[0],
    ):
        assert response.status_code == status, response.text
        assert reason in response.json()["detail"]


def test_absurd_work_and_odd_requests_are_refused(app):
    image = _png(synthetic.make_composite(400, 400, seed=2)[0])
    too_much = _post(app, image, "?stride=1")  # 337 x 337 patches
    assert too_much.status_code == 413 and "113569 patches" in too_much.json()["detail"]

    async def chunks():  # no Content-Length: the limit applies while streaming
        for _ in range(10):
            yield b"x" * 100_000

    streamed = send(app, ("POST", "/api/classify", {"content": chunks()}))[0]
    assert streamed.status_code == 413 and "over the limit" in streamed.json()["detail"]
    form = b'--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n--xyz--\r\n'
    no_file = _post(app, content=form, headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert no_file.status_code == 400 and "holds no file" in no_file.json()["detail"]
    garbled = _post(app, content=b"\x00" * 100, headers={"content-type": "multipart/form-data"})
    assert garbled.status_code == 400 and "multipart" in garbled.json()["detail"]


def test_one_bad_request_never_affects_the_others(app, photo):
    bad = [("POST", "/api/classify", {"content": data}) for data, _, _ in BAD_FILES.values()]
    good = [("POST", "/api/classify", {"content": photo[0]})] * 3
    responses = send(app, *bad, *good)
    assert [r.status_code for r in responses] == [s for _, s, _ in BAD_FILES.values()] + [200] * 3
    majors = {r.json()["major"] for r in responses[len(bad) :]}
    assert len(majors) == 1 and majors <= set(CLASSES)


def test_health_and_info(app, service):  # noqa: F811
    health, info = (r.json() for r in send(app, ("GET", "/api/health", {}), ("GET", "/api/info", {})))
    assert health["status"] == "ok" and health["pending_requests"] == 0
    assert info["classes"] == list(CLASSES) and info["version"] == scenecls.__version__
    assert len(info["colors"]) == len(CLASSES) and info["model"]["stage"] == "stage1"
    assert info["patch"]["size"] == 64 and info["serve"]["max_pixels"] == 1_000_000


# A stand-in model for the queue tests: class c's logit is the mean of channel c (and of 255 - channels).
def _colour_probs(rows: np.ndarray) -> np.ndarray:
    means = rows.reshape(len(rows), -1, 3).mean(axis=1) / 25.5
    logits = np.concatenate([means, 10 - means[:, :2]], axis=1)
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


class _Gated:
    """The stand-in model; holds its first call until ``gate`` is set; records the real rows per call."""

    def __init__(self):
        self.gate, self.entered, self.calls = threading.Event(), threading.Event(), []

    def __call__(self, rows):
        self.entered.set()
        self.gate.wait(60)
        self.calls.append(int(np.any(rows.reshape(len(rows), -1) != 0, axis=1).sum()))
        return _colour_probs(rows)


def _stand_in_service(forward, **serve) -> Service:
    return Service(CLASSES, serve_config(**serve), forward, image_size=64)


def _solid(colour) -> bytes:
    return _png(np.full((64, 96, 3), colour, np.uint8))  # 2 patches of 64 px at stride 32, and the whole


COLOURS = [(200, 20, 20), (20, 200, 20), (20, 20, 200), (30, 30, 30), (10, 10, 60), (180, 180, 30)]


def test_a_full_queue_answers_503_with_retry_after():
    forward = _Gated()
    stand_in = _stand_in_service(forward, max_pending=1)
    app = create_app(stand_in)
    held = ("POST", "/api/classify", {"content": _solid(COLOURS[0])})
    holder = threading.Thread(target=send, args=(app, held))
    holder.start()
    try:
        assert forward.entered.wait(30)
        refused = _post(app, _solid(COLOURS[1]))
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "max_pending" in refused.json()["detail"]
        forward.gate.set()
        holder.join(60)
        assert stand_in.health()["pending_requests"] == 0
        assert _post(app, _solid(COLOURS[1])).status_code == 200  # the place is free again
    finally:
        forward.gate.set()
        stand_in.close()


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_requests_share_forward_passes(batching):
    """Six requests of 2 patches and a whole image each: batched, their patches fill shared passes of up to
    8 rows; unbatched, every submission is its own pass. Each request still gets its own classes."""
    forward = _Gated()
    stand_in = _stand_in_service(forward, batching=batching, max_wait_ms=50.0)
    requests = [("POST", "/api/classify", {"content": _solid(colour)}) for colour in COLOURS]
    results = []
    sender = threading.Thread(target=lambda: results.extend(send(create_app(stand_in), *requests)))
    sender.start()
    assert forward.entered.wait(30)
    deadline = time.monotonic() + 30
    while stand_in.batcher.stats().waiting < 2 * len(COLOURS) and time.monotonic() < deadline:
        time.sleep(0.01)  # every request's patches are queued behind the held first pass
    forward.gate.set()
    sender.join(60)
    stand_in.close()
    reference = PatchClassifier.from_patch_fn(_colour_probs, CLASSES, serve_config().patch)
    for response, colour in zip(results, COLOURS, strict=True):
        expected = reference.predict(np.full((64, 96, 3), colour, np.uint8))
        assert response.status_code == 200
        _assert_same_result(response.json(), expected)
    rows = 3 * len(COLOURS)  # 2 patches and 1 whole image per request
    assert sum(forward.calls) == rows
    if batching:
        assert max(forward.calls) >= 8 and len(forward.calls) <= math.ceil(rows / 8) + len(COLOURS)
    else:
        assert len(forward.calls) == 2 * len(COLOURS)  # a request's chunk of patches, then its whole image


@pytest.mark.parametrize(
    "field,value", [("port", 0), ("max_wait_ms", -1.0), ("max_pending", 0), ("max_upload_mb", 0.0)]
)
def test_serve_settings_are_validated(field, value):
    with pytest.raises(ValueError, match=f"config.serve.{field}="):
        _stand_in_service(_colour_probs, **{field: value})
