"""Numeric precision and memory layout, chosen once per run: asked for, or measured on this machine.

Which setting is fastest cannot be read off a CPU flag: on an AMD EPYC with AVX512-BF16 a bf16
training step of the `small` preset ran 3.9× fp32, on an Intel Xeon with the same flag bf16 bought
nothing over fp32 + channels_last, and on a CPU without bf16 instructions bf16 is emulated and
slower. So `auto` times a few steps of each candidate on the model at hand and keeps the fastest;
a candidate must beat a simpler one by `MIN_GAIN` to be chosen, so timing noise does not flip the
choice. On CUDA, bf16 is a candidate only where it is native (compute capability ≥ 8.0); below it
`torch.cuda.is_bf16_supported()` may still say yes (T4, V100 emulate it), and fp16 with a
GradScaler stands in.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from typing import ContextManager

import torch
from torch import nn

from medunet.config.core import PRECISIONS
from medunet.engine.device import keep_freed_memory
from medunet.errors import ConfigError

logger = logging.getLogger(__name__)

MIN_GAIN = 1.10          # a faster candidate must be 10% faster than the simpler one before it
PROBE_SIZE = 128         # CPU probe input side and batch (at most the real ones): seconds, not minutes
PROBE_BATCH = 4
PROBE_STEPS = 2          # timed steps per candidate, after one warm-up step
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_MEASURED: dict[tuple, tuple] = {}   # probe results of this process, by what was probed


@dataclass(frozen=True)
class Precision:
    """How tensors are computed: `dtype` fp32 | bf16 | fp16 (autocast), and the memory layout."""

    dtype: str = "fp32"
    channels_last: bool = False

    @property
    def name(self) -> str:
        """E.g. "bf16+channels_last" or "fp32"."""
        return self.dtype + ("+channels_last" if self.channels_last else "")

    @classmethod
    def from_name(cls, name: str) -> "Precision":
        """The inverse of `name`."""
        dtype, _, layout = name.partition("+")
        if dtype not in ("fp32", "bf16", "fp16") or layout not in ("", "channels_last"):
            raise ConfigError(f"not a precision: {name!r} (e.g. fp32, bf16+channels_last)")
        return cls(dtype, layout == "channels_last")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def needs_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range."""
        return self.dtype == "fp16"

    def autocast(self, device: torch.device) -> ContextManager:
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=_DTYPES[self.dtype])

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """A GradScaler that is active only for fp16."""
        return torch.amp.GradScaler(device.type, enabled=self.needs_scaler)


def native_bf16(device: torch.device) -> bool:
    """bf16 runs in hardware on CUDA cards of compute capability 8.0 (Ampere) and newer."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def candidates(requested: str, device: torch.device) -> list[Precision]:
    """What `requested` may turn out to be on `device`, simplest first (ties go to the first)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    fp32 = [Precision("fp32", False), Precision("fp32", True)]
    if requested == "fp32":
        return fp32
    if requested in ("bf16", "fp16"):
        return [Precision(requested, True)]
    if device.type == "cuda":
        return [Precision("fp32", True), Precision("bf16" if native_bf16(device) else "fp16", True)]
    return fp32 + [Precision("bf16", True)] if bf16_competitive(device) else fp32


def bf16_competitive(device: torch.device) -> bool:
    """Whether a bf16 convolution on this CPU runs at least half as fast as an fp32 one.

    Where bf16 is emulated it is many times slower (here 45 vs 1 img/s for a training step), and
    timing the whole model in it would cost seconds; one convolution tells in milliseconds.
    """
    key = ("bf16 screen", str(device))
    if key not in _MEASURED:
        conv = nn.Conv2d(32, 32, 3, padding=1).to(device, memory_format=torch.channels_last)
        x = torch.randn(4, 32, 64, 64, device=device).contiguous(memory_format=torch.channels_last)
        seconds = {}
        for p in (Precision("fp32", True), Precision("bf16", True)):
            seconds[p.dtype] = min(_timed(lambda: conv(x), p, device) for _ in range(4))
        _MEASURED[key] = seconds["bf16"] <= 2.0 * seconds["fp32"], {}
    return _MEASURED[key][0]


def _timed(fn, precision: Precision, device: torch.device) -> float:
    start = time.perf_counter()
    with torch.inference_mode(), precision.autocast(device):
        fn()
    return time.perf_counter() - start


def choose(requested: str, device: torch.device, model: nn.Module, in_channels: int, size: int,
           batch: int = PROBE_BATCH, train: bool = True) -> tuple[Precision, dict[str, float]]:
    """The precision to run `model` with, and the measured images/s of each candidate tried.

    A single candidate is returned without timing. The probe runs on a copy of the model, so the
    model's weights and batch-norm statistics are untouched. On a GPU it runs at the real crop and
    batch (small inputs would time kernel launches, not arithmetic); on a CPU at most at
    PROBE_SIZE² and PROBE_BATCH, where a step costs a tenth of a second or more.
    """
    options = candidates(requested, device)
    if len(options) == 1:
        return options[0], {}
    if device.type == "cpu":
        keep_freed_memory()   # as training and inference will run
        size, batch = min(size, PROBE_SIZE), min(batch, PROBE_BATCH)
    key = (requested, str(device), repr(getattr(model, "cfg", type(model))), in_channels, size, batch, train,
           torch.get_num_threads())
    if key in _MEASURED:  # one probe per model shape and process: Predictors are made often
        return _MEASURED[key]
    speeds = {p.name: images_per_second(model, p, device, in_channels, size, batch, train) for p in options}
    best = options[0]
    for option in options[1:]:
        if speeds[option.name] > MIN_GAIN * speeds[best.name]:
            best = option
    logger.info("precision: %s (measured %s %s)", best.name, "training" if train else "inference",
                ", ".join(f"{k} {v:.1f} img/s" for k, v in speeds.items()))
    _MEASURED[key] = best, speeds
    return best, speeds


def images_per_second(model: nn.Module, precision: Precision, device: torch.device, channels: int,
                      side: int, batch: int, train: bool, steps: int = PROBE_STEPS) -> float:
    """Images per second of `model` (a copy of it) at `batch` × `side`² in `precision`: the best of
    `steps` timed steps after one warm-up; a training step is forward and backward."""
    probe = copy.deepcopy(model).to(device, memory_format=precision.memory_format)
    probe.train(train)
    x = torch.randn(batch, channels, side, side, device=device).contiguous(memory_format=precision.memory_format)
    seconds = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        _probe_step(probe, precision, device, x, train)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return batch / max(min(seconds[1:]), 1e-9)


def _probe_step(model: nn.Module, precision: Precision, device: torch.device, x: torch.Tensor,
                train: bool) -> None:
    if not train:
        with torch.inference_mode(), precision.autocast(device):
            model(x)
        return
    model.zero_grad(set_to_none=True)
    with precision.autocast(device):
        out = model(x)
    outs = out if isinstance(out, list) else [out]   # deep supervision: every head costs
    sum(o.float().square().mean() for o in outs).backward()
