"""The overlay picture of a patch-inference result: the photo under a class-coloured grid, legend, title."""

from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from scenecls.data.images import resize

MAX_DRAWN_SIDE = 1600  # larger photos are drawn downscaled: the grid, not the pixels, is the message
_DPI = 100
_MIN_CELL_FOR_LINES = 12  # drawn pixels per cell below which cell outlines would only add noise


def class_colors(num_classes: int) -> np.ndarray:
    """Distinct RGB colours in [0, 1], one per class, stable for a given class count."""
    cmap = colormaps["tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "hsv"]
    return np.array([cmap(i / num_classes if num_classes > 20 else i)[:3] for i in range(num_classes)])


def _nearest(centres: np.ndarray, length: int, scale: float) -> np.ndarray:
    """For each drawn pixel along an axis, the index of the nearest patch centre."""
    midpoints = (centres[1:] + centres[:-1]) / 2 * scale
    return np.searchsorted(midpoints, np.arange(length) + 0.5)


def overlay(image: np.ndarray, result: dict[str, Any], max_side: int = MAX_DRAWN_SIDE) -> np.ndarray:
    """The (downscaled) photo with each patch's class colour blended over the pixels nearest its centre.

    Opacity grows with the patch's confidence; thin light lines separate cells that are large enough.
    """
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    drawn = resize(image, max(1, round(height * scale)), max(1, round(width * scale)))
    drawn = drawn.astype(np.float32) / 255
    rows, cols = result["grid"]["rows"], result["grid"]["cols"]
    boxes = np.array([p["box"] for p in result["patches"]], np.float64).reshape(rows, cols, 4)
    index = {name: c for c, name in enumerate(result["classes"])}
    labels = np.array([index[p["class"]] for p in result["patches"]]).reshape(rows, cols)
    confidence = np.array([p["confidence"] for p in result["patches"]]).reshape(rows, cols)
    ys = _nearest((boxes[:, 0, 1] + boxes[:, 0, 3]) / 2, drawn.shape[0], scale)
    xs = _nearest((boxes[0, :, 0] + boxes[0, :, 2]) / 2, drawn.shape[1], scale)
    colors = class_colors(len(index))[labels[ys][:, xs]]
    alpha = (0.25 + 0.35 * confidence[ys][:, xs])[..., None]
    blended = drawn * (1 - alpha) + colors * alpha
    if min(drawn.shape[0] / rows, drawn.shape[1] / cols) >= _MIN_CELL_FOR_LINES:
        edges = np.zeros(drawn.shape[:2], bool)
        edges[1:] |= (ys[1:] != ys[:-1])[:, None]
        edges[:, 1:] |= (xs[1:] != xs[:-1])[None, :]
        blended[edges] = 0.6 * blended[edges] + 0.4
    return (np.clip(blended, 0, 1) * 255).astype(np.uint8)


def title(result: dict[str, Any]) -> str:
    """'Major: X (n%) · secondary: ...' plus the whole-image prediction, for the figure and the console."""
    major = result["major"]
    secondary = ", ".join(f"{s['class']} ({s['coverage']:.0%})" for s in result["secondary"]) or "none"
    whole = result["whole_image"]
    return (
        f"Major: {major} ({result['coverage'][major]:.0%}) · secondary: {secondary} · "
        f"whole image: {whole['class']} ({whole['confidence']:.2f})"
    )


def render(image: np.ndarray, result: dict[str, Any], path: str, max_side: int = MAX_DRAWN_SIDE) -> None:
    """Writes the overlay, a legend (class colour and coverage) and the title as a PNG to ``path``."""
    drawn = overlay(image, result, max_side)
    height, width = drawn.shape[:2]
    fig_width = min(16.0, max(8.0, width / _DPI))
    fig = Figure(figsize=(fig_width, fig_width * height / width + 1.0), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(drawn, interpolation="antialiased")
    ax.set_axis_off()
    patch = result["patch"]
    ax.set_title(
        f"{title(result)}\n{result['image'] or 'image'}: {result['grid']['rows']}x"
        f"{result['grid']['cols']} patches of {patch['size']} px, stride {patch['stride']}, "
        f"{patch['mode']} mode",
        fontsize=10,
    )
    colors = class_colors(len(result["classes"]))
    handles = [
        Patch(color=colors[c], label=f"{name} {result['coverage'][name]:.1%}")
        for c, name in enumerate(result["classes"])
    ]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=min(len(handles), int(fig_width / 1.6)),
        fontsize=9,
        frameon=False,
    )
    fig.savefig(path, format="png", dpi=_DPI)
    fig.clear()
