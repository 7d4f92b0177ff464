"""Volumes from the command line: train, tune, evaluate, predict, report, resume; outputs in the
input's format and geometry (NIfTI, NRRD, MHA, DICOM series); DICOM-SEG and RTSTRUCT that decode back
to the prediction; no patient identifier anywhere else; scanner-like series with the defaults."""
from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medunet.cli import main
from medunet.io.volumes import read_label_volume
from volume_data import SMALL, brain_like_dataset, mr_series_dataset, shifted_phantom, volume_dataset
from volumes import (SECRETS, dice, oblique_geometry, rtstruct_labels, write_dicom_series, write_itk_file,
                     write_nifti_file)

SHORT = ["--epochs", "2", "--samples-per-epoch", "32", "--preset", "tiny", "--device", "cpu"]


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run trained on oblique, anisotropic, non-RAS CT NIfTI volumes (qform 1, sform 2)."""
    root = tmp_path_factory.mktemp("ct")
    data = volume_dataset(root / "data", {"train": 4, "validation": 1, "test": 2})
    run = root / "run"
    # flips whatever the plan would choose (none, at so few passes): the TTA test needs mirrored views
    assert main(["-q", "train", str(data), "--out", str(run), *SHORT, "--augment", "flips"]) == 0
    return data, run


def test_train_tune_evaluate_predict_report_resume(ct_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    data, run = ct_run
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["normalise"] == "ct" and config["model"]["in_channels"] == 3  # context 1
    assert main(["-q", "tune", str(run)]) == 0
    eval_dir = tmp_path / "eval"
    assert main(["evaluate", str(run), str(data / "test"), "--out", str(eval_dir)]) == 0
    assert "cases             2 (3D metrics per case)" in capsys.readouterr().out
    rows = list(csv.DictReader((eval_dir / "metrics.csv").open()))
    assert [r["stem"] for r in rows] == ["case_06", "case_07"]  # one row per case
    assert {r["distance_unit"] for r in rows} == {"mm"} and "dice_c2" in rows[0] and "hd95_c1" in rows[0]
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["unit"] == "case" and summary["n_images"] == 2 and set(summary["per_class"]) == {"1", "2"}
    assert "empty" in summary["empty_rule"] and "slice-wise" in summary["metrics"]
    assert sorted(p.name for p in (eval_dir / "masks").iterdir()) == ["case_06.nii.gz", "case_07.nii.gz"]
    assert main(["-q", "report", str(run), "--eval", str(eval_dir)]) == 0
    assert (run / "report.html").read_text().count("data:image/png") == 3  # curves + a few slices per case
    assert main(["-q", "train", str(data), "--out", str(run), "--resume", "--epochs", "3"]) == 0
    assert len((run / "history.csv").read_text().strip().splitlines()) == 4


def test_model_card_of_a_volume_run_describes_the_volume_input(ct_run: tuple[Path, Path], capsys) -> None:
    _, run = ct_run
    assert main(["info", str(run), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["preprocessing"].startswith("ct: ") and "dataset's CT numbers" in card["preprocessing"]
    assert "3 channel(s): a slice and its 1 neighbours either side" in card["preprocessing"]
    assert card["training_data"]["train"] == 4 and "case_" not in json.dumps(card)  # counts, never names


def test_nifti_prediction_keeps_the_affine_codes_and_shape(ct_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = ct_run
    out = tmp_path / "pred"
    assert main(["-q", "predict", str(run), str(data / "test" / "image"), "--out", str(out), "--probabilities",
                 "--overlay", "--tta", "flips"]) == 0
    for name in ("case_06", "case_07"):
        source, mask = nib.load(data / "test" / "image" / f"{name}.nii.gz"), nib.load(out / f"{name}.nii.gz")
        assert mask.shape == source.shape and mask.get_data_dtype() == np.uint8
        np.testing.assert_allclose(mask.affine, source.affine, atol=1e-5)
        assert (int(mask.header["qform_code"]), int(mask.header["sform_code"])) == (1, 2)
        np.testing.assert_allclose(mask.header.get_qform(), source.header.get_qform(), atol=1e-5)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
        prob = nib.load(out / f"{name}_prob.nii.gz")
        assert prob.shape == (*source.shape, 3) and prob.get_data_dtype() == np.float32
        assert (out / f"{name}_overlay.png").is_file()
    assert (out / "flags.csv").is_file()
    plain = tmp_path / "plain"   # TTA flipped the 2.5D slices and their context: its average differs
    assert main(["-q", "predict", str(run), str(data / "test" / "image" / "case_06.nii.gz"), "--out", str(plain),
                 "--probabilities"]) == 0
    tta_probs, plain_probs = (np.asarray(nib.load(d / "case_06_prob.nii.gz").dataobj) for d in (out, plain))
    assert tta_probs.shape == plain_probs.shape and not np.allclose(tta_probs, plain_probs, atol=1e-4)


def test_nrrd_and_mha_predictions_keep_their_geometry(ct_run: tuple[Path, Path], tmp_path: Path) -> None:
    import SimpleITK as sitk

    _, run = ct_run
    geometry = oblique_geometry(SMALL)
    image, _ = shifted_phantom(SMALL, 40)
    folder = tmp_path / "in"
    folder.mkdir()
    write_itk_file(folder / "a.nrrd", image, geometry)
    write_itk_file(folder / "b.mhd", image, geometry)
    assert main(["-q", "predict", str(run), str(folder), "--out", str(tmp_path / "pred")]) == 0
    for src, out in (("a.nrrd", "a.nrrd"), ("b.mhd", "b.mha")):
        a, b = sitk.ReadImage(str(folder / src)), sitk.ReadImage(str(tmp_path / "pred" / out))
        assert a.GetSize() == b.GetSize() and b.GetPixelID() == sitk.sitkUInt8
        np.testing.assert_allclose(b.GetSpacing(), a.GetSpacing(), rtol=1e-5)
        np.testing.assert_allclose(b.GetOrigin(), a.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(b.GetDirection(), a.GetDirection(), atol=1e-5)


def test_dicom_series_is_chosen_by_uid_and_its_seg_and_rtstruct_decode_to_the_prediction(
        ct_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    import highdicom as hd

    _, run = ct_run
    geometry = oblique_geometry(SMALL)
    image, _ = shifted_phantom(SMALL, 41)
    folder = tmp_path / "ct"
    wanted = write_dicom_series(folder, image, geometry, seed=3)  # file names shuffled
    other = write_dicom_series(folder, image[:6], geometry, seed=4, prefix="other")
    assert main(["predict", str(run), str(folder), "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 DICOM series in one folder" in err[0] and other["series_uid"] in err[0]
    out = tmp_path / "pred"
    assert main(["-q", "predict", str(run), str(folder), "--out", str(out), "--series-uid", wanted["series_uid"],
                 "--dicom-seg", "--rtstruct", "--class-names", "body,lesion"]) == 0
    mask = nib.load(out / "ct.nii.gz")
    np.testing.assert_allclose(mask.affine, geometry.nifti_affine(), atol=1e-5)
    assert mask.shape == SMALL[::-1] and (int(mask.header["qform_code"]), int(mask.header["sform_code"])) == (1, 1)
    labels = read_label_volume(out / "ct.nii.gz").array
    assert labels.any()
    seg = hd.seg.segread(out / "ct_seg.dcm")
    assert [s.segment_label for s in seg.SegmentSequence] == ["body", "lesion"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == wanted["series_uid"]
    numbers = seg.get_pixels_by_source_instance(source_sop_instance_uids=wanted["sop_uids"], combine_segments=True)
    np.testing.assert_array_equal(np.array([0, 1, 2])[numbers], labels)  # Dice 1.0
    back = rtstruct_labels(out / "ct_rtstruct.dcm", geometry, wanted["sop_uids"], {1: "body", 2: "lesion"})
    for c in np.unique(labels[labels > 0]):
        assert dice(back == c, labels == c) >= 0.98


def test_scanner_like_mr_series_with_the_defaults_and_no_identifier_anywhere(tmp_path: Path, capsys, caplog) -> None:
    """MR series with shuffled file names, 5 mm slices 6.5 mm apart and two grid sizes (so the plan
    resamples in-plane), trained with the defaults; outputs on each series' own grid. Logs, run
    files, metrics, report and file names never carry the synthetic patient's name, ID or dates."""
    caplog.set_level(logging.DEBUG)
    data, series = mr_series_dataset(tmp_path / "data", {"train": 4, "validation": 1, "test": 2})
    run, eval_dir, pred = tmp_path / "run", tmp_path / "eval", tmp_path / "pred"
    assert main(["train", str(data), "--out", str(run), *SHORT]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["normalise"] == "zscore" and config["data"]["target_spacing"] == [0.75, 0.75]  # the median of 5 cases
    assert main(["evaluate", str(run), str(data / "test"), "--out", str(eval_dir)]) == 0
    assert main(["report", str(run), "--eval", str(eval_dir)]) == 0
    assert main(["predict", str(run), str(data / "test" / "image"), "--out", str(pred), "--dicom-seg",
                 "--rtstruct", "--probabilities", "--overlay"]) == 0
    for info in series[-2:]:
        name = f"{info['folder'].name}.nii.gz"
        out = read_label_volume(pred / name)
        assert out.array.shape == info["geometry"].shape  # resampled for the network, back exactly
        np.testing.assert_allclose(out.geometry.spacing, info["geometry"].spacing, rtol=1e-5)
        np.testing.assert_allclose(out.geometry.origin, info["geometry"].origin, atol=1e-4)
        np.testing.assert_allclose(out.geometry.direction, info["geometry"].direction, atol=1e-5)
    captured = capsys.readouterr()
    texts = {"stdout": captured.out, "stderr": captured.err, "log": caplog.text}
    for folder in (run, eval_dir, pred):
        for path in folder.rglob("*"):
            texts[str(path)] = str(path.relative_to(tmp_path))
            if path.is_file() and not path.name.endswith(("_seg.dcm", "_rtstruct.dcm")):
                texts[f"{path} content"] = path.read_bytes().decode("latin-1")
    secrets = list(SECRETS.values()) + ["SECRET", "Secret"]
    leaks = [(where, s) for where, text in texts.items() for s in secrets if s in text]
    assert not leaks, leaks[:5]
    assert {path.name for path in pred.iterdir()} >= {"subject06_seg.dcm", "subject06_rtstruct.dcm"}


def test_float32_multiclass_brain_volumes_with_a_non_zero_background(tmp_path: Path) -> None:
    """BraTS-like: float32 images and labels (ids 0, 1, 2, 4), background at 80, not 0."""
    data = brain_like_dataset(tmp_path / "data", {"train": 4, "test": 1})
    run = tmp_path / "run"
    assert main(["-q", "train", str(data), "--out", str(run), *SHORT]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["normalise"] == "zscore" and config["label_encoding"]["values"] == [0, 1, 2, 4]
    assert main(["-q", "predict", str(run), str(data / "test" / "image"), "--out", str(tmp_path / "pred")]) == 0
    source = nib.load(data / "test" / "image" / "brats_005.nii.gz")
    mask = nib.load(tmp_path / "pred" / "brats_005.nii.gz")
    assert mask.get_data_dtype() == np.uint8 and mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2, 4}


def test_slices_are_predicted_in_batches(ct_run: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    import medunet
    from medunet.engine.predictor import Predictor

    _, run = ct_run
    calls: list[int] = []
    original = Predictor.predict_normalised
    monkeypatch.setattr(Predictor, "predict_normalised", lambda self, inputs: calls.append(len(inputs)) or original(self, inputs))
    image, _ = shifted_phantom((70, 20, 24), 5)
    folder = tmp_path / "in"
    folder.mkdir()
    write_nifti_file(folder / "long.nii.gz", image, oblique_geometry((70, 20, 24)))
    medunet.predict(run, folder, tmp_path / "pred", progress=False, device="cpu")
    assert sum(calls) == 70 and max(calls) > 1 and len(calls) < 70


def test_doctor_lists_every_volume_problem_at_once(tmp_path: Path, capsys) -> None:
    from dataclasses import replace

    data = volume_dataset(tmp_path / "data", {"train": 2})
    geometry = oblique_geometry(SMALL)
    image, labels = shifted_phantom(SMALL, 9)
    train = data / "train"
    write_nifti_file(train / "label" / "case_02.nii.gz", labels, replace(geometry, spacing=(2.5, 0.9, 0.7)))
    write_nifti_file(train / "image" / "fourd.nii.gz", np.stack([image, image], axis=-1), geometry)
    write_nifti_file(train / "label" / "fourd.nii.gz", labels, geometry)
    write_dicom_series(train / "image" / "two_series", image, geometry, seed=1)
    write_dicom_series(train / "image" / "two_series", image, geometry, seed=2, prefix="b")
    write_nifti_file(train / "label" / "two_series.nii.gz", labels, geometry)
    gappy = write_dicom_series(train / "image" / "gap", image, geometry, seed=5)
    gappy["files"][4].unlink()
    write_nifti_file(train / "label" / "gap.nii.gz", labels, geometry)
    assert main(["doctor", str(data)]) == 2
    text = capsys.readouterr().out
    assert "train/label/case_02.nii.gz: spacing 2.5×0.9×0.7 mm (z, y, x), image 3×0.9×0.7 mm" in text
    assert "train/image/fourd.nii.gz: " in text and "4D volume" in text
    assert "train/image/two_series: " in text and "2 DICOM series in one folder" in text
    assert "train/image/gap: " in text and "missing slices?" in text
    assert "4 errors" in text
    assert main(["train", str(data), "--out", str(tmp_path / "run")]) == 2
    assert "(and 3 more errors: run `medunet doctor" in capsys.readouterr().err


def test_volume_demo(tmp_path: Path, monkeypatch) -> None:
    import medunet
    from medunet.api import demo as demo_module

    monkeypatch.setattr(demo_module, "DEMO_VOLUME_EPOCHS", 1)
    monkeypatch.setattr(demo_module, "DEMO_VOLUME_SAMPLES", 16)
    summary = medunet.demo(tmp_path / "demo", volumes=True, counts={"train": 2, "validation": 1, "test": 1},
                           device="cpu", progress=False)
    assert summary["unit"] == "case" and summary["n_images"] == 1
    assert (tmp_path / "demo" / "predictions" / "case_001.nii.gz").is_file()
    assert (tmp_path / "demo" / "predictions" / "case_001_overlay.png").is_file()
    shutil.rmtree(tmp_path / "demo")
