"""report(): a run folder (and its evaluation) → one self-contained `report.html`."""
from __future__ import annotations

import csv
import json
import math
import logging
import shlex
from pathlib import Path

from medunet.data.encoding import LabelEncoding
from medunet.config import DataConfig
from medunet.data.pairs import Pair, find_pairs, is_volume_entry, natural_key, read_split
from medunet.data.volume_cache import slice_axis
from medunet.engine.checkpoint import find_checkpoint, load_checkpoint
from medunet.errors import CheckpointError, DataError
from medunet.io.images import read_image, read_label
from medunet.io.outputs import write_text
from medunet.io.volumes import output_name, read_label_volume, read_volume
from medunet.report.volume_slices import error_slices
from medunet.report.html import Evaluation, GalleryItem, Report, overlay_errors, png_bytes, render_report, thumbnail

logger = logging.getLogger(__name__)


def report(run: Path, eval_dir: Path | None = None, out: Path | None = None) -> Path:
    """Write an HTML report of `run` and return its path (default `RUN/report.html`).

    Args:
        run: a run folder (config.json, history.csv, curves.png, checkpoints/).
        eval_dir: a folder written by `evaluate`; default the newest `RUN/eval-*`. Without one the
            page shows the configuration and curves, and says how to evaluate.
        out: the HTML file to write (atomically).

    Raises:
        CheckpointError: `run` has no config.json.
        DataError: `eval_dir` was given but holds no summary.json or metrics.csv.
    """
    run = Path(run)
    eval_dir = Path(eval_dir) if eval_dir is not None else newest_evaluation(run)
    page = render_report(Report(
        run=run.resolve(), config=_read_config(run), history=_read_csv(run / "history.csv"),
        curves_png=(run / "curves.png").read_bytes() if (run / "curves.png").is_file() else None,
        evaluation=read_evaluation(eval_dir, run) if eval_dir is not None else None,
        hint=_no_evaluation_hint(run)))
    out = Path(out) if out is not None else run / "report.html"
    write_text(out, page)
    logger.info("report written to %s", out)
    return out


def newest_evaluation(run: Path) -> Path | None:
    """The `RUN/eval-*` folder whose summary.json is newest, or None."""
    found = [p for p in Path(run).glob("eval-*") if (p / "summary.json").is_file()]
    return max(found, key=lambda p: (p / "summary.json").stat().st_mtime, default=None)


def read_evaluation(eval_dir: Path, run: Path) -> Evaluation:
    """summary.json, metrics.csv and an overlay per image (worst Dice first) of an evaluation folder;
    for volumes, a few slices per case through truth and prediction, worst case first."""
    for name in ("summary.json", "metrics.csv"):
        if not (eval_dir / name).is_file():
            raise DataError(f"{eval_dir}: no {name} (not a folder written by `medunet evaluate`)")
    summary = json.loads((eval_dir / "summary.json").read_text(encoding="utf-8"))
    rows = [_parse_row(row) for row in _read_csv(eval_dir / "metrics.csv")]
    columns = [c for c in (rows[0] if rows else {}) if c != "stem" and all(_is_number(r[c]) for r in rows)]
    worst_first = sorted(rows, key=_worst_first)
    gallery = _gallery(worst_first, eval_dir, Path(summary.get("split_dir", "")), run)
    return Evaluation(folder=eval_dir.resolve(), summary=summary, columns=columns, rows=rows, gallery=gallery)


def _worst_first(row: dict) -> tuple:
    """Sort key: lowest Dice first, undefined Dice (empty in truth and prediction) last, then by name."""
    dice = row.get("dice", 0.0)
    undefined = not isinstance(dice, float) or math.isnan(dice)
    return undefined, 0.0 if undefined else dice, natural_key(row["stem"])


def _gallery(rows: list[dict], eval_dir: Path, split_dir: Path, run: Path) -> list[GalleryItem]:
    """One item per row; a missing or unreadable file gives an item with a note instead of a picture."""
    try:
        pairs = {p.stem: p for p in find_pairs(split_dir)}
        ckpt = load_checkpoint(find_checkpoint(run))
        encoding = ckpt.encoding
    except (DataError, CheckpointError) as exc:
        logger.warning("report without overlays: %s", exc)
        return [GalleryItem(r["stem"], r.get("dice", float("nan")), note=str(exc)) for r in rows]
    items = []
    for row in rows:
        stem, dice = row["stem"], row.get("dice", float("nan"))
        try:
            pair = pairs.get(stem)
            if pair is not None and is_volume_entry(pair.image):  # a few slices through the case
                png = volume_overlay_png(pair, eval_dir / "masks" / output_name(pair.image), encoding, ckpt.data_config)
            else:
                png = _overlay_png(pair, eval_dir / "masks" / f"{stem}.png", encoding)
            items.append(GalleryItem(stem, dice, png=png))
        except (DataError, ValueError) as exc:
            items.append(GalleryItem(stem, dice, note=str(exc)))
    return items


def _overlay_png(pair: Pair | None, mask_path: Path, encoding: LabelEncoding) -> bytes:
    if pair is None or pair.label is None:
        raise DataError(f"{mask_path.stem}: no image/label pair with this stem in the evaluated split")
    truth_file, pred_file = read_label(pair.label), read_label(mask_path)
    truth = encoding.encode(truth_file.values, truth_file.path)
    pred = encoding.encode(pred_file.values, pred_file.path)
    return png_bytes(thumbnail(overlay_errors(read_image(pair.image), truth, pred)))


def volume_overlay_png(pair: Pair, mask_path: Path, encoding: LabelEncoding, data_cfg: DataConfig) -> bytes:
    """Slices through a case's truth and prediction (at the quartiles of their foreground), tinted
    like the 2D overlays, side by side; the slice axis is the run's."""
    image = read_volume(pair.image)
    truth = encoding.encode(read_label_volume(pair.label).array, pair.label)  # type: ignore[arg-type]
    pred = encoding.encode(read_label_volume(mask_path).array, mask_path)
    return png_bytes(error_slices(image.array, truth, pred, slice_axis(image.geometry, data_cfg)))


def _no_evaluation_hint(run: Path) -> str:
    """What the page says when there is no evaluation: the command to make one."""
    text = f"No evaluation found in {run} (no eval-* folder with a summary.json). "
    try:
        test = read_split(run / "split.json").get("test", [])
    except DataError:
        test = []
    if test:
        split_dir = test[0].image.parent.parent
        return text + f"Evaluate on the test split with: medunet evaluate {shlex.quote(str(run))} " \
                      f"{shlex.quote(str(split_dir))}"
    return text + f"Evaluate with: medunet evaluate {shlex.quote(str(run))} SPLIT_DIR (a folder with image/ and label/)"


def _read_config(run: Path) -> dict:
    try:
        return json.loads((run / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{run}: no config.json (not a run folder written by `medunet train`)") from None
    except ValueError as exc:
        raise CheckpointError(f"{run / 'config.json'}: not valid JSON ({exc})") from None


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _parse_row(row: dict) -> dict:
    """metrics.csv strings → int or float where they are numbers; the stem stays text."""
    out = {}
    for key, text in row.items():
        if key == "stem" or text is None:
            out[key] = text
            continue
        try:
            out[key] = int(text)
        except ValueError:
            try:
                out[key] = float(text)
            except ValueError:
                out[key] = text
    return out


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float))
