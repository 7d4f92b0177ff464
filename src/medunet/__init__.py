"""medunet: 2D medical image segmentation with U-Net.

The public API mirrors the command line: `train`, `plan`, `evaluate`, `predict`, `demo` and `load_model`.
Imports are lazy so that `import medunet` (and `medunet --help`) stay fast.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["train", "plan", "evaluate", "predict", "demo", "tune", "report", "doctor", "export", "import_keras",
           "info", "load_model", "__version__"]

_WHERE = {
    "train": "medunet.api.train",
    "plan": "medunet.api.plan",
    "evaluate": "medunet.api.evaluate",
    "predict": "medunet.api.predict",
    "demo": "medunet.api.demo",
    "tune": "medunet.api.tune",
    "report": "medunet.api.report",
    "doctor": "medunet.api.doctor",
    "export": "medunet.api.export",
    "import_keras": "medunet.api.import_keras",
    "info": "medunet.api.info",
}


def load_model(path: Any, device: str = "auto", engine: str = "auto") -> Any:
    """A run folder, checkpoint, exported `.onnx` file, cross-validated or ensemble run → what
    predicts with it (`.predict(image)`, `.probabilities(images)`; a single model also has
    `.network`); `engine` is auto, torch or onnxruntime."""
    from pathlib import Path

    from medunet.config import PredictConfig
    from medunet.engine.ensemble import load_segmenter

    return load_segmenter(Path(path), PredictConfig(device=device, engine=engine))


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'medunet' has no attribute {name!r}")
