"""Validation Dice during training: streamed in chunks, and sharded over the ranks of a torchrun job.

The number is `evaluate`'s `dice_mean` (per-image Dice through the same Predictor, images empty in
both truth and prediction left out; per case in 3D for volumes). Only the scores are kept: a chunk
of VAL_CHUNK images goes through the network, is scored and let go, so validation holds a chunk's
probabilities, never the whole split's.

Under torchrun each rank scores images r, r + N, r + 2N, ... (no padding: no image is scored twice,
unlike a DistributedSampler that pads the last batch), with the same network (rank 0's batch-norm
statistics), and the scores are gathered, so every rank takes the same mean.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medunet.data.cache import Cache
from medunet.data.volume_cache import VolumeCache
from medunet.engine import distributed
from medunet.engine.distributed import World
from medunet.engine.predictor import Predictor
from medunet.engine.volume_predictor import VolumePredictor
from medunet.metrics import defined_mean, image_metrics

VAL_CHUNK = 16        # validation images through the network at a time


def validate(predictor: Predictor, val: Cache | VolumeCache, world: World = distributed.SINGLE) -> float:
    """Mean per-image (per-case for volumes) Dice of the validation cache, the same on every rank;
    NaN when every image is empty in truth and prediction."""
    mine = world.shard(len(val))
    scores = (case_dices if isinstance(val, VolumeCache) else image_dices)(predictor, val, mine)
    return defined_mean(distributed.interleave(world.gather(scores)))


def image_dices(predictor: Predictor, val: Cache, indices: Sequence[int]) -> list[float]:
    """Dice of the validation images at `indices` (NaN where truth and prediction are both empty),
    VAL_CHUNK at a time."""
    n_classes, scores = predictor.encoding.n_classes, []
    for start in range(0, len(indices), VAL_CHUNK):
        part = indices[start:start + VAL_CHUNK]
        labels = [np.asarray(val.labels[i]) for i in part]
        outputs = predictor.outputs_prepared([val.images[i] for i in part], [label.shape for label in labels])
        scores += [image_metrics(t, predictor.to_mask(o.probs), n_classes)["dice"] for t, o in zip(labels, outputs)]
    return scores


def case_dices(predictor: Predictor, val: VolumeCache, indices: Sequence[int]) -> list[float]:
    """3D Dice of the validation cases at `indices`, one case at a time."""
    volumes, n_classes = VolumePredictor(predictor), predictor.encoding.n_classes
    return [image_metrics(val.labels[i], volumes.predict_slices(val.volumes[i], val.grids[i]).classes,
                          n_classes)["dice"] for i in indices]
