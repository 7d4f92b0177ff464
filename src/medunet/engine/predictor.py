"""Predictor: the one path from an image to probabilities, shared by validation, evaluate and predict."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from medunet.config import DataConfig
from medunet.data.encoding import LabelEncoding
from medunet.engine.checkpoint import Checkpoint, load_checkpoint
from medunet.engine.device import autocast, memory_format, resolve_device
from medunet.models.unet import UNet
from medunet.transforms.geometry import Geometry
from medunet.transforms.intensity import normalise


class Predictor:
    """A model with its preprocessing and label encoding.

    Probabilities are `(K, H, W)` float32: K = 1 (foreground, sigmoid) or K = C classes (softmax).
    """

    def __init__(self, model: UNet, data_cfg: DataConfig, encoding: LabelEncoding,
                 device: torch.device, batch: int = 4, threshold: float = 0.5) -> None:
        self.model = model
        self.data_cfg = data_cfg
        self.encoding = encoding
        self.device = device
        self.batch = batch
        self.threshold = threshold

    @classmethod
    def from_checkpoint(cls, path: Path | Checkpoint, device: str = "auto", batch: int = 4,
                        threshold: float | None = None) -> "Predictor":
        ckpt = path if isinstance(path, Checkpoint) else load_checkpoint(Path(path))
        dev = resolve_device(device)
        model = ckpt.build_model().to(dev, memory_format=memory_format(dev))
        chosen = threshold if threshold is not None else ckpt.postprocess.get("threshold", 0.5)
        return cls(model, ckpt.data_config, ckpt.encoding, dev, batch, chosen)

    @property
    def sigmoid(self) -> bool:
        return self.model.cfg.out_channels == 1

    def predict_normalised(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Normalised inputs `(C, H, W)` → probabilities `(K, H, W)`, batched by equal size."""
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for i, x in enumerate(inputs):
            by_shape[x.shape].append(i)
        out: list[np.ndarray] = [np.empty(0)] * len(inputs)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for indices in by_shape.values():
                    for start in range(0, len(indices), self.batch):
                        chunk = indices[start:start + self.batch]
                        probs = self._forward(np.stack([inputs[i] for i in chunk]))
                        for i, p in zip(chunk, probs):
                            out[i] = p
        finally:
            self.model.train(was_training)
        return out

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device, memory_format=memory_format(self.device))
        with autocast(self.device):
            logits = self.model(x)
        logits = logits.float()
        probs = torch.sigmoid(logits) if self.sigmoid else torch.softmax(logits, dim=1)
        return probs.cpu().numpy()

    def probabilities(self, images: list[np.ndarray], geometries: list[Geometry] | None = None) -> list[np.ndarray]:
        """Raw images `(H, W)` / `(H, W, 3)` → probabilities `(K, H, W)` at each image's full size.

        With geometries, only each box goes through the network and the result is pasted back
        into a canvas of background.
        """
        if geometries is None:
            geometries = [Geometry.whole(*im.shape[:2]) for im in images]
        inputs = [g.apply(normalise(im, self.data_cfg)) for im, g in zip(images, geometries)]
        probs = self.predict_normalised(inputs)
        return [g.invert(p, fill=self._background()) for p, g in zip(probs, geometries)]

    def _background(self) -> np.ndarray:
        k = self.model.cfg.out_channels
        return np.zeros(1, np.float32) if k == 1 else np.eye(k, dtype=np.float32)[0]

    def to_mask(self, probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Probabilities `(K, H, W)` → class indices `(H, W)` uint8."""
        if self.sigmoid:
            t = self.threshold if threshold is None else threshold
            return (probs[0] > t).astype(np.uint8)
        return probs.argmax(axis=0).astype(np.uint8)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """One raw image → a mask `(H, W)` in the label encoding of the training data (e.g. 0/255)."""
        return self.encoding.decode(self.to_mask(self.probabilities([image])[0]))
