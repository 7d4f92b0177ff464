"""Inference speed of the two engines, torch and ONNX Runtime, on this machine, in one run.

Usage: .venv/bin/python benchmarks/engine_speed.py [--presets small seed] [--side 256] [--steps 10] [--files 16]
                                                  [--threads N]

For each preset (random weights; speed does not depend on them): the network call alone at
batch 1, `--side`² — torch in fp32, torch in the precision `--precision auto` picks here, and
ONNX Runtime on the graph `medunet export` writes — as the median of `--steps` timed calls after
one warm-up; then, with `--files N`, `medunet predict` files to files on N PNGs of `--side`² with
each engine (reading, normalisation, post-processing and writing included). Prints markdown rows
for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import OUT, machine

import medunet as mu
from medunet.config import DataConfig, model_preset
from medunet.data.encoding import LabelEncoding
from medunet.engine import precision as precisions
from medunet.engine.checkpoint import Checkpoint, save_checkpoint
from medunet.engine.device import keep_freed_memory
from medunet.engine.network import TorchNetwork
from medunet.engine.onnx_engine import OnnxNetwork
from medunet.engine.precision import Precision
from medunet.models.unet import UNet


def median_seconds(network, x: torch.Tensor, steps: int) -> float:
    with torch.inference_mode():
        network(x)  # warm-up: oneDNN and ONNX Runtime choose their kernels on the first call
        seconds = []
        for _ in range(steps):
            start = time.perf_counter()
            network(x)
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def network_rows(preset: str, side: int, steps: int) -> list[str]:
    torch.manual_seed(0)
    model = UNet(model_preset(preset)).eval()
    cpu = torch.device("cpu")
    keep_freed_memory()  # as `medunet predict` does on a CPU
    x = torch.rand(1, 1, side, side)
    auto, _ = precisions.choose("auto", cpu, model, 1, side, 1, train=False)
    engines = {"torch fp32": TorchNetwork(model, cpu, Precision()),
               f"torch, auto precision ({auto.name})": TorchNetwork(model, cpu, auto),
               "onnxruntime (exported fp32 graph)": OnnxNetwork.from_module(model, cpu)}
    times = {name: median_seconds(net, x, steps) for name, net in engines.items()}
    base = times["torch fp32"]
    return [f"| {preset} | {name} | network call, batch 1, {side}² | {1 / s:.2f} img/s | {base / s:.2f}× |"
            for name, s in times.items()]


def files_rows(preset: str, side: int, n: int) -> list[str]:
    """`medunet predict` on n PNGs with each engine, from a checkpoint of random weights."""
    root = Path(tempfile.mkdtemp(dir=OUT))
    try:
        torch.manual_seed(0)
        model = UNet(model_preset(preset))
        ckpt = root / "run" / "checkpoints" / "best.pt"
        save_checkpoint(ckpt, Checkpoint(model.cfg, DataConfig(), LabelEncoding((0, 255), "binary"),
                                         model.state_dict()))
        images = root / "images"
        images.mkdir()
        rng = np.random.default_rng(0)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (side, side), dtype=np.uint8)).save(images / f"{i:04d}.png")
        rows, base = [], None
        for engine in ("torch", "onnxruntime"):
            mu.predict(ckpt, images, root / "warm", overwrite=True, progress=False, engine=engine)
            start = time.perf_counter()
            mu.predict(ckpt, images, root / "out", overwrite=True, progress=False, engine=engine)
            seconds = time.perf_counter() - start
            base = base or seconds
            rows.append(f"| {preset} | {engine} | `medunet predict`, {n} PNGs {side}², files to files "
                        f"(export included for onnxruntime) | {n / seconds:.2f} img/s | {base / seconds:.2f}× |")
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["small", "seed"])
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--files", type=int, default=0, help="also time medunet predict on this many PNGs")
    parser.add_argument("--threads", type=int, help="threads for both engines (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # ONNX Runtime sessions take torch's thread count
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}, {torch.get_num_threads()} torch threads")
    print("| preset | engine | what | speed | vs torch fp32 |\n|---|---|---|---:|---:|")
    for preset in args.presets:
        for row in network_rows(preset, args.side, args.steps):
            print(row, flush=True)
        if args.files:
            for row in files_rows(preset, args.side, args.files):
                print(row, flush=True)


if __name__ == "__main__":
    main()
