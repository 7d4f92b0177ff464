"""evaluate(): a run's Predictor on a labelled split → metrics.csv and summary.json."""
from __future__ import annotations

import csv
import logging
import math
from functools import partial
from pathlib import Path

from medunet.io.outputs import staged_folder, write_json
from medunet.config import PredictConfig
from medunet.data.cache import read_split
from medunet.api.evaluate_volumes import VOLUME_SUMMARY, score_volumes
from medunet.data.pairs import Pair, find_pairs, is_volume_dataset
from medunet.engine.ensemble import load_segmenter
from medunet.engine.predictor import Segmenter
from medunet.errors import ConfigError
from medunet.io.images import write_mask
from medunet.metrics import class_counts, image_metrics, summarise
from medunet.surface import parse_spacing, pixel_spacing, split_spacings, summarise_surface, surface_metrics

logger = logging.getLogger(__name__)

CHUNK = 16  # images decoded at a time: bounded memory for large folders


def evaluate(run: Path, split_dir: Path, out: Path | None = None, *, overwrite: bool = False,
             spacing: tuple[float, float] | None = None, **options) -> dict:
    """Per-image and summary metrics of the run's best checkpoint (or a checkpoint, or an exported
    `.onnx` file) on `split_dir` (image/ + label/).

    Returns the summary dict (undefined means are NaN); writes `metrics.csv` (NaN cells as `nan`),
    `summary.json` (NaN as null) and the predicted masks (`masks/<stem>.png`, in the labels'
    encoding) into `out` (default `RUN/eval-<split name>`). `spacing` is the (row, column) pixel
    size in mm for HD95 and ASSD of every image; without it, mm only when every image's file stores
    a physical pixel size (`medunet.surface.pixel_spacing`), else pixels for all. `options` are
    PredictConfig fields (device, engine, threshold, tta, max_size, ...).

    Volumes (a split of volume files or DICOM series folders): one row per case, 3D metrics on the
    whole volume (`evaluate_volumes`), distances in mm from the voxel spacing; `masks/` holds the
    predicted label volumes.
    """
    run, split_dir = Path(run), Path(split_dir)
    given = parse_spacing(spacing) if spacing is not None else None
    predictor = load_segmenter(run, PredictConfig(**options))
    pairs = find_pairs(split_dir)
    volumes = is_volume_dataset(pairs)
    if volumes and given:
        raise ConfigError("--spacing is for 2D images; a volume's voxel spacing comes from its header")
    out = Path(out) if out is not None else _run_folder(run) / f"eval-{split_dir.resolve().name}"
    n_classes = predictor.encoding.n_classes
    with staged_folder(out, overwrite, "evaluation folder") as stage:
        (stage / "masks").mkdir()
        score = score_volumes if volumes else partial(_score_images, given=given)
        rows, all_counts = score(predictor, pairs, stage / "masks")
        summary = summarise(rows, all_counts, n_classes)
        summary.update(summarise_surface(rows))
        # views: how many predictions each image's probabilities average (TTA keeps to trained mirrors)
        summary.update(threshold=predictor.threshold, views=predictor.views, spacing_mm=list(given) if given else None,
                       run=str(run.resolve()), split_dir=str(split_dir.resolve()))
        if volumes:
            summary.update(VOLUME_SUMMARY)
        _warn_if_undefined(summary)
        _write_rows(stage / "metrics.csv", rows)
        write_json(stage / "summary.json", summary)
    logger.info("evaluation written to %s", out)
    summary["out"] = str(out)
    return summary


def _score_images(predictor: Segmenter, pairs: list[Pair], masks: Path, given: tuple[float, float] | None
                  ) -> tuple[list[dict], list]:
    """Per-image metric rows and class counts of 2D pairs; each predicted mask written to `masks`."""
    spacings = dict(zip((p.stem for p in pairs), split_spacings([_file_spacing(p) for p in pairs], given)))
    n_classes = predictor.encoding.n_classes
    rows, all_counts = [], []
    for start in range(0, len(pairs), CHUNK):
        raw = read_split(pairs[start:start + CHUNK])
        truths = [predictor.encoding.encode(lab.values, lab.path) for lab in raw.labels]
        for pair, truth, probs in zip(raw.pairs, truths, predictor.probabilities(raw.images)):
            pred = predictor.to_mask(probs)
            rows.append({"stem": pair.stem, **image_metrics(truth, pred, n_classes),
                         **surface_metrics(truth, pred, n_classes, spacings[pair.stem])})
            all_counts.append(class_counts(truth, pred, n_classes))
            write_mask(masks / f"{pair.stem}.png", predictor.encoding.decode(pred), palette=predictor.encoding.palette)
    return rows, all_counts


def _run_folder(run: Path) -> Path:
    """Where evaluations go by default: the run folder, also for its checkpoint (RUN/checkpoints/best.pt);
    beside any other checkpoint or export."""
    if run.is_dir():
        return run
    return run.parent.parent if run.parent.name == "checkpoints" else run.parent


def _file_spacing(pair: Pair) -> tuple[float, float] | None:
    """The image's physical pixel size in mm, else the label's, else None."""
    return pixel_spacing(pair.image) or (pixel_spacing(pair.label) if pair.label is not None else None)


def _warn_if_undefined(summary: dict) -> None:
    if math.isnan(summary["dice_mean"]):
        logger.warning("Dice (mean) is undefined: all %d images are empty in truth and prediction "
                       "(written as null)", summary["n_images"])


def _write_rows(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})


def _cell(v: object) -> object:
    """Floats with 6 decimals; an undefined value (NaN) as `nan`, which float() reads back."""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6f}"
    return v
