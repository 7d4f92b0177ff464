"""augment(): the tutorial's augment-to-N on disk, and a preview grid of what training sees."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from medunet.io.outputs import staged_folder
from medunet.config import AugmentConfig, augment_preset
from medunet.data.cache import read_split
from medunet.data.encoding import detect_encoding
from medunet.data.pairs import find_pairs, is_volume_dataset
from medunet.errors import ConfigError, DataError
from medunet.io.images import mask_suffix, write_image, write_mask
from medunet.report.overlay import draw_outlines
from medunet.transforms.augment import augment_batch

logger = logging.getLogger(__name__)

BATCH = 32


def augment(split_dir: Path, out: Path, *, to: int = 0, preset: str = "seed", preview: int = 0, seed: int = 0,
            overwrite: bool = False) -> Path:
    """Write `to` augmented image/label pairs of `split_dir` (image/ + label/) into `out`.

    Files keep the source's format and bit depth (JPEG labels become PNG: masks stay lossless);
    names are `<stem>_aug<k>`. With `preview`, `out/preview.png` shows that many samples with
    their label outlines.
    """
    if to < 0 or preview < 0 or (to == 0 and preview == 0):
        raise ConfigError("augment needs --to N (pairs to write) and/or --preview N (samples to show)")
    cfg = augment_preset(preset)
    pairs = find_pairs(Path(split_dir))
    if is_volume_dataset(pairs):
        raise DataError(f"{split_dir}: medunet augment writes 2D images; volumes are augmented slice by "
                        "slice during training, nothing to write beforehand")
    raw = read_split(pairs)
    encoding = detect_encoding(raw.labels)
    labels = [encoding.encode(lab.values, lab.path) for lab in raw.labels]
    generator = torch.Generator().manual_seed(seed)
    with staged_folder(Path(out), overwrite, "augmentation folder") as stage:
        (stage / "image").mkdir()
        (stage / "label").mkdir()
        shown: list[np.ndarray] = []
        for index, image, label in _augmented(raw.images, labels, cfg, max(to, preview), generator):
            source = pairs[index % len(pairs)]
            if len(shown) < preview:
                shown.append(draw_outlines(image, label))
            if index < to:
                name = f"{source.stem}_aug{index:05d}"
                write_image(stage / "image" / f"{name}{source.image.suffix}", image)
                write_mask(stage / "label" / f"{name}{mask_suffix(source.label)}", encoding.decode(label),
                           palette=encoding.palette)
        if preview:
            write_image(stage / "preview.png", _grid(shown))
    logger.info("%d augmented pairs written to %s", to, out)
    return Path(out)


def _augmented(images: list[np.ndarray], labels: list[np.ndarray], cfg: AugmentConfig, n: int,
               generator: torch.Generator):
    """Yield (k, image, label) for k < n, sample k drawn from source k mod len(images).

    Intensities are z-scored per image for the augmentation (its ranges assume that) and mapped
    back to the source's scale and dtype afterwards.
    """
    for start in range(0, n, BATCH):
        ks = list(range(start, min(n, start + BATCH)))
        by_shape: dict[tuple, list[int]] = {}
        for k in ks:
            by_shape.setdefault(images[k % len(images)].shape, []).append(k)
        for group in by_shape.values():
            src = [images[k % len(images)] for k in group]
            x = np.stack([np.moveaxis(np.atleast_3d(im).astype(np.float32), -1, 0) for im in src])
            mean = x.mean(axis=(1, 2, 3), keepdims=True)
            std = np.maximum(x.std(axis=(1, 2, 3), keepdims=True), 1e-6)
            y = torch.from_numpy(np.stack([labels[k % len(labels)] for k in group]).astype(np.int64))
            xa, ya = augment_batch(torch.from_numpy((x - mean) / std), y, cfg, generator)
            back = xa.numpy() * std + mean
            for k, im, arr, lab in zip(group, src, back, ya.numpy()):
                yield k, _to_dtype(np.moveaxis(arr, 0, -1).reshape(im.shape), im.dtype), lab.astype(np.uint8)


def _to_dtype(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def _grid(tiles: list[np.ndarray], columns: int = 4, side: int = 192) -> np.ndarray:
    """RGB tiles resized to `side`×`side` (nearest), laid out in rows of `columns`."""
    rows = -(-len(tiles) // columns)
    grid = np.zeros((rows * side, columns * side, 3), np.uint8)
    for i, tile in enumerate(tiles):
        ys = np.arange(side) * tile.shape[0] // side
        xs = np.arange(side) * tile.shape[1] // side
        r, c = divmod(i, columns)
        grid[r * side:(r + 1) * side, c * side:(c + 1) * side] = tile[ys][:, xs]
    return grid
