"""Device choice and mixed precision, decided once here rather than in every loop."""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from medunet.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """"auto" → CUDA when present, else CPU; "cuda" without a GPU is the user's error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible to PyTorch")
    return torch.device(name)


def bf16_ok(device: torch.device) -> bool:
    """bf16 autocast pays on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX): 3–4× on 2 cores."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device, enabled: bool = True) -> ContextManager:
    """bf16 autocast where it is native, otherwise nothing."""
    if enabled and bf16_ok(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last pays with bf16 convolutions on both CUDA and oneDNN CPUs."""
    return torch.channels_last if bf16_ok(device) else torch.contiguous_format
