"""Shared fixtures: tiny synthetic datasets written to tmp_path, and the real data where present."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def disc_pair(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy grey image with a bright disc, and its 0/255 mask `(h, w)`."""
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    r = rng.uniform(0.15, 0.3) * min(h, w)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8) * 255
    image = np.clip(60 + 0.5 * mask + rng.normal(0, 12, (h, w)), 0, 255).astype(np.uint8)
    return image, mask


def write_split(root: Path, n: int, sizes: list[tuple[int, int]], seed: int, ext: str = ".png",
                label_ext: str = ".png") -> Path:
    """`root/image` and `root/label` with `n` disc pairs, cycling through `sizes` (h, w)."""
    rng = np.random.default_rng(seed)
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir(parents=True)
    for i in range(n):
        image, mask = disc_pair(rng, *sizes[i % len(sizes)])
        _save(root / "image" / f"{i:03d}{ext}", image)
        _save(root / "label" / f"{i:03d}{label_ext}", mask)
    return root


def _save(path: Path, array: np.ndarray) -> None:
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path)


@pytest.fixture
def disc_data(tmp_path: Path) -> Path:
    """DATA with train (8), validation (3) and test (3) splits of 64×64 and 48×80 disc images."""
    data = tmp_path / "data"
    sizes = [(64, 64), (48, 80)]
    write_split(data / "train", 8, sizes, seed=1)
    write_split(data / "validation", 3, sizes, seed=2)
    write_split(data / "test", 3, [(61, 77), (64, 64), (33, 90)], seed=3)
    return data


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained run (small preset, 2 short epochs on 64×64 crops), shared by the tests that only read it."""
    from medunet.api.train import train
    from medunet.config import DataConfig, TrainConfig

    root = tmp_path_factory.mktemp("tiny")
    data = root / "data"
    sizes = [(64, 64), (48, 80)]
    write_split(data / "train", 8, sizes, seed=1)
    write_split(data / "validation", 3, sizes, seed=2)
    write_split(data / "test", 3, [(61, 77), (64, 64), (33, 90)], seed=3)
    # flips whatever the plan would choose: the TTA tests need a network trained with mirror images
    cfg = TrainConfig(epochs=2, batch=4, samples_per_epoch=8, device="cpu", preset="small", augment="flips")
    return train(data, root / "run", data_cfg=DataConfig(size=64), cfg=cfg, progress=False)


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path
