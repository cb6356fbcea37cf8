"""``eval/report.html``: the evaluation as one self-contained page a person reads in any browser, offline.

Everything is inside the file: styles, the plots and the thumbnails as data URIs, no script, no network.
Sections: the run (config, classes, split sizes, checkpoint, calibration), headline metrics beside the
reference's reported accuracy, per-class table, most-confused pairs, plots (confusion matrix, ROC, training
curves), calibration (reliability diagram, ECE and NLL before and after), and the misclassified images
(worst first by loss) with their true and predicted class, top-3 probabilities and file.
"""

import base64
import html
import io
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from scenecls.data.images import ImageError, load_rgb, resize_shorter_side

GALLERY_LIMIT = 60  # misclassified images shown, worst first
THUMBNAIL_SIDE = 128
# The paper's reported test accuracies on its own 1,872 photos (SPEC), for context beside ours.
REFERENCE_ACCURACY = {
    "Version 4 (Inception head, the default config)": 0.96,
    "Version 2 (GAP baseline)": 0.95,
}
_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto;
       max-width: 1200px; color: #1d2430; line-height: 1.4; padding: 0 16px; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #d6dbe3; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { padding: 4px 10px; border-bottom: 1px solid #e4e8ee; }
th { text-align: left; background: #f3f5f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; } .card { background: #f3f5f8; border-radius: 8px;
         padding: 10px 16px; min-width: 140px; } .card b { display: block; font-size: 1.6em; }
.plots figure { display: inline-block; width: 48%; margin: 0 1% 12px 0; vertical-align: top; }
.plots img { max-width: 100%; border: 1px solid #e4e8ee; } #calibration img { max-width: 560px; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; } figure.miss { width: 180px; margin: 0;
           font-size: 0.8em; background: #fbf3f3; border-radius: 6px; padding: 6px; }
figure.miss img { max-width: 168px; max-height: 168px; display: block; margin: 0 auto 4px; }
.muted { color: #667085; } code { font-size: 0.9em; word-break: break-all; }
"""


class Miss(NamedTuple):
    """A misclassified image: where it is, what it is, what the model said."""

    file: str
    true: str
    top3: list[tuple[str, float]]
    loss: float
    thumbnail: str | None  # a data URI, None when the file could not be read


def misclassified(
    files: Sequence[str],
    labels: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    source_dir: str,
    limit: int = GALLERY_LIMIT,
) -> list[Miss]:
    """The wrong predictions, worst (highest loss) first, at most ``limit``, with thumbnails read from
    ``source_dir`` (a file that cannot be read keeps its row without a picture)."""
    labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
    wrong = np.flatnonzero(probs.argmax(axis=1) != labels)
    losses = -np.log(np.maximum(probs[wrong, labels[wrong]], 1e-12))
    misses = []
    for index, loss in sorted(zip(wrong, losses, strict=True), key=lambda pair: -pair[1])[:limit]:
        top3 = [(classes[c], float(probs[index, c])) for c in np.argsort(-probs[index])[:3]]
        path = os.path.join(source_dir, files[index])
        misses.append(Miss(files[index], classes[labels[index]], top3, float(loss), _thumbnail(path)))
    return misses


def _thumbnail(path: str) -> str | None:
    try:
        image = load_rgb(path)
    except (ImageError, OSError):
        return None
    if max(image.shape[:2]) > THUMBNAIL_SIDE:
        scale = THUMBNAIL_SIDE / max(image.shape[:2])
        image = resize_shorter_side(image, max(1, round(min(image.shape[:2]) * scale)))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def png_uri(path: str) -> str | None:
    """A PNG file as a data URI (None when it does not exist)."""
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


def confused_pairs(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> list[tuple[str, str, int]]:
    """(true, predicted, count) of every off-diagonal cell with errors, most frequent first."""
    counts = np.asarray(confusion)
    pairs = [
        (classes[t], classes[p], int(counts[t, p]))
        for t in range(len(classes))
        for p in range(len(classes))
        if t != p and counts[t, p] > 0
    ]
    return sorted(pairs, key=lambda pair: (-pair[2], pair[0], pair[1]))


def render(
    run: dict[str, Any], metrics: dict[str, Any], plots: dict[str, str | None], misses: list[Miss]
) -> str:
    """The report's HTML. ``run``: facts of the run (name -> text); ``plots``: title -> data URI."""
    esc = html.escape
    cards = [
        ("Accuracy", metrics["accuracy"]),
        ("Macro F1", metrics["macro_f1"]),
        ("Top-2 accuracy", metrics["top2_accuracy"]),
        ("AUC (one vs rest)", metrics["auc_ovr"]),
    ]
    if "ece" in metrics:
        cards += [("ECE (calibrated)", metrics["ece"]), ("ECE (uncalibrated)", metrics["ece_uncalibrated"])]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>scenecls evaluation: {esc(run.get('Workdir', ''))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<header id='header'><h1>scenecls evaluation report</h1>",
        f"<p class='muted'>{metrics['num_examples']} images evaluated, {len(metrics['classes'])} classes</p>",
        "<table id='run'>",
        *(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in run.items()),
        "</table></header>",
        "<section id='metrics'><h2>Headline metrics</h2><div class='cards'>",
        *(
            f"<div class='card'>{esc(name)}<b>{'n/a' if value is None else f'{value:.3f}'}</b></div>"
            for name, value in cards
        ),
        "</div><p class='muted'>For context, the reference paper reported test accuracy ",
        ", ".join(f"{value:.2f} for {esc(name)}" for name, value in REFERENCE_ACCURACY.items()),
        " on its own 1,872 campus photos with ImageNet weights; other data gives other numbers.</p>",
        "</section>",
        "<section id='per-class'><h2>Per class</h2><table><tr><th>class</th><th>precision</th>"
        "<th>recall</th><th>F1</th><th>support</th></tr>",
        *(
            f"<tr><td>{esc(name)}</td><td class='num'>{row['precision']:.3f}</td>"
            f"<td class='num'>{row['recall']:.3f}</td><td class='num'>{row['f1']:.3f}</td>"
            f"<td class='num'>{row['support']}</td></tr>"
            for name, row in metrics["per_class"].items()
        ),
        "</table></section>",
        "<section id='confused'><h2>Most confused pairs</h2>",
    ]
    pairs = confused_pairs(metrics["confusion_matrix"]["counts"], metrics["classes"])
    if pairs:
        parts += ["<table><tr><th>true class</th><th>predicted as</th><th>images</th></tr>"]
        parts += [
            f"<tr><td>{esc(t)}</td><td>{esc(p)}</td><td class='num'>{n}</td></tr>" for t, p, n in pairs[:15]
        ]
        parts += ["</table>"]
    else:
        parts += ["<p>No confusions: every image was classified correctly.</p>"]
    parts += ["</section><section id='plots' class='plots'><h2>Plots</h2>"]
    for title, uri in plots.items():
        if uri and title != "Reliability":
            parts.append(
                f"<figure><img alt='{esc(title)}' src='{uri}'><figcaption>{esc(title)}</figcaption></figure>"
            )
    parts += ["</section><section id='calibration' class='plots'><h2>Calibration</h2>"]
    if "ece" in metrics:
        parts.append(
            f"<p>Temperature {metrics['temperature']:.3f} (fitted on the validation split; 1 means none). "
            f"ECE {metrics['ece_uncalibrated']:.4f} before, {metrics['ece']:.4f} after; "
            f"NLL {metrics['nll_uncalibrated']:.4f} before, {metrics['nll']:.4f} after. "
            "Accuracy is the same either way: dividing the logits by one number keeps their order.</p>"
        )
    if plots.get("Reliability"):
        parts.append(f"<img alt='Reliability diagram' src='{plots['Reliability']}'>")
    parts += [
        f"</section><section id='gallery'><h2>Misclassified images ({len(misses)} shown, worst first)</h2>"
    ]
    parts += ["<div class='gallery'>"]
    for miss in misses:
        top = "<br>".join(f"{esc(name)} {p:.2f}" for name, p in miss.top3)
        picture = f"<img alt='{esc(miss.file)}' src='{miss.thumbnail}'>" if miss.thumbnail else "(no picture)"
        parts.append(
            f"<figure class='miss'>{picture}<figcaption>true <b>{esc(miss.true)}</b>, predicted "
            f"<b>{esc(miss.top3[0][0])}</b><br>{top}<br><code>{esc(miss.file)}</code></figcaption></figure>"
        )
    if not misses:
        parts.append("<p>None.</p>")
    parts += ["</div></section></body></html>"]
    return "\n".join(parts)
