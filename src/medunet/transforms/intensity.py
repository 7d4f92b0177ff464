"""Intensity normalisation: the one preprocessing function shared by training and prediction."""
from __future__ import annotations

import numpy as np

from medunet.config import DataConfig

_EPS = 1e-6


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
    x = to_channels(image, cfg.channels)
    if cfg.normalise == "window":
        lo, hi = cfg.window  # type: ignore[misc]
        return ((np.clip(x, lo, hi) - lo) / (hi - lo)).astype(np.float32)  # to [0, 1]
    flat = x.reshape(x.shape[0], -1)
    if cfg.normalise == "percentile":
        lo, hi = np.percentile(flat, cfg.percentiles, axis=1)
        x = np.clip(x, lo[:, None, None], hi[:, None, None])
        flat = x.reshape(x.shape[0], -1)
    if cfg.normalise in ("zscore", "auto"):  # auto: what a plan picks for ordinary images
        mean = flat.mean(axis=1, dtype=np.float64)
        std = flat.std(axis=1, dtype=np.float64)
        return ((x - mean[:, None, None]) / np.maximum(std, _EPS)[:, None, None]).astype(np.float32)
    lo, hi = flat.min(axis=1), flat.max(axis=1)  # minmax, and percentile after clipping
    scale = np.maximum(hi - lo, _EPS)
    return ((x - lo[:, None, None]) / scale[:, None, None]).astype(np.float32)  # to [0, 1]


def describe_normalisation(cfg: DataConfig) -> str:
    """What `normalise` computes for `cfg`, as a formula a user can reproduce outside medunet."""
    channels = ("1 channel: a colour image is averaged to grey" if cfg.channels == 1
                else "3 channels, RGB: a grey image is repeated")
    if cfg.normalise == "window":
        lo, hi = cfg.window  # type: ignore[misc]
        formula = f"(clip(x, {lo:g}, {hi:g}) - {lo:g}) / {hi - lo:g}"
    elif cfg.normalise == "zscore":
        formula = f"(x - mean) / max(std, {_EPS:g}), mean and std over the whole image, per channel"
    else:
        formula = f"(x - min) / max(max - min, {_EPS:g}), over the whole image, per channel"
        if cfg.normalise == "percentile":
            p_lo, p_hi = cfg.percentiles
            formula = (f"x clipped to its {p_lo:g}th and {p_hi:g}th percentiles (whole image, per channel), "
                       f"then {formula}")
    return f"{cfg.normalise}: x float32 as stored (no rescaling of 8/16-bit values), {formula}; {channels}"
