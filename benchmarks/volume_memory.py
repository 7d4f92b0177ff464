"""Peak memory and time of predicting one CT-sized volume (512×512×300 int16) with a trained run.

Usage: .venv/bin/python benchmarks/volume_memory.py [--run RUN] [--slices 300] [--side 512] [--tta flips]

Without --run, a tiny run is trained first on the synthetic demo volumes (`medunet demo --volumes`
data: 3 mm slices, 1.5 mm pixels, so the big volume is not resampled). The volume is generated
slab by slab from the same synthetic anatomy and written as NIfTI; `medunet predict` then runs in a
child process, whose peak RSS (getrusage) and wall time are printed, with the volume's own size.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import OUT, machine

SLAB = 24  # slices generated at a time


def big_volume(path: Path, slices: int, side: int) -> Path:
    """A CT-like (slices, side, side) int16 volume: synthetic slabs stacked, written as NIfTI."""
    from medunet.data.synthetic_volumes import make_volume, volume_geometry
    from medunet.io.nifti import write_nifti

    volume = np.empty((slices, side, side), np.int16)
    for start in range(0, slices, SLAB):
        stop = min(slices, start + SLAB)
        image, _ = make_volume(np.random.default_rng(start), (stop - start, side, side))
        volume[start:stop] = image
    write_nifti(path, volume, None, volume_geometry(volume.shape), intent="none")
    return path


def tiny_run(root: Path) -> Path:
    from medunet.data.synthetic_volumes import make_volume_dataset

    data = make_volume_dataset(root / "data", counts={"train": 4, "validation": 1})
    run = root / "run"
    subprocess.run([sys.executable, "-m", "medunet.cli", "-q", "train", str(data), "--out", str(run), "--overwrite",
                    "--preset", "small", "--epochs", "1", "--samples-per-epoch", "16", "--device", "cpu"], check=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--tta", default="none")
    args = parser.parse_args()
    root = OUT / "volume-memory"
    (root / "input").mkdir(parents=True, exist_ok=True)
    run = args.run or tiny_run(root)
    volume = big_volume(root / "input" / "ct.nii.gz", args.slices, args.side)
    cmd = [sys.executable, "-m", "medunet.cli", "predict", str(run), str(volume), "--out", str(root / "pred"),
           "--overwrite", "--device", "cpu", "--tta", args.tta]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=dict(os.environ))
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child: predict
    voxels = args.slices * args.side * args.side
    print(f"| predict {args.side}×{args.side}×{args.slices} int16 ({voxels * 2 / 2**20:.0f} MB) | tta {args.tta} | "
          f"peak RSS {peak_mb:.0f} MB | {seconds:.0f} s ({args.slices / seconds:.1f} slices/s) | run {run} | {machine()} |")


if __name__ == "__main__":
    main()
