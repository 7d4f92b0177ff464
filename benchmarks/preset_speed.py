"""Training and inference images/s of each preset at 256×256 on this machine.

Usage: .venv/bin/python benchmarks/preset_speed.py [--presets small standard seed] [--steps 5]
Training: batch 8 (forward, backward, AdamW); inference: batch 8; median step after one warm-up.
Runs the same code path as training (bf16 autocast + channels_last where native).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import machine
from medunet.config import model_preset
from medunet.engine.device import autocast, bf16_ok, memory_format, resolve_device
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


def measure(preset: str, device: torch.device, batch: int, steps: int, size: int) -> tuple[float, float]:
    model = UNet(model_preset(preset)).to(device, memory_format=memory_format(device))
    optimiser = torch.optim.AdamW(model.parameters(), 1e-3)
    loss_fn = build_loss(1)
    x = torch.randn(batch, 1, size, size, device=device).contiguous(memory_format=memory_format(device))
    y = (torch.rand(batch, size, size, device=device) > 0.5).long()

    def train_step() -> None:
        with autocast(device):
            loss = loss_fn(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    def infer_step() -> None:
        with torch.inference_mode(), autocast(device):
            model(x)

    model.train()
    train = batch / time_steps(train_step, steps)
    model.eval()
    infer = batch / time_steps(infer_step, steps)
    return train, infer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["small", "standard", "seed"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"machine: {machine()}; bf16 autocast: {bf16_ok(device)}")
    print("| preset | train img/s | infer img/s |")
    print("|---|---|---|")
    for preset in args.presets:
        train, infer = measure(preset, device, args.batch, args.steps, args.size)
        print(f"| {preset} | {train:.2f} | {infer:.2f} |", flush=True)


if __name__ == "__main__":
    main()
