"""What a checkpoint says about itself: the model card, and the metadata an export carries.

The export metadata holds everything `medunet predict` needs besides the network — normalisation,
channels, label encoding, threshold and clean-up, tile size — so a runtime without medunet can
reproduce its masks, and `Predictor.from_onnx` rebuilds the Predictor from it alone. It is stored
as ONNX `metadata_props` (one key per top-level entry, each value a JSON string), in a TorchScript
file's extra file `medunet.json`, and as a JSON sidecar `FILE.json`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from medunet.config import MODEL_PRESETS, DataConfig, ModelConfig, PredictConfig, from_dict, to_dict
from medunet.data.encoding import LabelEncoding
from medunet.engine.checkpoint import Checkpoint
from medunet.errors import CheckpointError
from medunet.models.unet import UNet, count_parameters
from medunet.transforms.intensity import describe_normalisation

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "medunet-export-1"
INPUT_NAME, OUTPUT_NAME = "image", "logits"
# Keys of the export metadata that Predictor.from_onnx needs; a file without them is not medunet's.
REQUIRED = ("format", "model_config", "data_config", "label_encoding")


def preset_name(cfg: ModelConfig) -> str:
    """"seed", "small", …; a preset at another base width or depth says so (an imported Keras
    variant: "seed at base width 32, depth 4"); else "custom"."""
    values = {k: getattr(cfg, k) for k in MODEL_PRESETS["seed"]}
    for name, preset in MODEL_PRESETS.items():
        if preset == values:
            return name
    for name, preset in MODEL_PRESETS.items():
        shape_free = {k: v for k, v in preset.items() if k not in ("base_width", "depth")}
        if all(values[k] == v for k, v in shape_free.items()):
            return f"{name} at base width {cfg.base_width}, depth {cfg.depth}"
    return "custom"


def parameter_count(cfg: ModelConfig) -> int:
    """Trainable parameters of the network `cfg` describes (built without memory, on the meta device)."""
    with torch.device("meta"):
        return count_parameters(UNet(cfg))


def classes(encoding: LabelEncoding) -> list[dict[str, Any]]:
    """One entry per class index: the value written in masks, a name and, for palette labels, its colour."""
    rows = []
    for i, value in enumerate(encoding.values):
        name = "background" if i == 0 else ("foreground" if encoding.n_classes == 2 else f"class {value}")
        row: dict[str, Any] = {"index": i, "value": value, "name": name}
        if encoding.palette is not None:
            row["colour"] = list(encoding.palette[3 * value:3 * value + 3])
        rows.append(row)
    return rows


def model_card(ckpt: Checkpoint) -> dict[str, Any]:
    """What a checkpoint holds, for people: network, classes, preprocessing, data, scores, versions."""
    train = ckpt.train
    val_dice = train.get("val_dice", train.get("best_dice"))
    return {
        "preset": preset_name(ckpt.model_config),
        "parameters": parameter_count(ckpt.model_config),
        "model_config": to_dict(ckpt.model_config),
        "classes": classes(ckpt.encoding),
        "labels": ckpt.encoding.describe(why=False),
        "preprocessing": describe_normalisation(ckpt.data_config),
        "crop": {"mode": ckpt.data_config.crop, "size": ckpt.data_config.size},
        "postprocess": ckpt.postprocess or {"threshold": 0.5},
        "training_data": ckpt.data_summary,
        "epoch": train.get("epoch"),
        "validation_dice": None if val_dice is None or val_dice < 0 else val_dice,
        "origin": ckpt.origin,
        "medunet_version": ckpt.version,
        "torch_version": ckpt.torch_version,
    }


def export_metadata(ckpt: Checkpoint, card: dict[str, Any], graph: dict[str, Any]) -> dict[str, Any]:
    """The metadata stored with an export: how to feed the graph, what comes out, how to post-process.

    `graph` describes the exported file itself (format, opset, precision inside).
    """
    k = ckpt.model_config.out_channels
    defaults = PredictConfig()
    return {
        "format": EXPORT_FORMAT,
        "graph": graph,
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "channels": ckpt.data_config.input_channels,
                  "height": "any", "width": "any (the graph pads to a multiple of "
                                                  f"{ckpt.model_config.multiple} and crops back)",
                  "preprocessing": describe_normalisation(ckpt.data_config)},
        "output": {"name": OUTPUT_NAME, "layout": "NCHW", "dtype": "float32", "channels": k,
                   "activation": "sigmoid" if k == 1 else "softmax over axis 1",
                   "to_mask": ("probability > threshold → class 1" if k == 1 else "argmax over axis 1")
                              + ", then postprocess; write classes[i].value for class i"},
        "model_config": to_dict(ckpt.model_config),
        "data_config": to_dict(ckpt.data_config),
        "label_encoding": ckpt.encoding.to_dict(),
        "classes": classes(ckpt.encoding),
        "postprocess": ckpt.postprocess or {"threshold": 0.5},
        "inference": {"tile": defaults.max_size, "tile_overlap": defaults.overlap, "tile_blending": "gaussian",
                      "centre_crop": ckpt.data_config.size if ckpt.data_config.crop == "center" else None},
        "area_stats": ckpt.area_stats,
        "card": card,
    }


def checkpoint_from_metadata(meta: dict[str, Any], path: Path) -> Checkpoint:
    """The Checkpoint an export's metadata describes, without weights (the graph holds them).

    Raises:
        CheckpointError: `meta` is not medunet's export metadata, or is incomplete.
    """
    missing = [key for key in REQUIRED if key not in meta]
    if missing or meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path}: no medunet metadata (missing {', '.join(missing) or 'format'}); "
                              "export it with `medunet export`, or run it with its own preprocessing")
    card = meta.get("card", {})
    try:
        return Checkpoint(model_config=from_dict(ModelConfig, meta["model_config"]),
                          data_config=from_dict(DataConfig, meta["data_config"]),
                          encoding=LabelEncoding.from_dict(meta["label_encoding"]), state_dict={},
                          postprocess=meta.get("postprocess", {}), area_stats=meta.get("area_stats", {}),
                          data_summary=card.get("training_data", {}), origin=card.get("origin", {}),
                          version=card.get("medunet_version", "?"), torch_version=card.get("torch_version", "?"))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: medunet metadata is incomplete ({exc})") from None
