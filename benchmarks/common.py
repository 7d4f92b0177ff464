"""Helpers shared by the benchmark scripts: the shared datasets and the machine's description."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parents[1] / "bench-out"


def machine() -> str:
    """CPU cores and model, and the GPU when there is one, for BENCHMARKS.md."""
    import torch

    cpu = platform.processor() or "cpu"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()} cores ({cpu}){gpu}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"


def isbi_membranes(root: Path) -> Path:
    """ISBI 2012 with membranes as foreground: images 0–23 → train/, 24–29 → test/, labels inverted."""
    src = SHARED / "isbi2012-membrane" / "train"
    if root.exists():
        shutil.rmtree(root)
    for split, ids in (("train", range(0, 24)), ("test", range(24, 30))):
        for sub in ("image", "label"):
            (root / split / sub).mkdir(parents=True)
        for i in ids:
            shutil.copy(src / "image" / f"{i}.png", root / split / "image" / f"{i}.png")
            label = np.asarray(Image.open(src / "label" / f"{i}.png"))
            Image.fromarray((255 - label).astype(np.uint8)).save(root / split / "label" / f"{i}.png")
    return root


def parse_time(text: str) -> float:
    """"10m", "90s", "1h" or seconds → seconds (the CLI's own parser)."""
    from medunet.cli import parse_duration

    return parse_duration(text)


def medunet(*args: str) -> float:
    """Run the medunet CLI; returns wall seconds."""
    exe = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "medunet"
    start = time.perf_counter()
    subprocess.run([str(exe), *args], check=True)
    return time.perf_counter() - start


def cvc_by_sequence(root: Path, first_test_frame: int = 504) -> Path:
    """CVC-ClinicDB subset split by video sequence: frames ≥ 504 (sequences 25–29) → test/, the rest → train/.

    Frames of one sequence are near-duplicates (PROVENANCE.md), so a split by frame would leak.
    """
    src = SHARED / "cvc-clinicdb" / "train"
    if root.exists():
        shutil.rmtree(root)
    for split in ("train", "test"):
        for sub in ("image", "label"):
            (root / split / sub).mkdir(parents=True)
    for image in sorted((src / "image").glob("*.tif")):
        split = "test" if int(image.stem) >= first_test_frame else "train"
        shutil.copy(image, root / split / "image" / image.name)
        shutil.copy(src / "label" / image.name, root / split / "label" / image.name)
    return root


def hippocampus(root: Path) -> Path:
    """MSD Task04 hippocampus (260 volumes) split by sorted case name: every 5th case (the 5th,
    10th, ...: names[4::5], 52 cases) → test/, the other 208 → train/ (symlinks, nothing copied)."""
    src = SHARED / "msd-hippocampus" / "train"
    names = sorted(p.name for p in (src / "image").glob("*.nii.gz"))
    test = set(names[4::5])
    if root.exists():
        shutil.rmtree(root)
    for split in ("train", "test"):
        for sub in ("image", "label"):
            (root / split / sub).mkdir(parents=True)
    for name in names:
        split = "test" if name in test else "train"
        for sub in ("image", "label"):
            (root / split / sub / name).symlink_to(src / sub / name)
    return root


def drive() -> Path:
    """DRIVE as shipped: train/ (20) and test/ (20), the official split; fov/ beside image/ and label/."""
    return SHARED / "drive-retina"


def f1_inside_fov(pred_dir: Path, split: Path) -> float:
    """Pooled F1 (Dice) of vessel pixels inside the field-of-view masks over all images of `split`."""
    tp = fp = fn = 0
    for label_path in sorted((split / "label").iterdir()):
        truth = np.asarray(Image.open(label_path)) > 127
        fov = np.asarray(Image.open(split / "fov" / label_path.name)) > 127
        pred = np.asarray(Image.open(next(pred_dir.glob(f"{label_path.stem}.*")))) > 127
        tp += int(np.sum(truth & pred & fov))
        fp += int(np.sum(~truth & pred & fov))
        fn += int(np.sum(truth & ~pred & fov))
    return 2 * tp / (2 * tp + fp + fn)
