"""Resizing between the original pixel grid and the network's (an input scale of 1/s).

Images shrink by area averaging (every original pixel counts once, no aliasing of fine texture);
labels shrink by the majority of each area (a one-hot average, then the most frequent class), so
a thin object survives where it covers most of a pixel and no class appears that was not there;
probabilities grow back bilinearly, a smooth map whose threshold gives smooth outlines.

A volume case resampled in-plane to the dataset's spacing has non-integer factors, which may
enlarge one axis and shrink another: `resample` is bilinear with antialiasing there (a triangle
filter as wide as the factor when shrinking, plain bilinear when enlarging), both ways.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def scaled_shape(height: int, width: int, scale: int) -> tuple[int, int]:
    """The grid an `height`×`width` box has at input scale 1/`scale` (at least 1×1)."""
    return max(1, round(height / scale)), max(1, round(width / scale))


def shrink(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`(C, H, W)` float → `(C, h, w)` float32 by area averaging; unchanged when the sizes agree."""
    if tuple(array.shape[-2:]) == tuple(shape):
        return array
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    return F.interpolate(x, size=shape, mode="area")[0].numpy()


def enlarge(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`(K, h, w)` float (probabilities, variances) → `(K, H, W)` float32, bilinear."""
    if tuple(array.shape[-2:]) == tuple(shape):
        return array
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    return F.interpolate(x, size=shape, mode="bilinear", align_corners=False)[0].numpy()


def resample(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`(C, H, W)` float → `(C, h, w)` float32 at any factor per axis (bilinear, antialiased);
    unchanged when the sizes agree."""
    if tuple(array.shape[-2:]) == tuple(shape):
        return array
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    return F.interpolate(x, size=shape, mode="bilinear", align_corners=False, antialias=True)[0].numpy()


def shrink_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`(H, W)` class indices → `(h, w)` uint8: each new pixel takes the class that covers most of
    its area (ties to the lower class index)."""
    if tuple(labels.shape) == tuple(shape):
        return labels
    n = int(labels.max()) + 1
    one_hot = np.stack([labels == c for c in range(n)]).astype(np.float32)
    return shrink(one_hot, shape).argmax(axis=0).astype(np.uint8)
