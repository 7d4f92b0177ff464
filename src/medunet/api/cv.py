"""train_folds(): K-fold cross-validation inside one budget, out-of-fold predictions, and the
post-processing tuned on them.

A cross-validated run folder holds `config.json` (kind "cross-validation", the plan), `split.json`
(each case's fold), `folds/k/` (a complete run each: its checkpoints validate on fold k),
`oof/` (every case's out-of-fold probabilities, float16 `.npy`, and `metrics.csv`) and `cv.json`
(per-fold metrics, their mean ± sd, the tuned post-processing). `predict`/`evaluate` on it average
the folds (`medunet.engine.ensemble`).

Volumes cross-validate the same way, by case: a volume's out-of-fold probabilities are `(K, Z, Y, X)`
in its file's array order, scored and tuned in 3D: Dice, IoU, precision, recall and HD95/ASSD in mm
(from each case's voxel spacing) per case; 2D out-of-fold rows have no surface distances (`evaluate`
gives them, with the pixel size).
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from medunet import __version__
from medunet.api.train import (Dataset, check_run_folder, decode_dataset, train_prepared)
from medunet.api.tune import each_probability
from medunet.config import AugmentConfig, DataConfig, PredictConfig, TrainConfig, augment_preset, replace, to_dict
from medunet.data.cache import Cache, build_caches
from medunet.data.disk_cache import DiskCache, disk_caches
from medunet.data.fingerprint import Fingerprint
from medunet.data.pairs import Pair, split_folds, write_split
from medunet.data.volume_cache import VolumeCache, from_slices
from medunet.engine import postprocess
from medunet.engine.checkpoint import load_checkpoint, save_checkpoint
from medunet.engine.device import resolve_device
from medunet.engine.ensemble import CV_FILE
from medunet.engine.planner import make_plan
from medunet.engine.precision import Precision
from medunet.engine.predictor import Predictor
from medunet.engine.volume_predictor import each_case_probability
from medunet.errors import ConfigError
from medunet.io.outputs import clear, write_json
from medunet.metrics import SCORES, class_counts, defined_mean, image_metrics, summarise
from medunet.surface import summarise_surface, surface_metrics

logger = logging.getLogger(__name__)

KEYS = tuple(f"{name}_mean" for name in SCORES) + ("dice_global",)   # summarised per fold
SURFACE_KEYS = ("hd95_mean", "assd_mean")                            # and for volumes, in mm


def train_folds(data: Path, out: Path, *, folds: int, data_cfg: DataConfig | None = None,
                cfg: TrainConfig | None = None, augment: AugmentConfig | None = None,
                overwrite: bool = False, progress: bool = True) -> Path:
    """Cross-validate on `data` (train/ and validation/ together) in `folds` folds; returns `out`.

    Folds keep `data_cfg.group_by` groups (or cases) whole. With `cfg.time_budget`, the folds share
    it: each gets what is left divided by the folds still to train, so the last fold ends in it. The
    out-of-fold tuning and scoring come after it: a 10-minute hippocampus run (208 cases, 2 CPU
    cores) ended 22 s past its budget, and its cases' HD95/ASSD take 17 s more (as in `evaluate`).
    """
    cfg, data_cfg = cfg or TrainConfig(), data_cfg or DataConfig()
    if folds < 2:
        raise ConfigError(f"--folds {folds}: cross-validation needs at least 2 folds")
    out = Path(out)
    check_run_folder(out, overwrite)
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    decoded = decode_dataset(Path(data), data_cfg, cfg.seed, pooled=True, cache=cfg.cache, cache_dir=cfg.cache_dir)
    pairs = decoded.splits["train"]
    fold_of = split_folds(pairs, folds, cfg.seed, data_cfg.group_by)
    n = decoded.encoding.n_classes
    fp = _fold_fingerprint(decoded.fingerprint, len(pairs), folds)
    # Each fold is planned for its share of the budget: epochs cut to fit the whole budget would
    # leave a fold two or three long epochs, the last one cut off, its learning rate not decayed.
    share = None if cfg.time_budget is None else cfg.time_budget / folds
    plan = make_plan(fp, replace(data_cfg, channels=fp.channels), replace(cfg, time_budget=share), device,
                     1 if n == 2 else n)
    for line in plan.lines():
        logger.info("plan: %s", line)
    if share is not None:
        logger.info("plan: for each of the %d folds, %.0f s of the %.0f s budget", folds, share, cfg.time_budget)
    augment = augment or augment_preset(plan.train.augment)
    train_cache, val_cache = (build_caches(decoded.train, plan.data, decoded.encoding) if decoded.disk is None else
                              disk_caches(pairs, plan.data, decoded.encoding, decoded.disk, progress))
    clear(out)
    out.mkdir(parents=True)
    _write_cv_files(out, plan, cfg, data_cfg, decoded.encoding, pairs, fold_of, decoded.splits.get("test"))
    oof: dict[str, Path] = {}
    for k in range(folds):
        budget = None if cfg.time_budget is None else max(1.0, (cfg.time_budget - (time.perf_counter() - start))
                                                         / (folds - k))
        train_idx = [i for i, f in enumerate(fold_of) if f != k]
        val_idx = [i for i, f in enumerate(fold_of) if f == k]
        fold_plan = dataclasses.replace(plan, train=replace(plan.train, time_budget=budget))
        splits = {"train": [pairs[i] for i in train_idx], "validation": [pairs[i] for i in val_idx]}
        dataset = Dataset(train_cache.subset(train_idx), val_cache.subset(val_idx), splits, decoded.encoding,
                          fold_plan, data_cfg)
        logger.info("fold %d/%d: %d train, %d validation cases%s", k + 1, folds, len(train_idx), len(val_idx),
                    f", {budget:.0f} s" if budget else "")
        run = train_prepared(dataset, out / "folds" / str(k), cfg, augment, device, progress, tune_after=False)
        oof.update(_out_of_fold(run, dataset.val, device))
    summary = _tune_and_summarise(out, oof, val_cache, fold_of, decoded.encoding.n_classes, folds)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / CV_FILE, summary)
    logger.info("cross-validation: Dice %.4f ± %.4f over %d folds (out of fold, %s), %.0f s; run folder %s",
                summary["mean"]["dice_mean"], summary["sd"]["dice_mean"], folds,
                postprocess.PostprocessConfig.from_dict(summary["postprocess"]).describe(), summary["seconds"], out)
    return out


def _fold_fingerprint(fp: Fingerprint, n_cases: int, folds: int) -> Fingerprint:
    """The fingerprint as one fold sees it: a fold's share of the cases (and of the slices) validates."""
    fp = dataclasses.replace(fp, n_validation=n_cases // folds)
    if fp.volumes is None:
        return fp
    slices = fp.volumes.n_slices // folds
    return dataclasses.replace(fp, volumes=dataclasses.replace(fp.volumes, n_validation_slices=slices))


def _out_of_fold(run: Path, val: Cache | DiskCache | VolumeCache, device: torch.device) -> dict[str, Path]:
    """Probabilities of the fold's best.pt on its validation cases, float16 at full size, written to
    `oof/` beside the folds (in the precision the fold trained in), one chunk of cases at a time;
    {stem: file}."""
    import json

    chosen = json.loads((run / "config.json").read_text())["precision"]["chosen"]
    predictor = Predictor.from_checkpoint(run / "checkpoints" / "best.pt",
                                          PredictConfig(device=device.type, postprocess=False),
                                          precision=Precision.from_name(chosen))
    folder = run.parent.parent / "oof"
    folder.mkdir(exist_ok=True)
    files = {}
    for stem, probs in zip(val.stems, _probabilities(predictor, val)):
        files[stem] = folder / f"{stem}.npy"
        np.save(files[stem], probs.astype(np.float16))
    return files


def _probabilities(predictor: Predictor, val: Cache | DiskCache | VolumeCache) -> Iterator[np.ndarray]:
    """Each validation case's probabilities at full size, one at a time: `(K, H, W)`, or for a
    volume `(K, Z, Y, X)` in its file's array order (as `_truths` gives the labels)."""
    if isinstance(val, VolumeCache):
        for probs, grid in zip(each_case_probability(predictor, val), val.grids):
            yield from_slices(probs, grid.axis)
    else:
        yield from each_probability(predictor, val)


def _truths(cache: Cache | DiskCache | VolumeCache) -> Sequence[np.ndarray]:
    """The class-index labels at full size, a volume's in its file's array order."""
    if isinstance(cache, VolumeCache):
        return [from_slices(label, grid.axis) for label, grid in zip(cache.labels, cache.grids)]
    return cache.labels


def _tune_and_summarise(out: Path, oof: dict[str, Path], cache: Cache | DiskCache | VolumeCache,
                        fold_of: list[int], n_classes: int, folds: int) -> dict:
    """Tune the post-processing on all out-of-fold probabilities (read from their files as needed,
    never all at once), store it in every fold's best.pt, and summarise the folds with it:
    per-fold means, their mean and sd, and all cases pooled."""
    probs = postprocess.Mapped([oof[stem] for stem in cache.stems], lambda f: np.load(f, mmap_mode="r"))
    truths = _truths(cache)
    result = postprocess.tune(probs, truths, n_classes)
    for k in range(folds):
        path = out / "folds" / str(k) / "checkpoints" / "best.pt"
        ckpt = load_checkpoint(path)
        ckpt.postprocess = result.config.to_dict()
        save_checkpoint(path, ckpt)
    volumes = isinstance(cache, VolumeCache)   # 3D cases have a voxel spacing: distances in mm too
    keys = KEYS + SURFACE_KEYS if volumes else KEYS
    rows, counts = [], []
    for i, (stem, p, truth, k) in enumerate(zip(cache.stems, probs, truths, fold_of)):
        mask = postprocess.apply(p, result.config)
        rows.append({"stem": stem, "fold": k, **image_metrics(truth, mask, n_classes)})
        if volumes:
            rows[-1].update(surface_metrics(truth, mask, n_classes, cache.grids[i].spacing))
        counts.append(class_counts(truth, mask, n_classes))
    _write_rows(out / "oof" / "metrics.csv", rows)
    per_fold = []
    for k in range(folds):
        mine = [i for i, f in enumerate(fold_of) if f == k]
        entry = _summary([rows[i] for i in mine], [counts[i] for i in mine], n_classes, volumes)
        per_fold.append({"fold": k, "n_images": entry["n_images"], "n_empty_both": entry["n_empty_both"],
                         **{key: entry[key] for key in keys}})
    return {"kind": "cross-validation", "folds": folds, "version": __version__,
            "postprocess": result.config.to_dict(), "tune": result.to_dict(),
            "mean": {key: defined_mean(f[key] for f in per_fold) for key in keys},
            "sd": {key: _sd([f[key] for f in per_fold]) for key in keys},
            "per_fold": per_fold, "out_of_fold": _summary(rows, counts, n_classes, volumes)}


def _summary(rows: list[dict], counts: list, n_classes: int, surface: bool) -> dict:
    summary = summarise(rows, counts, n_classes)
    return {**summary, **summarise_surface(rows)} if surface else summary


def _sd(values: list[float]) -> float:
    """Standard deviation over the folds where the value is defined; NaN where none is."""
    a = np.asarray(values, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.std()) if a.size else float("nan")


def _write_cv_files(out: Path, plan, cfg: TrainConfig, requested: DataConfig, encoding, pairs: list[Pair],
                    fold_of: list[int], test: list[Pair] | None) -> None:
    write_json(out / "config.json", {
        "kind": "cross-validation", "version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "folds": max(fold_of) + 1, "data": to_dict(plan.data), "train": to_dict(plan.train),
        "label_encoding": encoding.to_dict(), "plan": plan.to_dict(),
        "requested": {"data": to_dict(requested), "train": to_dict(cfg)}})
    splits = {f"fold{k}": [p for p, f in zip(pairs, fold_of) if f == k] for k in range(max(fold_of) + 1)}
    if test:
        splits["test"] = test
    write_split(out / "split.json", splits, requested.group_by)


def _write_rows(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
