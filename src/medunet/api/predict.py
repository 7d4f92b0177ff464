"""predict(): a run's Predictor on a folder of images → masks at the originals' size and position."""
from __future__ import annotations

import csv
import logging
from contextlib import AbstractContextManager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import tifffile
from tqdm import tqdm

from medunet.io.outputs import staged_folder
from medunet.io.shards import Shard, shard_folder
from medunet.config import PredictConfig
from medunet.api.predict_volumes import predict_volumes
from medunet.data.pairs import check_one_kind, entry_stem, images_by_stem, is_volume_entry
from medunet.engine.ensemble import load_segmenter
from medunet.engine.predictor import Output, Segmenter
from medunet.errors import ConfigError, DataError
from medunet.io.images import mask_suffix, read_image, write_image, write_mask
from medunet.report.overlay import draw_outlines
from medunet.transforms.geometry import Geometry

logger = logging.getLogger(__name__)

CHUNK = 16  # images decoded at a time: bounded memory for large folders
Box = tuple[int, int, int, int]  # X, Y, W, H in pixels of the original image
# PredictConfig fields that choose how the network runs, not what it predicts: shards on different
# machines may differ in them and still be one job.
HOW = ("device", "batch", "precision", "engine")


def predict(run: Path, images_dir: Path, out: Path, *, overlay: bool = False, probabilities: bool = False,
            crop_box: Box | None = None, boxes: Path | None = None, overwrite: bool = False,
            progress: bool = True, dicom_seg: bool = False, rtstruct: bool = False, series_uid: str | None = None,
            class_names: list[str] | None = None, shard: Shard | tuple[int, int] | str | None = None,
            **options) -> list[Path]:
    """Write one mask per image of `images_dir` into `out` (same stem, same size); returns the mask paths.

    Masks use the training labels' encoding (0/255, 0/1 or class ids). Only a box of each image
    goes through the network when asked — `crop` (PredictConfig: centred N×N), `crop_box`
    (X, Y, W, H for every image) or `boxes` (a CSV of stem,x,y,w,h) — and the result is pasted
    back into a full-size background canvas. `run` is a run folder, a checkpoint or an exported
    `.onnx` file (which needs no run folder). `options` are PredictConfig fields (engine, tta, ...).
    `flags.csv` lists images whose prediction is empty or whose area is unusual for the training data.

    Volumes (`images_dir` a folder of volume files or DICOM series folders, or one of them): one
    label volume each, in the same format and geometry, predicted slice by slice in batches and
    post-processed in 3D (`predict_volumes`); `dicom_seg` and `rtstruct` add DICOM outputs for
    a DICOM series, `series_uid` chooses the series in a folder holding several, `class_names`
    name the foreground classes there (default: the run's).

    `shard` (I, N), a Shard or "I/N": predict only inputs I, I+N, I+2N, ... of the sorted list (I
    counts from 0), with N processes sharing `out`; the last one to finish writes the merged
    `flags.csv` (`medunet.io.shards`). Returns this shard's paths.
    """
    cfg = PredictConfig(**options)
    shard = _sharded(shard)
    predictor = load_segmenter(Path(run), cfg)
    paths = _entries(Path(images_dir))  # one mask per stem: clashes refused
    outputs = dict(overlay=overlay, probabilities=probabilities, crop_box=crop_box, boxes=boxes, dicom_seg=dicom_seg,
                   rtstruct=rtstruct, series_uid=series_uid, class_names=class_names)
    folder = _folder(Path(out), overwrite, shard, paths, _job(run, images_dir, paths, cfg, outputs))
    mine = shard.take(paths) if shard else paths
    if paths and is_volume_entry(paths[0]):
        if crop_box or boxes or cfg.crop:
            raise ConfigError("--crop, --crop-box and --boxes are for 2D images; volumes are predicted whole")
        flags: list[dict] = []
        with folder as stage:
            names = predict_volumes(predictor, mine, stage, probabilities=probabilities, overlay=overlay,
                                    dicom_seg=dicom_seg, rtstruct=rtstruct, series_uid=series_uid,
                                    names=class_names, progress=progress,
                                    on_case=lambda stem, classes: flags.extend(_flag(stem, classes, predictor)))
            _write_flags(stage / "flags.csv", flags)
        return [Path(out) / name for name in names]
    if dicom_seg or rtstruct or series_uid:
        raise ConfigError("--dicom-seg, --rtstruct and --series-uid are for DICOM series inputs, not 2D images")
    box_of = read_boxes(boxes) if boxes else {}
    written: list[Path] = []
    flags: list[dict] = []
    with folder as stage:
        bar = tqdm(total=len(mine), desc="predict", unit="img", disable=not progress, leave=False)
        for start in range(0, len(mine), CHUNK):
            chunk = mine[start:start + CHUNK]
            images = [read_image(p) for p in chunk]
            geometries = [_geometry(p, im.shape[:2], cfg, crop_box, box_of)
                          for p, im in zip(chunk, images)]
            for path, image, output in zip(chunk, images, predictor.outputs(images, geometries)):
                classes = predictor.to_mask(output.probs)
                name = f"{path.stem}{mask_suffix(path)}"
                write_mask(stage / name, predictor.encoding.decode(classes), like=path, palette=predictor.encoding.palette)
                written.append(Path(out) / name)
                _extras(stage, path, image, classes, output, overlay, probabilities)
                flags += _flag(path.stem, classes, predictor)
            bar.update(len(chunk))
        bar.close()
        _write_flags(stage / "flags.csv", flags)
    logger.info("%d masks written to %s", len(written), out)
    if flags:
        logger.warning("%d image(s) flagged (empty or unusual area): see %s%s", len(flags), Path(out) / "flags.csv",
                       " when every shard is done" if shard else "")
    return written


def _sharded(shard: Shard | tuple[int, int] | str | None) -> Shard | None:
    """A Shard of two or more, or None: one shard of one is an ordinary run."""
    if shard is None:
        return None
    if isinstance(shard, str):
        shard = Shard.parse(shard, "shard")
    elif not isinstance(shard, Shard):
        try:
            index, count = shard
        except (TypeError, ValueError):
            raise ConfigError(f"shard {shard!r}: expected (I, N), a Shard or \"I/N\"") from None
        shard = Shard(index, count)
    return shard if shard.count > 1 else None


def _job(run: Path, images_dir: Path, paths: list[Path], cfg: PredictConfig, outputs: dict) -> dict:
    """What makes shards one job: the model, the inputs, and the settings that change what is written."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in HOW}
    return {"run": Path(run).resolve(), "images": Path(images_dir).resolve(), "inputs": [p.name for p in paths],
            **outputs, **settings}


def _folder(out: Path, overwrite: bool, shard: Shard | None, paths: list[Path],
            job: dict) -> AbstractContextManager[Path]:
    """Where a prediction writes: a staged folder moved into place whole, or one shard's part of `out`."""
    if shard is None:
        return staged_folder(out, overwrite, "prediction folder")
    return shard_folder(out, shard, job, overwrite, order=[entry_stem(p) for p in paths])


def _entries(images: Path) -> list[Path]:
    """What to predict: `images` itself when it is one volume file or DICOM series folder, else its
    entries (2D images, or volume files and series folders: not both)."""
    if is_volume_entry(images) and (images.is_file() or not any(p.is_dir() for p in images.iterdir())):
        return [images]
    paths = list(images_by_stem(images).values())
    check_one_kind(images, paths)
    return paths


def _geometry(path: Path, hw: tuple[int, int], cfg: PredictConfig, crop_box: Box | None,
              box_of: dict[str, Box]) -> Geometry | None:
    """The box of `path` through the network, in original pixels; None: the model's default."""
    box = box_of.get(path.stem, crop_box)
    try:
        if box is not None:
            return Geometry.from_box(*hw, *box)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None
    if cfg.crop:
        return Geometry.centre_crop(*hw, cfg.crop)
    return None


def read_boxes(path: Path) -> dict[str, Box]:
    """A CSV with columns stem,x,y,w,h (a header row is allowed) → {stem: (x, y, w, h)}."""
    boxes: dict[str, Box] = {}
    try:
        rows = list(csv.reader(Path(path).open(newline="")))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the boxes file ({exc.strerror})") from None
    for n, row in enumerate(rows, start=1):
        if not row or (n == 1 and row[0].strip().lower() == "stem"):
            continue
        try:
            stem, x, y, w, h = (c.strip() for c in row)
            boxes[stem] = (int(x), int(y), int(w), int(h))
        except ValueError:
            raise ConfigError(f"{path}: line {n} is not stem,x,y,w,h with whole numbers: {','.join(row)}") from None
        if boxes[stem][2] <= 0 or boxes[stem][3] <= 0:
            raise ConfigError(f"{path}: line {n}: width and height must be positive")
    return boxes


def _extras(stage: Path, path: Path, image: np.ndarray, classes: np.ndarray, output: Output,
            overlay: bool, probabilities: bool) -> None:
    if overlay:
        write_image(stage / f"{path.stem}_overlay.png", draw_outlines(image, classes))
    if probabilities:
        _write_float(stage / f"{path.stem}_prob.tif", output.probs)
        if output.variance is not None:
            _write_float(stage / f"{path.stem}_var.tif", output.variance)


def _write_float(path: Path, maps: np.ndarray) -> None:
    """Float32 TIFF: `(H, W)` for one channel, `(C, H, W)` for class maps."""
    tifffile.imwrite(path, (maps[0] if maps.shape[0] == 1 else maps).astype(np.float32), compression="zlib")


def _flag(stem: str, classes: np.ndarray, predictor: Segmenter) -> list[dict]:
    """An empty prediction, or a foreground share outside what the training labels showed."""
    share = float(np.mean(classes > 0))
    stats = predictor.area_stats
    reasons = []
    if share == 0.0:
        reasons.append("empty prediction")
    elif stats and not (stats["min"] / 2 <= share <= max(stats["max"] * 2, stats["min"] / 2)):
        reasons.append(f"foreground share {share:.4f} outside the training range "
                       f"{stats['min']:.4f}–{stats['max']:.4f} (halved/doubled)")
    return [{"stem": stem, "foreground_share": f"{share:.6f}", "reason": "; ".join(reasons)}] if reasons else []


def _write_flags(path: Path, flags: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["stem", "foreground_share", "reason"])
        writer.writeheader()
        writer.writerows(flags)
