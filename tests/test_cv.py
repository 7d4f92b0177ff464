"""Cross-validation, fold ensembles and `medunet ensemble`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_split
from medunet.cli import main
from medunet.data.pairs import Pair, split_folds
from medunet.engine.ensemble import Ensemble, load_segmenter
from medunet.engine.postprocess import PostprocessConfig
from medunet.engine.predictor import Output, Segmenter
from medunet.errors import DataError

TINY = ["--size", "64", "--batch", "4", "--samples-per-epoch", "8", "--preset", "tiny", "--device", "cpu"]


def pairs(stems: list[str]) -> list[Pair]:
    return [Pair(s, Path(f"/d/train/image/{s}.png"), Path(f"/d/train/label/{s}.png")) for s in stems]


def test_folds_keep_groups_whole_and_come_out_even() -> None:
    stems = [f"p{p:02d}_s{s}" for p in range(7) for s in range(1 + p % 3)]
    fold_of = split_folds(pairs(stems), 3, seed=0, group_by="^[^_]+")
    by_group: dict[str, set[int]] = {}
    for stem, k in zip(stems, fold_of):
        by_group.setdefault(stem.split("_")[0], set()).add(k)
    assert all(len(ks) == 1 for ks in by_group.values())           # a patient lies in one fold
    sizes = np.bincount(fold_of, minlength=3)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == len(stems)
    assert split_folds(pairs(stems), 3, seed=0, group_by="^[^_]+") == fold_of   # seeded
    with pytest.raises(DataError, match="2 case"):
        split_folds(pairs(["a", "b"]), 3, seed=0)


@pytest.fixture(scope="module")
def cv_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("cv")
    data = root / "data"
    write_split(data / "train", 9, [(64, 64), (48, 80)], seed=1)
    write_split(data / "test", 3, [(61, 77), (64, 64)], seed=3)
    a, b = root / "a", root / "b"
    assert main(["-q", "train", str(data), "--out", str(a), "--epochs", "2", "--folds", "3", *TINY]) == 0
    assert main(["-q", "train", str(data), "--out", str(b), "--epochs", "1", "--folds", "3", "--scale", "2",
                 "--seed", "1", *TINY]) == 0
    return data, a, b


def test_cross_validation_writes_folds_out_of_fold_predictions_and_a_summary(cv_runs) -> None:
    data, run, _ = cv_runs
    cv = json.loads((run / "cv.json").read_text())
    assert cv["folds"] == 3 and [f["fold"] for f in cv["per_fold"]] == [0, 1, 2]
    assert sum(f["n_images"] for f in cv["per_fold"]) == 9
    fold_dice = [f["dice_mean"] for f in cv["per_fold"]]
    assert cv["mean"]["dice_mean"] == pytest.approx(np.mean(fold_dice))
    assert cv["sd"]["dice_mean"] == pytest.approx(np.std(fold_dice))
    split = json.loads((run / "split.json").read_text())
    folds = [{e["stem"] for e in split[f"fold{k}"]} for k in range(3)]
    assert not (folds[0] & folds[1]) and len(set.union(*folds)) == 9
    for k in range(3):                       # each fold validated on its own cases, trained on the rest
        fold_split = json.loads((run / "folds" / str(k) / "split.json").read_text())
        assert {e["stem"] for e in fold_split["validation"]} == folds[k]
        assert not folds[k] & {e["stem"] for e in fold_split["train"]}
        best = torch.load(run / "folds" / str(k) / "checkpoints" / "best.pt", weights_only=True)
        assert best["postprocess"] == cv["postprocess"]      # tuned once, on all out-of-fold cases
    oof = sorted(p.stem for p in (run / "oof").glob("*.npy"))
    assert len(oof) == 9
    prob = np.load(run / "oof" / f"{oof[0]}.npy")
    assert prob.dtype == np.float16 and prob.ndim == 3
    rows = (run / "oof" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 10 and rows[0].startswith("stem,fold,dice")


def test_each_fold_is_planned_for_its_share_of_the_budget(tmp_path: Path) -> None:
    """With --time T and K folds the plan's epochs are cut for T / K, the time a fold trains, not for T."""
    data = tmp_path / "data"
    write_split(data / "train", 6, [(64, 64)], seed=1)
    run = tmp_path / "run"
    tiny = [a for a in TINY if a not in ("--samples-per-epoch", "8")]
    assert main(["-q", "train", str(data), "--out", str(run), "--time", "8s", "--folds", "2", *tiny]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["requested"]["train"]["time_budget"] == 8.0 and config["train"]["time_budget"] == 4.0
    length = next(c for c in config["plan"]["choices"] if c["name"] == "length")
    assert "in 4 s" in length["reason"]


class Constant(Segmenter):
    """A stand-in member that predicts one probability everywhere."""

    def __init__(self, p: float, variance: float | None = None) -> None:
        self.p, self.variance, self.post, self.area_stats = p, variance, PostprocessConfig(), {}
        from medunet.data.encoding import LabelEncoding
        self.encoding = LabelEncoding((0, 255), "binary")

    def outputs(self, images, geometries=None):
        def full(value, image):
            return None if value is None else np.full((1, *image.shape[:2]), value, np.float32)
        return [Output(full(self.p, im), full(self.variance, im)) for im in images]


def test_an_ensemble_averages_its_members_and_applies_its_own_post_processing() -> None:
    from medunet.config import PredictConfig

    ens = Ensemble([Constant(0.2), Constant(0.6)], PostprocessConfig(threshold=0.35), PredictConfig())
    out = ens.outputs([np.zeros((5, 7), np.uint8)])[0]
    assert np.allclose(out.probs, 0.4) and np.allclose(out.variance, 0.04)
    # the mean of the members' own (TTA) variances: one member with a single view adds none
    mixed = Ensemble([Constant(0.2, variance=0.01), Constant(0.6)], PostprocessConfig(), PredictConfig())
    assert np.allclose(mixed.outputs([np.zeros((5, 7), np.uint8)])[0].variance, 0.04 + 0.01 / 2)
    assert mixed.views == 2
    assert ens.to_mask(out.probs).all()                      # 0.4 > the ensemble's 0.35
    plain = Ensemble([Constant(0.2), Constant(0.6)], PostprocessConfig(threshold=0.35), PredictConfig(postprocess=False))
    assert not plain.to_mask(out.probs).any()                # 0.5 without the tuned threshold


def test_a_cross_validated_run_predicts_with_its_folds(cv_runs, tmp_path: Path) -> None:
    from medunet.config import PredictConfig

    data, run, _ = cv_runs
    all_folds = load_segmenter(run)
    assert isinstance(all_folds, Ensemble) and len(all_folds.members) == 3
    assert len(load_segmenter(run, PredictConfig(folds=(0, 2))).members) == 2
    fast = load_segmenter(run, PredictConfig(fast=True, tta="flips"))
    cv = json.loads((run / "cv.json").read_text())
    best = max(range(3), key=lambda k: cv["per_fold"][k]["dice_mean"] or -1)
    assert len(fast.members) == 1 and fast.cfg.tta == "none"
    assert fast.members[0].data_cfg == load_segmenter(run / "folds" / str(best)).data_cfg
    out = tmp_path / "masks"
    assert main(["-q", "predict", str(run), str(data / "test" / "image"), "--out", str(out), "--folds", "0,1"]) == 0
    for path in (data / "test" / "image").iterdir():
        assert np.asarray(Image.open(out / path.name)).shape == np.asarray(Image.open(path)).shape
    assert main(["-q", "evaluate", str(run), str(data / "test"), "--out", str(tmp_path / "e")]) == 0
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["n_images"] == 3


def test_folds_refuse_one_fold_and_a_name_in_two_splits(tmp_path: Path, capsys) -> None:
    data, out = tmp_path / "data", tmp_path / "run"
    write_split(data / "train", 4, [(32, 32)], seed=1)
    write_split(data / "validation", 2, [(32, 32)], seed=2)   # 000 and 001 again: pooled, they would clash
    assert main(["train", str(data), "--out", str(out), "--epochs", "1", "--folds", "3", *TINY]) == 2
    err = capsys.readouterr().err
    assert "image/000.png: the same name as" in err and "Traceback" not in err
    assert not out.exists()
    assert main(["train", str(data), "--out", str(out), "--epochs", "1", "--folds", "1", *TINY]) == 2
    assert "--folds 1: cross-validation needs at least 2 folds" in capsys.readouterr().err


def test_unknown_folds_and_folds_on_a_plain_run_are_refused(cv_runs, tiny_run: Path, tmp_path: Path, capsys) -> None:
    data, run, _ = cv_runs
    assert main(["predict", str(run), str(data / "test" / "image"), "--out", str(tmp_path / "x"), "--folds", "7"]) == 2
    assert "no fold 7" in capsys.readouterr().err
    assert main(["predict", str(tiny_run), str(data / "test" / "image"), "--out", str(tmp_path / "y"),
                 "--folds", "0"]) == 2
    assert "cross-validated" in capsys.readouterr().err


def test_ensemble_chooses_members_by_out_of_fold_dice(cv_runs, tmp_path: Path) -> None:
    data, a, b = cv_runs
    out = tmp_path / "ens"
    assert main(["-q", "ensemble", str(a), str(b), "--out", str(out)]) == 0
    record = json.loads((out / "ensemble.json").read_text())
    assert len(record["candidates"]) == 3                       # a, b, a + b
    best = max(c["dice"] for c in record["candidates"])
    assert record["dice"] == pytest.approx(best, abs=1e-4)
    assert {m["run"] for m in record["members"]} <= {str(a.resolve()), str(b.resolve())}
    assert main(["-q", "evaluate", str(out), str(data / "test"), "--out", str(tmp_path / "e")]) == 0


def test_ensemble_refuses_runs_that_are_not_cross_validated(cv_runs, tiny_run: Path, tmp_path: Path, capsys) -> None:
    _, a, _ = cv_runs
    assert main(["ensemble", str(a), str(tiny_run), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "not a cross-validated run" in err and len(err.strip().splitlines()) == 1


def test_info_describes_cross_validated_and_ensemble_runs(cv_runs, tmp_path: Path, capsys) -> None:
    _, a, b = cv_runs
    assert main(["info", str(a)]) == 0
    text = capsys.readouterr().out
    assert "cross-validated run (3 folds)" in text and "out of fold" in text
    out = tmp_path / "ens"
    assert main(["-q", "ensemble", str(a), str(b), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "ensemble of" in capsys.readouterr().out
