"""Mask outlines drawn on images, for people to look at."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

# Class k's outline colour (RGB); class 1 is red, as in most viewers.
COLOURS = np.array([[255, 40, 40], [40, 220, 40], [60, 120, 255], [255, 220, 0], [255, 0, 255],
                    [0, 230, 230], [255, 140, 0], [160, 80, 255]], np.uint8)


def display_rgb(image: np.ndarray) -> np.ndarray:
    """Any-dtype `(H, W)` / `(H, W, 3)` image → uint8 `(H, W, 3)`, stretched between its 1st and 99th percentile."""
    x = image.astype(np.float32)
    lo, hi = np.percentile(x, (1, 99))
    x = np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    x = x.astype(np.uint8)
    return np.repeat(x[..., None], 3, axis=2) if x.ndim == 2 else x


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The boundary pixels of a boolean mask `(H, W)`, `width` pixels thick (inside the mask)."""
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    return mask & ~inner


def draw_outlines(image: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Image plus the outline of each class of `classes` `(H, W)` (class indices) → uint8 RGB."""
    rgb = display_rgb(image)
    width = max(1, round(max(classes.shape) / 384))  # stays visible when a large image is shown small
    for k in range(1, int(classes.max(initial=0)) + 1):
        rgb[outline(classes == k, width)] = COLOURS[(k - 1) % len(COLOURS)]
    return rgb
