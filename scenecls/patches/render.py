"""Pictures of a patch-inference result: the overlay (the photo under a class-coloured grid, legend, title)
and the Grad-CAM figure (the photo beside one heatmap per explained class)."""

import math
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from scenecls.data.images import resize
from scenecls.patches.coverage import UNCERTAIN, UNCERTAIN_LABEL
from scenecls.patches.explain import resize_maps

MAX_DRAWN_SIDE = 1600  # larger photos are drawn downscaled: the grid, not the pixels, is the message
MAX_SHOWN_ASPECT = 4  # thinner overlays are shown letterboxed onto a canvas this elongated
_DPI = 100
_MIN_FIGURE_WIDTH = 8.0  # inches: room for the title and the legend
_MAX_IMAGE_INCHES = MAX_DRAWN_SIDE / _DPI  # the image area's longer side (see figure_size)
_TEXT_INCHES = 1.2  # title (up to three lines) and legend
_TITLE_CHARACTER_PX = 7  # about the width of a 10 pt character: title lines wrap to the figure's width
_PAD_GREY = 160
_MIN_CELL_FOR_LINES = 12  # drawn pixels per cell below which cell outlines would only add noise
# Uncertain patches: the photo in grey, hatched with dark diagonal lines (every pixel there is achromatic).
_UNCERTAIN_GREY = 0.5
_HATCH_PERIOD, _HATCH_WIDTH, _HATCH_GREY = 10, 2, 0.2  # drawn pixels
_GRADCAM_COLUMNS = 3  # panels per row of the Grad-CAM figure
_PANEL_MAX_SIDE = 800  # drawn pixels of one Grad-CAM panel's longer side
_PANEL_INCHES = 5.0  # one panel's longer side
_HEAT_ALPHA = 0.5  # the heatmap's share of a Grad-CAM panel's colour


def class_colors(num_classes: int) -> np.ndarray:
    """Distinct RGB colours in [0, 1], one per class, stable for a given class count."""
    cmap = colormaps["tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "hsv"]
    return np.array([cmap(i / num_classes if num_classes > 20 else i)[:3] for i in range(num_classes)])


def _nearest(centres: np.ndarray, length: int, scale: float) -> np.ndarray:
    """For each drawn pixel along an axis, the index of the nearest patch centre."""
    midpoints = (centres[1:] + centres[:-1]) / 2 * scale
    return np.searchsorted(midpoints, np.arange(length) + 0.5)


def _downscaled(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The image as float RGB in [0, 1], shrunk so its longer side is at most ``max_side``; the scale."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    drawn = resize(image, max(1, round(height * scale)), max(1, round(width * scale)))
    return drawn.astype(np.float32) / 255, scale


def _hatched_grey(drawn: np.ndarray, where: np.ndarray) -> np.ndarray:
    """The pixels of ``drawn`` (H, W, 3) at the boolean ``where`` (H, W): greyed and diagonally hatched."""
    rows, cols = np.nonzero(where)
    grey = (1 - _UNCERTAIN_GREY) * drawn[where].mean(axis=-1) + _UNCERTAIN_GREY * 0.5
    grey[(rows + cols) % _HATCH_PERIOD < _HATCH_WIDTH] = _HATCH_GREY
    return np.repeat(grey[:, None], 3, axis=-1)


def overlay(image: np.ndarray, result: dict[str, Any], max_side: int = MAX_DRAWN_SIDE) -> np.ndarray:
    """The (downscaled) photo with each patch's class colour blended over the pixels nearest its centre.

    Opacity grows with the patch's confidence; uncertain patches (abstentions) show the photo greyed and
    hatched; thin light lines separate cells that are large enough.
    """
    drawn, scale = _downscaled(image, max_side)
    rows, cols = result["grid"]["rows"], result["grid"]["cols"]
    boxes = np.array([p["box"] for p in result["patches"]], np.float64).reshape(rows, cols, 4)
    index = {name: c for c, name in enumerate(result["classes"])}
    labels = np.array([index.get(p["class"], UNCERTAIN_LABEL) for p in result["patches"]]).reshape(rows, cols)
    confidence = np.array([p["confidence"] for p in result["patches"]]).reshape(rows, cols)
    ys = _nearest((boxes[:, 0, 1] + boxes[:, 0, 3]) / 2, drawn.shape[0], scale)
    xs = _nearest((boxes[0, :, 0] + boxes[0, :, 2]) / 2, drawn.shape[1], scale)
    cell_labels = labels[ys][:, xs]
    colors = class_colors(len(index))[np.maximum(cell_labels, 0)]
    alpha = (0.25 + 0.35 * confidence[ys][:, xs])[..., None]
    blended = drawn * (1 - alpha) + colors * alpha
    uncertain = cell_labels == UNCERTAIN_LABEL
    if uncertain.any():
        blended[uncertain] = _hatched_grey(drawn, uncertain)
    if min(drawn.shape[0] / rows, drawn.shape[1] / cols) >= _MIN_CELL_FOR_LINES:
        edges = np.zeros(drawn.shape[:2], bool)
        edges[1:] |= (ys[1:] != ys[:-1])[:, None]
        edges[:, 1:] |= (xs[1:] != xs[:-1])[None, :]
        blended[edges] = 0.6 * blended[edges] + 0.4
    return (np.clip(blended, 0, 1) * 255).astype(np.uint8)


def letterbox(drawn: np.ndarray, max_aspect: float = MAX_SHOWN_ASPECT) -> np.ndarray:
    """``drawn`` centred on a grey canvas at most ``max_aspect``:1; returned as is if it already is.

    A 1x4000 strip would otherwise ask for a figure hundreds of times taller than wide.
    """
    height, width = drawn.shape[:2]
    canvas_height = max(height, math.ceil(width / max_aspect))
    canvas_width = max(width, math.ceil(height / max_aspect))
    if (canvas_height, canvas_width) == (height, width):
        return drawn
    canvas = np.full((canvas_height, canvas_width, 3), _PAD_GREY, np.uint8)
    top, left = (canvas_height - height) // 2, (canvas_width - width) // 2
    canvas[top : top + height, left : left + width] = drawn
    return canvas


def figure_size(height: int, width: int) -> tuple[float, float]:
    """(width, height) in inches of the figure showing a ``height`` x ``width`` px picture, text included.

    The figure is as wide as the picture's pixels (8 to 16 in), the picture's area as tall as that width
    gives it, at most 16 in, and the text adds a fixed band: no figure exceeds 16 x 17.2 in (1600 x 1720 px
    at 100 dpi), whatever the picture's shape.
    """
    image_width = min(_MAX_IMAGE_INCHES, max(_MIN_FIGURE_WIDTH, width / _DPI))
    image_height = min(_MAX_IMAGE_INCHES, image_width * height / width)
    return image_width, image_height + _TEXT_INCHES


def title(result: dict[str, Any]) -> str:
    """'Major: X (n%) · secondary: ... · uncertain: n%' plus the whole-image prediction, for the figure and
    the console; the uncertain share only when some patch abstained."""
    major = result["major"]
    major_text = f"{major} ({result['coverage'][major]:.0%})" if major else f"none (every patch {UNCERTAIN})"
    secondary = ", ".join(f"{s['class']} ({s['coverage']:.0%})" for s in result["secondary"]) or "none"
    uncertain = result["uncertain"]["share"]
    uncertain_text = f" · {UNCERTAIN}: {uncertain:.0%}" if uncertain else ""
    whole = result["whole_image"]
    whole_note = f", {UNCERTAIN}" if whole["uncertain"] else ""
    return (
        f"Major: {major_text} · secondary: {secondary}{uncertain_text} · "
        f"whole image: {whole['class']} ({whole['confidence']:.2f}{whole_note})"
    )


def figure_title(result: dict[str, Any], letterboxed: bool) -> str:
    """The figure's title: ``title``, the grid and patch settings, and a note if the image is letterboxed."""
    patch = result["patch"]
    lines = [
        title(result),
        f"{result['image'] or 'image'}: {result['grid']['rows']}x{result['grid']['cols']} patches of "
        f"{patch['size']} px, stride {patch['stride']}, {patch['mode']} mode",
    ]
    if letterboxed:
        lines.append(
            f"shown letterboxed: {result['width']}x{result['height']} image padded to {MAX_SHOWN_ASPECT}:1"
        )
    return "\n".join(lines)


def _wrapped(text: str, fig_width: float) -> str:
    """``text`` with each line wrapped to the width of a ``fig_width`` inch figure."""
    characters = int(fig_width * _DPI / _TITLE_CHARACTER_PX)
    return "\n".join(textwrap.fill(line, characters) for line in text.splitlines())


def render(image: np.ndarray, result: dict[str, Any], path: str, max_side: int = MAX_DRAWN_SIDE) -> None:
    """Writes the overlay, a legend (class colour and coverage) and the title as a PNG to ``path``.

    The PNG's size is bounded whatever the image's shape (see ``letterbox`` and ``figure_size``).
    """
    drawn = overlay(image, result, max_side)
    shown = letterbox(drawn)
    fig_width, fig_height = figure_size(*shown.shape[:2])
    fig = Figure(figsize=(fig_width, fig_height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(shown, interpolation="antialiased")
    ax.set_axis_off()
    ax.set_title(_wrapped(figure_title(result, letterboxed=shown is not drawn), fig_width), fontsize=10)
    colors = class_colors(len(result["classes"]))
    handles = [
        Patch(color=colors[c], label=f"{name} {result['coverage'][name]:.1%}")
        for c, name in enumerate(result["classes"])
    ]
    if result["uncertain"]["count"]:
        grey = (_UNCERTAIN_GREY,) * 3
        label = f"{UNCERTAIN} {result['uncertain']['share']:.1%}"
        handles.append(Patch(facecolor=grey, edgecolor=(_HATCH_GREY,) * 3, hatch="///", label=label))
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=min(len(handles), int(fig_width / 1.6)),
        fontsize=9,
        frameon=False,
    )
    fig.savefig(path, format="png", dpi=_DPI)
    fig.clear()


def heatmap_overlay(image: np.ndarray, heatmap: np.ndarray, max_side: int = _PANEL_MAX_SIDE) -> np.ndarray:
    """The (downscaled) photo with a heatmap (H, W) in [0, 1] blended over it in the jet colour map."""
    drawn, _ = _downscaled(image, max_side)
    heat = resize_maps(heatmap[None], *drawn.shape[:2])[0]
    colors = colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    return (np.clip((1 - _HEAT_ALPHA) * drawn + _HEAT_ALPHA * colors, 0, 1) * 255).astype(np.uint8)


def _panel_title(result: dict[str, Any], name: str) -> str:
    """'Cars: major, 48% coverage' for the panel of class ``name``."""
    role = "major" if name == result["major"] else "secondary"
    return f"{name}: {role}, {result['coverage'][name]:.0%} coverage"


def render_gradcam(
    image: np.ndarray, result: dict[str, Any], classes: Sequence[str], heatmaps: np.ndarray, path: str
) -> None:
    """Writes the Grad-CAM figure as a PNG to ``path``: the photo, then one panel per class of ``classes``
    (the result's major and secondary ones) with its heatmap (k, H, W) over the photo, titled with its
    coverage. Panels are letterboxed like the overlay, at most ``_GRADCAM_COLUMNS`` per row.
    """
    photo, _ = _downscaled(image, _PANEL_MAX_SIDE)
    caption = "photo" if len(classes) else f"photo (no class to explain: every patch is {UNCERTAIN})"
    panels = [(letterbox((photo * 255).astype(np.uint8)), caption)]
    panels += [
        (letterbox(heatmap_overlay(image, heatmap)), _panel_title(result, name))
        for name, heatmap in zip(classes, heatmaps, strict=True)
    ]
    columns = min(len(panels), _GRADCAM_COLUMNS)
    rows = math.ceil(len(panels) / columns)
    height, width = panels[0][0].shape[:2]
    panel_width = _PANEL_INCHES * min(1.0, width / height)
    panel_height = _PANEL_INCHES * min(1.0, height / width)
    fig_width = max(_MIN_FIGURE_WIDTH, columns * panel_width)
    fig = Figure(
        figsize=(fig_width, rows * (panel_height + 0.3) + _TEXT_INCHES), dpi=_DPI, layout="constrained"
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, (picture, panel_caption) in zip(axes, panels, strict=False):
        ax.imshow(picture, interpolation="antialiased")
        ax.set_title(panel_caption, fontsize=10)
    heading = f"{title(result)}\nGrad-CAM (red: most evidence for the class)"
    fig.suptitle(_wrapped(heading, fig_width), fontsize=10)
    fig.savefig(path, format="png", dpi=_DPI)
    fig.clear()
