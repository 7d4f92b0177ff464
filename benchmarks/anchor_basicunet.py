"""The ANCHORS.md CPU anchor, run on this machine: MONAI BasicUNet trained for a fixed time.

Usage: .venv/bin/python benchmarks/anchor_basicunet.py isbi|drive|cvc|busi|hippocampus [--time 10m] [--seed 0]

The recipe of ../shared/docs/ANCHORS.md ("Quality per CPU budget"): MONAI BasicUNet with its default
widths, random 256×256 crops with flips and 90° rotations, Adam 1e-3, BCE + Dice, batch 4, fp32,
per-image z-score of the (mean-channel) image; test Dice on whole images (ISBI, CVC, BUSI: mean
over the test images; DRIVE: pooled over the 20 test images and the whole image, as ANCHORS.md
states it, and also the F1 inside the field of view that medunet's DRIVE rows report).
A time budget only means something beside the anchor measured on the same machine in the same
session, so every budget figure in BENCHMARKS.md is a ratio to this script's result.

hippocampus (ANCHORS.md, "volumes"): the same split as `quality.py hippocampus` (every 5th case by
sorted name as test); BasicUNet on 2D slices along Z, each zero-padded to 64×64, per-volume
z-score, DiceCE over the three label ids (softmax), random horizontal and vertical flips, batch 32,
Adam 1e-3, fp32; test: every slice predicted, stacked, 3D Dice per case and class, mean over both.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import OUT, SHARED, cvc_by_sequence, drive, hippocampus, isbi_membranes, machine, parse_time
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet
from PIL import Image

from medunet.data.pairs import find_pairs
from medunet.io.images import read_image


def load(split_dir) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images as z-scored float32 `(H, W)` (colour averaged) and labels as {0, 1} `(H, W)`."""
    images, labels = [], []
    for pair in find_pairs(split_dir):
        x = read_image(pair.image).astype(np.float32)
        x = x.mean(axis=-1) if x.ndim == 3 else x
        images.append((x - x.mean()) / max(float(x.std()), 1e-6))
        labels.append((np.asarray(Image.open(pair.label)) > 127).astype(np.float32))
    return images, labels


def batch(images, labels, rng: np.random.Generator, size: int = 256, n: int = 4):
    xs, ys = [], []
    for i in rng.integers(0, len(images), n):
        h, w = images[i].shape
        y0, x0 = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        x, y = images[i][y0:y0 + size, x0:x0 + size], labels[i][y0:y0 + size, x0:x0 + size]
        k = int(rng.integers(4))
        x, y = _flips(np.rot90(x, k), np.rot90(y, k), rng)
        xs.append(x.copy())
        ys.append(y.copy())
    return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys)[:, None])


def _flips(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A left-right flip, then an up-down flip, each with probability 1/2, of an image and its label."""
    if rng.random() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    if rng.random() < 0.5:
        x, y = x[::-1], y[::-1]
    return x, y


def confusion(truth: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """True positives, false positives, false negatives of two boolean masks."""
    return int(np.sum(truth & pred)), int(np.sum(~truth & pred)), int(np.sum(truth & ~pred))


def train_for(model, loss_fn, next_batch, budget: float) -> tuple[int, float]:
    """Adam 1e-3 steps on `next_batch()` until `budget` seconds have passed; (images seen, seconds)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen, start = 0, time.perf_counter()
    model.train()
    while time.perf_counter() - start < budget:
        x, y = next_batch()
        optimiser.zero_grad()
        loss_fn(model(x), y).backward()
        optimiser.step()
        seen += len(x)
    return seen, time.perf_counter() - start


SLICE = 64  # hippocampus slices (at most 56 × 59 voxels) zero-padded to this square


def load_slices(split_dir) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every Z slice of every volume, z-scored per volume and padded to SLICE²: images float32,
    labels int64 (0, 1, 2)."""
    from medunet.io.volumes import read_label_volume

    images, labels = [], []
    for pair in find_pairs(split_dir):
        x = _zscored_volume(pair.image)
        y = read_label_volume(pair.label).array.astype(np.int64)
        for k in range(len(x)):
            images.append(_pad(x[k]))
            labels.append(_pad(y[k]))
    return images, labels


def _zscored_volume(path) -> np.ndarray:
    """A volume as float32, z-scored over the whole volume."""
    from medunet.io.volumes import read_volume

    x = read_volume(path).array.astype(np.float32)
    return (x - x.mean()) / max(float(x.std()), 1e-6)


def _pad(a: np.ndarray) -> np.ndarray:
    out = np.zeros((SLICE, SLICE), a.dtype)
    out[: a.shape[0], : a.shape[1]] = a
    return out


def slice_batch(images, labels, rng: np.random.Generator, n: int = 32):
    xs, ys = [], []
    for i in rng.integers(0, len(images), n):
        x, y = _flips(images[i], labels[i], rng)
        xs.append(x.copy())
        ys.append(y.copy())
    return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys)[:, None])


def hippocampus_anchor(args) -> None:
    """Train on 2D slices for the budget; 3D Dice per case and class on the 52 test volumes."""
    from medunet.io.volumes import read_label_volume

    data = hippocampus(OUT / "hippocampus-split")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    images, labels = load_slices(data / "train")
    model = BasicUNet(spatial_dims=2, in_channels=1, out_channels=3)
    seen, trained = train_for(model, DiceCELoss(softmax=True, to_onehot_y=True),
                              lambda: slice_batch(images, labels, rng), parse_time(args.time))
    model.eval()
    dice = []
    with torch.inference_mode():
        for pair in find_pairs(data / "test"):
            x = _zscored_volume(pair.image)
            truth = read_label_volume(pair.label).array
            batch = torch.from_numpy(np.stack([_pad(s) for s in x])[:, None])
            pred = model(batch).argmax(1).numpy()[:, : x.shape[1], : x.shape[2]]
            dice.append([2 * np.sum((truth == c) & (pred == c)) / max(np.sum(truth == c) + np.sum(pred == c), 1)
                         for c in (1, 2)])
    per_class = np.mean(dice, axis=0)
    print(f"| anchor MONAI BasicUNet 2D slices | hippocampus | {args.time} | seed {args.seed} | mean 3D Dice "
          f"{np.mean(dice):.4f} | classes {per_class[0]:.4f} / {per_class[1]:.4f} | {seen} slices in {trained:.0f} s "
          f"({seen / trained:.1f} slices/s) | {machine()} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", choices=("isbi", "drive", "cvc", "busi", "hippocampus"))
    parser.add_argument("--time", default="10m")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.dataset == "hippocampus":
        return hippocampus_anchor(args)
    data = {"isbi": lambda: isbi_membranes(OUT / "isbi-membrane"), "drive": drive,
            "cvc": lambda: cvc_by_sequence(OUT / "cvc-by-sequence"),
            "busi": lambda: SHARED / "busi-ultrasound"}[args.dataset]()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    images, labels = load(data / "train")
    model = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1)
    seen, trained = train_for(model, DiceCELoss(sigmoid=True), lambda: batch(images, labels, rng),
                              parse_time(args.time))
    test_images, test_labels = load(data / "test")
    model.eval()
    fovs = _fovs(data / "test") if args.dataset == "drive" else [None] * len(test_images)
    per_image, pooled, in_fov = [], np.zeros(3), np.zeros(3)
    with torch.inference_mode():
        for x, y, fov in zip(test_images, test_labels, fovs):
            h, w = x.shape
            padded = np.pad(x, ((0, -h % 16), (0, -w % 16)), mode="edge")
            pred = (model(torch.from_numpy(padded)[None, None])[0, 0, :h, :w] > 0).numpy()
            tp, fp, fn = confusion(y > 0, pred)
            per_image.append(2 * tp / max(2 * tp + fp + fn, 1))
            pooled += (tp, fp, fn)
            if fov is not None:
                in_fov += confusion((y > 0) & fov, pred & fov)
    pooled_dice = 2 * pooled[0] / (2 * pooled[0] + pooled[1] + pooled[2])
    fov_text = f" | F1 in FOV {2 * in_fov[0] / (2 * in_fov[0] + in_fov[1] + in_fov[2]):.4f}" if in_fov.any() else ""
    print(f"| anchor MONAI BasicUNet | {args.dataset} | {args.time} | seed {args.seed} | mean Dice "
          f"{np.mean(per_image):.4f} | pooled {pooled_dice:.4f}{fov_text} | {seen} images in {trained:.0f} s "
          f"({seen / trained:.2f} img/s) | {machine()} |", flush=True)


def _fovs(split_dir) -> list[np.ndarray]:
    """DRIVE's field-of-view masks of a split, in the order of its pairs."""
    return [np.asarray(Image.open(split_dir / "fov" / pair.label.name)) > 127 for pair in find_pairs(split_dir)]


if __name__ == "__main__":
    main()
