"""``PatchClassifier``: major and secondary classes of any photo, for the CLI and for embedding."""

import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np

from scenecls import config as config_lib
from scenecls.data.images import load_rgb, resize
from scenecls.models import Classifier, lookup_variant
from scenecls.patches.coverage import UNCERTAIN, class_name, tally
from scenecls.patches.engines import (
    Analysis,
    PatchFn,
    SharedModel,
    analyse_exact,
    device_multiple,
    model_patch_fn,
)
from scenecls.patches.explain import ExplainFn, gradcam, resize_maps
from scenecls.patches.grid import prepare_image
from scenecls.workdir import load_for_inference

# uint8 image (H, W, 3) -> class probabilities (num_classes,).
ImageFn = Callable[[np.ndarray], np.ndarray]
Analyser = Callable[[np.ndarray], Analysis]


def _as_image(image_or_path: str | os.PathLike | np.ndarray) -> tuple[str | None, np.ndarray]:
    """(path or None, uint8 (H, W, 3) image) of a path (read with ``load_rgb``) or an array (checked)."""
    if not isinstance(image_or_path, np.ndarray):
        path = os.fspath(image_or_path)
        return path, load_rgb(path)
    image = image_or_path
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    return None, image


def _exact_analyser(patch_fn: PatchFn, patch_config: ml_collections.ConfigDict, chunk_size: int) -> Analyser:
    """Exact mode's analysis with ``patch_fn``: every patch of ``patch_config``'s grid, by chunks."""
    return functools.partial(
        analyse_exact,
        patch_fn=patch_fn,
        size=patch_config.size,
        stride=patch_config.stride,
        chunk_size=chunk_size,
    )


def whole_image_probs(patch_fn: PatchFn, size: int, image: np.ndarray) -> np.ndarray:
    """Probabilities of the whole image squeezed to one ``size`` square."""
    return np.asarray(patch_fn(resize(image, size, size)[None]))[0]


class PatchClassifier:
    """Classifies every patch of an image and reports coverage, major and secondary classes.

    Build it with ``from_workdir`` (a trained run), ``from_model`` or ``from_patch_fn`` (any function
    from uint8 patches to probabilities, e.g. an oracle in tests); ``predict`` returns the JSON fields.
    Classifiers built from a model can also ``explain`` classes with Grad-CAM heatmaps.
    """

    def __init__(
        self,
        classes: Sequence[str],
        patch_config: ml_collections.ConfigDict,
        analyse: Analyser,
        whole_image: ImageFn,
        explain: ExplainFn | None = None,
    ):
        """Low-level: ``analyse`` maps a prepared image to patch probabilities, ``whole_image`` to one;
        ``explain`` a prepared image and class indices to heatmaps (None: this classifier cannot explain).
        """
        config_lib.validate_patch(patch_config)
        self.classes = tuple(classes)
        self.patch_config = patch_config
        # Absent from patch sections saved by runs older than abstention: no patch abstains.
        self.min_confidence = patch_config.get("min_confidence", 0.0)
        if self.min_confidence > 0 and UNCERTAIN in self.classes:
            raise ValueError(
                f"a class is called {UNCERTAIN!r}, the name of abstaining patches: "
                "patch.min_confidence must be 0 with these classes"
            )
        self._analyse, self._whole_image, self._explain = analyse, whole_image, explain

    @classmethod
    def from_patch_fn(
        cls,
        patch_fn: PatchFn,
        classes: Sequence[str],
        patch_config: ml_collections.ConfigDict,
        whole_image: ImageFn | None = None,
        chunk_size: int | None = None,
    ) -> "PatchClassifier":
        """Exact mode with an injected patch function; the whole image defaults to one squeezed patch.

        Patches go to ``patch_fn`` ``chunk_size`` at a time (default ``patch_config.chunk_size``).
        """
        if patch_config.mode == "shared":
            raise ValueError("shared mode needs a model (from_model); a patch function supports only 'exact'")
        analyse = _exact_analyser(patch_fn, patch_config, chunk_size or patch_config.chunk_size)
        whole_image = whole_image or functools.partial(whole_image_probs, patch_fn, patch_config.size)
        return cls(classes, patch_config, analyse, whole_image)

    @classmethod
    def from_model(
        cls,
        model: Classifier,
        variables: Any,
        classes: Sequence[str],
        config: ml_collections.ConfigDict,
        patch_config: ml_collections.ConfigDict | None = None,
        temperature: float = 1.0,
    ) -> "PatchClassifier":
        """A model trained with ``config`` (its image_size and variant); patches per ``patch_config``;
        probabilities at ``temperature`` (its calibration).

        ``patch_config`` defaults to ``config.patch``. The work of an image is spread over this process's
        devices: exact mode's chunks (rounded up to a multiple of their count), shared mode's windows.
        """
        patch_config = config.patch if patch_config is None else patch_config
        preprocessing, image_size = lookup_variant(config.model.variant).preprocessing, config.image_size
        patch_fn = model_patch_fn(model, variables, image_size, preprocessing, temperature=temperature)
        whole_image = functools.partial(whole_image_probs, patch_fn, image_size)
        explain = functools.partial(
            gradcam,
            model,
            variables,
            preprocessing=preprocessing,
            image_size=image_size,
            patch_size=patch_config.size,
        )
        if patch_config.mode != "shared":
            analyse = _exact_analyser(patch_fn, patch_config, device_multiple(patch_config.chunk_size))
        else:
            shared = SharedModel(model, variables, image_size, preprocessing, temperature=temperature)
            analyse = functools.partial(shared.analyse, size=patch_config.size, stride=patch_config.stride)
        return cls(classes, patch_config, analyse, whole_image, explain)

    @classmethod
    def from_workdir(
        cls, workdir: str, patch_config: ml_collections.ConfigDict | None = None
    ) -> "PatchClassifier":
        """The best checkpoint of a trained workdir, its classes; ``patch_config`` default: the run's."""
        trained = load_for_inference(workdir)
        return cls.from_model(
            trained.model,
            trained.variables,
            trained.classes,
            trained.config,
            patch_config,
            trained.temperature,
        )

    @property
    def can_explain(self) -> bool:
        """Whether ``explain`` works: the classifier was built from a model."""
        return self._explain is not None

    def predict(self, image_or_path: str | os.PathLike | np.ndarray) -> dict[str, Any]:
        """Patch predictions, coverage, abstentions, major/secondary and whole-image class of one image.

        Accepts a path (any format ``load_rgb`` reads; raises its ``ImageError``) or a uint8 (H, W, 3)
        array. Boxes are in the original image's pixels. A patch whose top probability is below
        ``patch.min_confidence`` has class ``"uncertain"`` (and keeps that probability as its confidence);
        see ``coverage.tally`` for how abstentions enter coverage, major and secondary.
        """
        start = time.perf_counter()
        path, image = _as_image(image_or_path)
        config = self.patch_config
        prepared, notes = prepare_image(image, config.size, config.image_scale)
        analysis = self._analyse(prepared)
        whole = self._whole_image(image)
        counts = tally(analysis.probs, self.classes, config.secondary_threshold, self.min_confidence)
        height, width = image.shape[:2]
        scale = np.array([width / prepared.shape[1], height / prepared.shape[0]] * 2)
        boxes = np.clip(np.rint(analysis.boxes * scale), 0, [width, height] * 2).astype(int)
        patches = [
            {"box": box.tolist(), "class": class_name(label, self.classes), "confidence": float(probs.max())}
            for box, label, probs in zip(boxes, counts["labels"], analysis.probs, strict=True)
        ]
        return {
            "image": path,
            "width": width,
            "height": height,
            "classes": list(self.classes),
            "patch": {
                "size": config.size,
                "stride": config.stride,
                "mode": config.mode,
                "min_confidence": self.min_confidence,
            },
            "grid": {"rows": analysis.rows, "cols": analysis.cols},
            "patches": patches,
            "coverage": counts["coverage"],
            "prob_coverage": counts["prob_coverage"],
            "uncertain": counts["uncertain"],
            "major": counts["major"],
            "secondary": counts["secondary"],
            "whole_image": {
                "class": self.classes[int(whole.argmax())],
                "confidence": float(whole.max()),
                "uncertain": bool(whole.max() < self.min_confidence),
            },
            "seconds": time.perf_counter() - start,
            "notes": notes + list(analysis.notes),
        }

    def explain(self, image_or_path: str | os.PathLike | np.ndarray, classes: Sequence[str]) -> np.ndarray:
        """Grad-CAM heatmaps (len(classes), H, W) in [0, 1] of ``classes`` over the image, at its resolution.

        The image is prepared as ``predict`` prepares it (``patch.image_scale``, upscaling) and analysed
        whole at the model's patch scale (see ``explain.gradcam``). Only classifiers built from a model
        (``from_model``, ``from_workdir``) can explain.
        """
        if self._explain is None:
            raise ValueError(
                "Grad-CAM needs the model: build the PatchClassifier with from_model or from_workdir "
                "(one built from_patch_fn cannot explain)"
            )
        unknown = [name for name in classes if name not in self.classes]
        if unknown:
            raise ValueError(f"cannot explain {unknown}: not among the classes {list(self.classes)}")
        _, image = _as_image(image_or_path)
        config = self.patch_config
        prepared, _ = prepare_image(image, config.size, config.image_scale)
        heatmaps = self._explain(prepared, [self.classes.index(name) for name in classes])
        return resize_maps(heatmaps, *image.shape[:2])
