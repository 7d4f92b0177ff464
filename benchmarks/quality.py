"""Test Dice after a fixed CPU time budget, with each augmentation preset and each inference option.

Usage: .venv/bin/python benchmarks/quality.py isbi|drive|cvc|hippocampus [--time 10m] [--augment default]
                                             [--extra --context 1 ...]
  isbi : ISBI 2012 membranes as foreground, images 0–23 train / 24–29 test (ANCHORS.md: MONAI
         BasicUNet 0.810 in 10 minutes on the same 2-core CPU)
  drive: DRIVE official split; vessel F1 inside the field of view (published U-Net 0.825; ANCHORS.md
         10-minute CPU anchor: BasicUNet Dice 0.789 over the whole image)
  cvc  : CVC-ClinicDB subset split by sequence (frames ≥ 504 test)
  hippocampus: MSD Task04 volumes, every 5th case by sorted name as test (52), the other 208 to
         train; mean 3D Dice over the two classes and the 52 cases (ANCHORS.md: MONAI BasicUNet on
         2D slices 0.783 in 10 minutes on the 2-core Xeon; benchmarks/anchor_basicunet.py hippocampus)
Prints one markdown row per inference variant: plain (threshold 0.5), TTA flips, tuned
post-processing, both.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from common import OUT, cvc_by_sequence, drive, f1_inside_fov, hippocampus, isbi_membranes, machine, medunet

import medunet as mu

ANCHORS = {"isbi": 0.810, "drive": 0.789, "cvc": 0.261, "hippocampus": 0.783}


def prepare(name: str) -> Path:
    if name == "isbi":
        return isbi_membranes(OUT / "isbi-membrane")
    if name == "cvc":
        return cvc_by_sequence(OUT / "cvc-by-sequence")
    if name == "hippocampus":
        return hippocampus(OUT / "hippocampus-split")
    return drive()


def score(name: str, run: Path, data: Path, variant: str, **options) -> float:
    """Mean test Dice (DRIVE: pooled F1 inside the FOV) of one inference variant."""
    out = run / f"bench-{variant}"
    shutil.rmtree(out, ignore_errors=True)
    if name == "drive":
        mu.predict(run, data / "test" / "image", out, overwrite=True, progress=False, **options)
        return f1_inside_fov(out, data / "test")
    summary = mu.evaluate(run, data / "test", out, overwrite=True, **options)
    if "per_class" in summary:  # hippocampus: the two classes' mean 3D Dice beside the headline
        print(f"  {variant}: per class " + ", ".join(f"{k}: {c['dice_mean']:.4f}" for k, c in summary["per_class"].items()))
    return summary["dice_mean"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", choices=sorted(ANCHORS))
    parser.add_argument("--time", default="10m")
    parser.add_argument("--augment", default="default")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()
    data = prepare(args.dataset)
    run = OUT / f"{args.dataset}-{args.augment}-{args.time}{''.join(args.extra).replace('-', '_')}"
    train_s = medunet("-q", "train", str(data), "--out", str(run), "--time", args.time, "--augment", args.augment,
                      "--overwrite", *args.extra)
    epochs = len((run / "history.csv").read_text().strip().splitlines()) - 1
    tuned = json.dumps(mu.load_model(run).post.to_dict())
    variants = {"plain": dict(postprocess=False), "tta": dict(tta="flips", postprocess=False),
                "tuned": dict(), "tta+tuned": dict(tta="flips")}
    for variant, options in variants.items():
        value = score(args.dataset, run, data, variant, **options)
        anchor = ANCHORS[args.dataset]
        print(f"| {args.dataset} | {args.time} | {args.augment} | {variant} | {value:.4f} | "
              f"{value / anchor:.3f} × {anchor} | {epochs} epochs, {train_s:.0f} s |", flush=True)
    print(f"tuned post-processing: {tuned}; machine: {machine()}")


if __name__ == "__main__":
    main()
