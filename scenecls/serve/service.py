"""The model behind the server: loaded once, shared by every request through the device thread.

``Service.classify`` turns the bytes of one upload into ``--mode=infer``'s result (``PatchClassifier``'s)
plus the overlay PNG, the whole image's top classes and the timing. Each request builds its own light
``PatchClassifier`` (its mode, stride and threshold) over the shared forward passes of the ``Batcher``.
"""

import base64
import contextlib
import functools
import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

import scenecls
from scenecls import config as config_lib
from scenecls.data.images import ImageTooLarge, load_rgb
from scenecls.models import lookup_variant
from scenecls.patches import engines
from scenecls.patches.grid import patch_grid
from scenecls.patches.patch_classifier import PatchClassifier, whole_image_probs
from scenecls.patches.render import class_colors, overlay
from scenecls.serve.batcher import Batcher
from scenecls.workdir import load_for_inference

TOP_K = 5  # whole-image classes listed in a response


class RequestError(ValueError):
    """A request the server refuses: HTTP ``status`` and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


class Overloaded(RuntimeError):
    """Too many requests pending: answered 503 with Retry-After."""


def patch_config_for(
    base: ml_collections.ConfigDict, mode: str | None, stride: int | None, threshold: float | None
) -> ml_collections.ConfigDict:
    """``base`` (config.patch) with a request's mode, stride and secondary threshold; validated (422)."""
    patch = ml_collections.ConfigDict(base.to_dict())
    if mode is not None:
        patch.mode = mode
    if stride is not None:
        patch.stride = stride
    if threshold is not None:
        patch.secondary_threshold = threshold
    try:
        config_lib.validate_patch(patch)
    except ValueError as e:
        raise RequestError(422, str(e).replace("config.patch.", "")) from None
    return patch


def png_base64(image: np.ndarray) -> str:
    """A uint8 RGB image as base64 PNG text (for a ``data:image/png;base64,`` URL)."""
    buffer = io.BytesIO()
    # Level 1: 3% larger than the default level 6, at a fifth of its time (2-core Xeon, 360x480 px).
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class Service:
    """Classes, patch settings and limits of a served model, and its device thread (``batcher``)."""

    def __init__(
        self,
        classes: tuple[str, ...],
        config: ml_collections.ConfigDict,
        forward: engines.PatchFn,
        image_size: int,
        shared: engines.SharedModel | None = None,
        info: dict[str, Any] | None = None,
    ):
        """``forward`` maps uint8 rows (n, s, s, 3) to probabilities, resizing to ``image_size`` inside;
        ``config`` gives ``patch`` (defaults per request) and ``serve``; ``shared`` enables shared mode."""
        config_lib.validate({"patch": config.patch, "serve": config.serve})
        self.classes, self.patch, self.limits = tuple(classes), config.patch, config.serve
        self.image_size, self.shared, self.info = image_size, shared, dict(info or {})
        self.chunk_size = engines.device_multiple(self.patch.chunk_size)
        max_batch = self.limits.max_batch or self.chunk_size
        self.batcher = Batcher(forward, max_batch, self.limits.max_wait_ms / 1000, self.limits.batching)
        self._pending = 0
        self._lock = threading.Lock()

    @classmethod
    def from_workdir(cls, config: ml_collections.ConfigDict, workdir: str) -> "Service":
        """The best model of a trained workdir; patch defaults and limits from ``config``; compiled."""
        trained = load_for_inference(workdir)
        preprocessing = lookup_variant(trained.config.model.variant).preprocessing
        image_size = trained.config.image_size
        args = (trained.model, trained.variables, image_size, preprocessing)
        forward = engines.model_patch_fn(*args, temperature=trained.temperature)
        try:
            shared = engines.SharedModel(*args, temperature=trained.temperature)
        except ValueError:  # an image size the feature map does not divide: exact mode only
            shared = None
        info = {
            "workdir": workdir,
            "stage": trained.stage,
            "variant": trained.config.model.variant,
            "head": trained.config.model.head,
            "image_size": image_size,
            "temperature": trained.temperature,
        }
        service = cls(trained.classes, config, forward, image_size, shared, info)
        service.warm_up()
        return service

    def warm_up(self) -> None:
        """Compiles the forward passes requests will use (so the first requests do not pay for it)."""
        shapes = {(self.patch.size,) * 2, (self.image_size,) * 2}
        batches = {self.batcher.max_batch} if self.batcher.batching else {self.chunk_size, 1}
        for height, width in shapes:
            for n in batches:
                self.batcher.submit(np.zeros((n, height, width, 3), np.uint8)).result()

    def close(self) -> None:
        """Stops the device thread once the work queued so far is done."""
        self.batcher.close()

    def describe(self) -> dict[str, Any]:
        """``/api/info``: classes and colours, the model, the patch defaults, the limits, the version."""
        colors = [
            "#" + "".join(f"{round(c * 255):02x}" for c in rgb) for rgb in class_colors(len(self.classes))
        ]
        return {
            "version": scenecls.__version__,
            "classes": list(self.classes),
            "colors": colors,
            "model": self.info,
            "patch": self.patch.to_dict(),
            "modes": ["exact", "shared"] if self.shared else ["exact"],
            "serve": self.limits.to_dict(),
        }

    def health(self) -> dict[str, Any]:
        """``/api/health``: ok (down: no device thread), requests pending, the device thread's counters."""
        status = "ok" if self.batcher.alive() else "down"
        return {"status": status, "pending_requests": self._pending, **self.batcher.stats()._asdict()}

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Holds one of ``serve.max_pending`` places for a request; raises ``Overloaded`` if none is free."""
        with self._lock:
            if self._pending >= self.limits.max_pending:
                raise Overloaded(f"{self._pending} requests pending (serve.max_pending); retry shortly")
            self._pending += 1
        try:
            yield
        finally:
            with self._lock:
                self._pending -= 1

    def classify(
        self,
        data: bytes,
        name: str,
        mode: str | None = None,
        stride: int | None = None,
        threshold: float | None = None,
        with_overlay: bool = True,
    ) -> dict[str, Any]:
        """``--mode=infer``'s result for the image in ``data`` (``image``: ``name``), plus ``overlay_png``
        (base64), ``whole_image_top_k`` and ``timing``. Raises ``RequestError`` (400, 413, 422)."""
        patch = patch_config_for(self.patch, mode, stride, threshold)
        if patch.mode == "shared" and self.shared is None:
            raise RequestError(
                422,
                f"shared mode needs an image_size divisible by 32 (this model: {self.image_size}); use exact",
            )
        start = time.perf_counter()
        try:
            image = load_rgb(data, max_pixels=self.limits.max_pixels)
        except ImageTooLarge as e:
            raise RequestError(413, f"{name}: {str(e).removeprefix('<bytes>: ')}") from None
        except ValueError as e:  # ImageError
            raise RequestError(400, f"{name}: {str(e).removeprefix('<bytes>: ')}") from None
        decoded = time.perf_counter()
        whole: list[np.ndarray] = []
        classifier = PatchClassifier(
            self.classes,
            patch,
            functools.partial(self._analyse, patch, name),
            functools.partial(self._whole, whole),
        )
        result = classifier.predict(image)
        result["image"] = name
        predicted = time.perf_counter()
        result["overlay_png"] = (
            png_base64(overlay(image, result, self.limits.overlay_max_side)) if with_overlay else None
        )
        top = np.argsort(-whole[0])[:TOP_K]
        result["whole_image_top_k"] = [
            {"class": self.classes[i], "probability": float(whole[0][i])} for i in top
        ]
        result["timing"] = {
            "decode_s": decoded - start,
            "analysis_s": predicted - decoded,
            "overlay_s": time.perf_counter() - predicted,
            "total_s": time.perf_counter() - start,
        }
        return result

    def _analyse(self, patch: ml_collections.ConfigDict, name: str, prepared: np.ndarray) -> engines.Analysis:
        """The patch probabilities of a prepared image: exact mode through the batcher, shared as a job."""
        count = len(patch_grid(prepared.shape[0], prepared.shape[1], patch.size, patch.stride).boxes)
        if count > self.limits.max_patches:
            raise RequestError(
                413,
                f"{name}: {count} patches at stride {patch.stride} is over the limit of "
                f"{self.limits.max_patches} (serve.max_patches); use a larger stride or a smaller image",
            )
        if patch.mode == "shared":
            return self.batcher.call(self.shared.analyse, prepared, patch.size, patch.stride)
        if self.batcher.batching:  # unpadded chunks: the batcher packs (and splits) them into full batches
            size = self.batcher.max_batch
            return engines.analyse_exact(
                prepared, self.batcher.submit, patch.size, patch.stride, size, pad=False
            )
        return engines.analyse_exact(prepared, self.batcher.submit, patch.size, patch.stride, self.chunk_size)

    def _whole(self, keep: list[np.ndarray], image: np.ndarray) -> np.ndarray:
        """The whole image's probabilities (through the batcher), also appended to ``keep``."""
        probs = whole_image_probs(self.batcher.submit, self.image_size, image)
        keep.append(probs)
        return probs
