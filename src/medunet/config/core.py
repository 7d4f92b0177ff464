"""Data, model, train and predict settings as frozen dataclasses.

Every value a run depends on lives here, so `config.json` and the checkpoint can rebuild it.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from medunet.config.augment import AUGMENT_PRESETS
from medunet.errors import ConfigError

T = TypeVar("T")

NORMALISATIONS = ("auto", "zscore", "minmax", "window", "percentile", "ct")
SLICE_AXES = ("through-plane", 0, 1, 2)  # volumes: each case's largest spacing, or one array axis (Z, Y, X)
MAX_CONTEXT = 8
CROPS = ("random", "center", "label_box")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
ENGINES = ("auto", "torch", "onnxruntime")


@dataclass(frozen=True)
class DataConfig:
    """How files become network input; the checkpoint carries it so prediction does the same.

    None (and "auto") leave the choice to the dataset's plan (`medunet.engine.planner`); a run's
    config.json and checkpoints hold the resolved values.
    """

    size: int | None = None              # training crop side in pixels, at the input scale
    # Input scale 1/scale: the network sees every image shrunk by this factor (area averaging) and
    # its output is resized back, so large images whose objects are large train and predict fast.
    scale: int | None = None
    channels: int = 1                    # 1: colour images are averaged to grey; 3: RGB (grey repeated)
    normalise: str = "auto"              # auto (the plan: zscore; ct or per-volume zscore for volumes) | zscore | minmax | window | percentile | ct
    window: tuple[float, float] | None = None      # LOW, HIGH for "window" (e.g. CT in HU)
    percentiles: tuple[float, float] = (0.5, 99.5)  # clip points for "percentile"
    crop: str = "random"                 # random | center | label_box: where training crops come from
    crop_margin: int = 16                # pixels around the label's bounding box for "label_box"
    foreground_share: float | None = None  # share of training crops centred on a foreground pixel
    label_mode: str = "auto"             # auto | binary | classes: how mask values are read
    val_fraction: float = 0.1            # share of train/ held out when validation/ is absent
    # Regex whose first match in a file stem names its group (a patient, a video sequence): the
    # validation split keeps each group whole, so slices of one patient never sit on both sides.
    group_by: str | None = None
    # Volumes (2D datasets ignore these). The slice axis: "through-plane" (each case's largest
    # spacing) or an array axis 0, 1, 2 of the (Z, Y, X) volume.
    slice_axis: int | str | None = None
    # In-plane spacing (row, column) mm that every case is resampled to, "off" (each case on its own
    # grid) or "median" (the plan computes it); None: the plan resamples only when cases differ.
    target_spacing: tuple[float, float] | str | None = None
    context: int | None = None           # 2.5D: this many slices either side as extra channels
    # "ct" (nnU-Net's CT scheme): the dataset's foreground 0.5/99.5 percentiles, and its foreground
    # mean and std; None until the plan has measured them.
    ct_clip: tuple[float, float] | None = None
    ct_stats: tuple[float, float] | None = None
    class_names: tuple[str, ...] | None = None    # names of the foreground classes, in id order

    def __post_init__(self) -> None:
        _check(self.size is None or self.size >= 16, f"--size must be at least 16, got {self.size}")
        _check(self.scale is None or (isinstance(self.scale, int) and 1 <= self.scale <= 16),
               f"--scale must be a whole factor from 1 to 16, got {self.scale!r}")
        _check(self.channels in (1, 3), f"channels must be 1 or 3, got {self.channels}")
        _check(self.normalise in NORMALISATIONS,
               f"--normalise must be one of {', '.join(NORMALISATIONS)}, got {self.normalise!r}")
        _check(self.normalise != "window" or self.window is not None,
               "--normalise window needs --window LOW,HIGH")
        _check(self.window is None or self.window[0] < self.window[1],
               f"--window LOW,HIGH needs LOW < HIGH, got {self.window}")
        _check(self.crop in CROPS, f"--crop-mode must be one of {', '.join(CROPS)}, got {self.crop!r}")
        _check(self.foreground_share is None or 0.0 <= self.foreground_share <= 1.0,
               f"--foreground-share must be in [0, 1], got {self.foreground_share}")
        _check(self.label_mode in ("auto", "binary", "classes"),
               f"--label-mode must be auto, binary or classes, got {self.label_mode!r}")
        _check(0.0 < self.val_fraction < 1.0, f"val_fraction must be in (0, 1), got {self.val_fraction}")
        _check_volume_settings(self)
        if self.group_by is not None:
            try:
                re.compile(self.group_by)
            except re.error as exc:
                raise ConfigError(f"--group-by {self.group_by!r} is not a regular expression ({exc})") from None

    @property
    def input_scale(self) -> int:
        """The input scale factor; 1 until a plan has chosen one."""
        return self.scale or 1

    @property
    def crop_size(self) -> int:
        """The training crop side; 256 until a plan has chosen one."""
        return self.size or 256

    @property
    def input_channels(self) -> int:
        """Channels the network sees: the image's, times 2K + 1 slices with `context` K."""
        return self.channels * (2 * (self.context or 0) + 1)


def _check_volume_settings(cfg: DataConfig) -> None:
    _check(cfg.slice_axis is None or cfg.slice_axis in SLICE_AXES,
           f"--slice-axis must be auto, z, y, x (or 0, 1, 2), got {cfg.slice_axis!r}")
    spacing = cfg.target_spacing
    _check(spacing in (None, "off", "median") or (
        isinstance(spacing, tuple) and len(spacing) == 2 and all(isinstance(v, (int, float)) and v > 0 for v in spacing)),
        f"--spacing must be median, off or ROW,COL in mm (two positive numbers), got {spacing!r}")
    _check(cfg.context is None or (isinstance(cfg.context, int) and 0 <= cfg.context <= MAX_CONTEXT),
           f"--context must be a whole number of slices from 0 to {MAX_CONTEXT}, got {cfg.context!r}")
    _check(cfg.ct_clip is None or cfg.ct_clip[0] < cfg.ct_clip[1], f"ct_clip needs LOW < HIGH, got {cfg.ct_clip}")
    _check(cfg.ct_stats is None or cfg.ct_stats[1] > 0, f"ct_stats needs a positive std, got {cfg.ct_stats}")
    _check(cfg.class_names is None or all(isinstance(n, str) and n.strip() for n in cfg.class_names),
           f"--class-names must be non-empty names, got {cfg.class_names!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The U-Net's shape. `depth` is the number of 2× downsamplings."""

    in_channels: int = 1
    out_channels: int = 1                # 1: one sigmoid channel; C > 1: softmax over C classes
    base_width: int = 64
    depth: int = 4
    norm: str = "none"                   # none | batch | instance
    dropout: float = 0.5
    dropout_levels: int = 2              # dropout after this many of the deepest levels
    upsample: str = "nearest"            # nearest | bilinear | transpose
    head: str = "seed"                   # seed: 3×3 conv to 2 channels + ReLU, then 1×1; plain: 1×1
    deep_supervision: bool = False       # extra 1×1 heads at 1/2 and 1/4 resolution, in training only

    def __post_init__(self) -> None:
        _check(self.in_channels >= 1 and self.out_channels >= 1, "channel counts must be positive")
        _check(self.base_width >= 1, f"base width must be positive, got {self.base_width}")
        _check(1 <= self.depth <= 7, f"depth must be between 1 and 7, got {self.depth}")
        _check(self.norm in ("none", "batch", "instance"), f"unknown norm {self.norm!r}")
        _check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        _check(self.upsample in ("nearest", "bilinear", "transpose"), f"unknown upsample {self.upsample!r}")
        _check(self.head in ("seed", "plain"), f"unknown head {self.head!r}")

    @property
    def multiple(self) -> int:
        """Input sides must be a multiple of this (the model pads otherwise)."""
        return 2 ** self.depth


MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # The Keras tutorial's network, layer for layer.
    "seed": dict(base_width=64, depth=4, norm="none", dropout=0.5, upsample="nearest", head="seed"),
    "standard": dict(base_width=64, depth=4, norm="batch", dropout=0.0, upsample="nearest", head="plain"),
    # A sixteenth of the seed's FLOPs: what two CPU cores can train in minutes.
    "small": dict(base_width=16, depth=4, norm="batch", dropout=0.0, upsample="nearest", head="plain"),
    # A quarter of small's FLOPs (2.4× its training speed on 2 cores): the demo, and quick first looks.
    "tiny": dict(base_width=8, depth=4, norm="batch", dropout=0.0, upsample="nearest", head="plain"),
}


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    """The preset's ModelConfig with `overrides` (e.g. channel counts) applied."""
    if name not in MODEL_PRESETS:
        raise ConfigError(f"--preset must be one of {', '.join(MODEL_PRESETS)}, got {name!r}")
    return ModelConfig(**{**MODEL_PRESETS[name], **overrides})


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: how long, how fast, on what."""

    preset: str = "auto"                 # auto: small on CPU, standard on CUDA
    epochs: int | None = None            # None with no time budget: the patience rule below
    time_budget: float | None = None     # seconds; training stops before an epoch that would overrun
    batch: int | None = None             # None: 8 on CPU, 32 on CUDA
    lr: float = 1e-3
    weight_decay: float = 0.0
    samples_per_epoch: int | None = None  # crops per epoch (an older way to give an epoch's length)
    steps_per_epoch: int | None = None   # None: the plan's (a fixed count, see planner)
    val_every: int | None = None         # validation and checkpoints every N epochs and after the last (None: the plan's)
    compile: bool = False                # torch.compile the network of the training step
    device: str = "auto"                 # auto | cpu | cuda
    seed: int = 0
    augment: str = "auto"                # an augmentation preset name (auto: the plan's, flips or default)
    deterministic: bool = False          # bit-reproducible; "auto" precision then means fp32
    # Without epochs or a time budget: stop when validation Dice has not improved for `patience`
    # epochs, or after `max_epochs`.
    patience: int = 10
    max_epochs: int = 200
    ema: float = 0.0                     # decay per step of an average of the weights (0: off)
    deep_supervision: bool = False       # train extra heads at 1/2 and 1/4 resolution
    precision: str = "auto"              # auto (measured on this machine) | bf16 | fp16 | fp32
    # Where the preprocessed images live during training: ram, disk (memory-mapped files built
    # once, `data.disk_cache`), or auto (disk when the decoded dataset would take over half the
    # available RAM). cache_dir: the disk caches' folder (None: $MEDUNET_CACHE_DIR or ~/.cache/medunet).
    cache: str = "auto"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        _check(self.augment == "auto" or self.augment in AUGMENT_PRESETS,
               f"--augment must be auto or one of {', '.join(AUGMENT_PRESETS)}, got {self.augment!r}")
        _check(self.cache in ("auto", "ram", "disk"), f"--cache must be auto, ram or disk, got {self.cache!r}")
        _check(self.epochs is None or self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        _check(self.time_budget is None or self.time_budget > 0,
               f"--time must be positive, got {self.time_budget}")
        _check(self.batch is None or self.batch >= 1, f"--batch must be at least 1, got {self.batch}")
        _check(self.lr > 0, f"--lr must be positive, got {self.lr}")
        _check(self.patience >= 1, f"--patience must be at least 1 epoch, got {self.patience}")
        _check(self.max_epochs >= 1, f"max_epochs must be at least 1, got {self.max_epochs}")
        _check(0.0 <= self.ema < 1.0, f"--ema must be a decay in [0, 1), got {self.ema}")
        _check(self.device in ("auto", "cpu", "cuda"), f"--device must be auto, cpu or cuda, got {self.device!r}")
        _check(self.samples_per_epoch is None or self.samples_per_epoch >= 1,
               f"--samples-per-epoch must be at least 1, got {self.samples_per_epoch}")
        _check(self.steps_per_epoch is None or self.steps_per_epoch >= 1,
               f"--steps-per-epoch must be at least 1, got {self.steps_per_epoch}")
        _check(self.val_every is None or self.val_every >= 1, f"--val-every must be at least 1, got {self.val_every}")
        _check(self.preset in ("auto", *MODEL_PRESETS),
               f"--preset must be auto or one of {', '.join(MODEL_PRESETS)}, got {self.preset!r}")
        _check_precision(self.precision)


@dataclass(frozen=True)
class PredictConfig:
    """How a trained model is applied to whole images."""

    threshold: float | None = None       # None: the checkpoint's tuned value, else 0.5
    crop: int | None = None              # centred N×N crop through the network, pasted back
    batch: int = 4
    device: str = "auto"
    tta: str = "none"                    # none | flips: average over horizontal/vertical flips
    max_size: int = 1024                 # images with a longer side go through in tiles
    overlap: float = 0.25                # tile overlap, blended with Gaussian weights
    postprocess: bool = True             # apply the checkpoint's tuned post-processing
    # Overrides of single clean-up steps (None: the stored/tuned choice), e.g. keep the 2 largest
    # objects for two lungs; given ones apply even with postprocess=False.
    keep_largest: int | None = None
    fill_holes: bool | None = None
    min_size: int | None = None
    precision: str = "auto"              # auto (measured on this machine) | bf16 | fp16 | fp32
    engine: str = "auto"                 # auto | torch | onnxruntime: what runs the network
    folds: tuple[int, ...] | None = None  # a cross-validated run: the folds to average (None: all)
    fast: bool = False                   # a cross-validated run: its best fold alone, no TTA

    def __post_init__(self) -> None:
        _check(self.engine in ENGINES, f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        _check(self.folds is None or (len(self.folds) > 0 and all(k >= 0 for k in self.folds)),
               f"--folds must name folds 0, 1, ..., got {self.folds}")
        _check(self.threshold is None or 0.0 < self.threshold < 1.0,
               f"--threshold must be in (0, 1), got {self.threshold}")
        _check(self.crop is None or self.crop >= 8, f"--crop must be at least 8, got {self.crop}")
        _check(self.batch >= 1, f"--batch must be at least 1, got {self.batch}")
        _check(self.device in ("auto", "cpu", "cuda"), f"--device must be auto, cpu or cuda, got {self.device!r}")
        _check(self.tta in ("none", "flips"), f"--tta must be none or flips, got {self.tta!r}")
        _check(self.max_size >= 32, f"--max-size must be at least 32, got {self.max_size}")
        _check(0.0 <= self.overlap < 1.0, f"--overlap must be in [0, 1), got {self.overlap}")
        _check_precision(self.precision)
        for name in ("keep_largest", "min_size"):
            value = getattr(self, name)
            _check(value is None or value >= 0, f"--{name.replace('_', '-')} must be ≥ 0, got {value}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_precision(name: str) -> None:
    _check(name in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}, got {name!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass."""
    return asdict(cfg)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild `cls` from `to_dict` output; unknown keys are ignored, lists become tuples."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
    return cls(**values)


def replace(cfg: T, **changes: Any) -> T:
    """A copy of `cfg` with `changes`; validation runs again."""
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]
