"""The ONNX Runtime engine: an InferenceSession behind the Predictor's network call.

onnxruntime is an optional extra (`pip install 'medunet[onnx]'`); this module imports it only
when a session is made, and `import medunet` never imports this module.
"""
from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medunet.config import ModelConfig
from medunet.engine.checkpoint import Checkpoint
from medunet.engine.export import onnx_bytes
from medunet.engine.metadata import INPUT_NAME, OUTPUT_NAME, checkpoint_from_metadata
from medunet.errors import CheckpointError, ConfigError
from medunet.models.unet import UNet

logger = logging.getLogger(__name__)

INSTALL = "pip install 'medunet[onnx]'"


def require_onnxruntime() -> Any:
    """The onnxruntime module, or one line saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(f"--engine onnxruntime needs the onnxruntime package: {INSTALL}") from None
    return onnxruntime


class OnnxNetwork:
    """An ONNX Runtime session of a medunet graph (input "image", output "logits").

    `device` is where its inputs and outputs live for the Predictor: the CPU, also when the CUDA
    execution provider runs it (ONNX Runtime copies to the GPU itself).
    """

    engine = "onnxruntime"
    device = torch.device("cpu")

    def __init__(self, session: Any, cfg: ModelConfig) -> None:
        self.session = session
        self.cfg = cfg

    @classmethod
    def from_module(cls, model: UNet, device: torch.device) -> "OnnxNetwork":
        """`model` exported in memory (nothing is written to disk) and loaded into a session."""
        require_onnxruntime()
        logger.info("engine: onnxruntime (the checkpoint exported in memory)")
        return cls(make_session(onnx_bytes(model), device), model.cfg)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        return torch.from_numpy(logits).to(x.device)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        yield  # an exported graph is always in eval mode


def check_precision(precision: str) -> None:
    """ONNX Runtime runs the graph as exported: a torch precision cannot be asked of it."""
    if precision not in ("auto", "fp32"):
        raise ConfigError(f"--precision {precision} applies to the torch engine; ONNX Runtime runs the exported "
                          "graph as it is (medunet export --fp16 writes a float16 one)")


def make_session(model: bytes | Path, device: torch.device) -> Any:
    """An InferenceSession on `device`'s execution provider, with as many threads as torch uses
    (so that both engines honour the same thread setting)."""
    ort = require_onnxruntime()
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError("--device cuda with --engine onnxruntime needs onnxruntime-gpu "
                              "(this onnxruntime has no CUDA execution provider)")
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only: the optimiser's notes are not the user's concern
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=options, providers=providers)


def read_metadata(session: Any) -> dict[str, Any]:
    """The session's `metadata_props`, each value parsed from JSON (a value that is no JSON stays text)."""
    meta = {}
    for key, value in session.get_modelmeta().custom_metadata_map.items():
        try:
            meta[key] = json.loads(value)
        except ValueError:
            meta[key] = value
    return meta


def open_session(path: Path, device: torch.device) -> Any:
    """A session of the ONNX file `path`.

    Raises:
        CheckpointError: a missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    require_onnxruntime()
    try:
        return make_session(path, device)
    except ConfigError:
        raise
    except Exception as exc:  # onnxruntime's kinds (InvalidProtobuf, Fail, ...) share no base but Exception
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable ONNX model ({first[:160]})") from None


def load(path: Path, device: torch.device) -> tuple[OnnxNetwork, Checkpoint]:
    """An exported `.onnx` file → its network and the Checkpoint its metadata describes (no weights).

    Raises:
        CheckpointError: a missing or unreadable file, or one without medunet's metadata.
    """
    session = open_session(path, device)
    ckpt = checkpoint_from_metadata(read_metadata(session), Path(path))
    return OnnxNetwork(session, ckpt.model_config), ckpt
