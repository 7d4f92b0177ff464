"""What a mask's stored values mean, and the way back.

A `LabelEncoding` maps the raw values of label files (0/255, 0/1, palette indices, class ids, noisy
JPEG masks) to class indices 0..C-1 for training, and class indices back to the same raw values
when writing predictions, so a user gets masks in the convention they gave.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medunet.errors import DataError
from medunet.io.images import LabelFile

MODES = ("binary", "near_binary", "classes")
CLASS_MAX_VALUE = 64      # more than two values all below this: class ids
CLASS_MAX_DISTINCT = 8    # or at most this many distinct values (0/127/255, sparse ids)
NEAR_BINARY_SHARE = 0.9   # share of pixels at exactly 0 or the maximum for a resampled/JPEG mask


@dataclass(frozen=True)
class LabelEncoding:
    """How raw mask values map to class indices.

    Attributes:
        values: sorted raw values; `values[i]` is written for class index i.
        mode: "binary" (exactly two stored values), "near_binary" (JPEG or resampled: raw values
            above `threshold` are class 1), or "classes" (class ids or palette indices).
        threshold: for "near_binary" only.
    """

    values: tuple[int, ...]
    mode: str
    threshold: float | None = None

    def __post_init__(self) -> None:
        values = tuple(int(v) for v in self.values)
        object.__setattr__(self, "values", values)
        if self.mode not in MODES:
            raise ValueError(f"label mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if list(values) != sorted(set(values)) or len(values) < 2:
            raise ValueError(f"label values must be at least two sorted distinct integers, got {values}")
        if self.mode != "classes" and len(values) != 2:
            raise ValueError(f"{self.mode} labels have exactly two values, got {values}")
        if len(values) > 256:
            raise ValueError(f"at most 256 classes are supported, got {len(values)}")
        if (self.mode == "near_binary") != (self.threshold is not None):
            raise ValueError("a threshold is given for near_binary labels, and only for them")

    @property
    def n_classes(self) -> int:
        """Number of classes, background included."""
        return len(self.values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for config.json and checkpoints."""
        return {"values": list(self.values), "mode": self.mode, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelEncoding:
        """Inverse of `to_dict`. Raises ValueError (via the checks) on a malformed dict."""
        threshold = d.get("threshold")
        return cls(values=tuple(d["values"]), mode=d["mode"],
                   threshold=None if threshold is None else float(threshold))

    def encode(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Raw stored values → class indices.

        Args:
            raw: (H, W) integer array from `read_label`.
            path: the file it came from, named in errors.

        Returns:
            (H, W) uint8 class indices in 0..n_classes-1.

        Raises:
            DataError: "binary"/"classes" and a value that is not in `values`.
        """
        raw = np.asarray(raw)
        if self.mode == "near_binary":
            return (raw > self.threshold).astype(np.uint8)
        table = np.asarray(self.values)
        index = np.searchsorted(table, raw).clip(0, len(table) - 1)
        unknown = table[index] != raw
        if unknown.any():
            v = raw[unknown].min()
            raise DataError(f"{path}: label value {v} is not one the model knows "
                            f"({', '.join(map(str, self.values))})")
        return index.astype(np.uint8)

    def decode(self, index: np.ndarray) -> np.ndarray:
        """Class indices → the raw values this encoding was read from.

        Args:
            index: (H, W) integer class indices in 0..n_classes-1.

        Returns:
            (H, W) raw values, uint8 when the largest value is ≤ 255, else uint16.
        """
        index = np.asarray(index)
        if index.size and (index.min() < 0 or index.max() >= self.n_classes):
            raise ValueError(f"class indices must be in 0..{self.n_classes - 1}, "
                             f"got {index.min()}..{index.max()}")
        dtype = np.uint8 if max(self.values) <= 255 else np.uint16
        if min(self.values) < 0 or max(self.values) > 65535:
            dtype = np.int32  # class ids outside 16-bit range: keep them rather than wrap
        return np.asarray(self.values, dtype=dtype)[index]

    def describe(self) -> str:
        """A short human description, e.g. "binary mask 0/255" or "3 classes: 0, 1, 2"."""
        if self.mode == "binary":
            return f"binary mask {self.values[0]}/{self.values[1]}"
        if self.mode == "near_binary":
            return f"near-binary mask (JPEG or resampled), thresholded at {self.threshold:g}"
        return f"{self.n_classes} classes: {', '.join(map(str, self.values))}"


@dataclass
class _Pool:
    """Pixel counts per raw value over many label files, and what the files were."""

    counts: Counter
    n_files: int = 0
    lossy: bool = False
    all_palette: bool = True
    busiest: Path | None = None   # the file with the most distinct values: named in errors
    busiest_n: int = -1


def _pool(labels: Iterable[LabelFile]) -> _Pool:
    pool = _Pool(counts=Counter())
    for label in labels:
        values, counts = value_counts(label.values)
        pool.counts.update(dict(zip(values.tolist(), counts.tolist())))
        pool.n_files += 1
        pool.lossy |= label.lossy
        pool.all_palette &= label.palette
        if len(values) > pool.busiest_n:
            pool.busiest, pool.busiest_n = label.path, len(values)
    if pool.n_files == 0:
        raise DataError("no label files to read the mask encoding from")
    return pool


def value_counts(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their pixel counts; bincount (no sort, no copy) for 8/16-bit masks."""
    flat = np.asarray(raw).ravel()
    if flat.dtype in (np.uint8, np.uint16):
        counts = np.bincount(flat)
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(flat, return_counts=True)


def _pair_for_single(value: int) -> tuple[int, int]:
    """Values for masks that all hold one value (e.g. all background).

    1 → (0, 1); 0 or 255 → (0, 255), the usual 8-bit convention; any other v → (0, v).
    """
    if value == 1:
        return (0, 1)
    if value in (0, 255):
        return (0, 255)
    return tuple(sorted((0, value)))


def _near_binary(top: int, threshold: float | None = None) -> LabelEncoding:
    """Background stays 0, foreground is written as `top`; threshold defaults to half of `top`.

    Masks that are all 0 get the usual 8-bit convention (0, 255) thresholded at 127.5.
    """
    if top <= 0:
        return LabelEncoding(values=(0, 255), mode="near_binary", threshold=127.5)
    return LabelEncoding(values=(0, top), mode="near_binary",
                         threshold=top / 2 if threshold is None else threshold)


def _lossy(hi: int) -> LabelEncoding:
    """JPEG masks: threshold at half the largest value seen, write foreground as 255 (8-bit)."""
    top = hi if hi <= 1 or hi > 255 else 255
    return _near_binary(top, hi / 2 if hi > 0 else None)


def detect_encoding(labels: Iterable[LabelFile], mode: str = "auto") -> LabelEncoding:
    """Find what the stored values of a set of masks mean, pooled over all files.

    Rules for "auto", in order:
      1. any JPEG file → near_binary, threshold half the largest value seen; values (0, 255)
         (or (0, 1) when nothing exceeds 1, (0, max) beyond 8 bits).
      2. every file a palette image → classes of the palette indices (binary for two).
      3. at most two distinct values → binary of those two; a single value v (all masks empty or
         full) gives (0, 1) for v = 1, (0, 255) for v = 0 or 255, else (0, v).
      4. more than two values, largest below 64 or at most 8 distinct → classes.
      5. ≥ 90 % of the pixels exactly 0 or the maximum → near_binary (resampled masks).
      6. otherwise a DataError naming the file with the most distinct values.
    mode "binary" forces near_binary thresholding at half the largest value; mode "classes"
    forces classes of the distinct values.

    Args:
        labels: LabelFile from `read_label`; iterated once.
        mode: "auto", "binary" or "classes" (DataConfig.label_mode).

    Raises:
        DataError: no labels, or values that look like an image rather than a mask.
    """
    if mode not in ("auto", "binary", "classes"):
        raise ValueError(f"label mode must be auto, binary or classes, got {mode!r}")
    pool = _pool(labels)
    values = sorted(pool.counts)
    lo, hi = values[0], values[-1]
    if mode == "binary":
        return _near_binary(hi)
    if mode == "classes":
        return _classes(values, pool)
    if pool.lossy:
        return _lossy(hi)
    if pool.all_palette or len(values) <= 2:
        return _classes(values, pool) if len(values) > 2 else _binary(values)
    if hi < CLASS_MAX_VALUE or len(values) <= CLASS_MAX_DISTINCT:
        return _classes(values, pool)
    extremes = pool.counts.get(0, 0) + pool.counts[hi]
    if extremes >= NEAR_BINARY_SHARE * sum(pool.counts.values()):
        return _near_binary(hi)
    raise DataError(f"{pool.busiest}: label has {len(values)} distinct values spread between "
                    f"{lo} and {hi}: it looks like an image, not a mask")


def _binary(values: list[int]) -> LabelEncoding:
    pair = tuple(values) if len(values) == 2 else _pair_for_single(values[0])
    return LabelEncoding(values=pair, mode="binary")


def _classes(values: list[int], pool: _Pool) -> LabelEncoding:
    if len(values) > 256:
        raise DataError(f"{pool.busiest}: {len(values)} distinct label values; "
                        "at most 256 classes are supported")
    if len(values) < 2:
        return LabelEncoding(values=_pair_for_single(values[0]), mode="classes")
    return LabelEncoding(values=tuple(values), mode="classes")

