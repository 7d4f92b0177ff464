"""The training loop against the bare training step: how much of the device's time goes to training.

Usage: .venv/bin/python benchmarks/train_throughput.py [--preset small] [--epochs 3]
       [--samples-per-epoch N] [--size S] [--device auto] [--threads 2] [--out bench-out/throughput]
       PYTHONPATH=OTHER/src .venv/bin/python benchmarks/train_throughput.py ...   # another checkout

1. End to end: `medunet.train` on the demo data (`medunet.data.synthetic.make_dataset`, 350 train
   and 35 validation slices of 256²) for `--epochs` epochs with the plan's settings: crops,
   augmentation on the device, validation, checkpoints, history and curves. Timed is `fit()`, the
   loop itself: from the first step to the last epoch's checkpoint (decoding, planning and the
   final tuning are outside it). Images = epochs × steps per epoch × batch.
2. The bare step: the same network, precision, batch and crop, forward + loss + backward + AdamW on
   tensors that stay on the device, nothing else; the mean of `--steps` steps after 3 warm-ups.

Prints both in images/s and their ratio (end to end / bare), with the machine. Works with this
checkout and with older ones (it reads steps per epoch from config.json, or derives them from
samples per epoch as the older trainer did).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from common import OUT, machine


def demo_data(root: Path) -> Path:
    from medunet.data.synthetic import make_dataset

    if not (root / "train").is_dir():
        make_dataset(root, counts={"train": 350, "validation": 35}, seed=0)
    return root


def end_to_end(data: Path, out: Path, args: argparse.Namespace) -> tuple[float, dict]:
    """Images/s of fit() in a real run, and the run's config.json."""
    import medunet.api.train as train_api
    from medunet.config import TrainConfig

    timed = {"seconds": 0.0}
    real_fit = train_api.fit

    def fit(*a, **k):
        start = time.perf_counter()
        try:
            return real_fit(*a, **k)
        finally:
            timed["seconds"] += time.perf_counter() - start

    train_api.fit = fit
    # `compile` only when asked: checkouts from before issue 11 have no such field
    cfg = TrainConfig(preset=args.preset, epochs=args.epochs, samples_per_epoch=args.samples_per_epoch,
                      device=args.device, precision=args.precision, seed=0, **({"compile": True} if args.compile else {}))
    data_cfg = None
    if args.size:
        from medunet.config import DataConfig

        data_cfg = DataConfig(size=args.size)
    train_api.train(data, out, cfg=cfg, data_cfg=data_cfg, overwrite=True, progress=False)
    config = json.loads((out / "config.json").read_text())
    batch = config["batch"]
    steps = config["train"].get("steps_per_epoch") or math.ceil(config["train"]["samples_per_epoch"] / batch)
    return args.epochs * steps * batch / timed["seconds"], config


def bare_step(config: dict, device: torch.device, steps: int, compile: bool = False) -> float:
    """Images/s of forward, loss, backward and AdamW on resident tensors, as the run was set up."""
    from medunet.config import ModelConfig, from_dict
    from medunet.engine.device import keep_freed_memory
    from medunet.engine.precision import Precision
    from medunet.losses import build_loss
    from medunet.models.unet import UNet

    if device.type == "cpu":
        keep_freed_memory()
    precision = Precision.from_name(config["precision"]["chosen"])
    model_cfg = from_dict(ModelConfig, config["model"])
    model = UNet(model_cfg).to(device, memory_format=precision.memory_format).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = build_loss(model_cfg.out_channels)
    net = torch.compile(model) if compile else model
    batch, side = config["batch"], config["data"]["size"]
    x = torch.randn(batch, model_cfg.in_channels, side, side, device=device)
    x = x.contiguous(memory_format=precision.memory_format)
    y = (torch.rand(batch, side, side, device=device) > 0.7).long()

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with precision.autocast(device):
            logits = net(x)
        loss_fn(logits, y).backward()
        optimiser.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples-per-epoch", type=int, help="default: the plan's epoch")
    parser.add_argument("--size", type=int, help="training crop (default: the plan's, whole 256² slices)")
    parser.add_argument("--steps", type=int, default=20, help="timed bare steps")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (both measurements)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=OUT / "throughput")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import medunet
    from medunet.engine.device import resolve_device

    device = resolve_device(args.device)
    data = demo_data(OUT / "demo-data-350")
    e2e, config = end_to_end(data, args.out / "run", args)
    bare = bare_step(config, device, args.steps, args.compile)
    print(f"machine: {machine()}; medunet from {Path(medunet.__file__).parent}")
    print(f"preset {args.preset}, {config['precision']['chosen']}, batch {config['batch']}, "
          f"crop {config['data']['size']}², {args.epochs} epochs")
    print(f"| bare step | {bare:.2f} img/s |\n| end to end | {e2e:.2f} img/s |\n| ratio | {e2e / bare:.3f} |")


if __name__ == "__main__":
    main()
