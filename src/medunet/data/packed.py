"""Masks kept compressed in RAM: what a streaming pass keeps of every label file it reads.

A mask is mostly runs of one value, so zlib at its fastest level shrinks a 512×512 one from
256 KiB to a few KiB; 30,000 masks then fit in a few hundred MB instead of 8 GB, and the checks
and encoding detection that need every mask (pooled value counts) still see every pixel.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from medunet.io.images import LabelFile


class PackedLabel:
    """A `LabelFile` whose `values` are stored zlib-compressed and decompressed on each access
    (a fresh writable `(H, W)` array every time); the other attributes are the file's own."""

    __slots__ = ("path", "lossy", "palette", "colours", "_blob", "_shape", "_dtype")

    def __init__(self, label: LabelFile) -> None:
        self.path: Path = label.path
        self.lossy, self.palette, self.colours = label.lossy, label.palette, label.colours
        values = np.ascontiguousarray(label.values)
        self._blob = zlib.compress(values.tobytes(), 1)
        self._shape, self._dtype = values.shape, values.dtype

    @property
    def values(self) -> np.ndarray:
        return np.frombuffer(bytearray(zlib.decompress(self._blob)), self._dtype).reshape(self._shape)

    @property
    def nbytes(self) -> int:
        """Bytes the compressed values take."""
        return len(self._blob)


class ImageInfo:
    """What a streaming pass keeps of an image file: its shape `(H, W)` or `(H, W, 3)`, dtype, and
    whether its channels differ (`intensity.is_colour`), so the fingerprint needs no pixels."""

    __slots__ = ("shape", "dtype", "colour")

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, colour: bool) -> None:
        self.shape, self.dtype, self.colour = tuple(shape), np.dtype(dtype), colour
