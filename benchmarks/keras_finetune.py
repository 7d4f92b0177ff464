"""A Keras tutorial model brought over and fine-tuned on ISBI, against the same network from scratch.

Usage: .venv/bin/python benchmarks/keras_finetune.py [--time 5m] [--keras FILE.hdf5] [--keras-train 5m]
                                                      [--width 16] [--size 256] [--foreground membranes|cells]

The trained tutorial file (`unet_membrane.hdf5`) cannot be downloaded here, so without `--keras`
the script makes one: the tutorial's network in Keras 3 (torch backend, `tests/keras_tutorial.py`,
Keras's own he_normal initialisation), trained in Keras for `--keras-train` on the same ISBI train
images as the tutorial trains (x / 255, binary cross-entropy, Adam 1e-4, random crops and flips).
Then, each for `--time` in medunet, on ISBI as BENCHMARKS.md sets it (images 0–23 train, 24–29 test):

- fine-tune: `medunet import-keras` of that model, then `medunet train DATA --init RUN`;
- from scratch: the same network with Keras's untrained initial weights, imported the same way.

Both keep the tutorial's preprocessing (x / 255); test Dice is on the six whole 512×512 images.
With `--keras-train 0` both arms start untrained (a check of the mechanics, not a result).
The tutorial's width is 64; on 2 CPU cores that trains at about 0.35 img/s, so `--width 16` is the
default here (a sixteenth of the FLOPs).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import OUT, isbi_membranes, machine, medunet, parse_time

ROOT = Path(__file__).resolve().parents[1]
BUILDER = ROOT / "tests" / "keras_tutorial.py"

KERAS_TRAIN = """
import os, sys, time
os.environ["KERAS_BACKEND"] = "torch"
import numpy as np, keras
from PIL import Image
model_path, train_dir, seconds, size, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
model = keras.models.load_model(model_path, compile=False)
model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="binary_crossentropy")
names = sorted(os.listdir(f"{train_dir}/image"))
images = np.stack([np.asarray(Image.open(f"{train_dir}/image/{n}"), np.float32) / 255 for n in names])[..., None]
labels = np.stack([np.asarray(Image.open(f"{train_dir}/label/{n}")) > 127 for n in names]).astype(np.float32)[..., None]
rng = np.random.default_rng(0)
start, steps = time.time(), 0
while time.time() - start < seconds:
    idx = rng.integers(0, len(images), 2)
    y0, x0 = rng.integers(0, images.shape[1] - size + 1, 2)
    x, y = images[idx, y0:y0 + size, x0:x0 + size], labels[idx, y0:y0 + size, x0:x0 + size]
    if rng.random() < 0.5:
        x, y = x[:, :, ::-1], y[:, :, ::-1]
    model.train_on_batch(np.ascontiguousarray(x), np.ascontiguousarray(y))
    steps += 1
model.save(out)
print(f"keras: {steps} steps of 2 crops in {time.time() - start:.0f} s")
"""


def keras_models(work: Path, width: int, size: int, train_dir: Path, seconds: float,
                 given: Path | None) -> tuple[Path, Path]:
    """(trained Keras file, untrained Keras file of the same network)."""
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    subprocess.run([sys.executable, str(BUILDER), str(work), f"untrained:{size}:{width}:4:1:1", "--keras-init"],
                   check=True, env=env)
    if given is not None:
        return given, work / "untrained.h5"
    trained = work / "trained.hdf5"
    subprocess.run([sys.executable, "-c", KERAS_TRAIN, str(work / "untrained.h5"), str(train_dir), str(seconds),
                    str(size), str(trained)], check=True, env=env)
    return trained, work / "untrained.h5"


def arm(name: str, keras_file: Path, data: Path, work: Path, budget: float, size: int) -> float:
    """Import, train with --init for the budget, evaluate on test/; the test Dice."""
    imported, run = work / f"{name}-imported", work / f"{name}-run"
    medunet("-q", "import-keras", str(keras_file), "--out", str(imported), "--overwrite")
    medunet("-q", "train", str(data), "--out", str(run), "--init", str(imported), "--time", f"{budget}s",
            "--size", str(size), "--overwrite")
    medunet("-q", "evaluate", str(run), str(data / "test"), "--overwrite")
    return json.loads((run / "eval-test" / "summary.json").read_text())["dice_mean"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--time", default="5m", help="medunet training budget per arm")
    parser.add_argument("--keras", type=Path, help="a trained Keras file of the tutorial's U-Net (width 64 usually)")
    parser.add_argument("--keras-train", default="5m", help="Keras training time when --keras is not given")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--foreground", default="membranes", choices=["membranes", "cells"],
                        help="membranes (BENCHMARKS.md's ISBI task) or cells (the tutorial's labels as given)")
    args = parser.parse_args()
    work = OUT / "keras-finetune"
    work.mkdir(parents=True, exist_ok=True)
    data = isbi_membranes(work / "data")
    if args.foreground == "cells":
        _invert_labels(data)
    budget = parse_time(args.time)
    trained, untrained = keras_models(work, args.width, args.size, data / "train", parse_time(args.keras_train),
                                      args.keras)
    dice = {"fine-tuned from the Keras model": arm("finetune", trained, data, work, budget, args.size),
            "same network from scratch": arm("scratch", untrained, data, work, budget, args.size)}
    print(f"machine: {machine()}")
    start = args.keras.name if args.keras else f"Keras-trained for {args.keras_train} (width {args.width})"
    print("| arm | start | medunet training | test Dice (6 images, " + args.foreground + ") |\n|---|---|---|---:|")
    for name, value in dice.items():
        origin = start if name.startswith("fine") else "Keras's he_normal initialisation"
        print(f"| {name} | {origin} | {args.time} | {value:.4f} |")


def _invert_labels(data: Path) -> None:
    """Back to the labels as ISBI gives them (cells 255), which the tutorial's model predicts."""
    import numpy as np
    from PIL import Image

    for label in data.glob("*/label/*.png"):
        Image.fromarray((255 - np.asarray(Image.open(label))).astype(np.uint8)).save(label)


if __name__ == "__main__":
    main()
