"""Decode every file once into arrays in RAM; batches are cut from these arrays, never from files."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medunet.config import DataConfig
from medunet.data.encoding import LabelEncoding
from medunet.data.pairs import Pair, is_volume_dataset
from medunet.errors import DataError
from medunet.io.images import LabelFile, read_image, read_label
from medunet.io.volumes import Volume
from medunet.transforms.geometry import default_geometry
from medunet.transforms.preprocess import preprocess
from medunet.transforms.resize import shrink_labels


@dataclass
class RawSplit:
    """Decoded files of one split: images as stored (`(H, W)` or `(H, W, 3)`) and raw labels; for
    a volume dataset `Volume`s and LabelFiles of `(Z, Y, X)` class ids (`volume_cache`).

    An indexed split (a dataset cached on disk, `decode_dataset(..., cache="disk")`) holds no
    pixels: `ImageInfo`s and compressed labels (`packed`); its images are read again from the files.
    """

    pairs: list[Pair]
    images: list[np.ndarray]
    labels: list[LabelFile]


@dataclass
class Cache:
    """Network-ready arrays of one split: `images[i]` float32 `(C, h, w)`, `labels[i]` uint8.

    A training cache holds whole images at the input scale and labels on the same grid (what
    crops are cut from). A validation cache holds exactly what the Predictor sends through the
    network (`default_geometry`: the whole image, or the centred crop, at the input scale) and
    the labels at the original size, so validation Dice is measured where `evaluate` measures it.
    """

    stems: list[str]
    images: list[np.ndarray]
    labels: list[np.ndarray]
    _foreground: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: list[int]) -> "Cache":
        """The cache of the images at `indices` (the arrays are shared, not copied)."""
        return Cache([self.stems[i] for i in indices], [self.images[i] for i in indices],
                     [self.labels[i] for i in indices])

    def foreground(self, i: int) -> np.ndarray:
        """Flat indices of foreground pixels of image i (computed once, for foreground sampling).

        int32 where the image allows it (under 2**31 pixels): half the memory of numpy's int64.
        """
        if i not in self._foreground:
            flat = np.flatnonzero(self.labels[i])
            self._foreground[i] = flat.astype(np.int32) if self.labels[i].size < 2**31 else flat
        return self._foreground[i]


def array_shapes(arrays) -> list[tuple[int, ...]]:
    """The shapes of a cache's `images` or `labels`, without reading a disk cache's files."""
    shapes = getattr(arrays, "shapes", None)   # a disk cache's files (`disk_cache.NpyFiles`)
    return list(shapes) if shapes is not None else [a.shape for a in arrays]


def array_nbytes(arrays) -> int:
    """Bytes of a cache's `images` or `labels` once in memory, without reading a disk cache's files."""
    nbytes = getattr(arrays, "nbytes", None)
    return int(nbytes) if nbytes is not None else sum(int(a.nbytes) for a in arrays)


def read_split(pairs: list[Pair], decoded: dict[Path, Any] | None = None) -> RawSplit:
    """Read every image and label of a split once; a size mismatch names both files.

    `decoded` ({resolved path: array or LabelFile}, from the doctor's quick check) is used instead
    of reading a file again.
    """
    if is_volume_dataset(pairs):
        from medunet.data.volume_cache import read_volume_split  # noqa: PLC0415 (it builds on this module)

        return read_volume_split(pairs, decoded)
    decoded = decoded or {}
    images, labels = [], []
    for pair in pairs:
        image, label = read_pair(pair, decoded.get(pair.image.resolve()), decoded.get(pair.label.resolve()))  # type: ignore[union-attr]
        images.append(image)
        labels.append(label)
    return RawSplit(pairs, images, labels)


def index_split(pairs: list[Pair], index: dict[Path, Any]) -> RawSplit:
    """The indexed split of `pairs` (no pixels): each image's `ImageInfo` and each label's
    `PackedLabel` from a scan that kept no pixels (`doctor.check_and_read(..., pixels=False)`)."""
    return RawSplit(list(pairs), [index[p.image.resolve()] for p in pairs],
                    [index[p.label.resolve()] for p in pairs])  # type: ignore[union-attr]


def read_pair(pair: Pair, image: np.ndarray | None = None, label: LabelFile | None = None) -> tuple[np.ndarray, LabelFile]:
    """The image and label of `pair` (those given are not read again); a size mismatch names both files."""
    image = read_image(pair.image) if image is None else image
    label = read_label(pair.label) if label is None else label  # type: ignore[arg-type]
    if image.shape[:2] != label.values.shape:
        (ih, iw), (lh, lw) = image.shape[:2], label.values.shape
        raise DataError(f"{pair.label}: label is {lw}×{lh} (W×H), image {pair.image.name} is {iw}×{ih}")
    return image, label


def build_cache(raw: RawSplit, data_cfg: DataConfig, encoding: LabelEncoding, consume: bool = False,
                training: bool = True) -> Cache:
    """Preprocess images with the shared function and encode labels to class indices: a training
    cache (`training`) or a validation one (see `Cache`).

    With `consume`, each decoded file is dropped from `raw` as soon as its cached form exists, so
    the decoded split and the float32 cache are never both whole in memory (`raw` ends up empty).
    A volume split gives a `VolumeCache` (`volume_cache.build_volume_cache`).
    """
    if raw.images and isinstance(raw.images[0], Volume):
        from medunet.data.volume_cache import build_volume_cache  # noqa: PLC0415

        return build_volume_cache(raw, data_cfg, encoding, consume, training)  # type: ignore[return-value]
    cache = Cache(stems=[p.stem for p in raw.pairs], images=[], labels=[])
    for i in each_file(raw, consume):
        image, label = cache_entry(raw.images[i], raw.labels[i], data_cfg, encoding, training)
        cache.images.append(image)
        cache.labels.append(label)
    return cache


def cache_entry(image: np.ndarray, label: LabelFile, data_cfg: DataConfig, encoding: LabelEncoding,
                training: bool) -> tuple[np.ndarray, np.ndarray]:
    """What a cache holds of one file: the float32 `(C, h, w)` network input and the uint8 class
    ids (on the input grid for training, at the original size for validation; see `Cache`). The
    RAM and the disk cache (`disk_cache`) both come through here, so they hold the same arrays."""
    classes = encoding.encode(label.values, label.path)
    if training:
        x = preprocess(image, data_cfg)
        return x, shrink_labels(classes, x.shape[-2:])
    return preprocess(image, data_cfg, default_geometry(*classes.shape, data_cfg)), classes


def each_file(raw: RawSplit, consume: bool) -> Iterator[int]:
    """The indices of `raw`'s files; with `consume`, file i is let go as soon as the loop's body for
    it is done, and `raw` ends empty."""
    for i in range(len(raw.images)):
        yield i
        if consume:
            raw.images[i] = raw.labels[i] = None  # type: ignore[call-overload]
    if consume:
        raw.images.clear()
        raw.labels.clear()


def build_caches(raw: RawSplit, data_cfg: DataConfig, encoding: LabelEncoding) -> tuple[Cache, Cache]:
    """A training and a validation cache of the same files (cross-validation: every file is in
    both, on different folds), consuming `raw`. Where the two roles hold the same arrays (input
    scale 1, no centred crop) they share them, so the second costs no memory. Volumes: the
    `VolumeCache` pair of `volume_cache.build_volume_caches`."""
    if raw.images and isinstance(raw.images[0], Volume):
        from medunet.data.volume_cache import build_volume_caches  # noqa: PLC0415

        return build_volume_caches(raw, data_cfg, encoding)  # type: ignore[return-value]
    if roles_share(data_cfg):
        cache = build_cache(raw, data_cfg, encoding, consume=True)
        return cache, Cache(list(cache.stems), list(cache.images), list(cache.labels))
    val = build_cache(raw, data_cfg, encoding, training=False)
    return build_cache(raw, data_cfg, encoding, consume=True), val


def roles_share(data_cfg: DataConfig) -> bool:
    """Whether a training and a validation cache of the same files hold the same arrays (input
    scale 1, no centred crop), so one can serve as both."""
    return data_cfg.input_scale == 1 and data_cfg.crop != "center"


def area_stats(cache: Cache) -> dict[str, float]:
    """Foreground share of the labels: min and max over non-empty labels, mean over all, empty share."""
    shares = np.array([float(np.mean(label > 0)) for label in cache.labels])
    present = shares[shares > 0]
    if present.size == 0:
        return {}
    return {"min": float(present.min()), "max": float(present.max()), "mean": float(shares.mean()),
            "empty_share": float(np.mean(shares == 0))}
