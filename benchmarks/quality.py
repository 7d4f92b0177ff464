"""Test Dice after a fixed CPU time budget with the default settings (the plan), for each inference variant.

Usage: .venv/bin/python benchmarks/quality.py isbi|drive|cvc|busi|hippocampus [--time 10m] [--seed 0] [--folds K]
                                              [--augment auto] [--extra ARGS...]
  isbi : ISBI 2012 membranes as foreground, images 0–23 train / 24–29 test, mean Dice over the 6
  drive: DRIVE official split; vessel F1 inside the field of view, pooled over the 20 test images
  cvc  : CVC-ClinicDB subset split by sequence (frames ≥ 504 test), mean Dice
  busi : BUSI breast ultrasound as shipped (74 train / 24 test), mean Dice
  hippocampus: MSD Task04 volumes, every 5th case by sorted name as test (52), the other 208 to
         train; mean 3D Dice over the two classes and the 52 cases (ANCHORS.md: MONAI BasicUNet on
         2D slices 0.783 in 10 minutes on the 2-core Xeon; benchmarks/anchor_basicunet.py hippocampus)
Prints one markdown row per inference variant (plain threshold 0.5, TTA flips, tuned
post-processing, both) with the plan's input scale and crop, the epochs trained and the seconds.
With --folds K the run is cross-validated inside the same budget and the rows are the fold
ensemble's. The anchor (benchmarks/anchor_basicunet.py) must be run on the same machine beside it.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from common import OUT, SHARED, cvc_by_sequence, drive, f1_inside_fov, hippocampus, isbi_membranes, machine, medunet

import medunet as mu


def prepare(name: str) -> Path:
    if name == "isbi":
        return isbi_membranes(OUT / "isbi-membrane")
    if name == "cvc":
        return cvc_by_sequence(OUT / "cvc-by-sequence")
    if name == "busi":
        return SHARED / "busi-ultrasound"
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


def trained_epochs(run: Path) -> str:
    histories = sorted(run.glob("folds/*/history.csv")) or [run / "history.csv"]
    return "+".join(str(len(h.read_text().strip().splitlines()) - 1) for h in histories)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", choices=("isbi", "drive", "cvc", "busi", "hippocampus"))
    parser.add_argument("--time", default="10m")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--folds", type=int)
    parser.add_argument("--augment", default="auto")
    parser.add_argument("--tag", default="", help="run folder suffix")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()
    data = prepare(args.dataset)
    folds = ["--folds", str(args.folds)] if args.folds else []
    run = OUT / f"{args.dataset}-{args.time}-s{args.seed}{'-cv' + str(args.folds) if args.folds else ''}{args.tag}"
    train_s = medunet("-q", "train", str(data), "--out", str(run), "--time", args.time, "--augment", args.augment,
                      "--seed", args.seed, "--overwrite", *folds, *args.extra)
    config = json.loads((run / "config.json").read_text())
    setting = f"scale 1/{config['data']['scale']}, crop {config['data']['size']}, {config['train']['preset']}"
    variants = {"plain": dict(postprocess=False), "tta": dict(tta="flips", postprocess=False),
                "tuned": dict(), "tta+tuned": dict(tta="flips")}
    for variant, options in variants.items():
        value = score(args.dataset, run, data, variant, **options)
        print(f"| {args.dataset} | {args.time} | seed {args.seed} | {'cv' + str(args.folds) if args.folds else 'single'} "
              f"| {variant} | {value:.4f} | {setting} | {trained_epochs(run)} epochs, {train_s:.0f} s |", flush=True)
    print(f"extra: {' '.join(args.extra) or '-'}; machine: {machine()}")


if __name__ == "__main__":
    main()
