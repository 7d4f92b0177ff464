"""Training on a dataset larger than RAM with the disk cache: peak RSS and seconds per step.

Usage: .venv/bin/python benchmarks/larger_than_ram.py FOLDER [--n 30000] [--size 512] [--n-ram 2000]
       [--n-val 200] [--steps 50] [--batch 8] [--crop 256]

Writes FOLDER/big (`--n` train images of `--size`², uint8 TIFF, masks as PNG, plus `--n-val`
validation pairs) and FOLDER/small (the first `--n-ram` of them, hard links), refusing when the
disk lacks room for the files and the cache. Then trains the same number of steps three times,
each in a child process whose peak RSS comes from `wait4`: `--cache ram` on small, `--cache disk`
on small (the cache alone) and `--cache disk` on big (the bar). Seconds per step are `batch /
images_per_s` of history.csv, the median over the epochs after the first that did not validate.
Prints one markdown row per run with `machine()`. The default size (30,000 × 512²: ≈ 8 GB of
files, ≈ 40 GB of cache) takes long; `--n 3000` gives a quick version. A cache folder left by an
earlier call is reused, so a second call times training alone.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from common import machine

EPOCHS = 6   # the first is warm-up (page cache, allocator); steps are timed over the others


def shapes(rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy uint8 image `(side, side)` with one to three bright ellipses, and its 0/255 mask."""
    yy, xx = np.ogrid[:side, :side]
    mask = np.zeros((side, side), bool)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.2, 0.8, 2) * side
        ry, rx = rng.uniform(0.03, 0.15, 2) * side
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    image = rng.integers(40, 110, (side, side), dtype=np.uint8)
    image[mask] += 90
    return image, mask.astype(np.uint8) * 255


def write_split(root: Path, n: int, side: int, seed: int) -> None:
    """`root/image/NNNNNN.tif` (uncompressed: fast to write and read) and `root/label/NNNNNN.png`."""
    if (root / "label").is_dir() and len(list((root / "label").iterdir())) == n:
        return
    shutil.rmtree(root, ignore_errors=True)
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, mask = shapes(rng, side)
        tifffile.imwrite(root / "image" / f"{i:06d}.tif", image)
        Image.fromarray(mask).save(root / "label" / f"{i:06d}.png", compress_level=1)


def linked_subset(src: Path, dst: Path, n: int) -> None:
    """The first `n` pairs of `src` as hard links in `dst` (no second copy of the pixels)."""
    if (dst / "label").is_dir() and len(list((dst / "label").iterdir())) == n:
        return
    shutil.rmtree(dst, ignore_errors=True)
    for sub in ("image", "label"):
        (dst / sub).mkdir(parents=True)
        for path in sorted((src / sub).iterdir())[:n]:
            os.link(path, dst / sub / path.name)


def check_room(folder: Path, n: int, side: int) -> None:
    """Refuse before writing when the files and the disk cache would not fit on the disk."""
    need = n * side * side * (1 + 4 + 1) * 1.1   # uint8 TIFF, float32 cache, uint8 cached label
    free = shutil.disk_usage(folder).free
    if free < need:
        sys.exit(f"{folder}: {free / 1e9:.1f} GB free, the dataset and its cache need about {need / 1e9:.1f} GB")


def train(data: Path, run: Path, cache: str, cache_dir: Path, args: argparse.Namespace) -> tuple[float, float]:
    """Train in a child process; (peak RSS in MB, median seconds per step after the first epoch)."""
    cmd = [sys.executable, "-m", "medunet.cli", "-q", "train", str(data), "--out", str(run), "--overwrite",
           "--cache", cache, "--cache-dir", str(cache_dir), "--epochs", str(EPOCHS),
           "--samples-per-epoch", str(args.steps * args.batch), "--batch", str(args.batch),
           "--size", str(args.crop), "--scale", "1", "--preset", args.preset, "--device", args.device,
           "--normalise", "zscore", "--precision", "fp32"]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"training failed: {' '.join(cmd)}")
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))[1:]
    # an epoch that ended in validation counts its time too: time the others where there are some
    trained = [r for r in rows if r["val_dice"] == "nan"] or rows
    return usage.ru_maxrss / 1024, float(np.median([args.batch / float(r["images_per_s"]) for r in trained]))


def sampler_ms(cache, crop: int, batch: int, n: int = 200) -> float:
    """Milliseconds to cut one batch of crops (the data path alone, no model) from `cache`."""
    from medunet.data.sampler import CropSampler

    sampler = CropSampler(cache, crop, np.random.default_rng(0), foreground_share=0.5)
    sampler.batch(batch)
    start = time.perf_counter()
    for _ in range(n):
        sampler.batch(batch)
    return 1000 * (time.perf_counter() - start) / n


def data_path(cache_dir: Path, n_ram: int, crop: int, batch: int) -> str:
    """Batch-cutting time from the largest training disk cache, and from the same arrays of the
    small one's first `n_ram` images held in RAM."""
    from medunet.data.cache import Cache
    from medunet.data.disk_cache import DiskCache

    folders = [DiskCache.open(f) for f in cache_dir.iterdir() if (f / "index.json").is_file()]
    disk = max(folders, key=len)
    small = disk.subset(list(range(min(n_ram, len(disk)))))
    ram = Cache(list(small.stems), [np.array(a) for a in small.images], [np.array(a) for a in small.labels])
    d, r = sampler_ms(disk, crop, batch), sampler_ms(ram, crop, batch)
    return f"cutting a batch of {batch} crops: {d:.2f} ms from the disk cache ({len(disk):,} images), " \
           f"{r:.2f} ms from RAM ({len(ram):,})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--n", type=int, default=30_000, help="training images of the large dataset")
    parser.add_argument("--size", type=int, default=512, help="image side")
    parser.add_argument("--n-ram", type=int, default=2000, help="training images of the subset that fits in RAM")
    parser.add_argument("--n-val", type=int, default=200, help="validation images (both datasets)")
    parser.add_argument("--steps", type=int, default=50, help="training steps per epoch")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    check_room(args.folder, args.n + args.n_ram + 2 * args.n_val, args.size)
    big, small = args.folder / "big", args.folder / "small"
    start = time.perf_counter()
    write_split(big / "train", args.n, args.size, seed=0)
    write_split(big / "validation", args.n_val, args.size, seed=1)
    linked_subset(big / "train", small / "train", args.n_ram)
    linked_subset(big / "validation", small / "validation", args.n_val)
    print(f"dataset written in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    cache_dir = args.folder / "cache"
    runs = [("ram", small, args.n_ram), ("disk", small, args.n_ram), ("disk", big, args.n)]
    print("| cache | train images | decoded float32 | peak RSS | s/step | vs RAM | machine |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    for cache, data, n in runs:
        started = time.perf_counter()
        rss, step = train(data, args.folder / f"run-{cache}-{n}", cache, cache_dir, args)
        results[(cache, n)] = step
        ratio = step / results[("ram", args.n_ram)]
        print(f"| {cache} | {n:,} × {args.size}² | {n * args.size ** 2 * 4 / 1e9:.1f} GB | {rss:.0f} MB | "
              f"{step:.3f} | {ratio:.2f} | {machine()}, {time.perf_counter() - started:.0f} s |", flush=True)
    print(f"disk (large) / ram (small) per step: {results[('disk', args.n)] / results[('ram', args.n_ram)]:.2f}")
    print(data_path(cache_dir, args.n_ram, args.crop, args.batch))


if __name__ == "__main__":
    main()
