"""Predictor: the one path from an image to probabilities, shared by validation, evaluate and predict."""
from __future__ import annotations

import dataclasses
import functools
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from medunet.config import MIRROR_AXES, DataConfig, PredictConfig
from medunet.data.encoding import LabelEncoding
from medunet.engine.checkpoint import Checkpoint, load_checkpoint
from medunet.engine import postprocess
from medunet.engine import precision as precisions
from medunet.engine.device import keep_freed_memory, resolve_device
from medunet.engine.export import read_torchscript_metadata
from medunet.engine.network import Network, TorchNetwork, resolve_engine, to_probabilities
from medunet.engine.precision import Precision
from medunet.engine.postprocess import PostprocessConfig
from medunet.errors import CheckpointError, ConfigError
from medunet.models.unet import UNet
from medunet.transforms.geometry import Geometry, default_geometry
from medunet.transforms.preprocess import preprocess

logger = logging.getLogger(__name__)

# Flip axes of the test-time augmentation members: identity, horizontal, vertical, both.
TTA_FLIPS = {"none": [()], "flips": [(), *MIRROR_AXES.values()]}
# Pixels through the network in one call, whatever the batch. On CUDA 32 images of 256² (the
# training batch): whole 1024² images at batch 32 would need ~25 GB of activations in the 31 M
# network. On a CPU batching buys nothing (the `small` preset infers 15.4 img/s at batch 1 and
# 11.8 at batch 8 for 256², 3.0 vs 1.7 for 576×592) and every image more in a batch is more peak
# memory, so only small images are batched there.
MAX_BATCH_PIXELS = {"cuda": 32 * 256 * 256, "cpu": 2 * 256 * 256}


@dataclass
class Output:
    """Probabilities `(K, H, W)` and, with TTA, their variance over the flips `(K, H, W)` (else None)."""

    probs: np.ndarray
    variance: np.ndarray | None = None


class Segmenter:
    """What evaluate and predict use: probabilities at each image's full size, then a mask.

    Subclasses give `outputs(images, geometries)`, `post` (threshold and clean-up), `encoding`,
    `area_stats` and `views` (the predictions averaged per image: TTA flips × members): a single
    model (`Predictor`) or an average of several (`Ensemble`).
    Probabilities are `(K, H, W)` float32: K = 1 (foreground, sigmoid) or K = C classes (softmax).
    """

    post: PostprocessConfig
    encoding: LabelEncoding
    area_stats: dict
    views: int = 1

    def outputs(self, images: list[np.ndarray], geometries: list[Geometry | None] | None = None) -> list[Output]:
        raise NotImplementedError

    def probabilities(self, images: list[np.ndarray],
                      geometries: list[Geometry | None] | None = None) -> list[np.ndarray]:
        """Like `outputs`, probabilities only."""
        return [o.probs for o in self.outputs(images, geometries)]

    @property
    def threshold(self) -> float:
        return self.post.threshold

    def to_mask(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities `(K, H, W)` → class indices `(H, W)` uint8, post-processed as configured."""
        return postprocess.apply(probs, self.post)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """One raw image → a mask `(H, W)` in the label encoding of the training data (e.g. 0/255)."""
        return self.encoding.decode(self.to_mask(self.probabilities([image])[0]))


def tta_flips(tta: str, mirrored: list[str] | None) -> list[tuple[int, ...]]:
    """The flips `tta` averages over, kept to the mirror images training showed the network
    (`mirrored`; None, from checkpoints that do not record it: all of them). A network trained
    without flips reads mirrored anatomy as other anatomy: on the hippocampus, trained without
    augmentation, averaging all four flips gave Dice 0.03 instead of 0.88 (BENCHMARKS.md)."""
    shown = set(MIRROR_AXES.values()) if mirrored is None else {MIRROR_AXES[name] for name in mirrored}
    flips = [d for d in TTA_FLIPS[tta] if not d or d in shown]
    if len(flips) < len(TTA_FLIPS[tta]):
        _warn_once(f"--tta {tta}: the network was trained with "
                   + ("mirror images " + ", ".join(mirrored) if mirrored else "no mirror images")
                   + ", so test-time augmentation averages "
                   + (f"{len(flips)} of its {len(TTA_FLIPS[tta])} views" if len(flips) > 1 else "nothing (plain)"))
    return flips


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    """Log `message` the first time only: the five members of a fold ensemble would repeat it."""
    logger.warning(message)


def effective_post(stored: PostprocessConfig | None, cfg: PredictConfig) -> PostprocessConfig:
    """The stored (tuned) post-processing, or the plain 0.5 threshold with `postprocess=False`, with
    the single steps `cfg` gives (threshold, keep_largest, fill_holes, min_size) applied over it."""
    post = stored if stored is not None and cfg.postprocess else PostprocessConfig()
    overrides = {name: getattr(cfg, name) for name in ("threshold", "keep_largest", "fill_holes", "min_size")}
    return dataclasses.replace(post, **{k: v for k, v in overrides.items() if v is not None})


class Predictor(Segmenter):
    """A model with its preprocessing, label encoding and inference options."""

    def __init__(self, network: UNet | Network, data_cfg: DataConfig, encoding: LabelEncoding,
                 device: torch.device, cfg: PredictConfig | None = None, post: PostprocessConfig | None = None,
                 area_stats: dict | None = None, precision: Precision | None = None,
                 mirrored: list[str] | None = None) -> None:
        # A bare UNet (training's validation, tests) runs on the torch engine in `precision`.
        self.network: Network = TorchNetwork(network, device, precision) if isinstance(network, UNet) else network
        self.data_cfg = data_cfg
        self.encoding = encoding
        self.device = device
        self.cfg = cfg or PredictConfig()
        self.flips = tta_flips(self.cfg.tta, mirrored)
        self.post = effective_post(post, self.cfg)  # threshold and clean-up steps applied by to_mask
        self.area_stats = area_stats or {}  # foreground share of the training labels: min, max, mean

    @property
    def views(self) -> int:
        return len(self.flips)

    @classmethod
    def load(cls, source: Path, cfg: PredictConfig | None = None) -> "Predictor":
        """A run folder, a checkpoint or an exported `.onnx` file → its Predictor on `cfg.engine`."""
        source = Path(source)
        if source.suffix.lower() == ".onnx":
            return cls.from_onnx(source, cfg)
        if source.is_file() and read_torchscript_metadata(source) is not None:
            raise CheckpointError(f"{source}: a TorchScript export, for runtimes without medunet; predict from "
                                  "its run folder, its checkpoint or an .onnx export")
        return cls.from_checkpoint(source, cfg)

    @classmethod
    def from_checkpoint(cls, path: Path | Checkpoint, cfg: PredictConfig | None = None,
                        precision: Precision | None = None) -> "Predictor":
        """The checkpoint's model on `cfg.device` and `cfg.engine`. On torch, in `precision` when
        given (training passes its own, so tuning sees what validation saw), else in what
        `cfg.precision` resolves to here; on ONNX Runtime, exported in memory (nothing is written)."""
        ckpt = path if isinstance(path, Checkpoint) else load_checkpoint(Path(path))
        cfg = cfg or PredictConfig()
        dev = resolve_device(cfg.device)
        if dev.type == "cpu":
            keep_freed_memory()
        model = ckpt.build_model()
        post, mirrored = PostprocessConfig.from_dict(ckpt.postprocess), ckpt.data_summary.get("mirrored")
        # Training hands its precision to tuning, which must see what validation saw: torch then.
        engine = "torch" if precision is not None else resolve_engine(cfg.engine, dev, cfg.precision)
        if engine == "onnxruntime":
            from medunet.engine import onnx_engine  # onnxruntime is an optional extra

            onnx_engine.check_precision(cfg.precision)
            network = onnx_engine.OnnxNetwork.from_module(model, dev)
            return cls(network, ckpt.data_config, ckpt.encoding, network.device, cfg, post, ckpt.area_stats,
                       mirrored=mirrored)
        if precision is None:
            precision, _ = precisions.choose(cfg.precision, dev, model, model.cfg.in_channels, ckpt.data_config.crop_size,
                                             cfg.batch, train=False)
        model = model.to(dev, memory_format=precision.memory_format)
        return cls(model, ckpt.data_config, ckpt.encoding, dev, cfg, post, ckpt.area_stats, precision,
                   mirrored=mirrored)

    @classmethod
    def from_onnx(cls, path: Path, cfg: PredictConfig | None = None) -> "Predictor":
        """An ONNX file medunet exported: everything but the network comes from its metadata."""
        from medunet.engine import onnx_engine

        cfg = cfg or PredictConfig()
        if cfg.engine == "torch":
            raise ConfigError(f"{path}: an ONNX file runs on --engine onnxruntime (or auto), not torch")
        onnx_engine.check_precision(cfg.precision)
        network, ckpt = onnx_engine.load(Path(path), resolve_device(cfg.device))
        return cls(network, ckpt.data_config, ckpt.encoding, network.device, cfg,
                   PostprocessConfig.from_dict(ckpt.postprocess), ckpt.area_stats,
                   mirrored=ckpt.data_summary.get("mirrored"))

    @property
    def sigmoid(self) -> bool:
        return self.network.cfg.out_channels == 1

    def predict_normalised(self, inputs: list[np.ndarray]) -> list[Output]:
        """Normalised inputs `(C, H, W)` → outputs at the same size; equal sizes share batches.

        Inputs whose longer side exceeds `max_size` go through in Gaussian-blended tiles.
        """
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for i, x in enumerate(inputs):
            by_shape[x.shape].append(i)
        out: list[Output] = [Output(np.empty(0))] * len(inputs)
        with self.network.evaluating(), torch.inference_mode():
            for shape, indices in by_shape.items():
                step = 1 if max(shape[-2:]) > self.cfg.max_size else self._batch_for(shape[-2:])
                for start in range(0, len(indices), step):
                    chunk = indices[start:start + step]
                    results = self._run(np.stack([inputs[i] for i in chunk]))
                    for i, result in zip(chunk, results):
                        out[i] = result
        return out

    def _batch_for(self, hw: tuple[int, ...]) -> int:
        """The batch for images or tiles of `hw`: `cfg.batch`, fewer when they would exceed
        MAX_BATCH_PIXELS together, and at least one."""
        budget = MAX_BATCH_PIXELS.get(self.device.type, MAX_BATCH_PIXELS["cuda"])
        return max(1, min(self.cfg.batch, budget // int(np.prod(hw))))

    def _run(self, batch: np.ndarray) -> list[Output]:
        """`(B, C, H, W)` → B outputs, averaging over the TTA flips."""
        x = torch.from_numpy(batch).to(self.device)
        members = []
        for dims in self.flips:
            xf = torch.flip(x, dims) if dims else x
            p = self._probabilities(xf)
            members.append(torch.flip(p, dims) if dims else p)
        stack = torch.stack(members)
        mean = stack.mean(0).cpu().numpy()
        var = stack.var(0, unbiased=False).cpu().numpy() if len(members) > 1 else None
        return [Output(mean[b], None if var is None else var[b]) for b in range(len(batch))]

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        if max(x.shape[-2:]) > self.cfg.max_size:
            m = self.network.cfg.multiple
            tile = max(m, self.cfg.max_size // m * m)
            return sliding_window_inference(x, (tile, tile), sw_batch_size=self._batch_for((tile, tile)),
                                            predictor=self._forward,
                                            overlap=self.cfg.overlap, mode="gaussian")
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_probabilities(self.network(x))

    def outputs(self, images: list[np.ndarray], geometries: list[Geometry | None] | None = None) -> list[Output]:
        """Raw images `(H, W)` / `(H, W, 3)` → outputs at each image's full size.

        With geometries (boxes in original pixels; None for an image: the default), only each box
        goes through the network and the result is pasted back into a canvas of background
        (variance 0 there); the model's input scale applies to every box.
        """
        geometries = geometries or [None] * len(images)
        geometries = [(g or default_geometry(*im.shape[:2], self.data_cfg)).scaled(self.data_cfg.input_scale)
                      for im, g in zip(images, geometries)]
        inputs = [preprocess(im, self.data_cfg, g) for im, g in zip(images, geometries)]
        return self._pasted(self.predict_normalised(inputs), geometries)

    def outputs_prepared(self, inputs: list[np.ndarray], shapes: list[tuple[int, int]]) -> list[Output]:
        """Like `outputs`, for inputs already preprocessed with the default geometry of images of
        `shapes` (a validation `Cache`: images as the network sees them, labels at full size)."""
        geometries = [default_geometry(*shape, self.data_cfg) for shape in shapes]
        return self._pasted(self.predict_normalised(inputs), geometries)

    def _pasted(self, results: list[Output], geometries: list[Geometry]) -> list[Output]:
        return [Output(g.invert(r.probs, fill=self._background()),
                       None if r.variance is None else g.invert(r.variance, fill=0.0))
                for r, g in zip(results, geometries)]

    def _background(self) -> np.ndarray:
        k = self.network.cfg.out_channels
        return np.zeros(1, np.float32) if k == 1 else np.eye(k, dtype=np.float32)[0]
