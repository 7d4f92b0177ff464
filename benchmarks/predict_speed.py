"""Files-to-files prediction speed on this machine: a folder of 512×512 PNGs, and one 2048×2048 image in tiles.

Usage: .venv/bin/python benchmarks/predict_speed.py RUN [--n 32]
RUN is any trained run (e.g. the demo's runs/demo/run); timing covers reading, inference,
post-processing and writing, through `medunet predict`.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import OUT, machine

import medunet as mu


def folder(root: Path, n: int, side: int) -> Path:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (side, side), dtype=np.uint8)).save(root / f"{i:04d}.png")
    return root


def timed(run: Path, images: Path, **options) -> float:
    start = time.perf_counter()
    mu.predict(run, images, OUT / "predict-speed-out", overwrite=True, progress=False, **options)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--n", type=int, default=32)
    args = parser.parse_args()
    small = folder(OUT / "png512", args.n, 512)
    big = folder(OUT / "png2048", 1, 2048)
    timed(args.run, folder(OUT / "warm", 2, 512))  # first call pays the oneDNN kernel choice
    s512 = timed(args.run, small)
    s2048 = timed(args.run, big, max_size=1024)
    s512_tta = timed(args.run, small, tta="flips")
    print(f"machine: {machine()}")
    print(f"| {args.n} PNGs 512×512, files to files | {args.n / s512:.2f} img/s |")
    print(f"| same with --tta flips | {args.n / s512_tta:.2f} img/s |")
    print(f"| one 2048×2048 PNG, tiles of 1024, overlap 0.25 | {s2048:.2f} s |")


if __name__ == "__main__":
    main()
