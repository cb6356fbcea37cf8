"""Sliding-window geometry: the boxes that patch inference classifies, and the image scale it works at."""

from typing import NamedTuple

import numpy as np

from scenecls.data.images import resize

# An upscaled or image_scale-resized image keeps its aspect ratio, except that its longer side never grows
# beyond max(its original length, this many times the shorter side): a 1x4000 strip becomes 224x4000,
# not 224x896000.
MAX_ASPECT = 4


class Grid(NamedTuple):
    """Patch boxes (n, 4) as integer [x0, y0, x1, y1] (exclusive ends), in row-major order."""

    boxes: np.ndarray
    rows: int
    cols: int


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Offsets of windows of ``size`` every ``stride`` along ``length``, the last one flush with the end."""
    if not 0 < stride <= size <= length:
        raise ValueError(f"need 0 < stride <= size <= length, got {stride=}, {size=}, {length=}")
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def patch_grid(height: int, width: int, size: int, stride: int) -> Grid:
    """Square ``size`` windows every ``stride`` pixels, last row and column aligned to the border.

    Every pixel is covered (stride <= size) and every window lies inside the image, which must be at least
    one patch in each direction (see ``prepare_image``).
    """
    if height < size or width < size:
        raise ValueError(f"image {width}x{height} is smaller than one {size} px patch; upscale it first")
    ys, xs = window_starts(height, size, stride), window_starts(width, size, stride)
    y0, x0 = np.meshgrid(ys, xs, indexing="ij")
    boxes = np.stack([x0, y0, x0 + size, y0 + size], axis=-1).reshape(-1, 4)
    return Grid(boxes=boxes.astype(np.int64), rows=len(ys), cols=len(xs))


def scaled_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """(height, width) with the shorter side ``shorter``, aspect kept up to ``MAX_ASPECT`` (see above)."""
    scale = shorter / min(height, width)
    cap = max(max(height, width), MAX_ASPECT * shorter)
    if height <= width:
        return shorter, max(shorter, min(round(width * scale), cap))
    return max(shorter, min(round(height * scale), cap)), shorter


def prepare_image(image: np.ndarray, patch_size: int, image_scale: int = 0) -> tuple[np.ndarray, list[str]]:
    """The image at the scale patches are cut from, and notes saying how it was resized (if it was).

    ``image_scale`` > 0 resizes so the shorter side is that many pixels; an image (or a requested scale)
    smaller than one patch is upscaled so its shorter side is exactly one patch.
    """
    height, width = image.shape[:2]
    shorter = image_scale if image_scale > 0 else min(height, width)
    upscale = shorter < patch_size
    new_height, new_width = scaled_size(height, width, max(shorter, patch_size))
    if (new_height, new_width) == (height, width):
        return image, []
    if upscale:
        note = f"upscaled {width}x{height} -> {new_width}x{new_height} (smaller than a {patch_size} px patch)"
    else:
        note = f"resized {width}x{height} -> {new_width}x{new_height} (patch.image_scale={image_scale})"
    return resize(image, new_height, new_width), [note]
