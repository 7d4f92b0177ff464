"""The network as a file other runtimes load: ONNX (any batch, height and width) or TorchScript.

Both graphs take normalised `(B, C, H, W)` float32 and give logits `(B, K, H, W)` float32 at the
input's size, in eval mode; the padding to a multiple of 2**depth is inside the graph. With
`fp16`, the ONNX graph computes in float16 between a cast after its input and one before its
output, so callers still pass and receive float32.

ONNX is written by torch's TorchScript-based exporter by default: here it exports in about a
second where the torch.export-based one (`exporter="dynamo"`) takes ten, and it needs no
onnxscript. Both give graphs that handle any H, W (the suite checks each).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medunet.engine.metadata import INPUT_NAME, OUTPUT_NAME
from medunet.errors import ConfigError
from medunet.models.unet import UNet

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
EXPORTERS = ("torchscript", "dynamo")
METADATA_FILE = "medunet.json"   # the TorchScript archive's extra file with the metadata


class _Float16(nn.Module):
    """float32 in, float16 inside, float32 out: callers of the fp16 graph keep float32 buffers."""

    def __init__(self, net: UNet) -> None:
        super().__init__()
        self.net = net.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.half()).float()


def example_input(model: UNet) -> torch.Tensor:
    """A traced input whose sides are not a multiple of the network's, and differ, so that no size
    is mistaken for a constant."""
    m = model.cfg.multiple
    return torch.zeros(1, model.cfg.in_channels, m + 3, 2 * m + 1)


def require_onnx() -> Any:
    """The `onnx` package, or one line saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise ConfigError("exporting to ONNX needs the onnx package: pip install 'medunet[onnx]'") from None
    return onnx


def onnx_bytes(model: UNet, opset: int = DEFAULT_OPSET, fp16: bool = False, exporter: str = "torchscript") -> bytes:
    """The serialised ONNX model of `model` (a copy is exported; `model` is left as it was)."""
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    require_onnx()  # torch's exporters write through the onnx package
    net: nn.Module = copy.deepcopy(model).cpu().float().eval()
    if fp16:
        net = _Float16(net).eval()
    x = example_input(model)
    with _quiet(), torch.no_grad():
        if exporter == "dynamo":
            return _dynamo(net, x, opset)
        buffer = io.BytesIO()
        axes = {0: "batch", 2: "height", 3: "width"}
        torch.onnx.export(net, (x,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes})
    return buffer.getvalue()


def _dynamo(net: nn.Module, x: torch.Tensor, opset: int) -> bytes:
    dims = {0: "batch", 2: "height", 3: "width"}
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
        program = torch.onnx.export(net, (x,), None, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=(dims,), verbose=False)
    return program.model_proto.SerializeToString()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch warns about its legacy exporter and tracer on every call; the graph is checked instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def with_metadata(model_bytes: bytes, metadata: dict[str, Any]) -> bytes:
    """The ONNX model with `metadata` as `metadata_props`: one key per entry, each a JSON string."""
    onnx = require_onnx()
    proto = onnx.load_from_string(model_bytes)
    proto.producer_name = "medunet"
    onnx.helper.set_model_props(proto, {key: json.dumps(value) for key, value in metadata.items()})
    return proto.SerializeToString()


def torchscript_bytes(model: UNet, metadata: dict[str, Any]) -> bytes:
    """The traced network as a TorchScript archive, with `metadata` as its extra file `medunet.json`."""
    net = copy.deepcopy(model).cpu().float().eval()
    buffer = io.BytesIO()
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(net, example_input(model))
        torch.jit.save(traced, buffer, _extra_files={METADATA_FILE: json.dumps(metadata)})
    return buffer.getvalue()


def read_torchscript_metadata(path: Path) -> dict[str, Any] | None:
    """The metadata of a TorchScript file medunet wrote (its `extra/medunet.json`), else None.

    Read from the archive as a zip, so that asking does not load the network.
    """
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}")]
        if not names:
            return None
        try:
            return json.loads(archive.read(names[0]))
        except ValueError:
            return None
