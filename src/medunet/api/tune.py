"""tune(): choose the threshold and clean-up steps on the validation split; store them in the checkpoint."""
from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from medunet.config import PredictConfig
from medunet.data.cache import Cache, build_cache, read_split
from medunet.data.disk_cache import DiskCache, NpyFiles
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

CHUNK = 64   # validation images whose probabilities exist at once


def tune(run: Path, split_dir: Path | None = None, *, device: str = "auto", precision: str | Precision = "auto",
         cache: Cache | DiskCache | VolumeCache | None = None) -> postprocess.TuneResult:
    """Tune post-processing of the run's best checkpoint on its validation split (or `split_dir`).

    The choice is written into `checkpoints/best.pt`, so `predict` and `evaluate` apply it. `cache`
    is the validation split already cached (in RAM or on disk), normalised with the run's
    preprocessing; its probabilities are computed in chunks (on disk: spilled to files), and
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
    result = _tuned(predictor, ckpt.encoding, cache, pairs)
    ckpt.postprocess = result.config.to_dict()
    save_checkpoint(path, ckpt)
    for step in result.steps:  # the CLI prints these as a table; logged for API callers who want them
        logger.debug("tune: %-40s Dice %.4f → %.4f  %s", step.description, step.dice_before, step.dice_after,
                     "kept" if step.kept else "not kept")
    logger.info("tune: %s; validation Dice %.4f → %.4f, stored in %s", result.config.describe(),
                result.baseline_dice, result.dice, path)
    return result


def _tuned(predictor: Predictor, encoding, cache: Cache | DiskCache | VolumeCache | None,
           pairs: list | None) -> postprocess.TuneResult:
    """The post-processing tuned on a validation cache, or on `pairs` read when there is none."""
    n = encoding.n_classes
    if isinstance(cache, VolumeCache):
        return postprocess.tune(case_probabilities(predictor, cache), cache.labels, n)
    if cache is None:
        raw = read_split(pairs)
        return postprocess.tune(predictor.probabilities(raw.images),
                                [encoding.encode(lab.values, lab.path) for lab in raw.labels], n)
    with _spill_folder(cache) as folder:
        return postprocess.tune(prepared_probabilities(predictor, cache, folder), cache.labels, n)


def prepared_probabilities(predictor: Predictor, cache: Cache | DiskCache, folder: Path | None = None) -> Sequence:
    """Probabilities `(K, H, W)` at full size of each image of a 2D validation cache. With `folder`
    each goes to a `.npy` file there as it comes and the result maps them back on access
    (`NpyFiles`), so they need not fit in RAM together."""
    if folder is None:
        return list(each_probability(predictor, cache))
    for i, probs in enumerate(each_probability(predictor, cache)):
        np.save(folder / f"{i:06d}.npy", probs)
    return NpyFiles(folder, range(len(cache)))


def each_probability(predictor: Predictor, cache: Cache | DiskCache) -> Iterator[np.ndarray]:
    """The probabilities of `cache`'s images in order, computed `CHUNK` images at a time."""
    for start in range(0, len(cache), CHUNK):
        chunk = range(start, min(start + CHUNK, len(cache)))
        outputs = predictor.outputs_prepared([cache.images[i] for i in chunk], [cache.labels[i].shape for i in chunk])
        yield from (output.probs for output in outputs)


@contextlib.contextmanager
def _spill_folder(cache: Cache | DiskCache) -> Iterator[Path | None]:
    """A temporary folder beside a disk cache for its probabilities (removed after); None for RAM."""
    if not isinstance(cache, DiskCache):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="tune-", dir=cache.folder.parent) as folder:
        yield Path(folder)


def _validation_pairs(checkpoint: Path) -> list:
    split = checkpoint.parent.parent / "split.json"
    if not split.is_file():
        raise CheckpointError(f"{checkpoint}: no split.json beside it; give the split folder to tune on")
    return read_split_file(split)["validation"]
