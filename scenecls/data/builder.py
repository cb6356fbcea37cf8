"""Turns a folder of class folders into a prepared, versioned tensorflow-datasets dataset.

``prepare`` scans the folder (scenecls.data.folder), decodes every image once with all cores (EXIF
orientation, any colour mode -> RGB, resized so the shorter side is ``store_shorter_side``), splits the
decodable images stratified by class, and writes them with the ``SceneFolder`` tfds builder under
``<prepared root>/<fingerprint>/``. The fingerprint covers the file list, sizes, mtimes and the preparation
settings, so an unchanged folder is reused and a changed one yields a new version, never a mix. A report
(JSON and text) next to the data lists counts per class and split, skipped and ignored files and the
file list of every split. (One module, a little over 300 lines: the tfds builder, the preparation steps
and their report are one cohesive job.)
"""

import concurrent.futures
import contextlib
import dataclasses
import io
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence

import ml_collections
import tensorflow_datasets as tfds
from absl import logging

from scenecls import console
from scenecls.data import folder, images, synthetic

_FORMAT_VERSION = 1  # bump when the stored content changes for the same settings
_JPEG_QUALITY = 95
_REPORT = "report.json"
_STAGING = "staging"


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """A prepared dataset: its tfds builder, classes, and per-split counts and file lists."""

    classes: tuple[str, ...]
    data_dir: str  # <prepared root>/<fingerprint>: the tfds data_dir, holding the report too
    builder: tfds.core.DatasetBuilder
    counts: dict[str, list[int]]  # split -> images per class
    files: dict[str, list[str]]  # split -> paths relative to the source folder, sorted
    report_path: str


@dataclasses.dataclass(frozen=True)
class _Example:
    key: str  # relative source path
    label: int
    staged_path: str  # the pre-resized JPEG


class SceneFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """tfds builder ``scene_folder``: pre-resized JPEG images, class labels and source-relative paths.

    Takes the class names and the examples of every split as constructor arguments; the decoding,
    resizing and split decisions happen before (see ``prepare``), so generation only packs bytes.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Folder of class folders, stratified split, images stored pre-resized."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        """No checksums file to locate (nothing is downloaded).

        Also sidesteps tfds 4.9.10's unconditional use of the undeclared ``importlib_resources`` package
        when locating a builder's code (tensorflow/datasets#11212).
        """
        return None

    def __init__(self, *, classes: Sequence[str], examples: Mapping[str, Sequence[_Example]], **kwargs):
        self._classes = tuple(classes)
        self._examples = examples
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="Scene images from a folder of class folders (scenecls).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=self._classes),
                    "file": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # everything is local
        return {split: self._generate_examples(items) for split, items in self._examples.items() if items}

    def _generate_examples(self, examples: Sequence[_Example]):
        for example in examples:
            yield example.key, {"image": example.staged_path, "label": example.label, "file": example.key}


def prepare(data_config: ml_collections.ConfigDict, workdir: str, allow_absent: bool = False) -> PreparedData:
    """Prepares (or reuses) the dataset described by ``config.data``; prints the per-class/split table
    when it prepares, one line when it reuses.

    Args:
      data_config: the ``data`` section of the config.
      workdir: the run's folder (prepared data goes to ``<workdir>/prepared`` unless configured).
      allow_absent: accept, with a warning, classes of ``data.classes`` without a folder or without images
        (evaluation data may lack some of the model's classes); they get no examples.

    Raises:
      ValueError: no source folder configured, missing folder or classes, no images, bad split ratios, a
        class folder whose images all fail to decode, or a class with too few decodable images for the
        split (the message names it).
    """
    source_dir = resolve_source_dir(data_config, workdir)
    scanned = folder.scan(source_dir, tuple(data_config.classes), allow_absent)
    settings = {
        "format": _FORMAT_VERSION,
        "split": [float(r) for r in data_config.split],
        "split_seed": int(data_config.split_seed),
        "store_shorter_side": int(data_config.store_shorter_side),
    }
    version = folder.fingerprint(scanned.files, scanned.classes, settings)
    root = data_config.prepared_dir or os.path.join(workdir, "prepared")
    data_dir = os.path.join(root, version)
    report_path = os.path.join(data_dir, _REPORT)
    if os.path.exists(report_path):
        with open(report_path) as f:
            report = json.load(f)
        images_count = sum(map(sum, report["counts"].values()))
        console.say(
            f"Reusing prepared data {data_dir} (source unchanged): {images_count} images of "
            f"{len(report['classes'])} classes; table and file lists in report.txt there."
        )
        logging.info("%s", format_data_report(report, max_lines=20))
    else:
        shutil.rmtree(data_dir, ignore_errors=True)  # an interrupted earlier attempt
        try:
            report = _build(scanned, settings, data_dir, source_dir)
            _write_report(report, data_dir)
        except BaseException:
            shutil.rmtree(data_dir, ignore_errors=True)  # never leave a half-prepared version behind
            raise
        console.say(
            f"Prepared {sum(map(sum, report['counts'].values()))} images into {data_dir} "
            f"in {report['seconds']:.1f} s."
        )
        console.say(format_data_report(report, max_lines=20))
    builder = tfds.builder_from_directory(os.path.join(data_dir, SceneFolder.name, str(SceneFolder.VERSION)))
    return PreparedData(
        classes=tuple(report["classes"]),
        data_dir=data_dir,
        builder=builder,
        counts=report["counts"],
        files=report["files"],
        report_path=report_path,
    )


def resolve_source_dir(data_config: ml_collections.ConfigDict, workdir: str) -> str:
    """The configured source folder, or the synthetic set in <workdir>/synthetic_source (written once)."""
    if data_config.source_dir:
        return data_config.source_dir
    if data_config.synthetic_per_class <= 0:
        raise ValueError(
            "no data: set --config.data.source_dir=/path/to/class_folders "
            "(or data.synthetic_per_class > 0 for a synthetic demo set)"
        )
    out_dir = os.path.join(workdir, "synthetic_source")
    marker_path = os.path.join(out_dir, synthetic.MARKER)
    expected = synthetic.synthetic_marker(
        data_config.synthetic_per_class, synthetic.DEFAULT_SIZE, 0, synthetic.CLASSES
    )
    if os.path.exists(marker_path):
        with open(marker_path) as f:
            if json.load(f) == expected:
                return out_dir
    console.say(f"Writing {data_config.synthetic_per_class} synthetic images per class to {out_dir}")
    synthetic.write_dataset(out_dir, data_config.synthetic_per_class, synthetic.DEFAULT_SIZE, seed=0)
    return out_dir


def _build(scanned: folder.Scan, settings: dict, data_dir: str, source_dir: str) -> dict:
    """Decodes, splits and writes the dataset into ``data_dir``; returns the report."""
    start = time.perf_counter()
    staging = os.path.join(data_dir, _STAGING)
    os.makedirs(staging)
    shorter_side = settings["store_shorter_side"]
    outcomes = _convert_all(scanned, shorter_side, staging)
    good = [f for f, outcome in zip(scanned.files, outcomes, strict=True) if outcome is None]
    skipped = [(f.path, outcome) for f, outcome in zip(scanned.files, outcomes, strict=True) if outcome]
    for path, reason in skipped:
        logging.warning("Skipped %s: %s", path, reason)
    _check_decodable(scanned, good)
    splits = folder.stratified_split(
        good, scanned.classes, settings["split"], settings["split_seed"], scanned.absent
    )
    index = {f.path: i for i, f in enumerate(scanned.files)}
    examples = {
        split: [_Example(f.path, f.label, _staged_path(staging, index[f.path])) for f in members]
        for split, members in splits.items()
    }
    builder = SceneFolder(classes=scanned.classes, examples=examples, data_dir=data_dir)
    with _quiet_tfds():
        builder.download_and_prepare(
            download_dir=os.path.join(data_dir, "downloads"),
            download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        )
    shutil.rmtree(staging)
    shutil.rmtree(os.path.join(data_dir, "downloads"), ignore_errors=True)
    seconds = time.perf_counter() - start
    return {
        "version": os.path.basename(data_dir),
        "source_dir": os.path.abspath(source_dir),
        "classes": list(scanned.classes),
        "settings": settings,
        "counts": {
            split: [sum(f.label == c for f in splits[split]) for c in range(len(scanned.classes))]
            for split in folder.SPLITS
        },
        "skipped": [list(item) for item in skipped],
        "ignored": [list(item) for item in scanned.ignored],
        "files": {split: [f.path for f in members] for split, members in splits.items()},
        "seconds": seconds,
        "images_per_second": len(scanned.files) / seconds,
    }


def _check_decodable(scanned: folder.Scan, good: Sequence[folder.SourceFile]) -> None:
    """Refuses, naming its folder, a class with image files of which none could be decoded."""
    for label, name in enumerate(scanned.classes):
        total = sum(f.label == label for f in scanned.files)
        if total and not any(f.label == label for f in good):
            raise ValueError(
                f"class folder {name!r} ({os.path.abspath(os.path.join(scanned.root, name))}): none of its "
                f"{total} image file(s) could be decoded; fix or remove them, or list only the other classes "
                "in data.classes"
            )


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
    """tfds' own output while it writes the records, sent to the log: its bars and its printed
    "Downloading and preparing dataset Unknown size" (nothing is downloaded; our bar covers the work)."""
    printed = io.StringIO()
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        tfds.display_progress_bar(True)
        for line in printed.getvalue().splitlines():
            logging.info("tfds: %s", line)


def _staged_path(staging: str, index: int) -> str:
    return os.path.join(staging, f"{index:07d}.jpg")


def _convert_all(scanned: folder.Scan, shorter_side: int, staging: str) -> list[str | None]:
    """Converts every file with all cores; returns per file None (ok) or the reason it was skipped."""
    bar = console.progress(total=len(scanned.files), desc="Preparing data", unit="img")
    with bar, concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:  # Pillow releases the GIL
        futures = [
            pool.submit(
                _convert_one, os.path.join(scanned.root, f.path), shorter_side, _staged_path(staging, i)
            )
            for i, f in enumerate(scanned.files)
        ]
        for future in concurrent.futures.as_completed(futures):
            future.result()  # re-raises unexpected failures (a full disk, say) at once
            bar.update()
        outcomes = [future.result() for future in futures]
    return outcomes


def _convert_one(path: str, shorter_side: int, out_path: str) -> str | None:
    """Decodes one image, shrinks it to the stored size and writes it as JPEG; returns a skip reason."""
    try:
        image = images.load_rgb(path, draft_shorter_side=shorter_side or None)
    except images.ImageError as e:
        return str(e).removeprefix(f"{path}: ")
    except Exception as e:  # noqa: BLE001 -- a decoder bug on one odd file must not stop the run
        return f"unexpected decoder error ({type(e).__name__}: {e})"
    if shorter_side and min(image.shape[:2]) > shorter_side:
        image = images.resize_shorter_side(image, shorter_side)
    with open(out_path, "wb") as f:
        f.write(images.encode_jpeg(image, _JPEG_QUALITY))
    return None


def _write_report(report: dict, data_dir: str) -> None:
    """Writes report.txt and, last (atomically, as the completion mark), report.json."""
    with open(os.path.join(data_dir, "report.txt"), "w") as f:
        f.write(format_data_report(report) + "\n")
    tmp_path = os.path.join(data_dir, _REPORT + ".tmp")
    with open(tmp_path, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp_path, os.path.join(data_dir, _REPORT))


def format_data_report(report: dict, max_lines: int | None = None) -> str:
    """The report as text: a class x split table, skipped and ignored files, and (if max_lines is None)
    the file list of every split; ``max_lines`` caps each list for the console."""
    classes, counts = report["classes"], report["counts"]
    width = max(len("class"), len("total"), *map(len, classes))
    lines = [
        f"Prepared data {report['version']} from {report['source_dir']} "
        f"(shorter side {report['settings']['store_shorter_side'] or 'unchanged'}, "
        f"split {report['settings']['split']}, seed {report['settings']['split_seed']})",
        f"{'class':<{width}} " + " ".join(f"{s:>10}" for s in folder.SPLITS) + f" {'total':>7}",
    ]
    for c, name in enumerate(classes + ["total"]):
        row = [counts[s][c] if c < len(classes) else sum(counts[s]) for s in folder.SPLITS]
        lines.append(f"{name:<{width}} " + " ".join(f"{n:>10}" for n in row) + f" {sum(row):>7}")
    sections = [("Skipped (not decodable)", report["skipped"]), ("Ignored", report["ignored"])]
    if max_lines is None:
        sections += [
            (f"Files in {split}", [[path, ""] for path in report["files"][split]]) for split in folder.SPLITS
        ]
    for title, items in sections:
        lines.append(f"{title}: {len(items)}")
        shown = items if max_lines is None else items[:max_lines]
        lines += [f"  {path}: {reason}" if reason else f"  {path}" for path, reason in shown]
        if len(shown) < len(items):
            lines.append(f"  ... and {len(items) - len(shown)} more (see report.txt)")
    return "\n".join(lines)
