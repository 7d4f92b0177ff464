"""Device choice, decided once here rather than in every loop (precision: see engine/precision.py)."""
from __future__ import annotations

import torch

from medunet.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """"auto" → CUDA when present, else CPU; "cuda" without a GPU is the user's error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible to PyTorch")
    return torch.device(name)
