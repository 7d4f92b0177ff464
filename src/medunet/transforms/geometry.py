"""Where the network's input sits in the original image, recorded so it can be undone exactly.

A Geometry is a crop box inside the original (the part that goes through the network). Padding to
the network's multiple happens inside the model and is undone there; what comes back here is
pasted into a canvas of the original size at the box's position.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Original size `(height, width)` and the box `(y0, x0, h, w)` taken from it."""

    height: int
    width: int
    box: tuple[int, int, int, int]

    @classmethod
    def whole(cls, height: int, width: int) -> "Geometry":
        return cls(height, width, (0, 0, height, width))

    @classmethod
    def centre_crop(cls, height: int, width: int, size: int) -> "Geometry":
        """A centred `size`×`size` box, clipped to the image (a smaller image is taken whole)."""
        h, w = min(size, height), min(size, width)
        return cls(height, width, ((height - h) // 2, (width - w) // 2, h, w))

    @classmethod
    def from_box(cls, height: int, width: int, x: int, y: int, w: int, h: int) -> "Geometry":
        """A user's box `X,Y,W,H`, clipped to the image."""
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(width, x + w), min(height, y + h)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {x},{y},{w},{h} lies outside the {width}×{height} image")
        return cls(height, width, (y0, x0, y1 - y0, x1 - x0))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """`(..., height, width)` → `(..., h, w)`: the box's content."""
        y0, x0, h, w = self.box
        return array[..., y0:y0 + h, x0:x0 + w]

    def invert(self, array: np.ndarray, fill: float | np.ndarray = 0) -> np.ndarray:
        """`(..., h, w)` → `(..., height, width)`: pasted at the box's position on a `fill` canvas.

        `fill` may be per channel (shape `(C,)`), e.g. background probability 1 for softmax output.
        """
        y0, x0, h, w = self.box
        lead = array.shape[:-2]
        canvas = np.empty((*lead, self.height, self.width), dtype=array.dtype)
        canvas[...] = np.reshape(fill, np.shape(fill) + (1, 1)) if np.ndim(fill) else fill
        canvas[..., y0:y0 + h, x0:x0 + w] = array
        return canvas
