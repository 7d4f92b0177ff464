"""Cross-validation of volumes: folds by case, out-of-fold probabilities in each file's array order,
3D scores and tuning on them; fold averages and ensembles predicting volumes."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medunet.cli import main
from medunet.config import PredictConfig
from medunet.engine.ensemble import Ensemble, load_segmenter
from medunet.engine.postprocess import PostprocessConfig, apply
from medunet.engine.predictor import Predictor
from medunet.engine.volume_predictor import VolumePredictor
from medunet.errors import ConfigError
from medunet.io.volumes import read_label_volume, read_volume
from medunet.surface import surface_metrics
from volume_data import volume_dataset

SHORT = ["--epochs", "3", "--samples-per-epoch", "48", "--preset", "tiny", "--device", "cpu"]


@pytest.fixture(scope="module")
def volume_cv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Two 3-fold runs (seeds 0 and 1) on 6 CT-like volumes (train 5 + validation 1, pooled)."""
    root = tmp_path_factory.mktemp("volume-cv")
    data = volume_dataset(root / "data", {"train": 5, "validation": 1, "test": 2})
    a, b = root / "a", root / "b"
    assert main(["-q", "train", str(data), "--out", str(a), "--folds", "3", *SHORT]) == 0
    assert main(["-q", "train", str(data), "--out", str(b), "--folds", "3", "--seed", "1", *SHORT]) == 0
    return data, a, b


def test_volumes_cross_validate_by_case_with_out_of_fold_volumes(volume_cv) -> None:
    data, run, _ = volume_cv
    cv = json.loads((run / "cv.json").read_text())
    assert cv["folds"] == 3 and sum(f["n_images"] for f in cv["per_fold"]) == 6   # cases, not slices
    split = json.loads((run / "split.json").read_text())
    held_out = [Path(p["image"]).name for k in range(3) for p in split[f"fold{k}"]]
    assert sorted(held_out) == sorted(p.name for p in [*(data / "train" / "image").iterdir(),
                                                        *(data / "validation" / "image").iterdir()])
    for name in held_out:
        stem = name.removesuffix(".nii.gz")
        probs = np.load(run / "oof" / f"{stem}.npy")
        truth = read_label_volume(next(data.glob(f"*/label/{name}"))).array
        assert probs.dtype == np.float16 and probs.shape == (3, *truth.shape)   # 3 classes, the file's order
        assert np.allclose(probs.astype(np.float32).sum(axis=0), 1.0, atol=1e-2)
    with (run / "oof" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {r["fold"] for r in rows} == {"0", "1", "2"}
    # surface distances in mm from each case's own voxel spacing (3.0 × 0.9 × 0.7: anisotropic)
    post = PostprocessConfig.from_dict(cv["postprocess"])
    first = rows[0]
    truth_file = next(data.glob(f"*/label/{first['stem']}.nii.gz"))
    truth = read_label_volume(truth_file)
    mask = apply(np.load(run / "oof" / f"{first['stem']}.npy").astype(np.float32), post)
    expected = surface_metrics(truth.array, mask, 3, truth.geometry.spacing)
    assert first["distance_unit"] == "mm" and float(first["hd95"]) == pytest.approx(expected["hd95"], rel=1e-6)
    assert cv["out_of_fold"]["distance_unit"] == "mm" and np.isfinite(cv["mean"]["hd95_mean"])
    assert cv["mean"]["dice_mean"] == pytest.approx(np.mean([f["dice_mean"] for f in cv["per_fold"]]))
    volumes = json.loads((run / "config.json").read_text())["plan"]["fingerprint"]["volumes"]
    assert volumes["n_validation_slices"] == volumes["n_slices"] // 3   # the plan times a fold's validation


def test_a_fold_average_predicts_the_mean_of_its_folds_on_each_volume(volume_cv) -> None:
    data, run, _ = volume_cv
    volume = read_volume(next((data / "test" / "image").iterdir()))
    cfg = PredictConfig(device="cpu", postprocess=False)
    folds = [Predictor.load(run / "folds" / str(k), cfg) for k in range(3)]
    each = [VolumePredictor(f).predict(volume, probabilities=True).probs.astype(np.float32) for f in folds]
    average = load_segmenter(run, cfg)
    assert isinstance(average, Ensemble)
    got = VolumePredictor(average).predict(volume, probabilities=True)
    assert got.probs.shape == each[0].shape and got.classes.shape == volume.array.shape
    assert np.allclose(got.probs.astype(np.float32), np.mean(each, axis=0), atol=2e-3)
    mean = np.mean(each, axis=0)
    top2 = np.sort(mean, axis=0)[-2:]
    clear = top2[1] - top2[0] > 4e-3   # the members come back as float16: a near-tie may go either way
    assert clear.mean() > 0.5 and np.array_equal(got.classes[clear], mean.argmax(axis=0)[clear])
    nested = Ensemble([folds[0], Ensemble(folds[1:], PostprocessConfig(), cfg)], PostprocessConfig(), cfg)
    weighted = 0.5 * each[0] + 0.25 * (each[1] + each[2])   # each member counts once, however many it holds
    assert np.allclose(VolumePredictor(nested).predict(volume, probabilities=True).probs.astype(np.float32),
                       weighted, atol=2e-3)


def test_cross_validated_volumes_evaluate_predict_and_ensemble_from_the_cli(volume_cv, tmp_path: Path) -> None:
    data, a, b = volume_cv
    assert main(["-q", "evaluate", str(a), str(data / "test"), "--out", str(tmp_path / "eval")]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["unit"] == "case" and summary["n_images"] == 2
    assert main(["-q", "predict", str(a), str(data / "test" / "image"), "--out", str(tmp_path / "pred"),
                 "--folds", "0,2"]) == 0
    for image in (data / "test" / "image").iterdir():
        assert read_label_volume(tmp_path / "pred" / image.name).array.shape == read_volume(image).array.shape
    assert main(["-q", "ensemble", str(a), str(b), "--out", str(tmp_path / "ens")]) == 0
    record = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert record["n_cases"] == 6 and len(record["candidates"]) == 3
    assert main(["-q", "evaluate", str(tmp_path / "ens"), str(data / "test"), "--out", str(tmp_path / "ens-eval")]) == 0


def test_members_that_slice_a_volume_differently_are_refused(volume_cv) -> None:
    import dataclasses

    from medunet.data.volume_cache import slice_axis

    data, run, _ = volume_cv
    cfg = PredictConfig(device="cpu")
    volume = read_volume(next((data / "test" / "image").iterdir()))
    one, other = (Predictor.load(run / "folds" / str(k), cfg) for k in (0, 1))
    across = (slice_axis(volume.geometry, one.data_cfg) + 1) % 3
    other.data_cfg = dataclasses.replace(other.data_cfg, slice_axis=across)
    with pytest.raises(ConfigError, match="different axes"):
        VolumePredictor(Ensemble([one, other], PostprocessConfig(), cfg)).predict(volume)
