"""The plan: training settings derived from a dataset's fingerprint and the measured speed of the device.

Every setting the user leaves open (None or "auto" in DataConfig/TrainConfig) is chosen here, each
with one line of reason; every setting the user gives is kept and marked as theirs. The rules are
few and stated in pixels, so a user can predict what they do on their own data:

- input scale: the largest of 1, 2, 4 at which the thinnest class is still MIN_THICKNESS pixels
  thick and the images keep a short side of MIN_SIDE pixels: membranes and vessels stay at full
  resolution, a lesion 60 pixels thick in a 500-pixel ultrasound is seen at a quarter, whole;
- crop: the whole (scaled) image when it is not much larger than a 256² crop, else 256;
- foreground sampling: a third of the crops centred on foreground when it is rare (under
  RARE_SHARE of the pixels, or absent from most images), as nnU-Net does;
- epoch: the training images (slices) once, at least MIN_SAMPLES_PER_EPOCH crops, at most
  MAX_STEPS_PER_EPOCH steps (beyond that the dataset's size no longer sets the epoch), and with a
  time budget short enough that BUDGET_EPOCHS of them fit it at the timed speed (the budget then
  never loses more than one short epoch at its end), but not under MIN_EPOCH_SECONDS of training
  (a short budget, e.g. a cross-validation fold's share, gets fewer epochs rather than epochs
  mostly spent validating);
- validation: after every epoch, or every N epochs when it would cost more than VAL_SHARE of
  the training time and over MIN_VAL_SECONDS (and always after the last);
- augmentation: volumes are never mirrored or turned (the header fixes their orientation, so
  prediction never meets a mirrored slice; on the hippocampus mirrors cost 0.016); when the run
  looks at each pixel fewer than FEW_PASSES times (a large dataset or a short budget: the data are
  the variety, and heavier transforms only slow the learning), flips alone for 2D images and none
  for volumes; else the `default` preset (flips, rotations, zoom, elastic, intensity), which pays
  over many passes on 2D sets, and for volumes `upright` (the same without mirrors and turns);
- length: with a time budget, the epochs that fit, from a timed training step on this device;
  without one, until validation has not improved for `patience` epochs.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from medunet.config import DataConfig, ModelConfig, TrainConfig, model_preset
from medunet.data.fingerprint import Fingerprint
from medunet.engine import precision as precisions
from medunet.engine import volume_plan
from medunet.engine.metadata import preset_name
from medunet.models.unet import UNet

logger = logging.getLogger(__name__)

SCALES = (1, 2, 4)
MIN_THICKNESS = 8.0        # pixels a structure keeps at the network's scale
MIN_SIDE = 64              # pixels of the images' short side at the network's scale: 4 at the
                           # bottom of the 16× downsampling; CVC's 288 px frames at 1/4 (72 px)
                           # scored 0.41 → 0.59 over 1/2 (BENCHMARKS.md)
CROP = 256                 # the crop side when images are larger
WHOLE_IMAGE_AREA = 1.25 * CROP * CROP  # images up to this many pixels (scaled) train whole
RARE_SHARE = 0.05          # foreground below this share of the pixels is oversampled
FOREGROUND_SHARE = 1 / 3   # the oversampling share (nnU-Net's)
MIN_SAMPLES_PER_EPOCH = 200    # crops an epoch holds at least (the trainer's too, without a plan)
MAX_STEPS_PER_EPOCH = 250  # nnU-Net's epoch
BUDGET_EPOCHS = 20         # epochs at least that a time budget is cut into ...
MIN_EPOCH_SECONDS = 20.0   # ... unless they would train for less than this: then fewer (validation,
                           # checkpoints and the curves cost seconds per epoch, whatever its length)
MIN_STEPS_PER_EPOCH = 10
VAL_SHARE = 0.05           # validation may cost this share of the training time
MIN_VAL_SECONDS = 1.0      # ... unless it takes less than this: then it always runs
FEW_PASSES = 10            # looks at each pixel under which the plan augments 2D images with flips
                           # alone and volumes not at all (else `default` and `upright`)
PROBE_STEPS = 2            # timed training steps for the budget estimate


@dataclass(frozen=True)
class Choice:
    """One setting: its name, value, who chose it ("plan" or "user") and why."""

    name: str
    value: Any
    source: str
    reason: str


@dataclass(frozen=True)
class Plan:
    """The resolved settings, the choices behind them, and the fingerprint they came from."""

    fingerprint: Fingerprint
    data: DataConfig
    train: TrainConfig
    preset: str
    batch: int
    device: str
    choices: tuple[Choice, ...]
    seconds_per_epoch: float | None = None  # measured estimate, training + validation

    def to_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint.to_dict(), "device": self.device,
                "choices": [asdict(c) for c in self.choices], "seconds_per_epoch": self.seconds_per_epoch,
                "data": asdict(self.data), "train": asdict(self.train), "preset": self.preset, "batch": self.batch}

    def lines(self) -> list[str]:
        """The plan as text: the fingerprint, then one line per choice."""
        return describe_fingerprint(self.fingerprint) + [""] + [
            f"{c.name:<18} {_show(c.value):<14} {'(yours) ' if c.source == 'user' else ''}{c.reason}"
            for c in self.choices]


def make_plan(fp: Fingerprint, data: DataConfig, train: TrainConfig, device: torch.device,
              out_channels: int, model: ModelConfig | None = None) -> Plan:
    """Resolve every open setting of `data` and `train` for a dataset of fingerprint `fp`.

    Args:
        fp: the training images' fingerprint.
        data, train: the requested settings; None/"auto" fields are chosen here.
        device: where training runs (the budget estimate is timed there).
        out_channels: the network's output channels (1 sigmoid, or C classes).
        model: the network when it is given rather than planned (training from `--init` weights).
    """
    choices: list[Choice] = []

    def choose(name: str, requested: Any, value: Any, reason: str) -> Any:
        if requested is not None and requested != "auto":
            choices.append(Choice(name, requested, "user", "given"))
            return requested
        choices.append(Choice(name, value, "plan", reason))
        return value

    grid = fp  # the sizes the rules below see: a volume's slices at the chosen in-plane spacing
    if fp.volumes is not None:
        data, grid = volume_plan.plan_volume_grid(fp, data, choose)
    scale = choose("input scale", data.scale, *_scale(grid))
    size = choose("crop", data.size, *_crop(grid, scale))
    normalise = choose("normalisation", data.normalise, *_normalisation(fp))
    share = choose("foreground crops", data.foreground_share, *_foreground(grid, size, scale))
    if fp.volumes is not None:
        data = volume_plan.plan_volume_input(fp, replace(data, normalise=normalise), choose)
    if model is not None:
        preset = train.preset
        choices.append(Choice("model", preset_name(model), "user", "the network of --init, with its weights"))
    else:
        preset = choose("model", train.preset, *_preset(device))
    batch = choose("batch", train.batch, 32 if device.type == "cuda" else 8,
                   "a fixed default for the device, not timed: on the CPU, larger batches of smaller crops "
                   "scored within the seed spread (BENCHMARKS.md)")
    data = replace(data, scale=scale, size=size, normalise=normalise, foreground_share=share)
    train = replace(train, preset=preset, batch=batch)
    model = model or model_preset(train.preset, in_channels=data.input_channels, out_channels=out_channels,
                                  deep_supervision=train.deep_supervision)
    rate = _training_rate(data, train, device, model)
    # the fingerprint counts train and validation together; epochs and passes count what trains
    n_units = volume_plan.training_slices(fp) if fp.volumes is not None else fp.n_images - fp.n_validation
    train = replace(train, steps_per_epoch=_steps(train, n_units, rate, choose, fp.volumes is not None))
    train = replace(train, val_every=choose("validation", train.val_every, *_val_every(fp, data, train, rate)))
    train = replace(train, augment=choose("augmentation", train.augment,
                                          *_augmentation(grid, data, train, rate, n_units)))
    seconds = _seconds_per_epoch(fp, data, train, rate)
    choices.append(_length(train, seconds))
    return Plan(fp, data, train, preset, batch, device.type, tuple(choices), seconds)


def _scale(fp: Fingerprint) -> tuple[int, str]:
    thin, short = fp.thinnest, min(fp.height[1], fp.width[1])
    if math.isinf(thin):
        return 1, "no foreground to size: full resolution"
    best = 1
    for s in SCALES:
        if thin / s >= MIN_THICKNESS and short / s >= MIN_SIDE:
            best = s
    if best == 1:
        why = (f"the thinnest class is {thin:.1f} px thick: at 1/2 it would be {thin / 2:.1f} px, under "
               f"{MIN_THICKNESS:g}" if thin / 2 < MIN_THICKNESS
               else f"images are {short} px on the short side: at 1/2 under {MIN_SIDE} px")
        return 1, f"full resolution: {why}"
    return best, (f"1/{best}: the thinnest class is {thin:.1f} px thick ({thin / best:.1f} px at 1/{best}, "
                  f"≥ {MIN_THICKNESS:g}); median short side {short} px → {short // best} px")


def _normalisation(fp: Fingerprint) -> tuple[str, str]:
    if fp.volumes is not None:
        return volume_plan.normalisation(fp)
    return "zscore", "per image and channel: mean 0, standard deviation 1"


def _crop(fp: Fingerprint, scale: int) -> tuple[int, str]:
    h, w = math.ceil(fp.height[1] / scale), math.ceil(fp.width[1] / scale)
    if h * w <= WHOLE_IMAGE_AREA:
        side = max(16, math.ceil(max(h, w) / 16) * 16)
        return side, f"whole images: {w}×{h} px at this scale (padded to {side}²), so every crop sees each object whole"
    extent = fp.largest_extent / scale
    return CROP, (f"{CROP}² of {w}×{h} px images; large objects span {extent:.0f} px (90th percentile) at this scale")


def _foreground(fp: Fingerprint, size: int, scale: int) -> tuple[float, str]:
    rare = [c for c in fp.classes if c.share < RARE_SHARE or c.present < 0.5]
    h, w = math.ceil(fp.height[1] / scale), math.ceil(fp.width[1] / scale)
    whole = size * size >= h * w and fp.volumes is None  # a volume's slices are drawn, whole or not
    if not rare or whole:
        return 0.0, "random crops: foreground is common enough" if rare == [] else "crops are whole images"
    c = min(rare, key=lambda c: c.share)
    units = "slices" if fp.volumes is not None else "images"
    return FOREGROUND_SHARE, (f"class {c.index} covers {100 * c.share:.1f}% of the pixels and is in "
                              f"{100 * c.present:.0f}% of the {units}: a third of the crops centred on foreground")


def _preset(device: torch.device) -> tuple[str, str]:
    if device.type == "cuda":
        return "standard", "31 M parameters (base width 64, batch norm): a GPU trains it in minutes"
    return "small", "1.9 M parameters (base width 16, batch norm): what a CPU trains in minutes"


def _length(train: TrainConfig, seconds: float | None) -> Choice:
    per_epoch = f"~{seconds:.0f} s an epoch here (timed)" if seconds else "epoch time not measured"
    if train.epochs is not None:
        return Choice("length", f"{train.epochs} epochs", "user", f"given; {per_epoch}")
    if train.time_budget is not None:
        fit = int(train.time_budget // seconds) if seconds else None
        return Choice("length", f"{fit} epochs" if fit is not None else "budget", "user",
                      f"as many as fit in {train.time_budget:.0f} s; {per_epoch}")
    return Choice("length", f"patience {train.patience}", "plan",
                  f"until validation has not improved for {train.patience} epochs (at most "
                  f"{train.max_epochs}); {per_epoch}")


def _steps(train: TrainConfig, n_units: int, rate: float | None, choose, volumes: bool) -> int:
    """Optimiser steps per epoch (module docstring); `samples_per_epoch`, when given, in steps."""
    batch = train.batch or 8
    if train.samples_per_epoch is not None and train.steps_per_epoch is None:
        steps = math.ceil(train.samples_per_epoch / batch)
        return choose("epoch", steps, steps, "")   # recorded as the user's: they gave its length in crops
    units = "slices" if volumes else "images"
    steps = min(math.ceil(max(n_units, MIN_SAMPLES_PER_EPOCH) / batch), MAX_STEPS_PER_EPOCH)
    why = (f"{steps} steps of {batch}: the {n_units} training {units} once (at least {MIN_SAMPLES_PER_EPOCH} "
           f"crops, at most {MAX_STEPS_PER_EPOCH} steps)")
    if train.time_budget is not None and rate:
        seconds = max(train.time_budget / BUDGET_EPOCHS, MIN_EPOCH_SECONDS)
        fit = max(MIN_STEPS_PER_EPOCH, int(seconds * rate / batch))
        if fit < steps:
            epochs = (f"{BUDGET_EPOCHS} epochs fit" if seconds * BUDGET_EPOCHS <= train.time_budget else
                      f"epochs of {MIN_EPOCH_SECONDS:.0f} s (not {BUDGET_EPOCHS}: shorter ones lose the budget "
                      "to validation and checkpoints) fill")
            steps, why = fit, (f"{fit} steps of {batch}: {epochs} the {train.time_budget:.0f} s budget at the "
                               f"timed {rate:.1f} img/s")
    return choose("epoch", train.steps_per_epoch, steps, why)   # when validation runs is its own line


def _val_every(fp: Fingerprint, data: DataConfig, train: TrainConfig, rate: float | None) -> tuple[int, str]:
    """Validate every epoch unless that costs more than VAL_SHARE of the training time."""
    if not rate:
        return 1, "after every epoch"
    train_s, val_s = train.steps_per_epoch * (train.batch or 8) / rate, _validation_seconds(fp, data, rate)
    every = max(1, math.ceil(val_s / (VAL_SHARE * train_s))) if val_s > MIN_VAL_SECONDS else 1
    if every == 1:
        return 1, f"after every epoch (~{val_s:.1f} s against ~{train_s:.0f} s of training)"
    return every, (f"every {every} epochs and after the last: ~{val_s:.1f} s each, at most {VAL_SHARE:.0%} of "
                   f"the ~{train_s:.0f} s of training in between")


def _augmentation(fp: Fingerprint, data: DataConfig, train: TrainConfig, rate: float | None,
                  n_units: int) -> tuple[str, str]:
    """Under FEW_PASSES looks at each pixel `flips` (2D) or `none` (volumes), else `default` (2D) or
    `upright` (volumes: `default` without mirrors and turns)."""
    many, heavy = "default", "flips, 90° turns, rotation, zoom, elastic and intensity changes"
    if fp.volumes is not None:
        many, heavy = "upright", ("rotation, zoom, elastic and intensity changes, no mirrors or 90° turns (a "
                                  "volume's header fixes its orientation: prediction never meets a mirrored slice)")
    if train.epochs is not None:
        crops = train.epochs * train.steps_per_epoch * (train.batch or 8)
    elif train.time_budget is not None and rate:
        crops = train.time_budget * rate
    else:
        return many, f"{heavy}: training runs until it stops improving"
    image = _scaled_pixels(fp, data)
    passes = crops * min(data.crop_size ** 2, image) / (n_units * image)
    units = "slices" if fp.volumes is not None else "images"
    seen = f"~{crops:,.0f} crops of the {n_units} {units} look at each pixel ~{passes:.0f} times"
    if passes < FEW_PASSES:
        if fp.volumes is not None:
            return "none", (f"none: {seen} (under {FEW_PASSES}): the data are the variety, and prediction never "
                            "meets a mirrored slice (the header fixes a volume's orientation; --tta flips then "
                            "averages nothing)")
        return "flips", (f"flips alone: {seen} (under {FEW_PASSES}): the data are the variety, heavier "
                         "transforms slow the learning")
    return many, f"{heavy}: {seen} (≥ {FEW_PASSES})"


def _validation_seconds(fp: Fingerprint, data: DataConfig, rate: float) -> float:
    """Inference costs about a third of a training step per pixel."""
    n_val = fp.volumes.n_validation_slices if fp.volumes is not None else fp.n_validation
    return n_val * _scaled_pixels(fp, data) / (3 * rate * data.crop_size ** 2)


def _scaled_pixels(fp: Fingerprint, data: DataConfig) -> float:
    """Pixels of a median image (slice) at the network's input scale."""
    return fp.height[1] * fp.width[1] / data.input_scale ** 2


def _training_rate(data: DataConfig, train: TrainConfig, device: torch.device,
                   model_cfg: ModelConfig) -> float | None:
    """Training images per second of the planned model, from a few timed steps."""
    model = UNet(model_cfg)
    channels = model_cfg.in_channels
    precision, _ = precisions.choose(train.precision, device, model, channels, data.crop_size, train.batch or 8)
    try:
        return precisions.images_per_second(model, precision, device, channels, data.crop_size,
                                            train.batch or 8, train=True, steps=PROBE_STEPS)
    except RuntimeError as exc:  # out of memory on a small GPU: the run itself will say so
        logger.warning("plan: timing probe failed (%s)", exc)
        return None


def _seconds_per_epoch(fp: Fingerprint, data: DataConfig, train: TrainConfig, rate: float | None) -> float | None:
    """Training + validation seconds of one epoch at `rate` training images per second."""
    if not rate:
        return None
    return train.steps_per_epoch * (train.batch or 8) / rate + _validation_seconds(fp, data, rate) / train.val_every


def describe_fingerprint(fp: Fingerprint) -> list[str]:
    """The fingerprint in a few lines (no file names: they may carry patient names)."""
    size = (f"{fp.width[1]}×{fp.height[1]}" if fp.height[0] == fp.height[2] and fp.width[0] == fp.width[2]
            else f"{fp.width[0]}–{fp.width[2]} × {fp.height[0]}–{fp.height[2]} (median {fp.width[1]}×{fp.height[1]})")
    spacing = f"{fp.spacing[1]:g}×{fp.spacing[0]:g} mm pixels" if fp.spacing else "pixel size unknown"
    units = "cases" if fp.volumes is not None else "images"
    lines = [f"{units:<11} {fp.n_images - fp.n_validation} train, {fp.n_validation} validation, {fp.n_test} test; {size} px; "
             f"{fp.channels} channel(s), {fp.dtype}; {spacing}",
             f"labels      {fp.encoding}"]
    if fp.intensity:
        i = fp.intensity
        lines.append(f"intensity   0.5–99.5%: {i['p0.5']:.4g}–{i['p99.5']:.4g}, median {i['p50']:.4g}, "
                     f"mean {i['mean']:.4g} ± {i['std']:.4g}")
    if fp.volumes is not None:
        lines += volume_plan.describe_volumes(fp)
    for c in fp.classes:
        lines.append(f"class {c.index}     (value {c.value}) in {100 * c.present:.0f}% of {'slices' if fp.volumes else 'images'}, "
                     f"{100 * c.share:.1f}% of pixels; {c.objects:g} object(s) per image, median area "
                     f"{c.area:.0f} px, extent {c.extent:.0f} px (90%: {c.extent_p90:.0f}), thickness {c.thickness:.1f} px")
    return lines


def _show(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)
