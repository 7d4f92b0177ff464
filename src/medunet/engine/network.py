"""What the Predictor runs: a network behind one call, a torch module or an ONNX Runtime session.

Everything around the network — reading, normalisation, tiles, flips, the sigmoid or softmax,
post-processing, paste-back — is the Predictor's and the same for every engine; an engine only
turns a normalised batch into logits.
"""
from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from typing import Protocol

import torch

from medunet.config import ModelConfig
from medunet.config.core import ENGINES
from medunet.engine.precision import Precision
from medunet.errors import ConfigError
from medunet.models.unet import UNet



class Network(Protocol):
    """Normalised `(B, C, H, W)` float32 → logits `(B, K, H, W)` float32 on the input's device.

    Any H, W: the network pads to its multiple of 2**depth itself and crops back. `cfg` says its
    channels (C = cfg.in_channels, K = cfg.out_channels: 1 sigmoid channel, else softmax classes).
    """

    engine: str
    cfg: ModelConfig

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def evaluating(self) -> contextlib.AbstractContextManager[None]: ...


class TorchNetwork:
    """A UNet on a torch device, run in `precision` (autocast dtype and memory layout)."""

    engine = "torch"

    def __init__(self, module: UNet, device: torch.device, precision: Precision | None = None) -> None:
        self.module = module
        self.device = device
        self.precision = precision or Precision()

    @property
    def cfg(self) -> ModelConfig:
        return self.module.cfg

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device).contiguous(memory_format=self.precision.memory_format)
        with self.precision.autocast(self.device):
            logits = self.module(x)
        return logits.float()

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode for the block; the module's own mode (training, during validation) comes back."""
        was_training = self.module.training
        self.module.eval()
        try:
            yield
        finally:
            self.module.train(was_training)


# What "auto" runs on a CPU when onnx and onnxruntime are installed. Measured here (2 busy cores,
# benchmarks/engine_speed.py --threads 1): the network call alone ran 1.45× (small) and 1.23× (seed)
# torch's speed on ONNX Runtime, but `medunet predict` on 4 PNGs only 1.10×, the in-memory export
# included; not clearly faster end to end, so torch stays the default until BENCHMARKS.md says otherwise.
AUTO_ON_CPU = "torch"


def resolve_engine(name: str, device: torch.device, precision: str = "auto") -> str:
    """"auto" → AUTO_ON_CPU on a CPU where onnx and onnxruntime are installed and no reduced
    precision was asked for (ONNX Runtime runs the fp32 graph), else torch."""
    if name not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {name!r}")
    if name != "auto":
        return name
    installed = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
    if device.type == "cpu" and precision in ("auto", "fp32") and installed:
        return AUTO_ON_CPU
    return "torch"


def to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Logits `(B, K, H, W)` → probabilities: sigmoid for one channel, softmax over K classes."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
