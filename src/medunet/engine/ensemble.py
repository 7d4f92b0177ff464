"""Ensembles: the probabilities of several models averaged, then one post-processing.

A cross-validated run (`cv.json`, folds under `folds/k/`) predicts with the average of its folds;
an ensemble run (`ensemble.json`, made by `medunet ensemble`) with the average of its member runs,
each of them a fold average in turn. Members may see the images differently (another input
scale, another crop): each one resizes its own output back to the original grid, so averaging
happens there. The post-processing is the ensemble's own, tuned on out-of-fold predictions.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from medunet.config import PredictConfig, replace
from medunet.engine.postprocess import PostprocessConfig
from medunet.engine.predictor import Output, Predictor, Segmenter, effective_post
from medunet.errors import CheckpointError, ConfigError
from medunet.transforms.geometry import Geometry

logger = logging.getLogger(__name__)

CV_FILE = "cv.json"
ENSEMBLE_FILE = "ensemble.json"


class Ensemble(Segmenter):
    """The mean of its members' probabilities at each image's full size.

    Variance (with TTA or several members) is the variance over all members' and flips' maps: the
    mean of the members' own variances plus the variance of their means.
    """

    def __init__(self, members: Sequence[Segmenter], post: PostprocessConfig, cfg: PredictConfig,
                 name: str = "ensemble") -> None:
        if not members:
            raise ConfigError(f"{name}: no member to predict with")
        encodings = {m.encoding for m in members}
        if len(encodings) > 1:
            raise CheckpointError(f"{name}: its members read the labels differently ({', '.join(map(str, encodings))})")
        self.members = list(members)
        self.encoding = members[0].encoding
        self.area_stats = members[0].area_stats
        self.cfg = cfg
        self.post = effective_post(post, cfg)

    @property
    def views(self) -> int:
        return sum(m.views for m in self.members)

    def outputs(self, images: list[np.ndarray], geometries: list[Geometry | None] | None = None) -> list[Output]:
        per_member = [m.outputs(images, geometries) for m in self.members]
        results = []
        for outs in zip(*per_member):
            probs = np.stack([o.probs for o in outs])
            mean = probs.mean(axis=0)
            variance = None
            if len(outs) > 1 or outs[0].variance is not None:
                # a member with one view (no TTA, or none its training allows) adds no variance of its own
                within = [o.variance for o in outs if o.variance is not None]
                variance = probs.var(axis=0) + (np.sum(within, axis=0) / len(outs) if within else 0.0)
            results.append(Output(mean.astype(np.float32), None if variance is None else variance.astype(np.float32)))
        return results


def load_segmenter(source: Path, cfg: PredictConfig | None = None) -> Segmenter:
    """A run folder, checkpoint, `.onnx` export, cross-validated run or ensemble run → what predicts with it.

    On a cross-validated run `cfg.folds` chooses folds (default: all); `cfg.fast` takes the single
    fold of best validation Dice, without TTA.
    """
    source, cfg = Path(source), cfg or PredictConfig()
    if source.is_dir() and (source / ENSEMBLE_FILE).is_file():
        doc = _read(source / ENSEMBLE_FILE)
        members = [load_segmenter(Path(m["run"]), replace(cfg, postprocess=False)) for m in doc["members"]]
        return Ensemble(members, PostprocessConfig.from_dict(doc["postprocess"]), cfg, str(source))
    if source.is_dir() and (source / CV_FILE).is_file():
        return _folds(source, _read(source / CV_FILE), cfg)
    if cfg.folds is not None:
        raise ConfigError(f"{source}: --folds needs a cross-validated run (trained with --folds K)")
    return Predictor.load(source, cfg)


def _folds(run: Path, doc: dict, cfg: PredictConfig) -> Segmenter:
    folds = list(range(doc["folds"]))
    chosen = list(cfg.folds) if cfg.folds is not None else folds
    unknown = sorted(set(chosen) - set(folds))
    if unknown:
        raise ConfigError(f"{run}: no fold {', '.join(map(str, unknown))}; it has folds 0–{folds[-1]}")
    if cfg.fast:
        scores = {k: doc["per_fold"][k].get("dice_mean") or -1.0 for k in chosen}
        chosen = [max(chosen, key=lambda k: scores[k])]
        cfg = replace(cfg, tta="none")
    member_cfg = replace(cfg, postprocess=False, folds=None, fast=False)
    members = [Predictor.load(run / "folds" / str(k), member_cfg) for k in chosen]
    logger.info("%s: %s of %d", run, f"fold {chosen[0]}" if len(chosen) == 1 else f"average of folds "
                f"{', '.join(map(str, chosen))}", len(folds))
    return Ensemble(members, PostprocessConfig.from_dict(doc["postprocess"]), cfg, str(run))


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc})") from None
