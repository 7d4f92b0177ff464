"""ISBI membranes scored as ANCHORS.md's published 0.890 is scored: the mean of both classes' Dice.

Usage: .venv/bin/python benchmarks/isbi_two_class.py RUN   (a run of `quality.py isbi`, after it)

NVIDIA's UNet_Medical (the source of ANCHORS.md's "U-Net Dice 0.890, 5-fold CV on the 30 training
images") reports `1 - dice_loss`, its loss being the mean over its two softmax classes (cells and
membranes) of a soft Dice. Our headline is the Dice of the membranes alone. This prints, for each
inference variant quality.py wrote (`RUN/bench-*/masks`) and for the out-of-fold probabilities of a
cross-validated run (`RUN/oof/*.npy`, threshold 0.5): the membranes' Dice, the cells' Dice (the
complement of both masks), their mean, and the pixel error (the U-Net paper's 0.0611), each the
mean over images.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import OUT
from PIL import Image

from medunet.metrics import image_metrics


def _prediction(folder: Path, stem: str) -> np.ndarray | None:
    """The membrane mask of one image: a written mask (membranes > 0) or out-of-fold probabilities."""
    if (folder / f"{stem}.png").exists():
        return np.asarray(Image.open(folder / f"{stem}.png")) > 0
    if (folder / f"{stem}.npy").exists():
        probs = np.load(folder / f"{stem}.npy").astype(np.float32)
        return probs[-1] > 0.5   # (1, H, W): the membranes' sigmoid
    return None


def scores(folder: Path, labels: Path) -> tuple[int, np.ndarray]:
    """Per-image (membrane Dice, cell Dice, pixel error), averaged over the images found."""
    rows = []
    for label in sorted(labels.glob("*.png")):
        pred = _prediction(folder, label.stem)
        if pred is None:
            continue
        truth = np.asarray(Image.open(label)) > 127
        membranes = image_metrics(truth.astype(np.uint8), pred.astype(np.uint8), 2)
        cells = image_metrics((~truth).astype(np.uint8), (~pred).astype(np.uint8), 2)
        rows.append((membranes["dice"], cells["dice"], 1.0 - membranes["accuracy"]))
    if not rows:
        raise SystemExit(f"{folder}: no predictions for the labels in {labels}")
    return len(rows), np.mean(rows, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    data = OUT / "isbi-membrane"
    targets = [("out of fold", args.run / "oof", data / "train" / "label")] if (args.run / "oof").is_dir() else []
    targets += [(variant.name.removeprefix("bench-"), variant / "masks", data / "test" / "label")
                for variant in sorted(args.run.glob("bench-*"))]
    print("| predictions | images | membranes | cells | mean of the two | pixel error |\n|---|---:|---:|---:|---:|---:|")
    for name, folder, labels in targets:
        n, (membranes, cells, error) = scores(folder, labels)
        print(f"| {name} | {n} | {membranes:.4f} | {cells:.4f} | {(membranes + cells) / 2:.4f} | {error:.4f} |")


if __name__ == "__main__":
    main()
