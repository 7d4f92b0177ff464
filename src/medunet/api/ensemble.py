"""ensemble(): combine cross-validated runs of different plans, choosing the combination by out-of-fold Dice.

Every member must be a cross-validated run over the same cases (its `oof/` holds each case's
out-of-fold probabilities at full size). Each non-empty combination of the members is scored by
averaging their out-of-fold probabilities, tuning the post-processing on the average, and taking
the mean Dice; the best one (the fewest members among equals) becomes the ensemble run, which
`predict` and `evaluate` accept like any run.
"""
from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np

from medunet import __version__
from medunet.data.cache import read_split
from medunet.data.encoding import LabelEncoding
from medunet.data.pairs import read_split as read_split_file
from medunet.engine import postprocess
from medunet.engine.ensemble import CV_FILE, ENSEMBLE_FILE
from medunet.errors import ConfigError
from medunet.io.outputs import staged_folder, write_json

logger = logging.getLogger(__name__)

MIN_GAIN = 1e-4   # a combination with more members must beat a smaller one by this much


def ensemble(runs: list[Path], out: Path, *, overwrite: bool = False) -> dict:
    """Choose the best combination of the cross-validated `runs` by out-of-fold Dice; write it to `out`.

    Returns the ensemble's record (what `ensemble.json` holds): the members chosen, the tuned
    post-processing, and every combination's out-of-fold Dice.
    """
    runs = [Path(r).resolve() for r in runs]
    if len(runs) < 2:
        raise ConfigError("medunet ensemble needs at least two cross-validated runs")
    encoding, truths, stems = _truths(runs[0])
    oof = {run: _oof(run, stems, encoding) for run in runs}
    candidates = []
    for size in range(1, len(runs) + 1):
        for combo in itertools.combinations(runs, size):
            probs = [np.mean([oof[r][i].astype(np.float32) for r in combo], axis=0) for i in range(len(stems))]
            result = postprocess.tune(probs, truths, encoding.n_classes)
            candidates.append({"runs": [str(r) for r in combo], "dice": result.dice,
                               "postprocess": result.config.to_dict()})
            logger.info("ensemble: %s → out-of-fold Dice %.4f (%s)", " + ".join(r.name for r in combo),
                        result.dice, result.config.describe())
    best = candidates[0]
    for c in candidates[1:]:
        if c["dice"] > best["dice"] + (MIN_GAIN if len(c["runs"]) > len(best["runs"]) else 0.0):
            best = c
    record = {"kind": "ensemble", "version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "members": [{"run": r} for r in best["runs"]], "postprocess": best["postprocess"],
              "dice": best["dice"], "n_cases": len(stems), "candidates": candidates,
              "label_encoding": encoding.to_dict()}
    with staged_folder(Path(out), overwrite, "ensemble run") as stage:
        write_json(stage / ENSEMBLE_FILE, record)
        write_json(stage / "config.json", {k: record[k] for k in ("kind", "version", "created", "members",
                                                                  "label_encoding")})
    logger.info("ensemble: %s chosen (out-of-fold Dice %.4f); written to %s",
                " + ".join(Path(r).name for r in best["runs"]), best["dice"], out)
    return record


def _truths(run: Path) -> tuple[LabelEncoding, list[np.ndarray], list[str]]:
    """The label encoding and the class-index truths of a cross-validated run's cases, in order."""
    if not (run / CV_FILE).is_file():
        raise ConfigError(f"{run}: not a cross-validated run (train it with --folds K)")
    encoding = LabelEncoding.from_dict(json.loads((run / "config.json").read_text())["label_encoding"])
    splits = read_split_file(run / "split.json")
    pairs = [p for name, ps in splits.items() if name.startswith("fold") for p in ps]
    raw = read_split(pairs)
    return encoding, [encoding.encode(lab.values, lab.path) for lab in raw.labels], [p.stem for p in pairs]


def _oof(run: Path, stems: list[str], encoding: LabelEncoding) -> list[np.ndarray]:
    """A run's out-of-fold probabilities of `stems`; every member must cover the same cases the same way."""
    if not (run / CV_FILE).is_file():
        raise ConfigError(f"{run}: not a cross-validated run (train it with --folds K)")
    theirs = LabelEncoding.from_dict(json.loads((run / "config.json").read_text())["label_encoding"])
    if theirs != encoding:
        raise ConfigError(f"{run}: its labels are {theirs.describe(why=False)}, the first run's "
                          f"{encoding.describe(why=False)}: members must segment the same classes")
    missing = [s for s in stems if not (run / "oof" / f"{s}.npy").is_file()]
    if missing:
        raise ConfigError(f"{run}: no out-of-fold prediction of {len(missing)} case(s) of the first run "
                          f"(e.g. {missing[0]}): members must be cross-validated on the same cases")
    return [np.load(run / "oof" / f"{s}.npy") for s in stems]
