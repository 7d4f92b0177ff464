"""Training and inference images/s of each preset at 256×256 on this machine, in each precision.

Usage: .venv/bin/python benchmarks/preset_speed.py [--presets tiny small standard seed] [--steps 5]
       [--precisions fp32 fp32+channels_last bf16+channels_last]
Training: batch 8 (forward, backward, AdamW); inference: batch 8; median step after one warm-up.
The last column is what `--precision auto` picks for training on this machine (its short probe).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import machine
from medunet.config import model_preset
from medunet.engine import precision as precisions
from medunet.engine.device import keep_freed_memory, resolve_device
from medunet.engine.precision import Precision
from medunet.losses import build_loss
from medunet.models.unet import UNet


def time_steps(fn, steps: int) -> float:
    fn()  # warm-up: oneDNN/cuDNN pick kernels on the first call
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(preset: str, precision: Precision, device: torch.device, batch: int, steps: int,
            size: int) -> tuple[float, float]:
    model = UNet(model_preset(preset)).to(device, memory_format=precision.memory_format)
    optimiser = torch.optim.AdamW(model.parameters(), 1e-3)
    loss_fn = build_loss(1)
    x = torch.randn(batch, 1, size, size, device=device).contiguous(memory_format=precision.memory_format)
    y = (torch.rand(batch, size, size, device=device) > 0.5).long()

    def train_step() -> None:
        with precision.autocast(device):
            loss = loss_fn(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    def infer_step() -> None:
        with torch.inference_mode(), precision.autocast(device):
            model(x)

    model.train()
    train = batch / time_steps(train_step, steps)
    model.eval()
    infer = batch / time_steps(infer_step, steps)
    return train, infer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "standard", "seed"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp32+channels_last", "bf16+channels_last"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        keep_freed_memory()   # as training and prediction do
    print(f"machine: {machine()}")
    print("| preset | " + " | ".join(f"{p} train / infer img/s" for p in args.precisions) + " | auto picks |")
    print("|---|" + "---|" * (len(args.precisions) + 1))
    for preset in args.presets:
        cells = []
        for name in args.precisions:
            dtype, _, layout = name.partition("+")
            train, infer = measure(preset, Precision(dtype, layout == "channels_last"), device, args.batch,
                                   args.steps, args.size)
            cells.append(f"{train:.2f} / {infer:.2f}")
        auto = precisions.choose("auto", device, UNet(model_preset(preset)), 1, args.size)[0].name
        print(f"| {preset} | " + " | ".join(cells) + f" | {auto} |", flush=True)


if __name__ == "__main__":
    main()
