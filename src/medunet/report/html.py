"""One self-contained HTML page about a run: config, curves, metrics, a sortable table, error overlays.

Everything here is pure: data in, text or pixels out. Reading the run and evaluation folders is
`medunet.api.report`'s job. The page needs nothing but itself: images are base64 PNG data URIs, the
CSS and the few lines of JavaScript (column sorting) are inline.
"""
from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np
from PIL import Image

from medunet.report.overlay import display_rgb

THUMB_SIDE = 256  # gallery images are at most this many pixels on their longer side
OPEN_GROUP_ITEMS = 12  # config groups longer than this (augmentation) start folded

# Error overlay colours (RGB) and opacities: agreement is a faint tint, mistakes stand out.
TP_COLOUR, TP_ALPHA = (255, 220, 0), 0.35
FP_COLOUR, FP_ALPHA = (255, 40, 40), 0.65
FN_COLOUR, FN_ALPHA = (40, 110, 255), 0.65

# Summary metrics after the headline Dice: (summary.json key, label, note).
SUMMARY_METRICS = (("dice_global", "Dice (pooled over all pixels)", ""), ("iou_mean", "IoU (mean)", ""),
                   ("precision_mean", "precision (mean)", ""), ("recall_mean", "recall (mean)", ""),
                   ("accuracy_mean", "pixel accuracy (mean)", "high even for an empty prediction"))


@dataclass(frozen=True)
class GalleryItem:
    """One gallery entry: the overlay thumbnail as PNG bytes, or a note saying why there is none."""

    stem: str
    dice: float
    png: bytes | None = None
    note: str = ""


@dataclass(frozen=True)
class Evaluation:
    """An evaluation folder's content.

    Attributes:
        folder: the evaluation folder (shown on the page).
        summary: summary.json.
        columns: numeric column names of metrics.csv, in file order ("stem" excluded).
        rows: one dict per image: "stem" (str) and each of `columns` (float).
        gallery: one item per image, worst Dice first.
    """

    folder: Path
    summary: dict
    columns: list[str]
    rows: list[dict]
    gallery: list[GalleryItem] = field(default_factory=list)


@dataclass(frozen=True)
class Report:
    """Everything the page shows. `hint` is shown instead of the evaluation when there is none."""

    run: Path
    config: dict
    history: list[dict] = field(default_factory=list)
    curves_png: bytes | None = None
    evaluation: Evaluation | None = None
    hint: str = ""


# ------------------------------------------------------------------------------------------ pixels

def overlay_errors(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Image with agreement and mistakes tinted: true positive yellow, false positive red, false negative blue.

    Args:
        image: (H, W) or (H, W, 3), any dtype (stretched by `display_rgb`).
        truth, pred: (H, W) class indices, 0 = background.

    Returns:
        (H, W, 3) uint8. With several classes, a pixel given the wrong foreground class is a false
        positive (red): the prediction claims something that is not there.
    """
    if truth.shape != pred.shape or truth.shape != image.shape[:2]:
        raise ValueError(f"image {image.shape[:2]}, truth {truth.shape} and prediction {pred.shape} differ")
    rgb = display_rgb(image).astype(np.float32)
    tp = (truth > 0) & (pred == truth)
    fp = (pred > 0) & (pred != truth)
    fn = (truth > 0) & (pred == 0)
    for where, colour, alpha in ((tp, TP_COLOUR, TP_ALPHA), (fp, FP_COLOUR, FP_ALPHA), (fn, FN_COLOUR, FN_ALPHA)):
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.asarray(colour, np.float32)
    return np.round(rgb).astype(np.uint8)


def thumbnail(rgb: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """(H, W, 3) uint8 → at most `side` pixels on the longer side (area-averaged), never enlarged."""
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))


def png_bytes(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 → PNG file content."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _png_size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as im:
        return im.size


# -------------------------------------------------------------------------------------------- page

def render_report(report: Report) -> str:
    """The whole page as one HTML string; every piece of text from files is escaped."""
    name = escape(report.run.name or str(report.run))
    body = "\n".join([f"<h1>medunet report: {name}</h1>",
                      f'<p class="muted">run folder <code>{escape(str(report.run))}</code></p>',
                      _nav_html(report.evaluation is not None),
                      _evaluation_html(report.evaluation, report.hint),
                      _curves_html(report.history, report.curves_png),
                      _config_html(report.config)])
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>medunet report: {name}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n{body}\n<script>{SCRIPT}</script>\n</body>\n</html>\n")


def _nav_html(evaluated: bool) -> str:
    sections = ([("summary", "Summary"), ("per-image", "Per image"), ("gallery", "Overlays")] if evaluated
                else [("evaluation", "Evaluation")]) + [("training", "Training"), ("config", "Configuration")]
    return "<nav>" + " · ".join(f'<a href="#{key}">{text}</a>' for key, text in sections) + "</nav>"


def _evaluation_html(evaluation: Evaluation | None, hint: str) -> str:
    if evaluation is None:
        return f'<section id="evaluation"><h2>Evaluation</h2>\n<p class="notice">{escape(hint)}</p></section>'
    anchors = {item.stem: i for i, item in enumerate(evaluation.gallery)}
    return "\n".join([_summary_html(evaluation), _table_html(evaluation.columns, evaluation.rows, anchors),
                      _gallery_html(evaluation.gallery)])


def _summary_html(evaluation: Evaluation) -> str:
    s = evaluation.summary
    items = "".join(f'<dt>{escape(label)}</dt><dd>{_number(s[key])} <span class="muted">{escape(note)}</span></dd>'
                    for key, label, note in SUMMARY_METRICS if key in s)
    classes = "".join(f"<dt>class {escape(str(k))}</dt><dd>Dice {_number(c.get('dice_mean'))} "
                      f"(pooled {_number(c.get('dice_global'))})</dd>"
                      for k, c in s.get("per_class", {}).items())
    notes = []
    if s.get("empty_rule"):
        # n_both_empty: summary.json written before empty images were left out of the means
        count = s.get("n_empty_both", s.get("n_both_empty", 0))
        notes.append(f"Empty cases: {escape(str(s['empty_rule']))}"
                     f" ({escape(str(count))} such image(s) here).")
    if s.get("threshold") is not None:
        notes.append(f"Probability threshold {escape(str(s['threshold']))}.")
    where = "".join(f"<dt>{label}</dt><dd><code>{escape(str(s[key]))}</code></dd>"
                    for key, label in (("split_dir", "images"), ("run", "model of run")) if key in s)
    where += f"<dt>evaluation folder</dt><dd><code>{escape(str(evaluation.folder))}</code></dd>"
    return (f'<section id="summary"><h2>Summary</h2>\n'
            f'<p class="headline">Dice <strong>{_number(s.get("dice_mean"))}</strong>'
            f' <span class="muted">{_averaged_over(s, len(evaluation.rows))}</span></p>\n'
            f'<dl class="metrics">{items}{classes}</dl>\n'
            + "".join(f'<p class="muted">{n}</p>' for n in notes)
            + f'\n<dl class="where">{where}</dl></section>')


def _averaged_over(s: dict, n_rows: int) -> str:
    """"mean over 10 images", or with images empty in truth and prediction left out, how many."""
    n_images = s.get("n_images", n_rows)
    excluded = s.get("n_empty_both", 0)
    if not isinstance(n_images, int) or not isinstance(excluded, int) or not excluded:
        return f"mean over {escape(str(n_images))} images"
    if excluded >= n_images:
        return f"undefined: all {n_images} images are empty in truth and prediction"
    return (f"mean over {n_images - excluded} of {n_images} images ({excluded} empty in truth and "
            f"prediction, left out)")


def _gallery_html(gallery: list[GalleryItem]) -> str:
    legend = "".join(f'<span class="swatch" style="background: rgb{colour}"></span>{escape(text)} '
                     for colour, text in ((TP_COLOUR, "truth and prediction agree"),
                                          (FP_COLOUR, "false positive (predicted, not in truth)"),
                                          (FN_COLOUR, "false negative (in truth, missed)")))
    figures = "\n".join(_figure_html(i, item) for i, item in enumerate(gallery))
    return (f'<section id="gallery"><h2>Overlays, worst Dice first</h2>\n<p class="legend">{legend}</p>\n'
            f'<div class="gallery">\n{figures}\n</div></section>')


def _figure_html(index: int, item: GalleryItem) -> str:
    caption = f"<figcaption><b>{escape(item.stem)}</b> Dice {_number(item.dice)}</figcaption>"
    if item.png is None:
        picture = f'<div class="missing">{escape(item.note or "no image")}</div>'
    else:
        w, h = _png_size(item.png)
        scale = THUMB_SIDE / max(w, h)  # small images are drawn larger, with crisp pixels
        pixelated = ' class="pixelated"' if scale > 1 else ""
        picture = (f'<img src="{_data_uri(item.png)}" width="{round(w * scale)}" height="{round(h * scale)}"'
                   f'{pixelated} alt="overlay of {escape(item.stem)}">')
    return f'<figure class="entry" id="image-{index}" data-stem="{escape(item.stem)}">{picture}{caption}</figure>'


def _table_html(columns: list[str], rows: list[dict], anchors: dict[str, int]) -> str:
    """Stem and every numeric column, one row per image; each stem links to its gallery entry."""
    head = '<th data-type="text"><button type="button">stem</button></th>' + "".join(
        f'<th data-type="number" data-key="{escape(c)}"><button type="button">{escape(c)}</button></th>'
        for c in columns)
    body = "\n".join(
        f'<tr><td data-v="{escape(r["stem"])}">{_stem_link(r["stem"], anchors)}</td>'
        + "".join(f'<td data-v="{r[c]!r}">{_number(r[c])}</td>' for c in columns) + "</tr>"
        for r in rows)
    return (f'<section id="per-image"><h2>Per image</h2>\n'
            f'<p class="muted">Click a column header to sort by it; click again to reverse.</p>\n'
            f'<table class="sortable"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></section>')


def _stem_link(stem: str, anchors: dict[str, int]) -> str:
    if stem not in anchors:
        return escape(stem)
    return f'<a href="#image-{anchors[stem]}">{escape(stem)}</a>'


def _curves_html(history: list[dict], curves_png: bytes | None) -> str:
    parts = ['<section id="training"><h2>Training</h2>']
    if history:
        best = max(history, key=lambda row: _float(row.get("val_dice")))
        parts.append(f"<p>{len(history)} epoch(s); best validation Dice "
                     f"<strong>{_number(best.get('val_dice'))}</strong> at epoch {escape(str(best.get('epoch')))}.</p>")
    if curves_png is not None:
        parts.append(f'<img class="curves" src="{_data_uri(curves_png)}" alt="training loss and validation Dice">')
    elif not history:
        parts.append('<p class="notice">No training history (history.csv, curves.png) in this run folder.</p>')
    return "\n".join(parts) + "</section>"


def _config_html(config: dict) -> str:
    scalars = {k: v for k, v in config.items() if not isinstance(v, dict)}
    groups = {k: v for k, v in config.items() if isinstance(v, dict)}
    blocks = [_definitions(scalars)] + [
        f"<details{' open' if len(v) <= OPEN_GROUP_ITEMS else ''}><summary>{escape(str(k))}</summary>"
        f"{_definitions(v)}</details>" for k, v in groups.items()]
    raw = escape(json.dumps(config, indent=2))
    return ('<section id="config"><h2>Configuration</h2>\n' + "\n".join(blocks)
            + f"\n<details><summary>config.json as stored</summary><pre>{raw}</pre></details></section>")


def _definitions(d: dict) -> str:
    items = "".join(f"<dt>{escape(str(k))}</dt><dd>{_value(v)}</dd>" for k, v in d.items())
    return f'<dl class="config">{items}</dl>'


def _value(v: object) -> str:
    if isinstance(v, (dict, list, tuple)):
        return f"<code>{escape(json.dumps(v))}</code>"
    return escape("—" if v is None else str(v))


def _float(text: object) -> float:
    """A history.csv cell as a number; missing, unreadable or NaN cells rank below every number."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("-inf")
    return value if value == value else float("-inf")


def _number(v: object) -> str:
    """Floats to 4 decimals; undefined (None, NaN: an image or class empty in truth and prediction)
    as "—"; anything else (integers, text from files) as it is, escaped."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            pass
    if v is None or (isinstance(v, float) and v != v):
        return "—"
    return f"{v:.4f}" if isinstance(v, float) else escape(str(v))


CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 1.5rem auto; max-width: 72rem; padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2rem; }
code, pre { font: 13px/1.4 ui-monospace, monospace; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; }
.muted { color: #666; }
nav { margin: 0.3rem 0 0.5rem; }
.notice { background: #fff6d5; border-left: 4px solid #e0b400; padding: 0.5rem 0.8rem; }
.headline { font-size: 1.3rem; margin: 0.4rem 0; }
.headline strong { font-size: 2rem; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.15rem 1rem; margin: 0.5rem 0; }
dt { color: #555; }
dd { margin: 0; }
details { margin: 0.4rem 0; }
summary { cursor: pointer; font-weight: 600; }
details > dl { margin-left: 1.2rem; }
.legend { display: flex; flex-wrap: wrap; align-items: center; gap: 0.3rem; }
.swatch { display: inline-block; width: 1rem; height: 1rem; border: 1px solid #888; margin-left: 0.6rem; }
.gallery { display: flex; flex-wrap: wrap; gap: 0.8rem; }
.entry { margin: 0; width: 256px; }
.entry img { display: block; background: #000; }
img.pixelated { image-rendering: pixelated; }
.entry figcaption { font-size: 13px; margin-top: 0.2rem; }
.missing { width: 256px; height: 96px; background: #eee; color: #555; padding: 0.5rem;
           box-sizing: border-box; font-size: 12px; overflow: auto; }
img.curves { max-width: 100%; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 0.15rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th button { font: inherit; font-weight: 600; background: none; border: 0; padding: 0; cursor: pointer; }
th[aria-sort=ascending] button::after { content: " \\25B2"; }
th[aria-sort=descending] button::after { content: " \\25BC"; }
tbody tr:hover { background: #f3f7ff; }
"""

# Sort a table's rows by the clicked column: numbers numerically, text naturally ("2" before "10").
SCRIPT = """
function number(text) {  // NaN sorts first, like -Infinity, instead of scrambling the order
  var value = parseFloat(text);
  return isNaN(value) ? -Infinity : value;
}
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.querySelector("button").addEventListener("click", function () {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var numeric = th.dataset.type === "number";
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        if (numeric) { x = number(x); y = number(y); }
        var order = numeric ? (x < y ? -1 : x > y ? 1 : 0)
                            : x.localeCompare(y, undefined, {numeric: true, sensitivity: "base"});
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""
