"""VolumePredictor: a Predictor applied to a volume slice by slice, for validation, tune, evaluate and predict.

A volume goes the way the volume cache prepares it (`medunet.data.volume_cache.prepare_case`:
sliced along its slice axis, resampled in-plane, normalised over the volume); its slices, each with
its 2.5D context, go through `Predictor.predict_normalised` in chunks (batched there, with the
same TTA and tiling as 2D images); each slice's probabilities are resized back to its original
grid, turned into class ids, and stacked. Post-processing then runs in 3D on the whole volume.

Memory stays bounded for a CT-sized volume: only one chunk of slices' float32 probabilities exists
at a time; the volume keeps uint8 class ids, and float16 probabilities only when they are asked for.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from medunet.data.volume_cache import CaseGrid, VolumeCache, context_stack, from_slices, prepare_case
from medunet.engine import postprocess
from medunet.engine.predictor import Predictor, Segmenter
from medunet.errors import ConfigError
from medunet.io.volumes import Volume

CHUNK_SLICES = 32  # slices prepared and sent to the Predictor at a time (it batches within)


@dataclass
class VolumeOutput:
    """Class indices `(…)` uint8, post-processed in 3D, and with `probabilities` the float16
    probabilities `(K, …)`; slice axis first (`predict_slices`) or in the volume's order (`predict`)."""

    classes: np.ndarray
    probs: np.ndarray | None = None


class VolumePredictor:
    """Wraps a Predictor (its model, preprocessing, encoding, TTA and tuned post-processing)."""

    def __init__(self, predictor: Segmenter, chunk: int = CHUNK_SLICES) -> None:
        if not isinstance(predictor, Predictor):  # fold averages and ensembles of volumes: not built yet
            raise ConfigError("volumes are predicted with one run or checkpoint; cross-validated runs and "
                              "ensembles predict 2D images only for now")
        self.predictor = predictor
        self.chunk = chunk

    def predict(self, volume: Volume, *, probabilities: bool = False, postprocess_3d: bool = True,
                progress=None) -> VolumeOutput:
        """A volume `(Z, Y, X)` → classes `(Z, Y, X)` (and probabilities `(K, Z, Y, X)`) on its own grid.

        `progress`: a tqdm bar advanced by the slices done.
        """
        inputs, grid = prepare_case(volume.array, volume.geometry, self.predictor.data_cfg)
        out = self.predict_slices(inputs, grid, probabilities=probabilities, postprocess_3d=postprocess_3d,
                                  progress=progress)
        return VolumeOutput(from_slices(out.classes, grid.axis),
                            None if out.probs is None else from_slices(out.probs, grid.axis))

    def predict_slices(self, inputs: np.ndarray, grid: CaseGrid, *, probabilities: bool = False,
                       postprocess_3d: bool = True, progress=None) -> VolumeOutput:
        """Network input `(S, h, w)` of a case (as the volume cache holds it) → classes `(S, H, W)`
        (and float16 probabilities `(K, S, H, W)`), slice axis first, on the original slice grid."""
        g = grid.geometry
        n = len(inputs)
        classes = np.empty((n, g.height, g.width), np.uint8)
        probs = np.empty((self._channels, n, g.height, g.width), np.float16) if probabilities else None
        threshold = self.predictor.post.threshold
        for start, p in self.slice_probabilities(inputs, grid):
            stop = start + len(p)
            by_class = p.transpose(1, 0, 2, 3)  # (K, B, H, W): the layout to_classes reads
            classes[start:stop] = postprocess.to_classes(by_class, threshold)
            if probs is not None:
                probs[:, start:stop] = by_class
            if progress is not None:
                progress.update(len(p))
        if postprocess_3d:
            classes = postprocess.clean(classes, self.predictor.post)
        return VolumeOutput(classes, probs)

    def slice_probabilities(self, inputs: np.ndarray, grid: CaseGrid) -> Iterator[tuple[int, np.ndarray]]:
        """(first slice, probabilities `(B, K, H, W)` float32 on the original slice grid) per chunk."""
        k = self.predictor.data_cfg.context or 0
        for start in range(0, len(inputs), self.chunk):
            ks = np.arange(start, min(len(inputs), start + self.chunk))
            outputs = self.predictor.predict_normalised(list(context_stack(inputs, ks, k)))
            yield start, np.stack([grid.geometry.invert(o.probs) for o in outputs])

    @property
    def _channels(self) -> int:
        return self.predictor.network.cfg.out_channels


def case_probabilities(predictor: Predictor, cache: VolumeCache) -> list[np.ndarray]:
    """Float16 probabilities `(K, S, H, W)` of every case of a validation cache, for tuning."""
    volumes = VolumePredictor(predictor)
    return [volumes.predict_slices(x, grid, probabilities=True, postprocess_3d=False).probs  # type: ignore[misc]
            for x, grid in zip(cache.volumes, cache.grids)]
