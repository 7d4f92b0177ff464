"""Intensity normalisation: the one preprocessing function shared by training and prediction."""
from __future__ import annotations

import numpy as np

from medunet.config import DataConfig

_EPS = 1e-6
_CHUNK = 1 << 22  # values per step of the moments: a CT-sized volume needs no float64 copy


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """`(H, W)` or `(H, W, 3)` → float32 `(channels, H, W)`: colour averaged to grey, grey repeated to RGB."""
    x = image.astype(np.float32, copy=False)
    if x.ndim == 2:
        x = x[None]
    else:
        x = np.moveaxis(x, -1, 0)
    if channels == 1 and x.shape[0] != 1:
        x = x.mean(axis=0, keepdims=True)
    elif channels == 3 and x.shape[0] == 1:
        x = np.repeat(x, 3, axis=0)
    return np.ascontiguousarray(x)


def is_colour(image: np.ndarray) -> bool:
    """True for an `(H, W, 3)` image whose channels differ somewhere (a grey image saved as RGB is grey)."""
    if image.ndim == 2:
        return False
    return not (np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]))


def normalise(image: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """Raw image `(H, W)` or `(H, W, 3)` of any dtype → float32 `(C, H, W)` network input.

    Statistics are per image and per channel, taken over the whole image, so that a training crop
    and a whole image at prediction time see the same mapping.
    """
    return normalise_channels(to_channels(image, cfg.channels), cfg)


def normalise_volume(volume: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """A volume `(Z, Y, X)` of any dtype → float32 of the same shape, with statistics over the
    whole volume (per-volume z-score for MR; for "ct" the dataset's clip and statistics).

    Memory: a float32 copy of the volume, normalised in place (a 512×512×300 CT: 315 MB once)."""
    x = volume.astype(np.float32, copy=False)
    return normalise_channels(x[None], cfg, owned=x is not volume)[0]


def normalise_channels(x: np.ndarray, cfg: DataConfig, owned: bool = False) -> np.ndarray:
    """float32 `(C, ...)` → normalised float32 `(C, ...)`, statistics per channel over the rest;
    `owned`: `x` is a copy the caller gives away, normalised in place (z-score, window, ct).

    "ct" is nnU-Net's CT scheme: clip to the dataset's foreground 0.5/99.5 percentiles
    (`cfg.ct_clip`), then z-score with the dataset's foreground mean and std (`cfg.ct_stats`), the
    same numbers for every image, so Hounsfield units keep their meaning.
    """
    per_channel = (-1,) + (1,) * (x.ndim - 1)
    if cfg.normalise == "window":
        lo, hi = cfg.window  # type: ignore[misc]
        out = np.clip(x, lo, hi, out=x if owned else None)
        out -= np.float32(lo)
        out /= np.float32(hi - lo)
        return out  # to [0, 1]
    if cfg.normalise == "ct":
        if cfg.ct_clip is None or cfg.ct_stats is None:
            raise ValueError("CT normalisation without the dataset's clip and statistics: plan first")
        (lo, hi), (mean, std) = cfg.ct_clip, cfg.ct_stats
        out = np.clip(x, lo, hi, out=x if owned else None)
        out -= np.float32(mean)  # in place: a CT-sized volume gets no float64 or extra temporary
        out /= np.float32(max(std, _EPS))
        return out
    flat = x.reshape(x.shape[0], -1)
    if cfg.normalise == "percentile":
        lo, hi = np.percentile(flat, cfg.percentiles, axis=1)
        x = np.clip(x, lo.reshape(per_channel), hi.reshape(per_channel))
        flat = x.reshape(x.shape[0], -1)
    if cfg.normalise in ("zscore", "auto"):  # auto: what a plan picks for ordinary images
        mean, std = _moments(flat)
        out = x if owned or cfg.normalise == "percentile" else x.copy()  # after percentile: a clipped copy
        out -= mean.astype(np.float32).reshape(per_channel)
        out /= np.maximum(std, _EPS).astype(np.float32).reshape(per_channel)
        return out
    lo, hi = flat.min(axis=1), flat.max(axis=1)  # minmax, and percentile after clipping
    scale = np.maximum(hi - lo, _EPS)
    return ((x - lo.reshape(per_channel)) / scale.reshape(per_channel)).astype(np.float32)  # to [0, 1]


def _moments(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each row of `(C, N)`, accumulated in float64 in chunks
    (numpy's own std makes a float64 copy of the whole row); two passes, so no cancellation."""
    mean = np.array([sum(float(row[i:i + _CHUNK].sum(dtype=np.float64)) for i in range(0, row.size, _CHUNK))
                     for row in flat]) / max(flat.shape[1], 1)
    sq = [sum(float(np.square(row[i:i + _CHUNK] - np.float32(m), dtype=np.float64).sum())
              for i in range(0, row.size, _CHUNK)) for row, m in zip(flat, mean)]
    return mean, np.sqrt(np.asarray(sq) / max(flat.shape[1], 1))


def describe_normalisation(cfg: DataConfig) -> str:
    """What `normalise` computes for `cfg`, as a formula a user can reproduce outside medunet
    (for a volume run: over the whole volume, and the 2.5D channels it feeds)."""
    channels = ("1 channel: a colour image is averaged to grey" if cfg.channels == 1
                else "3 channels, RGB: a grey image is repeated")
    whole = "the whole image"
    if cfg.slice_axis is not None:  # set by the plan for volume datasets only
        k = cfg.context or 0
        whole = "the whole volume"
        channels = (f"{2 * k + 1} channel(s): a slice and its {k} neighbours either side along the slice axis "
                    "(the edge slice repeated beyond the volume)")
    if cfg.normalise == "window":
        lo, hi = cfg.window  # type: ignore[misc]
        formula = f"(clip(x, {lo:g}, {hi:g}) - {lo:g}) / {hi - lo:g}"
    elif cfg.normalise == "ct":
        (lo, hi), (mean, std) = cfg.ct_clip, cfg.ct_stats  # type: ignore[misc]
        formula = f"(clip(x, {lo:g}, {hi:g}) - {mean:g}) / {max(std, _EPS):g}, the dataset's CT numbers"
    elif cfg.normalise in ("zscore", "auto"):
        formula = f"(x - mean) / max(std, {_EPS:g}), mean and std over {whole}, per channel"
    else:
        formula = f"(x - min) / max(max - min, {_EPS:g}), over {whole}, per channel"
        if cfg.normalise == "percentile":
            p_lo, p_hi = cfg.percentiles
            formula = (f"x clipped to its {p_lo:g}th and {p_hi:g}th percentiles ({whole}, per channel), "
                       f"then {formula}")
    return f"{cfg.normalise}: x float32 as stored (no rescaling of 8/16-bit values), {formula}; {channels}"
