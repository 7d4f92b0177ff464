"""Training crops of (case, slice) pairs cut from a volume cache, with 2.5D context, a batch at a time."""
from __future__ import annotations

import numpy as np

from medunet.config import DataConfig
from medunet.data.cache import Cache
from medunet.data.sampler import CropSampler, crop_window, place_crop
from medunet.data.volume_cache import VolumeCache, context_stack


class SliceSampler:
    """Batches of `size`×`size` crops of slices: images `(B, 2K + 1, S, S)` float32 (the slice and
    its K neighbours either side, the edge slice repeated beyond the volume), labels `(B, S, S)` int64.

    A slice is drawn uniformly among all slices of all cases. A share of crops is centred on a
    foreground voxel of the drawn case instead, which also moves it to that voxel's slice: slices
    with foreground are oversampled in proportion to their foreground. Slices smaller than the crop
    lie at a random offset on a zero canvas with background label, as in `CropSampler`.
    """

    def __init__(self, cache: VolumeCache, size: int, rng: np.random.Generator, foreground_share: float = 0.0,
                 context: int = 0) -> None:
        self.cache = cache
        self.size = size
        self.rng = rng
        self.foreground_share = foreground_share
        self.context = context
        self.offsets = np.cumsum([0] + [len(v) for v in cache.volumes])

    def batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.size
        images = np.zeros((batch_size, 2 * self.context + 1, s, s), np.float32)
        labels = np.zeros((batch_size, s, s), np.int64)
        for b in range(batch_size):
            case, k, centre = self._draw()
            stack = context_stack(self.cache.volumes[case], np.array([k]), self.context)[0]
            place_crop(stack, self.cache.labels[case][k], centre, images[b], labels[b], self._window)
        return images, labels

    def _draw(self) -> tuple[int, int, tuple[int, int] | None]:
        """(case, slice, centre or None)."""
        flat = int(self.rng.integers(0, self.offsets[-1]))
        case = int(np.searchsorted(self.offsets, flat, side="right") - 1)
        k, centre = flat - int(self.offsets[case]), None
        if self.rng.random() < self.foreground_share:
            fg = self.cache.foreground(case)
            if fg.size:
                k, y, x = np.unravel_index(int(fg[self.rng.integers(fg.size)]), self.cache.labels[case].shape)
                k, centre = int(k), (int(y), int(x))
        return case, k, centre

    def _window(self, length: int, centre: int | None) -> tuple[slice, slice]:
        return crop_window(self.rng, self.size, length, centre)


def build_sampler(cache: Cache | VolumeCache, cfg: DataConfig, rng: np.random.Generator) -> CropSampler | SliceSampler:
    """The sampler of a training cache: crops of images, or of (case, slice) pairs of volumes."""
    if isinstance(cache, VolumeCache):
        return SliceSampler(cache, cfg.crop_size, rng, cfg.foreground_share or 0.0, cfg.context or 0)
    return CropSampler(cache, cfg.size, rng, cfg.foreground_share, cfg.crop, cfg.crop_margin)
