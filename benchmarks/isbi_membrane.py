"""ISBI 2012 membranes (foreground = membrane), images 0–23 train / 24–29 test, default settings, a time budget.

Usage: .venv/bin/python benchmarks/isbi_membrane.py [--time 10m] [--augment default]
The anchor (ANCHORS.md): MONAI BasicUNet 0.810 test Dice in 10 minutes on the same 2-core CPU.
"""
from __future__ import annotations

import argparse
import json

from common import OUT, isbi_membranes, machine, medunet

ANCHOR = 0.810


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--time", default="10m")
    parser.add_argument("--augment", default="default")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()
    data = isbi_membranes(OUT / "isbi-membrane")
    run = OUT / f"isbi-run-{args.augment}"
    train_s = medunet("train", str(data), "--out", str(run), "--time", args.time, "--augment", args.augment,
                      "--overwrite", *args.extra)
    medunet("-q", "evaluate", str(run), str(data / "test"), "--out", str(run / "eval-test"), "--overwrite")
    summary = json.loads((run / "eval-test" / "summary.json").read_text())
    dice = summary["dice_mean"]
    print(f"| isbi membranes | {args.time} | augment {args.augment} | train {train_s:.0f} s | "
          f"test Dice {dice:.4f} | anchor {ANCHOR} | ratio {dice / ANCHOR:.3f} | {machine()} |")


if __name__ == "__main__":
    main()
