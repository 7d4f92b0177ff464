"""Random training crops cut from the RAM cache, a whole batch at a time."""
from __future__ import annotations

import numpy as np

from medunet.data.cache import Cache, array_shapes
from medunet.transforms.geometry import Geometry


# One crop: the image's index, then per axis (source slice in the whole image, destination slice in the crop).
Crop = tuple[int, tuple[slice, slice], tuple[slice, slice]]


class CropSampler:
    """Batches of `size`×`size` crops: images `(B, C, S, S)` float32, labels `(B, S, S)` int64.

    Images smaller than the crop are placed at a random offset on a zero canvas with background
    label (zero is the mean after z-scoring, the bottom of the range after window or min-max
    scaling: dark, like the air around a body). A share of crops is centred on a foreground pixel.
    """

    def __init__(self, cache: Cache, size: int, rng: np.random.Generator, foreground_share: float = 0.0,
                 mode: str = "random", margin: int = 16) -> None:
        self.cache = cache
        self.size = size
        self.rng = rng
        self.foreground_share = foreground_share
        # Known once, so a batch reads nothing but its own crops' files from a disk cache; the
        # labels themselves are read only where the label box needs them.
        shapes = array_shapes(cache.labels)
        self.regions = [region(shape, mode, size, margin, cache.labels[i] if mode == "label_box" else None)
                        for i, shape in enumerate(shapes)]
        self.widths = [shape[1] for shape in shapes]
        self.channels = cache.images[0].shape[0] if len(cache) else 1

    def batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.size
        images = np.zeros((batch_size, self.channels, s, s), np.float32)
        labels = np.zeros((batch_size, s, s), np.int64)
        cut_crops(self.windows(batch_size), self.cache.images, self.cache.labels, images, labels)
        return images, labels

    def windows(self, batch_size: int) -> list[Crop]:
        """Where the crops of the next batch come from, without cutting them: per crop the image
        index and, per axis, (source slice in the whole image, destination slice in the crop).
        `batch` cuts them on the host; a cache on the GPU (`engine.feeder.DeviceFeeder`) there."""
        crops = []
        for i in self.rng.integers(0, len(self.cache), batch_size):
            y0, x0, y1, x1 = self.regions[i]
            centre = self._foreground_centre(int(i)) if self.rng.random() < self.foreground_share else None
            if centre is not None:
                centre = (centre[0] - y0, centre[1] - x0)
            (sy, dy), (sx, dx) = (self._window(n, None if centre is None else centre[a])
                                  for a, n in enumerate((y1 - y0, x1 - x0)))
            crops.append((int(i), (_shifted(sy, y0), dy), (_shifted(sx, x0), dx)))
        return crops

    def _foreground_centre(self, i: int) -> tuple[int, int] | None:
        fg = self.cache.foreground(i)
        if fg.size == 0:
            return None
        return divmod(int(fg[self.rng.integers(fg.size)]), self.widths[i])

    def _window(self, length: int, centre: int | None) -> tuple[slice, slice]:
        return crop_window(self.rng, self.size, length, centre)


def cut_crops(crops: list[Crop], images, labels, out_images, out_labels) -> None:
    """Copy each crop's window of `images[i]` `(C, H, W)` and `labels[i]` into row b of
    `out_images` `(B, C, S, S)` and `out_labels` `(B, S, S)`: NumPy arrays or torch tensors alike."""
    for b, (i, (sy, dy), (sx, dx)) in enumerate(crops):
        out_images[b, :, dy, dx] = images[i][:, sy, sx]
        out_labels[b, dy, dx] = labels[i][sy, sx]


def _shifted(part: slice, offset: int) -> slice:
    return slice(part.start + offset, part.stop + offset)


def crop_window(rng: np.random.Generator, s: int, length: int, centre: int | None) -> tuple[slice, slice]:
    """(source slice, destination slice) of an `s`-pixel crop along an axis of `length` pixels:
    random, or about `centre` with a jitter of a quarter crop; a shorter axis lands at a random
    offset of the crop."""
    if length >= s:
        if centre is None:
            start = int(rng.integers(0, length - s + 1))
        else:
            jitter = int(rng.integers(-s // 4, s // 4 + 1))
            start = int(np.clip(centre - s // 2 + jitter, 0, length - s))
        return slice(start, start + s), slice(0, s)
    offset = int(rng.integers(0, s - length + 1))
    return slice(0, length), slice(offset, offset + length)


def place_crop(image: np.ndarray, label: np.ndarray, centre: tuple[int, int] | None, out_image: np.ndarray,
               out_label: np.ndarray, window) -> None:
    """Cut a crop of `image` `(C, H, W)` and `label` `(H, W)` (about `centre`, or random) into
    `out_image` `(C, S, S)` and `out_label` `(S, S)`; `window(length, centre)` gives each axis."""
    (sy, dy), (sx, dx) = (window(label.shape[a], None if centre is None else centre[a]) for a in (0, 1))
    out_image[:, dy, dx] = image[:, sy, sx]
    out_label[dy, dx] = label[sy, sx]


def region(shape: tuple[int, ...], mode: str, size: int, margin: int,
           label: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """The part `(y0, x0, y1, x1)` of an image that training crops come from.

    random: the whole image; center: the centred `size`×`size` box (the tutorial's hand-made
    crops); label_box: the label's bounding box plus `margin` (the whole image when it is empty),
    grown to at least `size` along each axis with the image's own surrounding pixels, so a crop
    shows real background around a small object instead of a blank canvas. `shape` is the
    label's `(H, W)`; `label` itself is needed for label_box only.
    """
    h, w = shape
    if mode == "center":  # the same box the Predictor sends through the network for such a run
        y0, x0, ch, cw = Geometry.centre_crop(h, w, size).box
        return y0, x0, y0 + ch, x0 + cw
    if mode == "label_box" and label is not None and label.any():
        rows, cols = np.flatnonzero(label.any(axis=1)), np.flatnonzero(label.any(axis=0))
        y0, y1 = _at_least(rows[0] - margin, rows[-1] + 1 + margin, size, h)
        x0, x1 = _at_least(cols[0] - margin, cols[-1] + 1 + margin, size, w)
        return y0, x0, y1, x1
    return 0, 0, h, w


def _at_least(start: int, stop: int, size: int, length: int) -> tuple[int, int]:
    """`[start, stop)` clipped to `[0, length)` and grown about its centre to `size` (or `length`),
    shifted inwards where it would cross an edge."""
    start, stop = max(0, int(start)), min(length, int(stop))
    need = min(size, length) - (stop - start)
    if need > 0:
        start = max(0, start - need // 2)
        stop = start + max(stop - start, min(size, length))
        if stop > length:
            start, stop = start - (stop - length), length
    return start, stop
