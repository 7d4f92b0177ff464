"""Time augment_batch on a 32×1×256×256 batch for each preset, on the CPU (2 threads) and on CUDA.

Usage: python benchmarks/augment_speed.py [--batch 32] [--size 256] [--repeats 10]
Prints a markdown table of the median milliseconds per batch, images per second, and the fastest
call (a shared machine's other jobs inflate the median, rarely the fastest).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from medunet.config import augment_preset
from medunet.transforms.augment import augment_batch

PRESETS = ("none", "flips", "seed", "default")


def time_preset(name: str, device: torch.device, batch: int, size: int, repeats: int) -> tuple[float, float]:
    """Median and fastest seconds per call of augment_batch, after three warm-up calls."""
    generator = torch.Generator(device).manual_seed(0)
    image = torch.randn(batch, 1, size, size, device=device)
    label = (torch.rand(batch, size, size, device=device) > 0.5).long()
    cfg = augment_preset(name)
    times = []
    for i in range(repeats + 3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        augment_batch(image, label, cfg, generator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(2)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"augment_batch, batch {args.batch}×1×{args.size}×{args.size}, median of {args.repeats}, "
          f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}\n")
    print("| device | preset | ms/batch | images/s | fastest ms |")
    print("|---|---|---:|---:|---:|")
    for device in devices:
        for name in PRESETS:
            seconds, fastest = time_preset(name, device, args.batch, args.size, args.repeats)
            print(f"| {device.type} | {name} | {seconds * 1000:.1f} | {args.batch / seconds:,.0f} "
                  f"| {fastest * 1000:.1f} |")


if __name__ == "__main__":
    main()
