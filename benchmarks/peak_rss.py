"""Peak resident memory of a short training run, for this code or another checkout of medunet.

Usage: .venv/bin/python benchmarks/peak_rss.py drive|demo [--src OTHER/src] [--epochs 1]

Runs `python -m medunet.cli train` in a child process (with OTHER/src first on PYTHONPATH when
given, e.g. an older commit unpacked with `git archive`) and prints the child's peak RSS from
getrusage: what the decoded dataset, the cache and the model cost together.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import OUT, drive, machine

DEMO_ARGS = ["--normalise", "window", "--window=-200,300", "--size", "128"]


def dataset(name: str) -> tuple[Path, list[str]]:
    if name == "drive":
        return drive(), []
    from medunet.data.synthetic import make_dataset

    root = OUT / "demo-data"
    if not (root / "train").is_dir():
        make_dataset(root, seed=0)
    return root, DEMO_ARGS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", choices=("drive", "demo"))
    parser.add_argument("--src", type=Path, help="another checkout's src/ to measure instead of this one")
    parser.add_argument("--epochs", default="1")
    args = parser.parse_args()
    data, extra = dataset(args.dataset)
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = str(args.src.resolve())
    out = OUT / f"rss-{args.dataset}"
    cmd = [sys.executable, "-m", "medunet.cli", "-q", "train", str(data), "--out", str(out), "--overwrite",
           "--epochs", args.epochs, "--samples-per-epoch", "16", "--device", "cpu", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"| {args.dataset} | {args.src or 'this checkout'} | peak RSS {peak_mb:.0f} MB | "
          f"{time.perf_counter() - start:.0f} s | {machine()} |")


if __name__ == "__main__":
    main()
