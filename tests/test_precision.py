"""Precision and layout: asked for, or measured on this machine; bf16 on CUDA only where native."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medunet.cli import main
from medunet.config import ModelConfig, TrainConfig
from medunet.engine import precision
from medunet.engine.precision import Precision, candidates, choose
from medunet.errors import ConfigError
from medunet.models.unet import UNet

CPU = torch.device("cpu")
ARGS = ["--size", "48", "--batch", "4", "--samples-per-epoch", "8", "--device", "cpu", "--preset", "small"]


def test_cuda_bf16_only_where_native(monkeypatch) -> None:
    """torch.cuda.is_bf16_supported() says yes on a T4 (7.5), which only emulates bf16."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert [p.dtype for p in candidates("auto", cuda)] == ["fp32", "fp16"]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert [p.dtype for p in candidates("auto", cuda)] == ["fp32", "bf16"]
    assert Precision("fp16").needs_scaler and not Precision("bf16").needs_scaler


def test_cpu_candidates_and_explicit_choices(monkeypatch) -> None:
    monkeypatch.setattr(precision, "bf16_competitive", lambda device: True)
    assert [p.name for p in candidates("auto", CPU)] == ["fp32", "fp32+channels_last", "bf16+channels_last"]
    monkeypatch.setattr(precision, "bf16_competitive", lambda device: False)   # emulated: not worth timing
    assert [p.name for p in candidates("auto", CPU)] == ["fp32", "fp32+channels_last"]
    assert [p.name for p in candidates("fp32", CPU)] == ["fp32", "fp32+channels_last"]
    assert candidates("bf16", CPU) == [Precision("bf16", True)]
    with pytest.raises(ConfigError, match="--precision"):
        candidates("fp8", CPU)
    with pytest.raises(ConfigError, match="--precision"):
        TrainConfig(precision="half")


def test_auto_keeps_the_fastest_measured_and_leaves_the_model_alone(monkeypatch) -> None:
    speeds = {"fp32": 3.35, "fp32+channels_last": 5.05, "bf16+channels_last": 5.05}   # the Intel Xeon's
    monkeypatch.setattr(precision, "bf16_competitive", lambda device: True)
    monkeypatch.setattr(precision, "images_per_second", lambda model, p, *a, **k: speeds[p.name])
    monkeypatch.setattr(precision, "_MEASURED", {})
    model = UNet(ModelConfig(base_width=4, depth=2, norm="batch"))
    chosen, measured = choose("auto", CPU, model, 1, 256)
    assert chosen == Precision("fp32", True) and measured == speeds   # a tie goes to the simpler one
    speeds.update({"bf16+channels_last": 3.9 * 3.35})                  # the AMD EPYC's
    monkeypatch.setattr(precision, "_MEASURED", {})
    assert choose("auto", CPU, model, 1, 256)[0] == Precision("bf16", True)


def test_precision_names_round_trip() -> None:
    for p in (Precision(), Precision("fp32", True), Precision("bf16", True), Precision("fp16", False)):
        assert Precision.from_name(p.name) == p
    with pytest.raises(ConfigError):
        Precision.from_name("fp64")


def test_probe_runs_on_a_copy() -> None:
    model = UNet(ModelConfig(base_width=4, depth=2, norm="batch"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    speed = precision.images_per_second(model, Precision("fp32", True), CPU, 1, 32, 2, train=True)
    assert speed > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", ["fp32", "bf16", "fp16"])
def test_training_in_each_precision_is_recorded(disc_data: Path, tmp_path: Path, name: str) -> None:
    """fp16 trains through a GradScaler (on the CPU here: the same code path as CUDA's)."""
    run = tmp_path / name
    assert main(["-q", "train", str(disc_data), "--out", str(run), "--epochs", "1", "--precision", name, *ARGS]) == 0
    record = json.loads((run / "config.json").read_text())["precision"]
    assert record["requested"] == name and record["chosen"].split("+")[0] == name
    assert json.loads((run / "config.json").read_text())["train"]["precision"] == name
    assert main(["-q", "train", str(disc_data), "--out", str(run), "--resume", "--epochs", "2"]) == 0


def test_auto_precision_is_measured_and_recorded(disc_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "auto"
    assert main(["-q", "train", str(disc_data), "--out", str(run), "--epochs", "1", *ARGS]) == 0
    record = json.loads((run / "config.json").read_text())["precision"]
    assert record["requested"] == "auto" and record["device"] == "cpu"
    assert {"fp32", "fp32+channels_last"} <= set(record["measured_images_per_s"])
    assert record["chosen"] in record["measured_images_per_s"]
