"""Where the network's input sits in the original image, recorded so it can be undone exactly.

A Geometry is a crop box inside the original (the part that goes through the network) and an
input scale: the box is shrunk by `scale` (area averaging) on the way in, and the network's
output is resized back to the box (bilinear) and pasted into a canvas of the original size at the
box's position on the way out. Padding to the network's multiple happens inside the model and is
undone there. A slice of a volume resampled to the dataset's in-plane spacing carries its network
grid explicitly (`shape`) instead: resampled in and out with `resample`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from medunet.config import DataConfig
from medunet.transforms.resize import enlarge, resample, scaled_shape, shrink


@dataclass(frozen=True)
class Geometry:
    """Original size `(height, width)`, the box `(y0, x0, h, w)` taken from it, and the input
    scale: the network sees the box at `scaled_shape(h, w, scale)`, or at `shape` when given."""

    height: int
    width: int
    box: tuple[int, int, int, int]
    scale: int = 1
    shape: tuple[int, int] | None = None  # an explicit network grid (non-integer factors)

    @classmethod
    def resampled(cls, height: int, width: int, shape: tuple[int, int]) -> "Geometry":
        """The whole image on an explicit `shape` (in-plane resampling of a volume's slices); the
        integer-scale path when `shape` is the image's own size."""
        shape = (int(shape[0]), int(shape[1]))
        return cls.whole(height, width) if shape == (height, width) else cls(height, width, (0, 0, height, width), 1, shape)

    @classmethod
    def whole(cls, height: int, width: int, scale: int = 1) -> "Geometry":
        return cls(height, width, (0, 0, height, width), scale)

    def scaled(self, scale: int) -> "Geometry":
        """The same box at input scale 1/`scale`."""
        return replace(self, scale=scale)

    @property
    def network_shape(self) -> tuple[int, int]:
        """`(h, w)` of what goes through the network."""
        return self.shape or scaled_shape(self.box[2], self.box[3], self.scale)

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
        """`(C, height, width)` → `(C, *network_shape)`: the box's content, shrunk by the scale."""
        y0, x0, h, w = self.box
        resize = shrink if self.shape is None else resample
        return resize(array[..., y0:y0 + h, x0:x0 + w], self.network_shape)

    def invert(self, array: np.ndarray, fill: float | np.ndarray = 0) -> np.ndarray:
        """`(K, *network_shape)` → `(K, height, width)`: resized back to the box and pasted at its
        position on a `fill` canvas.

        `fill` may be per channel (shape `(K,)`), e.g. background probability 1 for softmax output.
        """
        y0, x0, h, w = self.box
        array = (enlarge if self.shape is None else resample)(array, (h, w))
        lead = array.shape[:-2]
        canvas = np.empty((*lead, self.height, self.width), dtype=array.dtype)
        canvas[...] = np.reshape(fill, np.shape(fill) + (1, 1)) if np.ndim(fill) else fill
        canvas[..., y0:y0 + h, x0:x0 + w] = array
        return canvas


def default_geometry(height: int, width: int, cfg: DataConfig) -> Geometry:
    """What of an image goes through the network when no box is given: the centred crop the
    model was trained on (`--crop-mode center`, `cfg.size` at the input scale), else the whole
    image; at the input scale of `cfg`. Validation, evaluate, tune and predict all come through
    here, so they see the same pixels."""
    if cfg.crop == "center":
        return Geometry.centre_crop(height, width, cfg.crop_size * cfg.input_scale).scaled(cfg.input_scale)
    return Geometry.whole(height, width, cfg.input_scale)
