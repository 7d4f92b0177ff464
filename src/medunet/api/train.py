"""train(): folders → decoded data → UNet → fit → a run folder."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medunet import __version__
from medunet.io.outputs import check_free, clear, write_json
from medunet.api.tune import tune
from medunet.config import (AugmentConfig, DataConfig, TrainConfig, augment_preset, from_dict,
                            model_preset, replace, to_dict)
from medunet.data.cache import Cache, RawSplit, area_stats, build_cache, read_split
from medunet.data.fingerprint import Fingerprint, fingerprint
from medunet.engine.planner import Plan, make_plan
from medunet.surface import pixel_spacing, split_spacings
from medunet.data.doctor import ENCODING_CHECKS, check_and_read
from medunet.data.encoding import LabelEncoding, detect_encoding
from medunet.data.pairs import dataset_splits, is_volume_dataset, looks_grouped, split_train_val, write_split
from medunet.data.volume_cache import volume_encoding
from medunet.data.volume_fingerprint import volume_fingerprint
from medunet.data.pairs import read_split as read_split_file
from medunet.engine import precision as precisions
from medunet.engine.device import resolve_device
from medunet.engine.checkpoint import load_checkpoint
from medunet.engine.precision import Precision
from medunet.engine.trainer import Job, TrainingInterrupted, fit
from medunet.io.outputs import remove_stale_temporaries
from medunet.models.unet import UNet, count_parameters
from medunet.errors import CheckpointError, ConfigError, DataError, RunInterrupted
from medunet.transforms.intensity import is_colour

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """The train and validation splits, network-ready, the plan they were prepared by, and what was
    learnt from the files."""

    train: Cache
    val: Cache
    splits: dict
    encoding: LabelEncoding
    plan: Plan                # resolved settings: plan.data (with the images' channels), plan.train
    requested: DataConfig     # what was asked for (None/"auto": left to the plan)

    @property
    def data_cfg(self) -> DataConfig:
        return self.plan.data


@dataclass(frozen=True)
class Decoded:
    """A dataset's files decoded and split, before any setting of the plan is applied."""

    train: RawSplit
    val: RawSplit
    splits: dict
    encoding: LabelEncoding
    fingerprint: Fingerprint


def decode_dataset(data: Path, data_cfg: DataConfig, seed: int) -> Decoded:
    """Pair, split, decode and fingerprint; every check that can fail on the user's data runs here,
    before any output.

    The doctor's quick checks come first, so a data trap is refused with its clear message; the
    test split is left to `evaluate`, which names its own problems.
    """
    splits = dataset_splits(Path(data).resolve())  # pairing first: its message lists every orphan by name
    report, decoded = check_and_read(Path(data), ("train", "validation"))  # each file decoded once
    problem = report.first_error(ignore=() if data_cfg.label_mode == "auto" else ENCODING_CHECKS,
                                 splits=("train", "validation"))
    if problem:
        raise DataError(problem)
    if "validation" in splits:
        train_pairs, val_pairs = splits["train"], splits["validation"]
    else:
        _warn_if_grouped(splits["train"], data_cfg)
        train_pairs, val_pairs = split_train_val(splits["train"], data_cfg.val_fraction, seed, data_cfg.group_by)
    train, val = read_split(train_pairs, decoded), read_split(val_pairs, decoded)
    del decoded
    volumes = is_volume_dataset(train_pairs)
    encoding = (volume_encoding if volumes else detect_encoding)(train.labels + val.labels, data_cfg.label_mode)
    record = {"train": train_pairs, "validation": val_pairs}
    if "test" in splits:
        record["test"] = splits["test"]
    both = RawSplit(train.pairs + val.pairs, train.images + val.images, train.labels + val.labels)
    counts = dict(n_validation=len(val.pairs), n_test=len(splits.get("test", [])), seed=seed)
    if volumes:
        return Decoded(train, val, record, encoding,
                       volume_fingerprint(both, encoding, slice_axis_setting=data_cfg.slice_axis, **counts))
    spacings = split_spacings([pixel_spacing(p.image) for p in both.pairs])
    spacing = None if spacings[0] is None else tuple(float(v) for v in np.median(spacings, axis=0))
    return Decoded(train, val, record, encoding, fingerprint(both, encoding, spacing=spacing, **counts))


def load_dataset(data: Path, data_cfg: DataConfig, cfg: TrainConfig, device: torch.device) -> Dataset:
    """Decode, plan the settings left open, and build the caches. The decoded files are let go as
    the caches are built, so only the float32 caches stay in memory during training."""
    decoded = decode_dataset(data, data_cfg, cfg.seed)
    return prepare_dataset(decoded, data_cfg, cfg, device)


def prepare_dataset(decoded: Decoded, data_cfg: DataConfig, cfg: TrainConfig, device: torch.device,
                    consume: bool = True) -> Dataset:
    """The plan for `decoded` with the settings of `data_cfg`/`cfg` kept, and the caches it asks for."""
    n = decoded.encoding.n_classes
    data_cfg = replace(data_cfg, channels=decoded.fingerprint.channels)
    plan = make_plan(decoded.fingerprint, data_cfg, cfg, device, 1 if n == 2 else n)
    for line in plan.lines():
        logger.info("plan: %s", line)
    return Dataset(build_cache(decoded.train, plan.data, decoded.encoding, consume=consume),
                   build_cache(decoded.val, plan.data, decoded.encoding, consume=consume, training=False),
                   decoded.splits, decoded.encoding, plan, data_cfg)


def _warn_if_grouped(pairs: list, data_cfg: DataConfig) -> None:
    prefixes = looks_grouped([p.stem for p in pairs])
    if prefixes and data_cfg.group_by is None:
        logger.warning("file names look like slices of %d sources (%s, ...); the validation split is drawn per file, "
                       "so one source can sit on both sides: pass --group-by REGEX (e.g. '^[^_]+') to keep "
                       "each source whole", len(prefixes), ", ".join(prefixes[:3]))


def train(data: Path, out: Path | None = None, *, data_cfg: DataConfig | None = None,
          cfg: TrainConfig | None = None, augment: AugmentConfig | None = None,
          overwrite: bool = False, resume: bool = False, progress: bool = True) -> Path:
    """Train a U-Net on `data` (train/, optional validation/ and test/); returns the run folder.

    `resume` continues the run in `out` after the last completed epoch of its `last.pt`; `cfg`'s
    epochs and time budget, when given, replace the stored ones (to train further).
    """
    cfg = cfg or TrainConfig()
    if resume:
        if out is None:
            raise ConfigError("--resume needs --out RUN (the run folder to continue)")
        return _resume(Path(out), cfg, progress)
    data_cfg = data_cfg or DataConfig()
    out = Path(out) if out is not None else _default_run(Path(data))
    _check_run_folder(out, overwrite)
    device = resolve_device(cfg.device)
    augment = augment or augment_preset(cfg.augment)
    dataset = load_dataset(Path(data), data_cfg, cfg, device)
    return train_prepared(dataset, out, cfg, augment, device, progress)


def train_prepared(dataset: Dataset, out: Path, requested: TrainConfig, augment: AugmentConfig,
                   device: torch.device, progress: bool = True) -> Path:
    """Train on a planned, cached dataset into the run folder `out` (checked free by the caller)."""
    data_cfg, cfg = dataset.plan.data, dataset.plan.train
    n = dataset.encoding.n_classes
    model_cfg = model_preset(cfg.preset, in_channels=data_cfg.input_channels, out_channels=1 if n == 2 else n)
    torch.manual_seed(cfg.seed)  # the initial weights belong to the seed too
    model = UNet(model_cfg)
    logger.info("data: %d train, %d validation images; labels: %s; %d input channel(s)",
                len(dataset.train), len(dataset.val), dataset.encoding.describe(), data_cfg.input_channels)
    precision, speeds = choose_precision(cfg, device, model, data_cfg, cfg.batch)
    logger.info("model: %s preset, %s parameters, on %s, batch %d, %s", cfg.preset,
                f"{count_parameters(model):,}", device, cfg.batch, precision.name)
    clear(out)
    _write_run_files(out, dataset, requested, model_cfg, augment,
                     {"requested": cfg.precision, "chosen": precision.name, "device": device.type,
                      "measured_images_per_s": speeds})
    job = Job(out, data_cfg, augment, dataset.encoding, device, cfg.batch, progress, area_stats(dataset.train),
              precision)
    return _fit(model, (dataset.train, dataset.val), cfg, job)


def choose_precision(cfg: TrainConfig, device: torch.device, model: UNet, data_cfg: DataConfig,
                     batch: int) -> tuple[Precision, dict[str, float]]:
    """`cfg.precision`, measured on this machine for "auto"; deterministic runs take plain fp32,
    so that two runs cannot differ by what a timing probe happened to pick."""
    if cfg.precision == "auto" and cfg.deterministic:
        return Precision("fp32", False), {}
    return precisions.choose(cfg.precision, device, model, data_cfg.input_channels, data_cfg.crop_size, batch)


def _fit(model: UNet, caches: tuple[Cache, Cache], cfg: TrainConfig, job: Job, resume: dict | None = None) -> Path:
    try:
        state = fit(model, *caches, cfg, job, resume=resume)
    except TrainingInterrupted as stop:
        if stop.epoch == 0:
            raise RunInterrupted(f"interrupted during the first epoch; no checkpoint was saved in {job.run_dir}; "
                                 f"start again with: medunet train DATA --out {job.run_dir} --overwrite") from None
        raise RunInterrupted(f"interrupted; {job.run_dir}/checkpoints/last.pt holds epoch {stop.epoch}; "
                             f"continue with: medunet train DATA --out {job.run_dir} --resume") from None
    best = f"{state.best_dice:.4f}" if state.best_dice >= 0 else "undefined (no validation image had foreground)"
    logger.info("done: %d epochs in %.0f s, best validation Dice %s; run folder %s",
                state.epoch, state.elapsed, best, job.run_dir)
    tune(job.run_dir, device=job.device.type, precision=job.precision, cache=caches[1])
    return job.run_dir


def _check_run_folder(out: Path, overwrite: bool) -> None:
    last = out / "checkpoints" / "last.pt"
    if last.is_file() and not overwrite:
        raise ConfigError(f"{out}: run folder exists with checkpoints/last.pt; pass --resume to continue it "
                          "or --overwrite to replace it")
    check_free(out, overwrite, "run folder")


def _resume(out: Path, overrides: TrainConfig, progress: bool) -> Path:
    """Rebuild everything from the run folder: config.json, split.json and checkpoints/last.pt."""
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    for tmp in remove_stale_temporaries(out / "checkpoints") + remove_stale_temporaries(out):
        logger.info("removed %s, half-written when the previous run was killed", tmp.name)
    try:
        stored = json.loads((out / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{out / 'config.json'}: cannot read the run's configuration ({exc})") from None
    cfg = from_dict(TrainConfig, stored["train"])
    if overrides.epochs is not None or overrides.time_budget is not None:
        cfg = replace(cfg, epochs=overrides.epochs, time_budget=overrides.time_budget)
    if overrides.device != "auto":
        cfg = replace(cfg, device=overrides.device)
    splits = read_split_file(out / "split.json")
    caches = tuple(build_cache(read_split(splits[name]), ckpt.data_config, ckpt.encoding, consume=True,
                               training=name == "train") for name in ("train", "validation"))
    device = resolve_device(cfg.device)
    model = ckpt.build_model().train()
    # Measured again: the run may continue on another machine, where bf16 is emulated, say.
    precision = choose_precision(cfg, device, model, ckpt.data_config, stored["batch"])[0]
    job = Job(out, ckpt.data_config, from_dict(AugmentConfig, stored["augment"]), ckpt.encoding, device,
              stored["batch"], progress, ckpt.area_stats, precision)
    logger.info("resuming %s after epoch %d on %s, %s", out, ckpt.train.get("epoch", 0), device, precision.name)
    return _fit(model, caches, cfg, job, resume=ckpt.train)


def _default_run(data: Path) -> Path:
    """runs/<dataset name>, or -2, -3 … so that no run is ever overwritten by default."""
    base = Path("runs") / (data.resolve().name or "run")
    candidate, k = base, 2
    while candidate.exists():
        candidate, k = base.with_name(f"{base.name}-{k}"), k + 1
    return candidate


def _write_run_files(out: Path, dataset: Dataset, requested: TrainConfig, model_cfg, augment: AugmentConfig,
                     precision: dict) -> None:
    """config.json holds the resolved settings ("data", "train") and where each came from: the
    plan with its reasons and what was asked for ("requested")."""
    plan = dataset.plan
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {
        "version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "preset": plan.train.preset,
        "batch": plan.train.batch, "precision": precision, "data": to_dict(plan.data), "model": to_dict(model_cfg),
        "train": to_dict(plan.train), "augment": to_dict(augment), "label_encoding": dataset.encoding.to_dict(),
        "plan": plan.to_dict(), "requested": {"data": to_dict(dataset.requested), "train": to_dict(requested)},
    })
    write_split(out / "split.json", dataset.splits, plan.data.group_by)
