"""Self-describing checkpoints, written atomically.

A checkpoint alone is enough to predict: weights, model config, preprocessing, label encoding,
post-processing choice and the version that wrote it. Resume state (optimiser, RNG, epoch) rides
along under "train".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medunet import __version__
from medunet.config import DataConfig, ModelConfig, from_dict, to_dict
from medunet.data.encoding import LabelEncoding
from medunet.errors import CheckpointError
from medunet.io.outputs import atomic_write
from medunet.models.unet import UNet

FORMAT = "medunet-checkpoint-1"


@dataclass
class Checkpoint:
    """What a checkpoint holds, typed."""

    model_config: ModelConfig
    data_config: DataConfig
    encoding: LabelEncoding
    state_dict: dict[str, torch.Tensor]
    postprocess: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    area_stats: dict[str, float] = field(default_factory=dict)  # training labels' foreground share
    # What the model was trained on, without file names (they may carry patients' names): counts,
    # sizes, spacing, the mirror images augmentation showed (which `--tta flips` keeps to); and
    # where its first weights came from (`medunet train --init`, import-keras).
    data_summary: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    torch_version: str = str(torch.__version__)  # TorchVersion is no plain str: weights_only refuses it

    def build_model(self) -> UNet:
        model = UNet(self.model_config)
        model.load_state_dict(self.state_dict)
        return model.eval()


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write `ckpt` atomically: a crash never leaves half a file under `path`."""
    payload = {
        "format": FORMAT,
        "version": ckpt.version,
        "model": ckpt.state_dict,
        "model_config": to_dict(ckpt.model_config),
        "data_config": to_dict(ckpt.data_config),
        "label_encoding": ckpt.encoding.to_dict(),
        "postprocess": ckpt.postprocess,
        "train": ckpt.train,
        "area_stats": ckpt.area_stats,
        "data_summary": ckpt.data_summary,
        "origin": ckpt.origin,
        "torch_version": ckpt.torch_version,
    }
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint; a missing, truncated or foreign file raises CheckpointError naming it."""
    path = Path(path)
    if path.is_dir():
        path = find_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged zip/pickle
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated: {exc.__class__.__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a medunet checkpoint")
    try:
        return Checkpoint(
            model_config=from_dict(ModelConfig, payload["model_config"]),
            data_config=from_dict(DataConfig, payload["data_config"]),
            encoding=LabelEncoding.from_dict(payload["label_encoding"]),
            state_dict=payload["model"],
            postprocess=payload.get("postprocess", {}),
            train=payload.get("train", {}),
            area_stats=payload.get("area_stats", {}),
            data_summary=payload.get("data_summary", {}),
            origin=payload.get("origin", {}),
            version=payload.get("version", "?"),
            torch_version=payload.get("torch_version", "?"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint is incomplete ({exc})") from None


def find_checkpoint(run: Path) -> Path:
    """A run folder's best checkpoint (`checkpoints/best.pt`), else `last.pt`."""
    for name in ("best.pt", "last.pt"):
        candidate = run / "checkpoints" / name
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"{run}: no checkpoints/best.pt or checkpoints/last.pt in this run folder")
