"""tune(): choose the threshold and clean-up steps on the validation split; store them in the checkpoint."""
from __future__ import annotations

import logging
from pathlib import Path

from medunet.config import PredictConfig
from medunet.data.cache import Cache, build_cache, read_split
from medunet.data.pairs import find_pairs, is_volume_dataset
from medunet.data.volume_cache import VolumeCache
from medunet.data.pairs import read_split as read_split_file
from medunet.engine import postprocess
from medunet.engine.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from medunet.engine.precision import Precision
from medunet.engine.predictor import Predictor
from medunet.engine.volume_predictor import case_probabilities
from medunet.errors import CheckpointError

logger = logging.getLogger(__name__)


def tune(run: Path, split_dir: Path | None = None, *, device: str = "auto", precision: str | Precision = "auto",
         cache: Cache | VolumeCache | None = None) -> postprocess.TuneResult:
    """Tune post-processing of the run's best checkpoint on its validation split (or `split_dir`).

    The choice is written into `checkpoints/best.pt`, so `predict` and `evaluate` apply it. `cache`
    is the validation split already in RAM, normalised with the run's preprocessing, and
    `precision` the one training ran in (training passes both: no file is read twice, and tuning
    sees the probabilities validation saw). Volumes are tuned in 3D, by per-case 3D Dice.
    """
    run = Path(run)
    path = find_checkpoint(run) if run.is_dir() else run
    ckpt = load_checkpoint(path)
    chosen = precision if isinstance(precision, Precision) else None
    cfg = PredictConfig(device=device, postprocess=False, precision=precision if chosen is None else "auto")
    predictor = Predictor.from_checkpoint(ckpt, cfg, chosen)
    pairs = None if cache is not None else find_pairs(Path(split_dir)) if split_dir else _validation_pairs(path)
    if pairs is not None and is_volume_dataset(pairs):
        cache = build_cache(read_split(pairs), ckpt.data_config, ckpt.encoding, consume=True, training=False)
    if isinstance(cache, VolumeCache):
        probs, truths = case_probabilities(predictor, cache), cache.labels
    elif cache is None:
        raw = read_split(pairs)
        probs = predictor.probabilities(raw.images)
        truths = [ckpt.encoding.encode(lab.values, lab.path) for lab in raw.labels]
    else:
        outputs = predictor.outputs_prepared(cache.images, [label.shape for label in cache.labels])
        probs, truths = [o.probs for o in outputs], cache.labels
    result = postprocess.tune(probs, truths, ckpt.encoding.n_classes)
    ckpt.postprocess = result.config.to_dict()
    save_checkpoint(path, ckpt)
    for step in result.steps:  # the CLI prints these as a table; logged for API callers who want them
        logger.debug("tune: %-40s Dice %.4f → %.4f  %s", step.description, step.dice_before, step.dice_after,
                     "kept" if step.kept else "not kept")
    logger.info("tune: %s; validation Dice %.4f → %.4f, stored in %s", result.config.describe(),
                result.baseline_dice, result.dice, path)
    return result


def _validation_pairs(checkpoint: Path) -> list:
    split = checkpoint.parent.parent / "split.json"
    if not split.is_file():
        raise CheckpointError(f"{checkpoint}: no split.json beside it; give the split folder to tune on")
    return read_split_file(split)["validation"]
