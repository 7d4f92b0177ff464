"""preprocess(): the one function that turns a raw image into network input, for training and
prediction; `preprocess_volume` the same for the slices of a volume."""
from __future__ import annotations

import numpy as np

from medunet.config import DataConfig
from medunet.transforms.geometry import Geometry
from medunet.transforms.intensity import normalise, normalise_volume


def preprocess(image: np.ndarray, cfg: DataConfig, geometry: Geometry | None = None) -> np.ndarray:
    """Raw image `(H, W)` or `(H, W, 3)` → float32 `(C, h, w)` network input.

    Normalised over the whole image (so a training crop and a whole image at prediction time see
    the same mapping), then the geometry's box at its input scale (default: the whole image at
    `cfg.scale`).
    """
    x = normalise(image, cfg)
    geometry = geometry or Geometry.whole(*x.shape[-2:], cfg.input_scale)
    return np.ascontiguousarray(geometry.apply(x))


def preprocess_volume(slices: np.ndarray, cfg: DataConfig, geometry: Geometry) -> np.ndarray:
    """A volume with its slice axis first, `(S, H, W)` of any dtype → float32 `(S, h, w)`: normalised
    over the whole volume, then every slice through `geometry` (`h, w = geometry.network_shape`).
    The volume cache and the volume predictor both come through here."""
    x = normalise_volume(slices, cfg)
    return np.ascontiguousarray(geometry.apply(x))
