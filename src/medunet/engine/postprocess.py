"""Post-processing of predicted masks: threshold or argmax, then connected-component clean-up.

Probabilities `(K, H, W)` become a class-index mask `(H, W)` uint8: K = 1 is a sigmoid foreground
probability, thresholded; K = C ≥ 2 are softmax class probabilities, argmax. Then, for each
foreground class, in this order: objects smaller than `min_size` pixels are removed, the
`keep_largest` largest objects are kept, and holes are filled.

Connectivity: objects are 8-connected (a diagonal touch joins two blobs), and holes are the
4-connected background regions that do not reach the image border (scipy's `binary_fill_holes`
default), the dual of 8-connected objects. Removed pixels become background (class 0); filling,
done after every class's removals, only turns background pixels into the surrounding class, never
pixels of another class (a ring of class 2 around class 3 leaves class 3 alone), so no class id
appears that the argmax did not give. A speck removed from inside another class's object is
background at that point, so filling gives it to the enclosing object.

Volumes: every step works on `(Z, Y, X)` masks in 3D, with the same rule one dimension up: objects
are 26-connected (voxels touching at a corner join), holes are 6-connected background not reaching
the volume's border, and `min_size` counts voxels. `tune` scores candidates by per-case 3D Dice.

`tune` chooses these settings on a validation split by `medunet.metrics.mean_dice`, the same mean
per-image Dice as evaluation's `dice_mean`: at each candidate, an image whose truth and prediction
are both empty has no Dice and is left out of that candidate's mean, so emptying a prediction is
never rewarded; a false positive on an empty truth scores 0.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from medunet.errors import ConfigError
from medunet.metrics import Counts, defined_mean, mean_dice

logger = logging.getLogger(__name__)

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def full_connectivity(ndim: int) -> np.ndarray:
    """Objects touching at a corner join: 8-connected in 2D, 26-connected in 3D."""
    return np.ones((3,) * ndim, dtype=bool)
THRESHOLD_GRID = tuple(round(0.1 + 0.05 * i, 2) for i in range(17))   # 0.10, 0.15, ..., 0.90
MIN_SIZE_FRACTIONS = (0.02, 0.05, 0.1, 0.25, 0.5)  # min_size candidates × median true object size
KEEP_LARGEST_GRID = (1, 2, 3)   # the fewest objects wins among equal scores
MIN_GAIN = 1e-6   # a step is kept only when it raises the mean Dice by more than float noise


@dataclass(frozen=True)
class PostprocessConfig:
    """How probabilities become a mask; stored in the checkpoint under "postprocess"."""

    threshold: float = 0.5      # foreground probability cut for one sigmoid channel (K = 1)
    keep_largest: int = 0       # 0: off; k: keep the k largest objects of each class
    fill_holes: bool = False    # fill background enclosed by a class with that class
    min_size: int = 0           # remove objects of fewer pixels than this (0: off)

    def __post_init__(self) -> None:
        _check(isinstance(self.threshold, (int, float)) and not isinstance(self.threshold, bool)
               and 0.0 < self.threshold < 1.0,
               f"postprocess threshold must be in (0, 1), got {self.threshold!r}")
        for name in ("keep_largest", "min_size"):
            value = getattr(self, name)
            _check(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0,
                   f"postprocess {name} must be an integer ≥ 0, got {value!r}")
        _check(isinstance(self.fill_holes, (bool, np.bool_)),
               f"postprocess fill_holes must be true or false, got {self.fill_holes!r}")
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "keep_largest", int(self.keep_largest))
        object.__setattr__(self, "min_size", int(self.min_size))
        object.__setattr__(self, "fill_holes", bool(self.fill_holes))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for the checkpoint and summary.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PostprocessConfig:
        """Inverse of `to_dict`; missing keys take defaults (old checkpoints hold `{}` or only a
        threshold), unknown keys are ignored. Raises ConfigError on bad values."""
        if not isinstance(d, dict):
            raise ConfigError(f"postprocess settings must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def describe(self) -> str:
        """E.g. "threshold 0.35, min_size 40, keep_largest 1, fill_holes"."""
        parts = [f"threshold {self.threshold:g}"]
        if self.min_size:
            parts.append(f"min_size {self.min_size}")
        if self.keep_largest:
            parts.append(f"keep_largest {self.keep_largest}")
        if self.fill_holes:
            parts.append("fill_holes")
        return ", ".join(parts)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# --- steps on one boolean mask -------------------------------------------------------------------

def remove_small_objects(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Boolean `(H, W)` (or `(Z, Y, X)`) → a copy without the 8- (26-) connected objects of fewer than
    `min_size` pixels (voxels)."""
    mask = np.asarray(mask, dtype=bool)
    if min_size <= 1 or not mask.any():
        return mask.copy()
    labels, _ = ndimage.label(mask, structure=full_connectivity(mask.ndim))
    keep = np.bincount(labels.ravel()) >= min_size
    keep[0] = False
    return keep[labels]


def keep_largest_components(mask: np.ndarray, k: int = 1) -> np.ndarray:
    """Boolean `(H, W)` (or `(Z, Y, X)`) → a copy with only the `k` largest 8- (26-) connected objects.

    Ties in size go to the object met first in raster order, so the result is deterministic.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask, structure=full_connectivity(mask.ndim))
    if n <= k:
        return mask.copy()
    sizes = np.bincount(labels.ravel())[1:]
    largest = np.argsort(-sizes, kind="stable")[:k] + 1
    keep = np.zeros(n + 1, dtype=bool)
    keep[largest] = True
    return keep[labels]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Boolean `(H, W)` (or `(Z, Y, X)`) → a copy with every hole (background not connected to the
    border, 4- or 6-connected) filled."""
    return ndimage.binary_fill_holes(np.asarray(mask, dtype=bool))


# --- probabilities → mask ------------------------------------------------------------------------

def to_classes(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Probabilities `(K, H, W)` (or `(K, Z, Y, X)`) → class indices `(H, W)` uint8: `probs[0] >
    threshold` for K = 1, argmax over classes for K ≥ 2. No clean-up."""
    probs = np.asarray(probs)
    if probs.ndim not in (3, 4) or probs.shape[0] < 1:
        raise ValueError(f"probabilities must be (K, H, W) or (K, Z, Y, X), got shape {probs.shape}")
    if probs.shape[0] == 1:
        return (probs[0] > threshold).astype(np.uint8)
    return probs.argmax(axis=0).astype(np.uint8)


def clean(mask: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    """Class indices `(H, W)` → a cleaned copy: per foreground class remove small objects and keep
    the largest, then fill holes (second pass, so a class's removals are done before any class
    fills background)."""
    out = np.array(mask, dtype=np.uint8, copy=True)
    present = np.flatnonzero(np.bincount(out.ravel()))
    classes = [int(c) for c in present if c != 0]
    if cfg.min_size > 1 or cfg.keep_largest:
        for c in classes:
            own = out == c
            kept = remove_small_objects(own, cfg.min_size)
            if cfg.keep_largest:
                kept = keep_largest_components(kept, cfg.keep_largest)
            out[own & ~kept] = 0
    if cfg.fill_holes:
        for c in classes:
            own = out == c
            out[fill_holes(own) & (out == 0)] = c
    return out


def apply(probs: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    """Probabilities `(K, H, W)` → class-index mask `(H, W)` uint8, thresholded and cleaned."""
    return clean(to_classes(probs, cfg.threshold), cfg)


# --- tuning on a validation split ----------------------------------------------------------------

class TuneStep(NamedTuple):
    """One tried step: what, the mean Dice before and with it, and whether it was kept."""

    description: str
    dice_before: float
    dice_after: float
    kept: bool


@dataclass(frozen=True)
class TuneResult:
    """The chosen settings, the mean Dice of the plain 0.5 threshold / argmax and with the chosen
    settings, and each step tried in order."""

    config: PostprocessConfig
    baseline_dice: float
    dice: float
    steps: list[TuneStep] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: `config`, `baseline_dice`, `dice` and `steps` as dicts."""
        return {"config": self.config.to_dict(), "baseline_dice": self.baseline_dice,
                "dice": self.dice, "steps": [s._asdict() for s in self.steps]}


def tune(probs: list[np.ndarray], truths: list[np.ndarray], n_classes: int) -> TuneResult:
    """Choose post-processing on a validation split, greedily, by mean per-image Dice.

    First the threshold (K = 1 only) over `THRESHOLD_GRID`, then in turn `min_size` (the best of
    `MIN_SIZE_FRACTIONS` × the median true object size), `keep_largest` (the best of 1, 2, 3: two
    lungs, two kidneys), `fill_holes`; each is
    kept only if it raises `mean_dice` (images empty in truth and prediction left out). When no
    truth has any foreground, no candidate has a defined Dice: the defaults are kept, with a
    warning, and both Dice values are NaN.

    Args:
        probs: probabilities `(K, H, W)` per image (K = 1 sigmoid, or K = n_classes softmax); a
            sequence other than a list (files read on access) is read again for each trial, and
            no mask of it is kept between trials.
        truths: class indices `(H, W)` per image, same sizes (or `(Z, Y, X)` per case, with
            probabilities `(K, Z, Y, X)`: 3D post-processing and per-case 3D Dice).
        n_classes: classes including background (2 for K = 1).

    Returns:
        TuneResult with the chosen PostprocessConfig and every step's Dice before and after.
    """
    _check_split(probs, truths, n_classes)
    cfg = PostprocessConfig()
    if not any(np.any(t) for t in truths):   # every candidate's Dice is 0 or undefined
        logger.warning("post-processing not tuned: no foreground in any of the %d truths, so no "
                       "setting has a defined Dice; keeping %s", len(truths), cfg.describe())
        return TuneResult(cfg, float("nan"), float("nan"), [])
    baseline = _mean_dice(probs, truths, n_classes, cfg)
    steps: list[TuneStep] = []
    current = baseline
    if probs[0].shape[0] == 1:
        t, dice = _best_threshold(probs, truths)
        kept = dice > current + MIN_GAIN
        steps.append(TuneStep(f"threshold {t:g}", current, dice, kept))
        if kept:
            cfg, current = replace(cfg, threshold=t), dice
    # Probabilities that are files (a validation split larger than RAM) are thresholded anew for
    # each trial instead of holding every mask at once.
    masks = ([to_classes(p, cfg.threshold) for p in probs] if isinstance(probs, list) else
             Mapped(probs, lambda p, t=cfg.threshold: to_classes(p, t)))
    median = _median_object_size(truths)
    sizes = sorted({int(round(f * median)) for f in MIN_SIZE_FRACTIONS} - {0, 1})
    trials = ([{"min_size": size} for size in sizes], [{"keep_largest": k} for k in KEEP_LARGEST_GRID],
              [{"fill_holes": True}])
    for changes in trials:
        if not changes:   # no true objects to size min_size from
            continue
        scored = [(_mean_dice_masks(masks, truths, n_classes, replace(cfg, **c)), c) for c in changes]
        dice, best = max(scored, key=lambda s: s[0])   # first of equals: the smallest min_size
        kept = dice > current + MIN_GAIN
        steps.append(TuneStep(_describe(best), current, dice, kept))
        if kept:
            cfg, current = replace(cfg, **best), dice
    logger.debug("post-processing: %s (Dice %.4f → %.4f)", cfg.describe(), baseline, current)
    return TuneResult(cfg, baseline, current, steps)


def _describe(changes: dict[str, Any]) -> str:
    """{"min_size": 40} → "min_size 40"; {"fill_holes": True} → "fill_holes"."""
    return ", ".join(k if v is True else f"{k} {v}" for k, v in changes.items())


def _check_split(probs: list[np.ndarray], truths: list[np.ndarray], n_classes: int) -> None:
    if not probs or len(probs) != len(truths):
        raise ValueError(f"need as many probability maps as truths (> 0), got {len(probs)} and {len(truths)}")
    for i, (p, t) in enumerate(zip(probs, truths)):
        if p.ndim != t.ndim + 1 or p.shape[1:] != t.shape:
            raise ValueError(f"image {i}: probabilities {p.shape} do not match truth {t.shape}")
        k = p.shape[0]
        if (k == 1 and n_classes != 2) or (k > 1 and k != n_classes):
            raise ValueError(f"image {i}: {k} probability channels for {n_classes} classes")


def _mean_dice(probs: list[np.ndarray], truths: list[np.ndarray], n_classes: int,
               cfg: PostprocessConfig) -> float:
    return _mean_dice_masks(Mapped(probs, lambda p: to_classes(p, cfg.threshold)), truths, n_classes, cfg)


def _mean_dice_masks(masks: list[np.ndarray], truths: list[np.ndarray], n_classes: int,
                     cfg: PostprocessConfig) -> float:
    """`mean_dice` of already thresholded masks after `clean` with `cfg` (both empty: left out),
    each cleaned mask made as it is scored and let go."""
    return mean_dice(truths, Mapped(masks, lambda m: clean(m, cfg)), n_classes)


class Mapped(Sequence):
    """`fn(items[i])` on access, nothing kept: a sequence of derived arrays that never all exist at once."""

    def __init__(self, items: Sequence, fn: Callable[[Any], Any]) -> None:
        self.items, self.fn = items, fn

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):  # type: ignore[override]
        return self.fn(self.items[i])


def _best_threshold(probs: list[np.ndarray], truths: list[np.ndarray]) -> tuple[float, float]:
    """The grid threshold of best mean Dice (ties: the one nearest 0.5), and that Dice.

    One pass per image: each pixel's grid bin counts, for every threshold at once, how many
    foreground and background pixels lie above it. At each threshold the mean is over the images
    whose Dice is defined there (as `mean_dice`); (0.5, NaN) when it is defined at none.
    """
    grid = np.asarray(THRESHOLD_GRID)
    per_image = []
    for p, t in zip(probs, truths):
        fg = np.asarray(t).ravel() > 0
        # `to_classes` compares in the probabilities' precision (a Python float adapts to a float32
        # array), so the grid does too: float32 0.15 is not above the threshold 0.15 there
        cuts = grid.astype(p.dtype) if np.issubdtype(p.dtype, np.floating) else grid
        # number of grid values strictly below p: p > grid[j] exactly for j < that number
        above = np.searchsorted(cuts, p[0].ravel(), side="left")
        fg_hist = np.bincount(above[fg], minlength=len(grid) + 1)
        bg_hist = np.bincount(above[~fg], minlength=len(grid) + 1)
        tp = fg_hist[::-1].cumsum()[::-1][1:]   # tp[j] = foreground pixels with p > grid[j]
        fp = bg_hist[::-1].cumsum()[::-1][1:]
        n_fg, n_bg = int(fg.sum()), int((~fg).sum())
        per_image.append([Counts(int(a), int(b), n_fg - int(a), n_bg - int(b)).dice() for a, b in zip(tp, fp)])
    dice = np.array([defined_mean(column) for column in zip(*per_image)])
    if np.isnan(dice).all():
        return 0.5, float("nan")
    near_best = [j for j in range(len(grid)) if dice[j] >= np.nanmax(dice) - MIN_GAIN]
    best = min(near_best, key=lambda j: abs(grid[j] - 0.5))
    return float(grid[best]), float(dice[best])


def _median_object_size(truths: list[np.ndarray]) -> float:
    """Median pixel (voxel) count of the 8- (26-) connected true objects of every foreground class (0 if none)."""
    sizes: list[np.ndarray] = []
    for t in truths:
        for c in np.flatnonzero(np.bincount(np.asarray(t).ravel().astype(np.int64))):
            if c == 0:
                continue
            labels, n = ndimage.label(t == c, structure=full_connectivity(np.ndim(t)))
            if n:
                sizes.append(np.bincount(labels.ravel())[1:])
    return float(np.median(np.concatenate(sizes))) if sizes else 0.0
