"""Synthetic campus scenes: a deterministic 5-class dataset and composite images with exact class masks.

The classes differ in colour, shape and texture statistics (facades with window grids, parked cars on
asphalt, bright labs with benches and monitors, crowds of people, foliage), so a small model learns them
in minutes. Every texture is roughly stationary, so a patch cut from a region still shows its class: that
is what the composites need for testing patch-based inference. ``scenecls --mode=synth`` writes the demo's
set into ``<workdir>/synthetic_source/<class>/*.jpg|png|...`` to show the expected folder layout. (One module
of a little over 300 lines: five scene renderers and the writers that share them.)
"""

import concurrent.futures
import io
import json
import os
import shutil
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from scenecls import console

CLASSES = ("Buildings", "Cars", "Labs", "People", "Trees")
MARKER = ".scenecls_synthetic.json"  # hidden, so dataset scans ignore it
DEFAULT_SIZE = (120, 160)  # (height, width) around which image sizes vary
_FORMAT_VERSION = 1
# File name suffix and Pillow format, cycled per image so preparation sees mixed formats and extension cases.
_FORMATS = (
    (".jpg", "JPEG"),
    (".png", "PNG"),
    (".jpg", "JPEG"),
    (".jpeg", "JPEG"),
    (".JPG", "JPEG"),
    (".webp", "WEBP"),
    (".jpg", "JPEG"),
    (".bmp", "BMP"),
    (".png", "PNG"),
    (".tif", "TIFF"),
)
_EXIF_ORIENTATION = 0x0112


def _colors(rng: np.random.Generator, palette: Sequence[Sequence[int]], n: int, amount: int = 12) -> list:
    """``n`` colours picked from ``palette``, each channel shifted by up to ``amount``."""
    picked = np.asarray(palette)[rng.integers(len(palette), size=n)]
    picked += rng.integers(-amount, amount + 1, (n, 3))
    return [tuple(c) for c in np.clip(picked, 0, 255).tolist()]


def _color(rng: np.random.Generator, palette: Sequence[Sequence[int]], amount: int = 12) -> tuple:
    return _colors(rng, palette, 1, amount)[0]


def _buildings(draw: ImageDraw.ImageDraw, h: int, w: int, unit: float, rng: np.random.Generator) -> None:
    """Facades (concrete, brick, sandstone) with regular grids of dark windows."""
    x = -rng.uniform(0, unit)
    while x < w:
        facade_w = rng.uniform(3, 7) * unit
        wall = _color(rng, [(150, 150, 150), (170, 95, 70), (205, 185, 150)])
        draw.rectangle([x, 0, x + facade_w, h], fill=wall)
        window = _color(rng, [(40, 55, 75), (70, 90, 110), (25, 30, 40)], 10)
        win_w, win_h = rng.uniform(0.35, 0.8, 2) * unit
        space_x, space_y = rng.uniform(0.25, 0.6, 2) * unit
        for wy in np.arange(rng.uniform(0, win_h + space_y), h, win_h + space_y):
            for wx in np.arange(x + space_x / 2, x + facade_w - win_w, win_w + space_x):
                draw.rectangle([wx, wy, wx + win_w, wy + win_h], fill=window)
        draw.rectangle([x + facade_w - 0.08 * unit, 0, x + facade_w, h], fill=(60, 60, 60))
        x += facade_w


def _cars(draw: ImageDraw.ImageDraw, h: int, w: int, unit: float, rng: np.random.Generator) -> None:
    """Rows of parked cars (saturated bodies, glass, black wheels) on dark asphalt."""
    draw.rectangle([0, 0, w, h], fill=_color(rng, [(70, 70, 72)], 10))
    bodies = [(200, 20, 25), (20, 60, 190), (235, 235, 235), (15, 15, 15), (230, 190, 20), (120, 125, 130)]
    row_h = rng.uniform(1.6, 2.2) * unit
    per_row = int(w / (2 * unit)) + 2
    for y in np.arange(-rng.uniform(0, row_h), h, row_h):
        draw.line([0, y, w, y], fill=(230, 230, 200), width=max(1, int(0.06 * unit)))
        widths, heights = rng.uniform(1.8, 2.6, per_row) * unit, rng.uniform(0.8, 1.1, per_row) * unit
        lefts = np.cumsum(widths + rng.uniform(0.2, 0.8, per_row) * unit) - widths - rng.uniform(0, 2) * unit
        top, r = y + 0.3 * unit, 0.2 * unit
        for x, car_w, car_h, body, glass in zip(
            lefts,
            widths,
            heights,
            _colors(rng, bodies, per_row, 20),
            _colors(rng, [(120, 170, 200)], per_row, 20),
            strict=True,
        ):
            draw.rectangle([x, top, x + car_w, top + car_h], fill=body)
            window = [x + 0.25 * car_w, top + 0.1 * car_h, x + 0.75 * car_w, top + 0.45 * car_h]
            draw.rectangle(window, fill=glass)
            for cx in (x + 0.22 * car_w, x + 0.78 * car_w):
                draw.ellipse([cx - r, top + car_h - r, cx + r, top + car_h + r], fill=(10, 10, 10))


def _labs(draw: ImageDraw.ImageDraw, h: int, w: int, unit: float, rng: np.random.Generator) -> None:
    """Bright walls, long benches, monitors with blue screens and instrument boxes."""
    draw.rectangle([0, 0, w, h], fill=_color(rng, [(232, 230, 220)], 10))
    row_h = rng.uniform(2.0, 2.8) * unit
    per_row = int(w / unit) + 1
    for y in np.arange(-rng.uniform(0, row_h), h, row_h):
        draw.rectangle([0, y, w, y + 0.12 * unit], fill=(250, 250, 255))  # ceiling light strip
        bench_y = y + 0.75 * row_h
        lefts = np.cumsum(rng.uniform(1.1, 1.8, per_row) * unit) - rng.uniform(0.5, 1.5) * unit
        sizes = rng.uniform(0.4, 1.3, (per_row, 2)) * unit
        screens = _colors(rng, [(70, 130, 220)], per_row, 25)
        boxes = _colors(rng, [(200, 200, 195), (160, 165, 170)], per_row)
        leds = _colors(rng, [(220, 30, 30), (30, 200, 60)], per_row, 10)
        monitors = rng.random(per_row) < 0.6
        items = zip(lefts, sizes, monitors, screens, boxes, leds, strict=True)
        for x, (bw, bh), monitor, screen, box, led in items:
            if monitor:
                draw.rectangle([x, bench_y - bh, x + bw, bench_y], fill=(30, 30, 35))
                display = [x + 0.08 * bw, bench_y - 0.92 * bh, x + 0.92 * bw, bench_y - 0.12 * bh]
                draw.rectangle(display, fill=screen)
            else:
                draw.rectangle([x, bench_y - 0.6 * bh, x + bw, bench_y], fill=box)
                draw.ellipse(
                    [
                        x + 0.1 * bw,
                        bench_y - 0.45 * bh,
                        x + 0.1 * bw + 0.12 * unit,
                        bench_y - 0.45 * bh + 0.12 * unit,
                    ],
                    fill=led,
                )
        draw.rectangle([0, bench_y, w, bench_y + 0.2 * unit], fill=_color(rng, [(40, 40, 40)], 8))


def _people(draw: ImageDraw.ImageDraw, h: int, w: int, unit: float, rng: np.random.Generator) -> None:
    """A crowd: skin-toned heads on colourful torsos over a light pavement."""
    draw.rectangle([0, 0, w, h], fill=_color(rng, [(185, 175, 160)], 12))
    skins = [(255, 220, 185), (225, 180, 140), (190, 140, 100), (140, 95, 60), (95, 65, 45)]
    clothes = [
        (200, 30, 60),
        (30, 90, 200),
        (240, 200, 40),
        (40, 160, 80),
        (250, 250, 250),
        (30, 30, 30),
        (150, 60, 170),
        (240, 120, 30),
    ]
    n = int(1.2 * h * w / unit**2) + 1
    xs, ys = rng.uniform(-unit, w, n), np.sort(rng.uniform(-unit, h, n))  # back rows first
    body_ws, heads = rng.uniform(0.7, 1.0, n) * unit, rng.uniform(0.35, 0.45, n) * unit
    for x, y, body_w, head, cloth, skin in zip(
        xs, ys, body_ws, heads, _colors(rng, clothes, n, 20), _colors(rng, skins, n, 10), strict=True
    ):
        shoulders = y + 0.8 * head
        draw.ellipse([x, shoulders, x + body_w, shoulders + 0.6 * unit], fill=cloth)
        draw.rectangle([x, shoulders + 0.3 * unit, x + body_w, shoulders + 1.6 * unit], fill=cloth)
        cx = x + body_w / 2
        draw.ellipse([cx - head / 2, y, cx + head / 2, y + head], fill=skin)


def _trees(draw: ImageDraw.ImageDraw, h: int, w: int, unit: float, rng: np.random.Generator) -> None:
    """Foliage: brown trunks behind many overlapping leaf clusters in shades of green."""
    draw.rectangle([0, 0, w, h], fill=_color(rng, [(60, 95, 45)], 15))
    n_trunks = int(w / unit) + 1
    for x, tw, bark in zip(
        rng.uniform(0, w, n_trunks),
        rng.uniform(0.2, 0.45, n_trunks) * unit,
        _colors(rng, [(95, 65, 40)], n_trunks),
        strict=True,
    ):
        draw.rectangle([x, 0, x + tw, h], fill=bark)
    greens = [(35, 110, 35), (70, 150, 50), (110, 170, 60), (25, 80, 30), (140, 180, 80)]
    n = int(6 * h * w / unit**2) + 1
    for x, y, r, leaf in zip(
        rng.uniform(0, w, n),
        rng.uniform(0, h, n),
        rng.uniform(0.15, 0.45, n) * unit,
        _colors(rng, greens, n, 15),
        strict=True,
    ):
        draw.ellipse([x - r, y - 0.7 * r, x + r, y + 0.7 * r], fill=leaf)


_PAINTERS: dict[str, Callable[..., None]] = {
    "Buildings": _buildings,
    "Cars": _cars,
    "Labs": _labs,
    "People": _people,
    "Trees": _trees,
}


def render_scene(
    class_name: str, height: int, width: int, rng: np.random.Generator, unit: float | None = None
) -> np.ndarray:
    """Draws one uint8 (height, width, 3) scene of ``class_name``; deterministic given the rng state.

    ``unit`` is the size of a scene element (a window, a car's height) in pixels; default min(h, w) / 6.
    """
    if class_name not in _PAINTERS:
        raise ValueError(f"unknown synthetic class {class_name!r}; choose from {list(CLASSES)}")
    unit = float(unit or min(height, width) / 6)
    canvas = Image.new("RGB", (width, height))
    _PAINTERS[class_name](ImageDraw.Draw(canvas), height, width, unit, rng)
    # Camera-like imperfections: exposure, a vertical illumination gradient and sensor noise.
    gradient = np.linspace(-1, 1, height, dtype=np.float32)
    gain = rng.uniform(0.85, 1.1) * (1 + rng.uniform(-0.15, 0.15) * gradient)
    pixels = np.asarray(canvas, dtype=np.float32) * gain[:, None, None]
    pixels += rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(rng.uniform(2, 7))
    return np.clip(pixels, 0, 255, out=pixels).astype(np.uint8)


def _partition(height: int, width: int, regions: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Splits the image into rectangles (top, left, bottom, right) by repeatedly cutting the largest one."""
    boxes = [(0, 0, height, width)]
    while len(boxes) < regions:
        boxes.sort(key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        top, left, bottom, right = boxes.pop()
        if bottom - top > right - left:
            cut = top + round((bottom - top) * rng.uniform(0.3, 0.7))
            boxes += [(top, left, cut, right), (cut, left, bottom, right)]
        else:
            cut = left + round((right - left) * rng.uniform(0.3, 0.7))
            boxes += [(top, left, bottom, cut), (top, cut, bottom, right)]
    return sorted(boxes)


def make_composite(
    height: int,
    width: int,
    seed: int,
    classes: Sequence[str] = CLASSES,
    regions: int = 4,
    unit: float | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """A scene assembled from rectangular regions of different classes, for testing patch-based inference.

    Args:
      height, width: image size.
      seed: determines the layout, the classes and the content.
      classes: class names to draw from (index in this sequence = mask value).
      regions: number of rectangles; the first min(regions, len(classes)) get distinct classes.
      unit: scene element size in pixels (see render_scene); default min(height, width) / 6.

    Returns:
      (image uint8 (H, W, 3), mask int32 (H, W) of class indices, exact area fraction per class name).
    """
    rng = np.random.default_rng(seed)
    unit = float(unit or min(height, width) / 6)
    image = np.zeros((height, width, 3), np.uint8)
    mask = np.zeros((height, width), np.int32)
    order = rng.permutation(len(classes))
    for i, (top, left, bottom, right) in enumerate(_partition(height, width, regions, rng)):
        label = int(order[i % len(classes)])
        image[top:bottom, left:right] = render_scene(classes[label], bottom - top, right - left, rng, unit)
        mask[top:bottom, left:right] = label
    shares = np.bincount(mask.ravel(), minlength=len(classes)) / mask.size
    return image, mask, {name: float(share) for name, share in zip(classes, shares, strict=True)}


def _encode(image: np.ndarray, pil_format: str, exif_rotated: bool) -> bytes:
    """Encodes the image; exif_rotated stores it sideways with an EXIF tag that turns it upright again."""
    buffer = io.BytesIO()
    if exif_rotated:
        exif = Image.Exif()
        exif[_EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
        Image.fromarray(np.rot90(image)).save(buffer, format=pil_format, quality=92, exif=exif)
    else:
        options = {"JPEG": {"quality": 92}, "WEBP": {"quality": 92}, "PNG": {"compress_level": 1}}
        Image.fromarray(image).save(buffer, format=pil_format, **options.get(pil_format, {}))
    return buffer.getvalue()


def _write_image(root: str, label: int, name: str, i: int, size: tuple[int, int], seed: int) -> str:
    """Renders and writes image ``i`` of class ``name``; returns its path relative to ``root``."""
    rng = np.random.default_rng([seed, label, i])
    scale = rng.uniform(0.8, 1.25)
    height, width = round(size[0] * scale), round(size[1] * scale)
    if rng.random() < 1 / 3:
        height, width = width, height
    image = render_scene(name, height, width, rng)
    suffix, pil_format = _FORMATS[i % len(_FORMATS)]
    rel_path = os.path.join(name, "more" if i % 10 == 9 else "", f"{name.lower()}_{i:04d}{suffix}")
    os.makedirs(os.path.join(root, os.path.dirname(rel_path)), exist_ok=True)
    with open(os.path.join(root, rel_path), "wb") as f:
        f.write(_encode(image, pil_format, exif_rotated=pil_format == "JPEG" and i % 4 == 3))
    return rel_path


def write_dataset(
    out_dir: str,
    per_class: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    classes: Sequence[str] = CLASSES,
) -> dict[str, list[str]]:
    """Writes ``out_dir/<class>/...`` with ``per_class`` images per class; returns class -> relative paths.

    Image sizes vary around ``size`` (height, width), a third are portrait, formats and extension cases are
    mixed, some JPEGs carry an EXIF rotation and every tenth image sits in a nested folder, so the
    preparation code sees what phone photo folders look like. Deterministic in (per_class, size, seed).
    The folder is written under a temporary name and renamed, so it is complete or absent; an existing
    synthetic dataset there is replaced, any other non-empty folder is left alone (ValueError).
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.exists(os.path.join(out_dir, MARKER)):
        raise ValueError(f"{out_dir}: not empty and not a synthetic dataset; refusing to overwrite it")
    tmp_dir = out_dir.rstrip("/") + ".partial"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    jobs = [(label, name, i) for label, name in enumerate(classes) for i in range(per_class)]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        written = pool.map(lambda job: _write_image(tmp_dir, *job, size=size, seed=seed), jobs)
        paths = list(console.progress(written, total=len(jobs), desc="Writing synthetic scenes", unit="img"))
    files = {name: paths[label * per_class : (label + 1) * per_class] for label, name in enumerate(classes)}
    with open(os.path.join(tmp_dir, MARKER), "w") as f:
        json.dump(synthetic_marker(per_class, size, seed, classes), f)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp_dir, out_dir)
    return files


def synthetic_marker(per_class: int, size: Sequence[int], seed: int, classes: Sequence[str]) -> dict:
    """What write_dataset records in ``MARKER``; equal markers mean identical datasets."""
    return {
        "version": _FORMAT_VERSION,
        "per_class": per_class,
        "size": list(size),
        "seed": seed,
        "classes": list(classes),
    }
