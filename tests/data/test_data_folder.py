"""Folder scanning, fingerprints and the stratified split."""

import os
import random

import pytest

from scenecls.data import folder

PAPER_COUNTS = {"Buildings": 339, "Cars": 476, "Labs": 220, "People": 320, "Trees": 517}


def _touch(root, rel_path, content=b"x"):
    path = root / rel_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


@pytest.fixture
def source(tmp_path):
    """Two classes with nested, hidden, system and non-image entries."""
    for rel_path in [
        "Cars/a.jpg",
        "Cars/B.JPG",
        "Cars/2019/c.png",
        "Cars/2019/deeper/d.webp",
        "Trees/e.jpeg",
        "Trees/f.TIFF",
        "Trees/g.bmp",
        "Trees/h.gif",
        "Cars/.DS_Store",
        "Cars/._a.jpg",
        "Trees/Thumbs.db",
        "Trees/notes.txt",
        ".hidden_class/i.jpg",
        "Cars/.thumbnails/j.jpg",
        "README.md",
    ]:
        _touch(tmp_path, rel_path)
    return tmp_path


def test_scan_counts_nested_and_ignores_clutter(source):
    scanned = folder.scan(str(source))
    assert scanned.classes == ("Cars", "Trees")
    assert [(f.path, f.label) for f in scanned.files] == [
        ("Cars/2019/c.png", 0),
        ("Cars/2019/deeper/d.webp", 0),
        ("Cars/B.JPG", 0),
        ("Cars/a.jpg", 0),
        ("Trees/e.jpeg", 1),
        ("Trees/f.TIFF", 1),
        ("Trees/g.bmp", 1),
        ("Trees/h.gif", 1),
    ]
    assert dict(scanned.ignored) == {
        ".hidden_class": "hidden or system file",
        "README.md": "file outside the class folders",
        "Cars/.DS_Store": "hidden or system file",
        "Cars/._a.jpg": "hidden or system file",
        "Cars/.thumbnails": "hidden or system file",
        "Trees/Thumbs.db": "hidden or system file",
        "Trees/notes.txt": "not an image file extension (.txt)",
    }


def test_explicit_classes(source):
    scanned = folder.scan(str(source), ["Trees"])
    assert scanned.classes == ("Trees",) and {f.label for f in scanned.files} == {0}
    assert ("Cars", "folder not in data.classes") in scanned.ignored
    with pytest.raises(ValueError, match=r"no folder for data.classes \['Labs'\]"):
        folder.scan(str(source), ["Trees", "Labs"])


def test_folders_without_image_files_are_not_classes(source, caplog):
    for rel_path in ("Unused/", "Notes/notes.txt", "Backup/._a.jpg", "Backup/Thumbs.db", "Old/.cache/b.jpg"):
        os.makedirs(source / os.path.dirname(rel_path), exist_ok=True)
        if not rel_path.endswith("/"):
            _touch(source, rel_path)
    scanned = folder.scan(str(source))
    assert scanned.classes == ("Cars", "Trees") and len(scanned.files) == 8
    ignored = dict(scanned.ignored)
    for name in ("Unused", "Notes", "Backup", "Old"):
        assert ignored[name] == "no image files: not a class"
    assert "Notes/notes.txt" not in ignored  # the folder is reported, not each piece of its clutter
    assert "(not classes): ['Backup', 'Notes', 'Old', 'Unused']" in caplog.text


def test_explicit_class_without_image_files_is_an_error_naming_it(source):
    os.makedirs(source / "Labs")
    _touch(source, "Labs/notes.txt")
    with pytest.raises(ValueError, match=r"data.classes entry 'Labs': no image file in .*Labs$") as error:
        folder.scan(str(source), ["Cars", "Labs"])
    assert "\n" not in str(error.value)


def test_absent_classes_are_accepted_when_allowed(source, caplog):
    os.makedirs(source / "Labs")
    scanned = folder.scan(str(source), ["Cars", "Labs", "People", "Trees"], allow_absent=True)
    assert scanned.classes == ("Cars", "Labs", "People", "Trees") and scanned.absent == ("Labs", "People")
    assert {f.label for f in scanned.files} == {0, 3}  # labels keep the positions of the listed classes
    assert "(no folder: ['People'], no image files: ['Labs'])" in caplog.text
    splits = folder.stratified_split(scanned.files, scanned.classes, (0, 0, 1), seed=0, absent=scanned.absent)
    assert len(splits["test"]) == 8
    with pytest.raises(ValueError, match="class 'Labs' has 0 usable image"):  # only when named absent
        folder.stratified_split(scanned.files, scanned.classes, (0, 0, 1), seed=0)


def test_scan_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        folder.scan(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="no class folders"):
        folder.scan(str(tmp_path))
    _touch(tmp_path, "Cars/notes.txt")
    with pytest.raises(ValueError, match="no image files"):
        folder.scan(str(tmp_path))


def test_scan_is_independent_of_listing_order(source, monkeypatch):
    expected = folder.scan(str(source))
    real_listdir = os.listdir
    monkeypatch.setattr(
        os, "listdir", lambda path: random.Random(1).sample(real_listdir(path), len(real_listdir(path)))
    )
    assert folder.scan(str(source)) == expected


def _paper_files(order_seed=None):
    files = [
        folder.SourceFile(f"{name}/IMG_{i:04d}.jpg", label, 1000 + i, i)
        for label, name in enumerate(PAPER_COUNTS)
        for i in range(PAPER_COUNTS[name])
    ]
    if order_seed is not None:
        random.Random(order_seed).shuffle(files)
    return files


def test_split_proportions_per_class_within_one_image():
    splits = folder.stratified_split(_paper_files(), tuple(PAPER_COUNTS), (0.7, 0.15, 0.15), seed=0)
    for label, (name, count) in enumerate(PAPER_COUNTS.items()):
        for split, ratio in zip(folder.SPLITS, (0.7, 0.15, 0.15), strict=True):
            assert abs(sum(f.label == label for f in splits[split]) - ratio * count) <= 1, (name, split)
    all_paths = [f.path for members in splits.values() for f in members]
    assert sorted(all_paths) == sorted(f.path for f in _paper_files())  # disjoint and complete
    assert [len(splits[s]) for s in folder.SPLITS] == [1310, 281, 281]  # the paper's split sizes


def test_split_is_deterministic_in_seed_and_independent_of_order():
    classes, ratios = tuple(PAPER_COUNTS), (0.7, 0.15, 0.15)
    reference = folder.stratified_split(_paper_files(), classes, ratios, seed=0)
    assert folder.stratified_split(_paper_files(order_seed=5), classes, ratios, seed=0) == reference
    other = folder.stratified_split(_paper_files(), classes, ratios, seed=1)
    assert other["test"] != reference["test"]


def test_split_keeps_most_assignments_when_a_file_is_added():
    classes, ratios = tuple(PAPER_COUNTS), (0.7, 0.15, 0.15)
    before = folder.stratified_split(_paper_files(), classes, ratios, seed=0)
    added = folder.SourceFile("Cars/new.jpg", 1, 5, 5)
    after = folder.stratified_split(_paper_files() + [added], classes, ratios, seed=0)
    moved = {f.path for f in before["test"]} ^ {f.path for f in after["test"]}
    assert len(moved) <= 3


def test_split_errors_name_the_class():
    files = [folder.SourceFile(f"A/{i}.jpg", 0, 1, 1) for i in range(10)]
    files += [folder.SourceFile(f"B/{i}.jpg", 1, 1, 1) for i in range(2)]
    with pytest.raises(ValueError, match=r"class 'B' has 2 usable image\(s\), too few"):
        folder.stratified_split(files, ("A", "B"), (0.7, 0.15, 0.15), seed=0)
    with pytest.raises(ValueError, match="summing to 1"):
        folder.stratified_split(files, ("A", "B"), (0.7, 0.2, 0.2), seed=0)
    only_test = folder.stratified_split(files, ("A", "B"), (0.0, 0.0, 1.0), seed=0)  # evaluation-only data
    assert len(only_test["test"]) == 12 and not only_test["train"]


@pytest.mark.parametrize("count", range(1, 60))
def test_split_sizes_within_one_of_target(count):
    sizes = folder.split_sizes(count, (0.7, 0.15, 0.15))
    assert sum(sizes) == count
    if count >= 4:  # below that, every split getting at least one image takes precedence
        assert all(
            size >= 1 and abs(size - ratio * count) <= 1
            for size, ratio in zip(sizes, (0.7, 0.15, 0.15), strict=True)
        )


def test_fingerprint_tracks_every_change():
    files = _paper_files()[:20]
    base = folder.fingerprint(files, ("A",), {"size": 256})
    assert folder.fingerprint(list(reversed(files)), ("A",), {"size": 256}) == base
    first = files[0]
    touched = [folder.SourceFile(first.path, first.label, first.size, first.mtime_ns + 1)] + files[1:]
    resized = [folder.SourceFile(first.path, first.label, first.size + 1, first.mtime_ns)] + files[1:]
    relabelled = [folder.SourceFile(first.path, 1, first.size, first.mtime_ns)] + files[1:]
    renamed = [folder.SourceFile("x.jpg", 0, first.size, first.mtime_ns)] + files[1:]
    variants = [
        folder.fingerprint(changed, ("A",), {"size": 256})
        for changed in (touched, resized, relabelled, renamed, files[1:])
    ]
    variants.append(folder.fingerprint(files, ("B",), {"size": 256}))
    variants.append(folder.fingerprint(files, ("A",), {"size": 224}))
    assert len({base, *variants}) == 8
