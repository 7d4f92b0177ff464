"""export(): a run's network as an ONNX or TorchScript file, with the metadata to reproduce `predict`.

FILE holds the graph (any batch, height and width; eval mode) and its metadata (ONNX
`metadata_props`, TorchScript extra file `medunet.json`); FILE.json beside it holds the same
metadata for tools that do not open the graph. Both are written atomically, and neither replaces
an existing file without `overwrite`.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medunet.api.info import info
from medunet.engine.checkpoint import load_checkpoint
from medunet.engine.export import DEFAULT_OPSET, onnx_bytes, torchscript_bytes, with_metadata
from medunet.engine.metadata import export_metadata
from medunet.engine.network import to_probabilities
from medunet.errors import ConfigError
from medunet.io.outputs import atomic_write, write_json

logger = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
CHECK_SHAPE = (37, 53)   # sides that are no multiple of 2**depth: the graph's own padding is used


def export(run: Path, format: str = "onnx", out: Path | None = None, *, opset: int | None = None,
           fp16: bool = False, overwrite: bool = False, exporter: str = "torchscript") -> Path:
    """Write `run`'s network (a run folder or a checkpoint) to `out` and `out`.json; returns `out`.

    Default `out`: RUN/model.onnx or RUN/model.torchscript.pt (beside a checkpoint file: its stem).
    With onnxruntime installed, the ONNX graph is run once against torch at an odd size and the
    largest probability difference is stored in the metadata (`graph.check`).
    """
    run = Path(run)
    _check_options(format, opset, fp16)
    ckpt = load_checkpoint(run)
    out = Path(out) if out is not None else _default_out(run, format)
    sidecar = out.with_name(out.name + ".json")
    for path in (out, sidecar):
        if path.exists() and not overwrite:
            raise ConfigError(f"{path}: exists; pass --overwrite to replace it")
    model = ckpt.build_model()
    card = info(run)
    if format == "onnx":
        graph = onnx_bytes(model, opset or DEFAULT_OPSET, fp16, exporter)
        described = {"format": "onnx", "opset": opset or DEFAULT_OPSET, "exporter": exporter,
                "precision": "float16 inside, float32 in and out" if fp16 else "float32",
                "check": _check(graph, model, fp16)}
        metadata = export_metadata(ckpt, card, described)
        data = with_metadata(graph, metadata)
    else:
        metadata = export_metadata(ckpt, card, {"format": "torchscript", "exporter": "torch.jit.trace",
                                                "precision": "float32", "torch_version": str(torch.__version__)})
        data = torchscript_bytes(model, metadata)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: f.write(data))
    write_json(sidecar, metadata)
    logger.info("exported %s to %s (%.1f MB) and %s", run, out, len(data) / 1e6, sidecar.name)
    return out


def _check_options(format: str, opset: int | None, fp16: bool) -> None:
    if format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if format != "onnx" and (opset is not None or fp16):
        raise ConfigError("--opset and --fp16 apply to --format onnx only")
    if opset is not None and not 13 <= opset <= 20:
        raise ConfigError(f"--opset must be between 13 and 20 (torch's exporter), got {opset}")


def _default_out(run: Path, format: str) -> Path:
    stem = "model" if run.is_dir() else run.stem
    folder = run if run.is_dir() else run.parent
    if format == "torchscript":
        return folder / f"{stem}.torchscript.pt"
    return folder / f"{stem}.onnx"


def _check(graph: bytes, model: Any, fp16: bool) -> dict[str, Any] | None:
    """ONNX Runtime's probabilities against torch's on one random input of CHECK_SHAPE; None when
    onnxruntime is not installed (exporting needs only onnx)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    from medunet.engine.onnx_engine import OnnxNetwork, make_session

    x = torch.rand(1, model.cfg.in_channels, *CHECK_SHAPE, generator=torch.Generator().manual_seed(0))
    network = OnnxNetwork(make_session(graph, torch.device("cpu")), model.cfg)
    with torch.inference_mode():
        expected, got = (to_probabilities(f(x)).numpy() for f in (model.eval(), network))
    difference = float(np.max(np.abs(expected - got)))
    logger.info("checked: ONNX Runtime vs torch at %d×%d, max probability difference %.2g%s", *CHECK_SHAPE,
                difference, " (fp16)" if fp16 else "")
    return {"input_shape": list(x.shape), "max_abs_probability_difference": difference}
