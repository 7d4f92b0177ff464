"""Training data in memory: the network-ready cache alone, not the decoded files beside it."""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import tifffile
import torch

from medunet.api.train import load_dataset
from medunet.config import DataConfig, TrainConfig
from medunet.data.cache import Cache


def write_uint16_split(root: Path, n: int, side: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for sub in ("image", "label"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        mask = np.zeros((side, side), np.uint8)
        mask[side // 4: side // 2, side // 4: side // 2] = 255
        image = (rng.integers(0, 4000, (side, side)) + 3000 * (mask > 0)).astype(np.uint16)
        tifffile.imwrite(root / "image" / f"{i:03d}.tif", image)
        tifffile.imwrite(root / "label" / f"{i:03d}.tif", mask)


def test_decoded_files_are_let_go_once_cached(tmp_path: Path) -> None:
    """Training kept the decoded split (here uint16: half the float32 cache again) alive beside
    the cache for the whole run."""
    data = tmp_path / "data"
    # 256² so that what loading holds besides the images (the fingerprint's and the plan's own
    # arrays, ~0.7 MB) stays well under half the decoded split; at 128² it sat at the margin
    write_uint16_split(data / "train", 24, 256, seed=0)
    write_uint16_split(data / "validation", 4, 256, seed=1)
    tracemalloc.start()
    try:
        dataset = load_dataset(data, DataConfig(size=64, scale=1), TrainConfig(epochs=1), torch.device("cpu"))
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    caches = (dataset.train, dataset.val)
    cached = sum(a.nbytes for c in caches for a in c.images + c.labels)
    decoded = 28 * 256 * 256 * (2 + 1)   # uint16 image + uint8 label per pair
    assert cached <= held < cached + decoded / 2, (held, cached, decoded)
    # while the cache is built, each decoded file goes as its cached form comes: never both whole
    assert peak < cached + decoded / 2, (peak, cached, decoded)


def test_foreground_indices_take_four_bytes() -> None:
    label = np.zeros((300, 200), np.uint8)
    label[10:20, 30:40] = 1
    cache = Cache(["a"], [np.zeros((1, 300, 200), np.float32)], [label])
    fg = cache.foreground(0)
    assert fg.dtype == np.int32 and fg.size == 100
    assert divmod(int(fg[0]), 200) == (10, 30)
