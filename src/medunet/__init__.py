"""medunet: 2D medical image segmentation with U-Net.

The public API mirrors the command line: `train`, `plan`, `evaluate`, `predict`, `demo` and `load_model`.
Imports are lazy so that `import medunet` (and `medunet --help`) stay fast.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["train", "plan", "evaluate", "predict", "demo", "tune", "report", "doctor", "load_model", "__version__"]

_WHERE = {
    "train": "medunet.api.train",
    "plan": "medunet.api.plan",
    "evaluate": "medunet.api.evaluate",
    "predict": "medunet.api.predict",
    "demo": "medunet.api.demo",
    "tune": "medunet.api.tune",
    "report": "medunet.api.report",
    "doctor": "medunet.api.doctor",
}


def load_model(path: Any, device: str = "auto") -> Any:
    """A checkpoint file or run folder → a Predictor (`.model`, `.predict(image)`, `.probabilities(images)`)."""
    from pathlib import Path

    from medunet.config import PredictConfig
    from medunet.engine.predictor import Predictor

    return Predictor.from_checkpoint(Path(path), PredictConfig(device=device))


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'medunet' has no attribute {name!r}")
