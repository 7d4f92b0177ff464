"""Random training crops cut from the RAM cache, a whole batch at a time."""
from __future__ import annotations

import numpy as np

from medunet.data.cache import Cache


class CropSampler:
    """Batches of `size`×`size` crops: images `(B, C, S, S)` float32, labels `(B, S, S)` int64.

    Images smaller than the crop are placed at a random offset on a zero canvas (zero is the mean
    after z-scoring) with background label. A share of crops is centred on a foreground pixel.
    """

    def __init__(self, cache: Cache, size: int, rng: np.random.Generator, foreground_share: float = 0.0) -> None:
        self.cache = cache
        self.size = size
        self.rng = rng
        self.foreground_share = foreground_share

    def batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.size
        channels = self.cache.images[0].shape[0]
        images = np.zeros((batch_size, channels, s, s), np.float32)
        labels = np.zeros((batch_size, s, s), np.int64)
        for b, i in enumerate(self.rng.integers(0, len(self.cache), batch_size)):
            image, label = self.cache.images[i], self.cache.labels[i]
            centre = self._foreground_centre(int(i)) if self.rng.random() < self.foreground_share else None
            (sy, dy), (sx, dx) = (self._window(label.shape[a], None if centre is None else centre[a])
                                  for a in (0, 1))
            images[b, :, dy, dx] = image[:, sy, sx]
            labels[b, dy, dx] = label[sy, sx]
        return images, labels

    def _foreground_centre(self, i: int) -> tuple[int, int] | None:
        fg = self.cache.foreground(i)
        if fg.size == 0:
            return None
        return divmod(int(fg[self.rng.integers(fg.size)]), self.cache.labels[i].shape[1])

    def _window(self, length: int, centre: int | None) -> tuple[slice, slice]:
        """(source slice, destination slice) along one axis."""
        s = self.size
        if length >= s:
            if centre is None:
                start = int(self.rng.integers(0, length - s + 1))
            else:
                jitter = int(self.rng.integers(-s // 4, s // 4 + 1))
                start = int(np.clip(centre - s // 2 + jitter, 0, length - s))
            return slice(start, start + s), slice(0, s)
        offset = int(self.rng.integers(0, s - length + 1))
        return slice(0, length), slice(offset, offset + length)
