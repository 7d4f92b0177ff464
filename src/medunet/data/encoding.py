"""What a mask's stored values mean, and the way back.

A `LabelEncoding` maps the raw values of label files (0/255, 0/1, palette indices, class ids, noisy
JPEG masks) to class indices 0..C-1 for training, and class indices back to the same raw values
when writing predictions, so a user gets masks in the convention they gave.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medunet.errors import DataError
from medunet.io.images import LabelFile

MODES = ("binary", "near_binary", "classes")
CLASS_MAX_VALUE = 64      # more than two values all below this: class ids
CLASS_MAX_DISTINCT = 8    # or at most this many distinct values (0/127/255, sparse ids)
NEAR_BINARY_SHARE = 0.9   # share of pixels at exactly 0 or the maximum for a resampled/JPEG mask
EDGE_SHARE = 0.75         # share of intermediate pixels on edges for a resampled binary mask
EXTREMES_SHARE = 0.5      # ... whose pixels are still mostly exactly 0 or the maximum
FILE_EXTREMES_SHARE = 0.25  # ... and so are a good part of every file's (an image has almost none)
PALETTE_LENGTH = 768      # 256 RGB entries


@dataclass(frozen=True)
class LabelEncoding:
    """How raw mask values map to class indices.

    Attributes:
        values: sorted raw values; `values[i]` is written for class index i.
        mode: "binary" (exactly two stored values), "near_binary" (JPEG or resampled: raw values
            above `threshold` are class 1), or "classes" (class ids or palette indices).
        threshold: for "near_binary" only.
        palette: when the labels are palette images, the first one's palette (768 values R0, G0,
            B0, R1, ...), so predicted masks are written with the same colours; else None.
        reason: why `detect_encoding` chose this encoding, in words (for logs and the doctor);
            not part of equality, and "" for encodings made by hand or read from old checkpoints.
    """

    values: tuple[int, ...]
    mode: str
    threshold: float | None = None
    palette: tuple[int, ...] | None = None
    reason: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        values = tuple(int(v) for v in self.values)
        object.__setattr__(self, "values", values)
        if self.palette is not None:
            object.__setattr__(self, "palette", _checked_palette(self.palette, values))
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
        return {"values": list(self.values), "mode": self.mode, "threshold": self.threshold,
                "palette": None if self.palette is None else list(self.palette), "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelEncoding:
        """Inverse of `to_dict`; dicts from older versions (no palette, no reason) load too.

        Raises ValueError (via the checks) on a malformed dict.
        """
        threshold, palette = d.get("threshold"), d.get("palette")
        return cls(values=tuple(d["values"]), mode=d["mode"],
                   threshold=None if threshold is None else float(threshold),
                   palette=None if palette is None else tuple(palette), reason=str(d.get("reason") or ""))

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

    def describe(self, *, why: bool = True) -> str:
        """A short human description, e.g. "binary mask 0/255" or "3 classes: 0, 1, 2".

        With `why` the reason follows when there is one: "3 classes: 0, 128, 255: value 128 forms
        regions of its own (...)".
        """
        if self.mode == "binary":
            text = f"binary mask {self.values[0]}/{self.values[1]}"
        elif self.mode == "near_binary":
            text = f"near-binary mask (JPEG or resampled), thresholded at {self.threshold:g}"
        else:
            text = f"{self.n_classes} classes: {', '.join(map(str, self.values))}"
        return f"{text}: {self.reason}" if why and self.reason else text


def _checked_palette(palette: Iterable[int], values: tuple[int, ...]) -> tuple[int, ...]:
    """768 integers in 0..255, for values that are 8-bit palette indices; ValueError otherwise."""
    palette = tuple(int(v) for v in palette)
    if len(palette) != PALETTE_LENGTH or min(palette) < 0 or max(palette) > 255:
        raise ValueError(f"a label palette is {PALETTE_LENGTH} values in 0..255, got {len(palette)} values")
    if min(values) < 0 or max(values) > 255:
        raise ValueError(f"palette labels have values in 0..255, got {values[0]}..{values[-1]}")
    return palette


@dataclass
class _Pool:
    """Pixel counts per raw value over many label files, and what the files were."""

    counts: Counter
    edges: Counter                # per value: its pixels on an edge (see `edge_counts`)
    n_files: int = 0
    n_lossy: int = 0
    all_palette: bool = True
    palette: tuple[int, ...] | None = None   # the first palette file's colours
    busiest: Path | None = None   # the file with the most distinct values: named in errors
    busiest_n: int = -1
    greyest: Path | None = None   # of the files with > 2 values, the one with the least share of
    greyest_share: float = 1.0    # its pixels at exactly 0 or its maximum, and that share


def _pool(labels: Iterable[LabelFile]) -> _Pool:
    pool = _Pool(counts=Counter(), edges=Counter())
    for label in labels:
        values, counts = value_counts(label.values)
        pool.counts.update(dict(zip(values.tolist(), counts.tolist())))
        if len(values) > 2 and not label.lossy:  # JPEG is thresholded whatever its edges say
            _add_edges(pool, label, values, counts)
        pool.n_files += 1
        pool.n_lossy += label.lossy
        pool.all_palette &= label.palette
        if pool.palette is None and label.palette:
            pool.palette = label.colours
        if len(values) > pool.busiest_n:
            pool.busiest, pool.busiest_n = label.path, len(values)
    if pool.n_files == 0:
        raise DataError("no label files to read the mask encoding from")
    return pool


def _add_edges(pool: _Pool, label: LabelFile, values: np.ndarray, counts: np.ndarray) -> None:
    """Pool a file's edge pixels per value, and keep the file with the least of 0 and its maximum."""
    pool.edges.update(edge_counts(label.values))
    share = float(counts[-1] + (counts[0] if values[0] == 0 else 0)) / float(counts.sum())
    if share < pool.greyest_share:
        pool.greyest, pool.greyest_share = label.path, share


def edge_counts(raw: np.ndarray) -> dict[int, int]:
    """Per value, how many of its pixels lie on an edge, as resampling a binary mask leaves them.

    A pixel is on an edge when its 3×3 neighbourhood holds both a lower and a higher value (a step
    from 0 up to the maximum), or lower values on both sides along a row, column or diagonal (a
    line thinner than the resampling kernel, e.g. a vessel). Pixels at the file's own minimum or
    maximum are never on an edge and are not looked at: the cost is one pass over the file plus
    eight look-ups per intermediate pixel, linear in the pixels (about a millisecond a megapixel).

    Args:
        raw: (H, W) integer mask.

    Returns:
        {value: pixels on an edge}, for the values that have any.
    """
    raw = np.asarray(raw)
    lo, hi = raw.min(), raw.max()
    # flatnonzero, not nonzero: on 2D arrays nonzero is ~30× slower, and this runs on every label
    ys, xs = np.divmod(np.flatnonzero((raw != lo) & (raw != hi)), raw.shape[1])
    if ys.size == 0:
        return {}
    v = raw[ys, xs]

    def at(dy: int, dx: int) -> np.ndarray:  # the neighbour; the border repeats outwards
        return raw[np.clip(ys + dy, 0, raw.shape[0] - 1), np.clip(xs + dx, 0, raw.shape[1] - 1)]

    lower = np.zeros(v.shape, bool)
    higher = np.zeros(v.shape, bool)
    ridge = np.zeros(v.shape, bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a, b = at(dy, dx), at(-dy, -dx)
        lower |= (a < v) | (b < v)
        higher |= (a > v) | (b > v)
        ridge |= (a < v) & (b < v)
    values, counts = value_counts(v[(lower & higher) | ridge])
    return dict(zip(values.tolist(), counts.tolist()))


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


def _lossy(hi: int, n_lossy: int) -> LabelEncoding:
    """JPEG masks: threshold at half the largest value seen, write foreground as 255 (8-bit)."""
    top = hi if hi <= 1 or hi > 255 else 255
    reason = (f"{n_lossy} JPEG file{'s' * (n_lossy != 1)}: JPEG blurs the edges, so the masks are "
              f"thresholded at half the largest value ({hi})")
    return replace(_near_binary(top, hi / 2 if hi > 0 else None), reason=reason)


def detect_encoding(labels: Iterable[LabelFile], mode: str = "auto") -> LabelEncoding:
    """Find what the stored values of a set of masks mean, pooled over all files.

    Rules for "auto", in order:
      1. any JPEG file → near_binary, threshold half the largest value seen; values (0, 255)
         (or (0, 1) when nothing exceeds 1, (0, max) beyond 8 bits).
      2. every file a palette image → classes of the palette indices (binary for two; a single
         index v gives (0, 1) for v = 0, else (0, v)).
      3. at most two distinct values → binary of those two; a single value v (all masks empty or
         full) gives (0, 1) for v = 1, (0, 255) for v = 0 or 255, else (0, v).
      4. more than two values, the largest below 64 → classes (class ids 0..K with small K stay
         classes, even a thin ring of class 1).
      5. the values between 0 and the maximum look like the edges of resampled binary masks →
         near_binary, thresholded at half the maximum. That is: at least two such intermediate
         levels; ≥ 75 % of their pixels (pooled) on an edge (`edge_counts`: between a lower and a
         higher value, or on a line thinner than the resampling kernel); ≥ 50 % of all pixels
         exactly 0 or the maximum, and ≥ 25 % of every file's (noise has lower and higher
         neighbours too). Area-averaged 0/255 masks give 64/128/191 along the edges; a real class
         region (0/128/255 organs) has most of its pixels inside, away from other values; a single
         grey level only on edges is a boundary class drawn on purpose (resampling leaves several).
      6. at most 8 distinct values → classes (0/128/255, sparse ids).
      7. ≥ 90 % of the pixels exactly 0 or the maximum → near_binary (scattered noise values).
      8. otherwise a DataError naming the file with the most distinct values.
    mode "binary" forces near_binary thresholding at half the largest value; mode "classes"
    forces classes of the distinct values. Palette labels carry their palette in every mode, and
    the encoding's `reason` says in words which rule chose it.

    Cost: one pass per file to count values; files with more than two values get `edge_counts`.

    Args:
        labels: LabelFile from `read_label`; iterated once.
        mode: "auto", "binary" or "classes" (DataConfig.label_mode).

    Raises:
        DataError: no labels, or values that look like an image rather than a mask.
    """
    if mode not in ("auto", "binary", "classes"):
        raise ValueError(f"label mode must be auto, binary or classes, got {mode!r}")
    pool = _pool(labels)
    enc = _choose(pool, mode)
    return replace(enc, palette=pool.palette) if pool.all_palette and pool.palette else enc


def _choose(pool: _Pool, mode: str) -> LabelEncoding:
    """The rules of `detect_encoding`, on pooled counts."""
    values = sorted(pool.counts)
    lo, hi = values[0], values[-1]
    if mode == "binary":
        return replace(_near_binary(hi), reason="label mode binary: thresholded at half the largest value")
    if mode == "classes":
        return _classes(values, pool, "label mode classes: every distinct value is a class")
    if pool.n_lossy:
        return _lossy(hi, pool.n_lossy)
    if pool.all_palette:
        if len(values) > 2:
            return _classes(values, pool, "palette images: each index is a class")
        return _binary([0, 1] if values == [0] else values)
    if len(values) <= 2:
        return _binary(values)
    if hi < CLASS_MAX_VALUE:
        return _classes(values, pool, f"all values below {CLASS_MAX_VALUE}: class ids")
    resampled, why = _resampled(pool, hi)
    if resampled:
        return replace(_near_binary(hi), reason=why)
    if len(values) <= CLASS_MAX_DISTINCT:
        return _classes(values, pool, why)
    extremes = pool.counts.get(0, 0) + pool.counts[hi]
    share = extremes / sum(pool.counts.values())
    if share >= NEAR_BINARY_SHARE:
        return replace(_near_binary(hi), reason=f"{_percent(share)} of the pixels are 0 or {hi}, the "
                       f"{len(values) - 2} other values scattered: a binary mask with noise")
    raise DataError(f"{pool.busiest}: label has {len(values)} distinct values spread between "
                    f"{lo} and {hi}: it looks like an image, not a mask")


def _resampled(pool: _Pool, hi: int) -> tuple[bool, str]:
    """Whether the values between 0 and `hi` are the edges of resampled binary masks, and why (not).

    Rule 5 of `detect_encoding`; the reason reads after "near-binary ...:" or "N classes ...:".
    """
    middle = [v for v in sorted(pool.counts) if v not in (0, hi)]
    n_middle = sum(pool.counts[v] for v in middle)
    edge_share = sum(pool.edges.get(v, 0) for v in middle) / n_middle
    extremes = 1 - n_middle / sum(pool.counts.values())
    listed = _listing(middle)
    if edge_share < EDGE_SHARE:
        inside = [v for v in middle if pool.edges.get(v, 0) < EDGE_SHARE * pool.counts[v]]
        what = (f"values {_listing(inside)} form regions of their own" if len(inside) > 1
                else f"value {inside[0]} forms regions of its own")
        return False, f"{what} (only {_percent(edge_share)} of the pixels between 0 and {hi} lie on edges)"
    if len(middle) == 1:
        return False, (f"value {listed} lies only on edges between 0 and {hi}, a single level: a boundary "
                       "class (resampling a binary mask leaves several levels)")
    if extremes < EXTREMES_SHARE:
        return False, (f"values {listed} lie on edges but hold {_percent(1 - extremes)} of the pixels: "
                       "thin classes, not the edges of a binary mask")
    if pool.greyest_share < FILE_EXTREMES_SHARE:  # one image among masks must not pass for their edges
        return False, (f"values {listed} lie on edges, but {pool.greyest} has only "
                       f"{_percent(pool.greyest_share)} of its pixels at 0 or its maximum")
    return True, (f"intermediate values {listed} lie on edges between 0 and {hi} in "
                  f"{_percent(edge_share)} of their pixels — resampled binary masks")


def _listing(values: list[int], limit: int = 8) -> str:
    """Values as text, "64, 128, 191"; beyond `limit` values "1, 2, ..., 8, ... (253 in all)"."""
    text = ", ".join(map(str, values[:limit]))
    return f"{text}, ... ({len(values)} in all)" if len(values) > limit else text


def _percent(share: float) -> str:
    """A share as text, "97.3%", rounded down so that 99.96 % never reads as 100 %."""
    return f"{math.floor(share * 1000) / 10:g}%"


def _binary(values: list[int]) -> LabelEncoding:
    pair = tuple(values) if len(values) == 2 else _pair_for_single(values[0])
    return LabelEncoding(values=pair, mode="binary")


def _classes(values: list[int], pool: _Pool, reason: str = "") -> LabelEncoding:
    if len(values) > 256:
        raise DataError(f"{pool.busiest}: {len(values)} distinct label values; "
                        "at most 256 classes are supported")
    if len(values) < 2:
        return LabelEncoding(values=_pair_for_single(values[0]), mode="classes", reason=reason)
    return LabelEncoding(values=tuple(values), mode="classes", reason=reason)
