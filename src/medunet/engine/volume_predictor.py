"""VolumePredictor: a Predictor applied to a volume slice by slice, for validation, tune, evaluate and predict.

A volume goes the way the volume cache prepares it (`medunet.data.volume_cache.prepare_case`:
sliced along its slice axis, resampled in-plane, normalised over the volume); its slices, each with
its 2.5D context, go through `Predictor.predict_normalised` in chunks (batched there, with the
same TTA and tiling as 2D images); each slice's probabilities are resized back to its original
grid, turned into class ids, and stacked. Post-processing then runs in 3D on the whole volume.

A fold average or an ensemble (`medunet.engine.ensemble.Ensemble`) predicts the same way: each
model prepares the volume as its own run does (one preparation serves the models that share a data
configuration, e.g. the folds of a cross-validated run), and each chunk's probabilities are the
mean over the ensemble's members on the original grid, nested as the ensemble is (an ensemble of a
5-fold run and a single run weighs the two runs equally). Its post-processing is the ensemble's.

Memory stays bounded for a CT-sized volume: only one chunk of slices' float32 probabilities exists
at a time (an ensemble's: the running sum and one member's); the volume keeps uint8 class ids, and
float16 probabilities only when they are asked for.
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
    """Wraps a Predictor (its model, preprocessing, encoding, TTA and tuned post-processing) or an
    Ensemble of them (the mean of its members' probabilities, its own post-processing)."""

    def __init__(self, segmenter: Segmenter, chunk: int = CHUNK_SLICES) -> None:
        self.segmenter = segmenter
        self.models = _models(segmenter)
        self.post = segmenter.post
        self.data_cfg = self.models[0].data_cfg  # the slice axis rule every member shares (checked per case)
        # One preparation of a volume per data configuration (the folds of a run share one); keyed
        # by repr, which a configuration read back from a checkpoint always has, hashable or not.
        self.configs = {repr(m.data_cfg): m.data_cfg for m in self.models}
        self.chunk = chunk

    def predict(self, volume: Volume, *, probabilities: bool = False, postprocess_3d: bool = True,
                progress=None) -> VolumeOutput:
        """A volume `(Z, Y, X)` → classes `(Z, Y, X)` (and probabilities `(K, Z, Y, X)`) on its own grid.

        `progress`: a tqdm bar advanced by the slices done.
        """
        prepared = {key: prepare_case(volume.array, volume.geometry, cfg) for key, cfg in self.configs.items()}
        grids = [grid for _, grid in prepared.values()]
        if len({(g.axis, g.n_slices) for g in grids}) > 1:
            raise ConfigError("the ensemble's members slice this volume along different axes; give members "
                              "trained with the same --slice-axis")
        out = self._slices(prepared, grids[0], probabilities, postprocess_3d, progress)
        axis = grids[0].axis
        return VolumeOutput(from_slices(out.classes, axis),
                            None if out.probs is None else from_slices(out.probs, axis))

    def predict_slices(self, inputs: np.ndarray, grid: CaseGrid, *, probabilities: bool = False,
                       postprocess_3d: bool = True, progress=None) -> VolumeOutput:
        """Network input `(S, h, w)` of a case (as the volume cache holds it, prepared by the one
        model's data configuration) → classes `(S, H, W)` (and float16 probabilities `(K, S, H, W)`),
        slice axis first, on the original slice grid."""
        if len(self.configs) > 1:
            raise ConfigError("a cached case is prepared for one data configuration; this ensemble's members differ")
        (key,) = self.configs
        return self._slices({key: (inputs, grid)}, grid, probabilities, postprocess_3d, progress)

    def _slices(self, prepared: dict[str, tuple[np.ndarray, CaseGrid]], grid: CaseGrid, probabilities: bool,
                postprocess_3d: bool, progress) -> VolumeOutput:
        g, n = grid.geometry, grid.n_slices
        classes = np.empty((n, g.height, g.width), np.uint8)
        probs = np.empty((self._channels, n, g.height, g.width), np.float16) if probabilities else None
        for start in range(0, n, self.chunk):
            stop = min(n, start + self.chunk)
            by_class = _mean_probabilities(self.segmenter, prepared, np.arange(start, stop)).transpose(1, 0, 2, 3)
            classes[start:stop] = postprocess.to_classes(by_class, self.post.threshold)  # by_class: (K, B, H, W)
            if probs is not None:
                probs[:, start:stop] = by_class
            if progress is not None:
                progress.update(stop - start)
        if postprocess_3d:
            classes = postprocess.clean(classes, self.post)
        return VolumeOutput(classes, probs)

    @property
    def _channels(self) -> int:
        return self.models[0].network.cfg.out_channels


def _models(segmenter: Segmenter) -> list[Predictor]:
    """The single models under a Predictor or a (nested) Ensemble."""
    if isinstance(segmenter, Predictor):
        return [segmenter]
    members = getattr(segmenter, "members", None)
    if not members:
        raise ConfigError(f"cannot predict volumes with {type(segmenter).__name__}: not a run, fold average "
                          "or ensemble")
    return [model for member in members for model in _models(member)]


def _mean_probabilities(node: Segmenter, prepared: dict[str, tuple[np.ndarray, CaseGrid]],
                        ks: np.ndarray) -> np.ndarray:
    """Probabilities `(B, K, H, W)` float32 of slices `ks` on the original slice grid: the model's
    own, or the mean of the members' (nested as the ensemble is)."""
    if isinstance(node, Predictor):
        inputs, grid = prepared[repr(node.data_cfg)]
        outputs = node.predict_normalised(list(context_stack(inputs, ks, node.data_cfg.context or 0)))
        return np.stack([grid.geometry.invert(o.probs) for o in outputs])
    members = node.members  # type: ignore[attr-defined]
    total = _mean_probabilities(members[0], prepared, ks)
    for member in members[1:]:   # a running sum: one member's chunk at a time beside it, not all K
        total += _mean_probabilities(member, prepared, ks)
    return total / len(members)


def case_probabilities(predictor: Predictor, cache: VolumeCache) -> list[np.ndarray]:
    """Float16 probabilities `(K, S, H, W)` of every case of a validation cache, for tuning."""
    return list(each_case_probability(predictor, cache))


def each_case_probability(predictor: Predictor, cache: VolumeCache) -> Iterator[np.ndarray]:
    """The float16 probabilities `(K, S, H, W)` of a validation cache's cases, one case at a time."""
    volumes = VolumePredictor(predictor)
    for x, grid in zip(cache.volumes, cache.grids):
        yield volumes.predict_slices(x, grid, probabilities=True, postprocess_3d=False).probs  # type: ignore[misc]
