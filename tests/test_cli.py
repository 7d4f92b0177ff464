"""The command line end to end on tiny data, and every user error as one line with exit code 2."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medunet.cli import main
from medunet.io.images import read_image

TINY = ["--epochs", "2", "--size", "64", "--batch", "4", "--samples-per-epoch", "8", "--device", "cpu", "-q"]


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["-q", "train", str(data), "--out", str(out), *[a for a in TINY if a != "-q"], *extra])


def test_train_evaluate_predict_through_the_cli(disc_data: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert _train(disc_data, run) == 0
    for name in ("config.json", "split.json", "checkpoints/best.pt", "checkpoints/last.pt", "history.csv",
                 "curves.png"):
        assert (run / name).is_file(), name
    history = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert all(0.0 <= float(r["val_dice"]) <= 1.0 for r in history)

    assert main(["-q", "evaluate", str(run), str(disc_data / "test"), "--out", str(tmp_path / "eval")]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    for key in ("n_images", "dice_mean", "dice_global", "iou_mean", "precision_mean", "recall_mean",
                "accuracy_mean"):
        assert key in summary
    assert summary["n_images"] == 3 and summary["views"] == 1   # no --tta: one prediction per image
    rows = list(csv.DictReader((tmp_path / "eval" / "metrics.csv").open()))
    assert [r["stem"] for r in rows] == ["000", "001", "002"]
    assert "Dice (mean)" in capsys.readouterr().out

    for extra in ([], ["--crop", "40"]):
        out = tmp_path / f"pred{len(extra)}"
        assert main(["-q", "predict", str(run), str(disc_data / "test" / "image"), "--out", str(out),
                     "--overlay", *extra]) == 0
        for src in sorted((disc_data / "test" / "image").iterdir()):
            mask = read_image(out / src.name)
            assert mask.shape == read_image(src).shape[:2]
            assert set(np.unique(mask)) <= {0, 255}
            assert (out / f"{src.stem}_overlay.png").is_file()


def test_several_classes_end_to_end(disc_data: Path, tmp_path: Path) -> None:
    """Masks holding 0/100/200 train a softmax network; metrics per class; masks come back as 0/100/200."""
    for label in disc_data.glob("*/label/*.png"):
        mask = read_image(label)
        halves = np.where(np.arange(mask.shape[1]) < mask.shape[1] // 2, 100, 200).astype(np.uint8)
        Image.fromarray(np.where(mask > 0, halves[None, :], 0).astype(np.uint8)).save(label)
    run = tmp_path / "run"
    assert _train(disc_data, run) == 0
    assert main(["-q", "evaluate", str(run), str(disc_data / "test"), "--out", str(tmp_path / "eval")]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert set(summary["per_class"]) == {"1", "2"}
    rows = list(csv.DictReader((tmp_path / "eval" / "metrics.csv").open()))
    assert {"dice_c1", "dice_c2"} <= set(rows[0])
    out = tmp_path / "pred"
    assert main(["-q", "predict", str(run), str(disc_data / "test" / "image"), "--out", str(out)]) == 0
    for src in sorted((disc_data / "test" / "image").iterdir()):
        mask = read_image(out / src.name)
        assert mask.shape == read_image(src).shape[:2] and set(np.unique(mask)) <= {0, 100, 200}


def test_crop_prediction_is_background_outside_the_box(tiny_run: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    bright = np.full((90, 120), 250, np.uint8)  # bright everywhere: a disc-trained model sees foreground
    Image.fromarray(bright).save(images / "a.png")
    out = tmp_path / "pred"
    assert main(["-q", "predict", str(tiny_run), str(images), "--out", str(out), "--crop", "32",
                 "--threshold", "0.01"]) == 0
    mask = read_image(out / "a.png")
    assert mask.shape == (90, 120)
    outside = mask.copy()
    outside[29:61, 44:76] = 0
    assert not outside.any()


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_missing_and_empty_folders(tmp_path: Path, capsys) -> None:
    assert "nowhere: no such folder" in _error(capsys, ["train", str(tmp_path / "nowhere"), *TINY])
    (tmp_path / "d" / "train" / "image").mkdir(parents=True)
    (tmp_path / "d" / "train" / "label").mkdir(parents=True)
    err = _error(capsys, ["train", str(tmp_path / "d"), "--out", str(tmp_path / "run"), *TINY])
    assert "image" in err and "no images" in err
    assert not (tmp_path / "run").exists()


def test_orphans_are_listed_by_name(disc_data: Path, tmp_path: Path, capsys) -> None:
    (disc_data / "train" / "label" / "003.png").unlink()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(disc_data / "train" / "label" / "extra.png")
    err = _error(capsys, ["train", str(disc_data), "--out", str(tmp_path / "run"), *TINY])
    assert "003" in err and "extra" in err
    assert not (tmp_path / "run").exists()


def test_size_mismatch_names_the_file(disc_data: Path, tmp_path: Path, capsys) -> None:
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(disc_data / "train" / "label" / "002.png")
    err = _error(capsys, ["train", str(disc_data), "--out", str(tmp_path / "run"), *TINY])
    assert "002.png" in err and "12×10" in err
    assert not (tmp_path / "run").exists()


def test_corrupt_file_names_the_file(disc_data: Path, tmp_path: Path, capsys) -> None:
    (disc_data / "validation" / "image" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    err = _error(capsys, ["train", str(disc_data), "--out", str(tmp_path / "run"), *TINY])
    assert "001.png" in err
    assert not (tmp_path / "run").exists()


def test_unknown_label_class_at_evaluation(tiny_run: Path, disc_data: Path, tmp_path: Path, capsys) -> None:
    label = disc_data / "test" / "label" / "001.png"
    values = np.array(Image.open(label))
    values[:3, :3] = 128
    Image.fromarray(values).save(label)
    err = _error(capsys, ["evaluate", str(tiny_run), str(disc_data / "test"), "--out", str(tmp_path / "e")])
    assert "001.png" in err and "128" in err
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("option, message", [
    (["--lr", "-1"], "--lr"), (["--size", "5"], "--size"), (["--device", "tpu"], "--device"),
    (["--preset", "huge"], "--preset"), (["--epochs", "0"], "--epochs"), (["--time", "soon"], "--time"),
    (["--window", "-200,300", "--normalise", "minmax"], "--window applies only with --normalise window"),
    (["--percentiles", "1,99", "--normalise", "zscore"], "--percentiles applies only"),
    (["--normalise", "window"], "needs --window"),
])
def test_bad_option_values(disc_data: Path, tmp_path: Path, capsys, option: list[str], message: str) -> None:
    argv = ["train", str(disc_data), "--out", str(tmp_path / "run"), *option]
    assert message in _error(capsys, argv)
    assert not (tmp_path / "run").exists()


def test_bad_predict_options(tiny_run: Path, disc_data: Path, tmp_path: Path, capsys) -> None:
    images = str(disc_data / "test" / "image")
    assert "--threshold" in _error(capsys, ["predict", str(tiny_run), images, "--out", str(tmp_path / "p"),
                                            "--threshold", "2"])
    assert "no such checkpoint" in _error(capsys, ["predict", str(tmp_path / "x.pt"), images, "--out",
                                                   str(tmp_path / "p")])


def test_two_images_with_one_stem_are_refused_at_prediction(tiny_run: Path, tmp_path: Path, capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(images / "01.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(images / "01.tif")
    err = _error(capsys, ["predict", str(tiny_run), str(images), "--out", str(tmp_path / "p")])
    assert "01.png" in err and "01.tif" in err
    assert not (tmp_path / "p").exists()


def test_unwritable_output_is_one_line(tiny_run: Path, disc_data: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    err = _error(capsys, ["predict", str(tiny_run), str(disc_data / "test" / "image"),
                          "--out", str(blocker / "masks")])
    assert "file" in err


def test_existing_run_is_not_overwritten(tiny_run: Path, disc_data: Path, capsys) -> None:
    before = (tiny_run / "checkpoints" / "best.pt").read_bytes()
    assert "--overwrite" in _error(capsys, ["train", str(disc_data), "--out", str(tiny_run), *TINY])
    assert (tiny_run / "checkpoints" / "best.pt").read_bytes() == before


def test_real_process_exit_code_and_one_line(tmp_path: Path) -> None:
    (tmp_path / "train" / "image").mkdir(parents=True)
    (tmp_path / "train" / "label").mkdir(parents=True)
    for stem in ("a", "b"):
        (tmp_path / "train" / "image" / f"{stem}.tif").write_bytes(b"not a tiff")
        (tmp_path / "train" / "label" / f"{stem}.tif").write_bytes(b"not a tiff")
    proc = subprocess.run([sys.executable, "-m", "medunet.cli", "train", str(tmp_path), "--epochs", "1"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and ".tif: cannot read image" in lines[0]


def test_tune_shows_each_step_once(tiny_run: Path, tmp_path: Path) -> None:
    """The API logged every step and the CLI printed it again."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)   # tune writes into best.pt: not into the shared run
    done = subprocess.run([sys.executable, "-m", "medunet.cli", "tune", str(run), "--device", "cpu"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stdout.splitlines() if line.rstrip().endswith("kept")]
    assert len(steps) >= 3     # threshold (one sigmoid channel), min_size, keep_largest, fill_holes
    everything = (done.stdout + done.stderr).splitlines()
    for step in steps:
        description = step.split(" Dice ")[0].strip()
        assert sum(description in line and line.rstrip().endswith("kept") for line in everything) == 1, step
    summaries = [line for line in everything if "→" in line and not line.rstrip().endswith("kept")]
    assert len(summaries) == 1, summaries
