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
from medunet.config import (AugmentConfig, DataConfig, ModelConfig, TrainConfig, augment_preset, from_dict,
                            mirrored_views, model_preset, replace, to_dict)
from medunet.data.cache import Cache, RawSplit, area_stats, build_cache, index_split, read_split
from medunet.data.disk_cache import DiskCache, cache_root, choose_cache, open_or_build
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
from medunet.engine import distributed
from medunet.engine.device import resolve_device
from medunet.engine.distributed import World
from medunet.engine.checkpoint import Checkpoint, load_checkpoint
from medunet.engine.metadata import preset_name
from medunet.engine.precision import Precision
from medunet.engine.trainer import Job, TrainingInterrupted, fit
from medunet.io.outputs import remove_stale_temporaries
from medunet.models.unet import UNet, count_parameters
from medunet.errors import CheckpointError, ConfigError, DataError, RunInterrupted

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """The train and validation splits, network-ready, the plan they were prepared by, and what was
    learnt from the files."""

    train: Cache | DiskCache
    val: Cache | DiskCache
    splits: dict
    encoding: LabelEncoding
    plan: Plan                # resolved settings: plan.data (with the images' channels), plan.train
    requested: DataConfig     # what was asked for (None/"auto": left to the plan)

    @property
    def data_cfg(self) -> DataConfig:
        return self.plan.data


@dataclass(frozen=True)
class Decoded:
    """A dataset's files decoded and split, before any setting of the plan is applied. With `disk`
    (the folder of disk caches) the splits are indexed, holding no pixels (`RawSplit`)."""

    train: RawSplit
    val: RawSplit
    splits: dict
    encoding: LabelEncoding
    fingerprint: Fingerprint
    disk: Path | None = None


def decode_dataset(data: Path, data_cfg: DataConfig, seed: int, pooled: bool = False, cache: str = "ram",
                   cache_dir: str | None = None) -> Decoded:
    """Pair, split, decode and fingerprint; every check that can fail on the user's data runs here,
    before any output.

    The doctor's quick checks come first, so a data trap is refused with its clear message; the
    test split is left to `evaluate`, which names its own problems. `pooled` (cross-validation)
    keeps train/ and validation/ together as "train", with no validation split of their own.
    `cache` ("ram", "disk" or "auto", `TrainConfig.cache`): for "disk" each file is decoded, checked
    and let go, and only what the fingerprint needs is kept (`Decoded.disk`).
    """
    splits = dataset_splits(Path(data).resolve())  # pairing first: its message lists every orphan by name
    files = splits["train"] + splits.get("validation", [])
    disk = choose_cache(cache, files, is_volume_dataset(files), Path(data)) == "disk"
    report, decoded = check_and_read(Path(data), ("train", "validation"), pixels=not disk)  # each file decoded once
    problem = report.first_error(ignore=() if data_cfg.label_mode == "auto" else ENCODING_CHECKS,
                                 splits=("train", "validation"))
    if problem:
        raise DataError(problem)
    train_pairs, val_pairs = _train_val_pairs(splits, data_cfg, seed, pooled)
    split = index_split if disk else read_split
    train, val = split(train_pairs, decoded), split(val_pairs, decoded)
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
    spacings = split_spacings([_spacing_or_none(p.image) for p in both.pairs])
    spacing = None if spacings[0] is None else tuple(float(v) for v in np.median(spacings, axis=0))
    return Decoded(train, val, record, encoding, fingerprint(both, encoding, spacing=spacing, **counts),
                   cache_root(cache_dir) if disk else None)


def _train_val_pairs(splits: dict, data_cfg: DataConfig, seed: int, pooled: bool) -> tuple[list, list]:
    if pooled:
        return splits["train"] + splits.get("validation", []), []
    if "validation" in splits:
        return splits["train"], splits["validation"]
    _warn_if_grouped(splits["train"], data_cfg)
    return split_train_val(splits["train"], data_cfg.val_fraction, seed, data_cfg.group_by)


def load_dataset(data: Path, data_cfg: DataConfig, cfg: TrainConfig, device: torch.device,
                 model: ModelConfig | None = None, world: World = distributed.SINGLE) -> Dataset:
    """Decode, plan the settings left open, and build the caches. The decoded files are let go as
    the caches are built, so only the float32 caches stay in memory during training. `model` is
    the network when it is given (`--init`), not planned."""
    decoded = decode_dataset(data, data_cfg, cfg.seed, cache=cfg.cache, cache_dir=cfg.cache_dir)
    return prepare_dataset(decoded, data_cfg, cfg, device, model=model, world=world)


def prepare_dataset(decoded: Decoded, data_cfg: DataConfig, cfg: TrainConfig, device: torch.device,
                    consume: bool = True, model: ModelConfig | None = None,
                    world: World = distributed.SINGLE) -> Dataset:
    """The plan for `decoded` with the settings of `data_cfg`/`cfg` kept, and the caches it asks
    for. Under torchrun the plan is rank 0's (it times the device), the same on every rank."""
    n = decoded.encoding.n_classes
    data_cfg = replace(data_cfg, channels=decoded.fingerprint.channels)
    plan = world.on_main(lambda: make_plan(decoded.fingerprint, data_cfg, cfg, device, 1 if n == 2 else n, model))
    for line in plan.lines():
        logger.info("plan: %s", line)
    if decoded.disk is not None:
        caches = tuple(open_or_build(split.pairs, plan.data, decoded.encoding, decoded.disk, training=training)
                       for split, training in ((decoded.train, True), (decoded.val, False)))
    else:
        caches = (build_cache(decoded.train, plan.data, decoded.encoding, consume=consume),
                  build_cache(decoded.val, plan.data, decoded.encoding, consume=consume, training=False))
    return Dataset(*caches, decoded.splits, decoded.encoding, plan, data_cfg)


def _warn_if_grouped(pairs: list, data_cfg: DataConfig) -> None:
    prefixes = looks_grouped([p.stem for p in pairs])
    if prefixes and data_cfg.group_by is None:
        logger.warning("file names look like slices of %d sources (%s, ...); the validation split is drawn per file, "
                       "so one source can sit on both sides: pass --group-by REGEX (e.g. '^[^_]+') to keep "
                       "each source whole", len(prefixes), ", ".join(prefixes[:3]))


def train(data: Path, out: Path | None = None, *, data_cfg: DataConfig | None = None,
          cfg: TrainConfig | None = None, augment: AugmentConfig | None = None,
          overwrite: bool = False, resume: bool = False, progress: bool = True, init: Path | None = None,
          folds: int | None = None) -> Path:
    """Train a U-Net on `data` (train/, optional validation/ and test/); returns the run folder.

    With `folds` K, cross-validate instead (`medunet.api.cv.train_folds`): K runs inside the one
    budget, out-of-fold predictions, post-processing tuned on them.

    `resume` continues the run in `out` after the last completed epoch of its `last.pt`; `cfg`'s
    epochs and time budget, when given, replace the stored ones (to train further). `init` (a run
    folder or checkpoint, e.g. an imported Keras model) gives the network and its first weights,
    and, when `data_cfg` is None, its normalisation (`init_preprocessing`).
    """
    cfg = cfg or TrainConfig()
    if folds is not None:
        if resume or init is not None:
            raise ConfigError("--folds trains a new cross-validated run; it takes neither --resume nor --init")
        if distributed.from_env().distributed:
            raise ConfigError("--folds runs in one process; under torchrun train each fold as its own job")
        from medunet.api.cv import train_folds

        out = Path(out) if out is not None else _default_run(Path(data))
        return train_folds(data, out, folds=folds, data_cfg=data_cfg, cfg=cfg, augment=augment,
                           overwrite=overwrite, progress=progress)
    if resume and init is not None:
        raise ConfigError("--init starts a new run from other weights; --resume continues this one: give one")
    if resume and out is None:
        raise ConfigError("--resume needs --out RUN (the run folder to continue)")
    with distributed.session(cfg.device) as world:
        _quiet_unless_main(world)
        if resume:
            return _resume(Path(out), cfg, progress, world)
        return _train_new(Path(data), out, data_cfg, cfg, augment, overwrite, progress, init, world)


def _train_new(data: Path, out: Path | None, data_cfg: DataConfig | None, cfg: TrainConfig,
               augment: AugmentConfig | None, overwrite: bool, progress: bool, init: Path | None,
               world: World) -> Path:
    start = load_checkpoint(Path(init)) if init is not None else None
    data_cfg = data_cfg or DataConfig()
    if start is not None:
        if cfg.preset != "auto":
            raise ConfigError(f"--init {init} gives the network; --preset {cfg.preset} would choose another: give one")
        if data_cfg.normalise == "auto":   # the starting weights' preprocessing (a Keras model: x / 255)
            data_cfg = replace(data_cfg, **init_preprocessing(start))
    out = Path(out) if out is not None else _default_run(data)
    check_run_folder(out, overwrite)
    world.barrier()   # every rank has seen the folder as it was, before rank 0 clears it
    device = distributed.device_for(world, resolve_device(cfg.device))
    dataset = load_dataset(data, data_cfg, cfg, device, start.model_config if start else None, world)
    augment = augment or augment_preset(dataset.plan.train.augment)
    return train_prepared(dataset, out, cfg, augment, device, progress, start, init, world=world)


def _quiet_unless_main(world: World) -> None:
    """Ranks other than 0 say only what goes wrong: one log, not one per process."""
    if not world.main:
        logging.getLogger("medunet").setLevel(logging.WARNING)


def train_prepared(dataset: Dataset, out: Path, requested: TrainConfig, augment: AugmentConfig,
                   device: torch.device, progress: bool = True, start: Checkpoint | None = None,
                   init: Path | None = None, tune_after: bool = True, world: World = distributed.SINGLE) -> Path:
    """Train on a planned, cached dataset into the run folder `out` (checked free by the caller),
    from the network and weights of `start` (loaded from `init`) when given; then tune the
    post-processing on the validation split (`tune_after`)."""
    data_cfg, cfg = dataset.plan.data, dataset.plan.train
    model, origin = _initial_model(cfg, dataset, start, init)
    logger.info("data: %d train, %d validation images; labels: %s; %d input channel(s)",
                len(dataset.train), len(dataset.val), dataset.encoding.describe(), data_cfg.input_channels)
    check_batch(cfg.batch, world)
    precision, speeds = world.on_main(lambda: choose_precision(cfg, device, model, data_cfg, cfg.batch))
    logger.info("model: %s preset, %s parameters, on %s, batch %d, %s%s%s", preset_name(model.cfg),
                f"{count_parameters(model):,}", device, cfg.batch, precision.name,
                f", weights from {init}" if init is not None else "",
                f", {world.size} processes of {cfg.batch // world.size}" if world.distributed else "")
    if world.main:
        clear(out)
        _write_run_files(out, dataset, requested, model.cfg, augment,
                         {"requested": cfg.precision, "chosen": precision.name, "device": device.type,
                          "measured_images_per_s": speeds}, origin, world.size)
    world.barrier()
    job = Job(out, data_cfg, augment, dataset.encoding, device, cfg.batch, progress, area_stats(dataset.train),
              precision, data_summary(dataset, augment), origin, world)
    return _fit(model, (dataset.train, dataset.val), cfg, job, tune_after=tune_after)


def check_batch(batch: int, world: World) -> None:
    """The global batch is split evenly over the processes of a torchrun job."""
    if batch % world.size:
        raise ConfigError(f"--batch {batch} does not split over {world.size} processes: give a multiple of "
                          f"{world.size}")


def init_preprocessing(start: Path | Checkpoint) -> dict:
    """The normalisation `train --init` keeps unless the user gives another: the one the starting
    weights (a run folder, checkpoint or Checkpoint) were trained with (for an imported Keras model
    the tutorial's x / 255)."""
    d = (start if isinstance(start, Checkpoint) else load_checkpoint(Path(start))).data_config
    return {"normalise": d.normalise, "window": d.window, "percentiles": d.percentiles}


def _initial_model(cfg: TrainConfig, dataset: Dataset, start: Checkpoint | None,
                   init: Path | None) -> tuple[UNet, dict]:
    """The network to train and where its first weights came from.

    Without `start`: the planned preset's network with seeded random weights. With it: its network
    and weights, which must take the data's channels and give its classes.
    """
    n = dataset.encoding.n_classes
    channels = {"in_channels": dataset.data_cfg.input_channels, "out_channels": 1 if n == 2 else n}
    torch.manual_seed(cfg.seed)  # the initial weights belong to the seed too
    if start is None:
        return UNet(model_preset(cfg.preset, **channels, deep_supervision=cfg.deep_supervision)), {}
    have = {"in_channels": start.model_config.in_channels, "out_channels": start.model_config.out_channels}
    if have != channels:
        raise ConfigError(f"{init}: its network takes {have['in_channels']} channel(s) and gives "
                          f"{have['out_channels']} output(s); the data need {channels['in_channels']} and "
                          f"{channels['out_channels']} ({dataset.encoding.describe(why=False)})")
    origin = {"kind": "init", "from": str(Path(init).resolve()), "version": start.version, "origin": start.origin,
              "val_dice": start.train.get("val_dice")}
    return start.build_model(), origin


def data_summary(dataset: Dataset, augment: AugmentConfig) -> dict:
    """What the model was trained on, for its model card: counts, image sizes (W×H, as stored),
    channels, the labels, the pixel spacing when the files give one, and the mirror images it saw
    (test-time augmentation keeps to those). Never file names: they may carry patients' names."""
    fp = dataset.plan.fingerprint
    return {"train": len(dataset.train), "validation": len(dataset.val), "test": fp.n_test,
            "channels": dataset.data_cfg.channels, "labels": dataset.encoding.describe(why=False),
            "sizes": dict(fp.sizes), "distinct_sizes": fp.distinct_sizes,
            "spacing_mm": list(fp.spacing) if fp.spacing else None, "mirrored": mirrored_views(augment)}


def _spacing_or_none(path: Path) -> tuple[float, float] | None:
    try:
        return pixel_spacing(path)
    except DataError:  # unreadable tags on a file whose pixels read: no spacing, as for a PNG
        return None


def choose_precision(cfg: TrainConfig, device: torch.device, model: UNet, data_cfg: DataConfig,
                     batch: int) -> tuple[Precision, dict[str, float]]:
    """`cfg.precision`, measured on this machine for "auto"; deterministic runs take plain fp32,
    so that two runs cannot differ by what a timing probe happened to pick."""
    if cfg.precision == "auto" and cfg.deterministic:
        return Precision("fp32", False), {}
    return precisions.choose(cfg.precision, device, model, data_cfg.input_channels, data_cfg.crop_size, batch)


def _fit(model: UNet, caches: tuple[Cache, Cache], cfg: TrainConfig, job: Job, resume: dict | None = None,
         tune_after: bool = True) -> Path:
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
    if tune_after and job.world.main:
        tune(job.run_dir, device=job.device.type, precision=job.precision, cache=caches[1])
    job.world.barrier()   # the other ranks wait for the run folder to be complete
    return job.run_dir


def check_run_folder(out: Path, overwrite: bool) -> None:
    last = out / "checkpoints" / "last.pt"
    if last.is_file() and not overwrite:
        raise ConfigError(f"{out}: run folder exists with checkpoints/last.pt; pass --resume to continue it "
                          "or --overwrite to replace it")
    check_free(out, overwrite, "run folder")


def _resume(out: Path, overrides: TrainConfig, progress: bool, world: World = distributed.SINGLE) -> Path:
    """Rebuild everything from the run folder: config.json, split.json and checkpoints/last.pt."""
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    world.barrier()   # every rank has read last.pt before rank 0 tidies the folder
    if world.main:
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
    caches = _resume_caches(read_split_file(out / "split.json"), ckpt, cfg, out)
    device = distributed.device_for(world, resolve_device(cfg.device))
    model = ckpt.build_model().train()
    check_batch(stored["batch"], world)
    # Measured again: the run may continue on another machine, where bf16 is emulated, say.
    precision = world.on_main(lambda: choose_precision(cfg, device, model, ckpt.data_config, stored["batch"])[0])
    augment = from_dict(AugmentConfig, stored["augment"])
    # a run begun before checkpoints recorded their mirror images gets the record from config.json
    summary = {"mirrored": mirrored_views(augment), **ckpt.data_summary}
    job = Job(out, ckpt.data_config, augment, ckpt.encoding, device,
              stored["batch"], progress, ckpt.area_stats, precision, summary, ckpt.origin, world)
    logger.info("resuming %s after epoch %d on %s, %s", out, ckpt.train.get("epoch", 0), device, precision.name)
    return _fit(model, caches, cfg, job, resume=ckpt.train)


def _resume_caches(splits: dict, ckpt: Checkpoint, cfg: TrainConfig, out: Path) -> tuple:
    """The training and validation caches of a run being resumed, in RAM or on disk as its
    `cfg.cache` decides now (a disk cache built by the first run is found by its key and reused)."""
    files = splits["train"] + splits["validation"]
    roles = (("train", True), ("validation", False))
    if choose_cache(cfg.cache, files, is_volume_dataset(files), out) == "disk":
        root = cache_root(cfg.cache_dir)
        return tuple(open_or_build(splits[name], ckpt.data_config, ckpt.encoding, root, training=training)
                     for name, training in roles)
    return tuple(build_cache(read_split(splits[name]), ckpt.data_config, ckpt.encoding, consume=True,
                             training=training) for name, training in roles)


def _default_run(data: Path) -> Path:
    """runs/<dataset name>, or -2, -3 … so that no run is ever overwritten by default."""
    base = Path("runs") / (data.resolve().name or "run")
    candidate, k = base, 2
    while candidate.exists():
        candidate, k = base.with_name(f"{base.name}-{k}"), k + 1
    return candidate


def _write_run_files(out: Path, dataset: Dataset, requested: TrainConfig, model_cfg, augment: AugmentConfig,
                     precision: dict, origin: dict, processes: int = 1) -> None:
    """config.json holds the resolved settings ("data", "train") and where each came from: the
    plan with its reasons and what was asked for ("requested")."""
    plan = dataset.plan
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {
        "version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "preset": preset_name(model_cfg),
        "batch": plan.train.batch, "precision": precision, "data": to_dict(plan.data), "model": to_dict(model_cfg),
        "train": to_dict(plan.train), "augment": to_dict(augment), "label_encoding": dataset.encoding.to_dict(),
        "plan": plan.to_dict(), "requested": {"data": to_dict(dataset.requested), "train": to_dict(requested)},
        "origin": origin, "processes": processes,
    })
    write_split(out / "split.json", dataset.splits, plan.data.group_by)
