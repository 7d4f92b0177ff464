"""A few slices through a volume, for people to look at: where the foreground is, side by side."""
from __future__ import annotations

import numpy as np

from medunet.report.html import overlay_errors, thumbnail
from medunet.report.overlay import draw_outlines

SLICES = 3          # slices shown per case
GAP = 2             # black pixels between them


def pick_slices(masks: np.ndarray, n: int = SLICES) -> list[int]:
    """`n` slice indices of a slice-first `(S, H, W)` mask: at the quartiles of the slices that hold
    foreground (the middle slices when none does), each once."""
    found = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
    lo, hi = (int(found[0]), int(found[-1])) if found.size else (0, len(masks) - 1)
    picks = np.linspace(lo, hi, n + 2)[1:-1] if hi > lo else [lo]
    return sorted({int(round(k)) for k in picks})


def side_by_side(images: list[np.ndarray]) -> np.ndarray:
    """RGB `(H_i, W_i, 3)` uint8 images → one row, top-aligned, GAP black pixels apart."""
    height = max(im.shape[0] for im in images)
    width = sum(im.shape[1] for im in images) + GAP * (len(images) - 1)
    out = np.zeros((height, width, 3), np.uint8)
    x = 0
    for im in images:
        out[: im.shape[0], x: x + im.shape[1]] = im
        x += im.shape[1] + GAP
    return out


def outlined_slices(image: np.ndarray, classes: np.ndarray, axis: int) -> np.ndarray:
    """A volume `(Z, Y, X)` and its predicted class indices → slices through the prediction with
    each class outlined (`draw_outlines`), side by side: RGB uint8."""
    image, classes = np.moveaxis(image, axis, 0), np.moveaxis(classes, axis, 0)
    return side_by_side([draw_outlines(image[k], classes[k]) for k in pick_slices(classes > 0)])


def error_slices(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, axis: int) -> np.ndarray:
    """Slices through truth and prediction with agreement and mistakes tinted (`overlay_errors`),
    each at most THUMB_SIDE pixels, side by side: RGB uint8."""
    image, truth, pred = (np.moveaxis(a, axis, 0) for a in (image, truth, pred))
    return side_by_side([thumbnail(overlay_errors(image[k], truth[k], pred[k]))
                         for k in pick_slices((truth > 0) | (pred > 0))])
