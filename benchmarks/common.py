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


def medunet(*args: str) -> float:
    """Run the medunet CLI; returns wall seconds."""
    exe = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "medunet"
    start = time.perf_counter()
    subprocess.run([str(exe), *args], check=True)
    return time.perf_counter() - start
