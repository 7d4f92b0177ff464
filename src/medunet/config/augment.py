"""Augmentation settings. A first version: random flips only; the full set comes with issue 3."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medunet.errors import ConfigError


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each batch augmentation."""

    hflip: float = 0.5
    vflip: float = 0.5


AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "none": dict(hflip=0.0, vflip=0.0),
    "default": dict(hflip=0.5, vflip=0.5),
}


def augment_preset(name: str) -> AugmentConfig:
    if name not in AUGMENT_PRESETS:
        raise ConfigError(f"--augment must be one of {', '.join(AUGMENT_PRESETS)}, got {name!r}")
    return AugmentConfig(**AUGMENT_PRESETS[name])
