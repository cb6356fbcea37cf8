"""Dataset preparation: broken and hidden files, nesting, the report, reuse and versioning."""

import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from scenecls.config import default_config
from scenecls.data import builder, folder, images, synthetic

BROKEN = {
    "Cars/zero.png": "empty file",
    "Cars/notes_renamed.jpg": "not a recognised image",
    "Trees/corrupt.jpg": "corrupt",
    "People/truncated.jpg": "truncated",
}
HIDDEN = [".DS_Store", "Cars/.DS_Store", "Cars/._cars_0000.jpg", "Trees/Thumbs.db", "Labs/.cache/x.jpg"]


def _jpeg(seed: int, size=(60, 90)) -> bytes:
    buffer = io.BytesIO()
    image = synthetic.render_scene("Cars", *size, np.random.default_rng(seed))
    Image.fromarray(image).save(buffer, format="JPEG")
    return buffer.getvalue()


def _write(root, rel_path, content: bytes):
    path = os.path.join(root, rel_path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)


def _data_config(source_dir: str, **overrides):
    config = default_config().data
    config.source_dir = source_dir
    config.store_shorter_side = 40
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def messy_source(tmp_path_factory):
    """8 synthetic images per class plus broken, hidden, non-image and nested files."""
    root = str(tmp_path_factory.mktemp("messy") / "photos")
    synthetic.write_dataset(root, per_class=8, size=(48, 64))
    os.remove(os.path.join(root, synthetic.MARKER))
    for rel_path, content in [
        ("Cars/zero.png", b""),
        ("Cars/notes_renamed.jpg", b"shopping list\n" * 20),
        ("Trees/corrupt.jpg", b"\xff\xd8\xff\xe0" + os.urandom(2000)),
        ("People/truncated.jpg", _jpeg(0)[:600]),
    ]:
        _write(root, rel_path, content)
    for rel_path in HIDDEN:
        _write(root, rel_path, _jpeg(1))
    _write(root, "Cars/notes.txt", b"not an image")
    _write(root, "Cars/2021/trip/deep.jpg", _jpeg(2, size=(300, 200)))
    return root


@pytest.fixture(scope="module")
def messy_workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("work"))


@pytest.fixture(scope="module")
def messy(messy_source, messy_workdir):
    return builder.prepare(_data_config(messy_source), messy_workdir)


def test_broken_files_are_skipped_with_reasons_and_the_rest_prepared(messy):
    with open(messy.report_path) as f:
        report = json.load(f)
    skipped = dict(report["skipped"])
    assert set(skipped) == set(BROKEN)
    for path, reason in BROKEN.items():
        assert reason in skipped[path], skipped[path]
    assert sum(map(sum, messy.counts.values())) == 5 * 8 + 1  # every good image, the nested one included
    assert messy.classes == synthetic.CLASSES


def test_hidden_and_non_image_files_are_ignored_and_reported(messy):
    with open(messy.report_path) as f:
        ignored = dict(json.load(f)["ignored"])
    assert set(ignored) == {
        ".DS_Store",
        "Cars/.DS_Store",
        "Cars/._cars_0000.jpg",
        "Trees/Thumbs.db",
        "Labs/.cache",
        "Cars/notes.txt",
    }
    all_files = [path for paths in messy.files.values() for path in paths]
    assert "Cars/2021/trip/deep.jpg" in all_files and not any("/." in path for path in all_files)


def test_stored_data_matches_the_report(messy, messy_source):
    for split in folder.SPLITS:
        examples = list(tfds.as_numpy(messy.builder.as_dataset(split=split)))
        assert len(examples) == sum(messy.counts[split]) == len(messy.files[split])
        assert sorted(e["file"].decode() for e in examples) == messy.files[split]
        for example in examples:
            file, image = example["file"].decode(), example["image"]
            assert messy.classes[example["label"]] == file.split("/")[0]
            assert image.dtype == np.uint8 and image.shape[2] == 3
            original = images.load_rgb(os.path.join(messy_source, file)).shape
            assert min(image.shape[:2]) == min(40, *original[:2])  # stored pre-resized, never enlarged
            assert abs(image.shape[0] / image.shape[1] - original[0] / original[1]) < 0.05  # aspect kept


def test_report_files_and_printed_table(messy, messy_source, messy_workdir, capsys, tmp_path):
    with open(os.path.join(messy.data_dir, "report.txt")) as f:
        text = f.read()
    assert "Skipped (not decodable): 4" in text and "Cars/zero.png: empty file (0 bytes)" in text
    assert "Files in test:" in text and messy.files["test"][0] in text
    builder.prepare(_data_config(messy_source), messy_workdir)
    reused = capsys.readouterr().out  # reusing: one line, the table stays in report.txt
    total = sum(map(sum, messy.counts.values()))
    assert reused.splitlines() == [
        f"Reusing prepared data {messy.data_dir} (source unchanged): {total} images of "
        f"{len(messy.classes)} classes; table and file lists in report.txt there."
    ]
    builder.prepare(_data_config(messy_source, prepared_dir=str(tmp_path)), messy_workdir)
    printed = capsys.readouterr().out  # preparing: the class x split table and what was left out
    assert "class" in printed and "validation" in printed and "Cars/notes.txt" in printed


def test_prepare_reuses_unchanged_and_versions_changed_sources(tmp_path):
    source = str(tmp_path / "src")
    synthetic.write_dataset(source, per_class=4, size=(32, 48))
    config = _data_config(source, prepared_dir=str(tmp_path / "prepared"))
    first = builder.prepare(config, str(tmp_path))
    report_mtime = os.stat(first.report_path).st_mtime_ns
    again = builder.prepare(config, str(tmp_path))
    assert again.data_dir == first.data_dir and os.stat(again.report_path).st_mtime_ns == report_mtime
    assert again.files == first.files and again.counts == first.counts
    changed_file = os.path.join(source, first.files["test"][0])
    _write(source, first.files["test"][0], _jpeg(3, size=(32, 48)))
    os.utime(changed_file, ns=(1, 1))
    changed = builder.prepare(config, str(tmp_path))
    assert changed.data_dir != first.data_dir and os.path.exists(first.report_path)  # new version, old kept
    assert sorted(os.listdir(tmp_path / "prepared")) == sorted(
        [os.path.basename(first.data_dir), os.path.basename(changed.data_dir)]
    )
    config.split_seed = 1
    other_seed = builder.prepare(config, str(tmp_path))
    assert other_seed.data_dir != changed.data_dir and other_seed.files != changed.files


def test_class_with_too_few_usable_images_fails_naming_it(tmp_path):
    source = str(tmp_path / "src")
    synthetic.write_dataset(source, per_class=4, size=(32, 48), classes=("Cars", "Labs"))
    for path in os.listdir(os.path.join(source, "Labs"))[:2]:
        _write(source, f"Labs/{path}", b"garbage")
    with pytest.raises(ValueError, match=r"class 'Labs' has 2 usable image\(s\), too few for the split"):
        builder.prepare(_data_config(source), str(tmp_path / "work"))
    assert os.listdir(tmp_path / "work" / "prepared") == []  # nothing half-prepared left behind


def test_missing_source_errors(tmp_path):
    with pytest.raises(ValueError, match="no data: set --config.data.source_dir"):
        builder.prepare(_data_config(""), str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        builder.prepare(_data_config(str(tmp_path / "nowhere")), str(tmp_path))


def test_synthetic_source_is_written_once(tmp_path):
    config = _data_config("", synthetic_per_class=3)
    prepared = builder.prepare(config, str(tmp_path))
    source = tmp_path / "synthetic_source"
    assert prepared.counts["train"] == [1] * 5 and sorted(os.listdir(source))[1:] == list(synthetic.CLASSES)
    mtime = os.stat(source / synthetic.MARKER).st_mtime_ns
    shutil.rmtree(tmp_path / "prepared")
    builder.prepare(config, str(tmp_path))
    assert os.stat(source / synthetic.MARKER).st_mtime_ns == mtime


def test_messy_photo_folder_finds_its_classes_and_reports_the_rest(tmp_path, caplog):
    """Leftover folders are not classes; clutter is ignored, corrupt images skipped, odd names kept."""
    source = str(tmp_path / "photos")
    for i in range(4):
        _write(source, f"Bâtiments anciens/photo été {i}.jpg", _jpeg(10 + i))
        _write(source, f"Cars/car {i}.jpg", _jpeg(20 + i))
    _write(source, "Cars/2020/voyage à Noël/nested.jpg", _jpeg(30))  # counts for Cars
    clutter = {
        ".DS_Store": "hidden or system file",
        "README.txt": "file outside the class folders",
        "Cars/.hidden.jpg": "hidden or system file",
        "Cars/._car 0.jpg": "hidden or system file",
        "Cars/Thumbs.db": "hidden or system file",
        "Bâtiments anciens/README.txt": "not an image file extension (.txt)",
        "Notes/notes.txt": None,  # the folder is reported, not its content
        "Backup/._old.jpg": None,  # AppleDouble only: no image file
    }
    for rel_path in clutter:
        _write(source, rel_path, _jpeg(1) if rel_path.endswith(".jpg") else b"clutter")
    os.makedirs(os.path.join(source, "Unused"))
    _write(source, "Cars/corrupt.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 500)
    _write(source, "Bâtiments anciens/cassée.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)

    prepared = builder.prepare(_data_config(source), str(tmp_path / "work"))

    assert prepared.classes == ("Bâtiments anciens", "Cars")
    assert [sum(prepared.counts[s][c] for s in folder.SPLITS) for c in range(2)] == [4, 5]
    assert "Cars/2020/voyage à Noël/nested.jpg" in {p for paths in prepared.files.values() for p in paths}
    with open(prepared.report_path) as f:
        report = json.load(f)
    expected_ignored = {path: reason for path, reason in clutter.items() if reason}
    expected_ignored.update({name: "no image files: not a class" for name in ("Backup", "Notes", "Unused")})
    assert dict(report["ignored"]) == expected_ignored
    assert set(dict(report["skipped"])) == {"Cars/corrupt.jpg", "Bâtiments anciens/cassée.png"}
    with open(os.path.join(prepared.data_dir, "report.txt"), encoding="utf-8") as f:
        assert "  Unused: no image files: not a class" in f.read()
    assert "(not classes): ['Backup', 'Notes', 'Unused']" in caplog.text


def test_class_folder_without_one_decodable_image_fails_naming_it(tmp_path):
    source = str(tmp_path / "src")
    synthetic.write_dataset(source, per_class=4, size=(32, 48), classes=("Cars", "Labs"))
    for i in range(3):
        _write(source, f"Broken/scan {i}.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    broken = os.path.join(source, "Broken")
    with pytest.raises(ValueError) as error:
        builder.prepare(_data_config(source), str(tmp_path / "work"))
    assert str(error.value) == (
        f"class folder 'Broken' ({broken}): none of its 3 image file(s) could be decoded; "
        "fix or remove them, or list only the other classes in data.classes"
    )
    assert os.listdir(tmp_path / "work" / "prepared") == []


def test_explicit_class_naming_an_empty_folder_fails_naming_it(tmp_path):
    source = str(tmp_path / "src")
    synthetic.write_dataset(source, per_class=4, size=(32, 48), classes=("Cars", "Labs"))
    os.makedirs(os.path.join(source, "Unused"))
    with pytest.raises(ValueError, match=r"^[^\n]*data.classes entry 'Unused': no image file in \S+/Unused$"):
        builder.prepare(_data_config(source, classes=("Cars", "Unused")), str(tmp_path / "work"))
