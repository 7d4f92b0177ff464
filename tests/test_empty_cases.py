"""`evaluate` end to end on the two rules that decide what its numbers mean: images empty in truth
and prediction are left out (null when nothing is left), and HD95/ASSD are in millimetres only
from a real physical pixel size, never a mix of mm and px."""
from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import disc_pair
from medunet.api.evaluate import evaluate
from medunet.api.report import report
from medunet.cli import format_summary, main
from medunet.engine.predictor import Predictor
from medunet.errors import ConfigError


def write_pairs(root: Path, sizes: list[tuple[int, int]], save_image, *, empty_labels: bool = False) -> Path:
    """`root/image/<i>.*` written by `save_image(path_stem, array)` and `root/label/<i>.png` (0/255)."""
    rng = np.random.default_rng(7)
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir(parents=True)
    for i, (h, w) in enumerate(sizes):
        image, mask = disc_pair(rng, h, w)
        save_image(root / "image" / f"{i:03d}", image)
        Image.fromarray(np.zeros_like(mask) if empty_labels else mask).save(root / "label" / f"{i:03d}.png")
    return root


def png_at(dpi):
    return lambda stem, a: Image.fromarray(a).save(stem.with_suffix(".png"), dpi=dpi)


def tiff_per_cm(pixels_per_cm):
    def save(stem: Path, a: np.ndarray) -> None:
        kwargs = {"resolution": (pixels_per_cm, pixels_per_cm), "resolutionunit": "CENTIMETER"}
        tifffile.imwrite(stem.with_suffix(".tif"), a, **(kwargs if pixels_per_cm else {}))
    return save


def read_json_strictly(path: Path) -> dict:
    def refuse(name: str):
        raise ValueError(f"{path}: {name} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


# --- empty in truth and prediction ---------------------------------------------------------------

def test_a_split_of_empty_images_is_left_out_and_written_as_null(tiny_run, tmp_path, monkeypatch, capsys):
    """Predicting nothing on empty truths used to score Dice 1.0 and HD95 0; now nothing is defined."""
    split = write_pairs(tmp_path / "split", [(48, 48), (40, 56)], png_at((72, 72)), empty_labels=True)
    monkeypatch.setattr(Predictor, "to_mask", lambda self, probs: np.zeros(probs.shape[1:], np.uint8))
    summary = evaluate(tiny_run, split, tmp_path / "eval", device="cpu")
    assert math.isnan(summary["dice_mean"]) and math.isnan(summary["hd95_mean"])
    written = read_json_strictly(tmp_path / "eval" / "summary.json")
    for key in ("dice_mean", "iou_mean", "precision_mean", "recall_mean", "dice_global",
                "hd95_mean", "hd95_median", "assd_mean", "assd_median"):
        assert written[key] is None, key
    assert written["accuracy_mean"] == 1.0
    assert written["n_empty_both"] == written["n_empty_truth"] == written["n_images"] == 2
    assert written["n_surface_empty_both"] == 2
    rows = list(csv.DictReader((tmp_path / "eval" / "metrics.csv").open()))
    assert {r["dice"] for r in rows} == {r["hd95"] for r in rows} == {"nan"}
    text = format_summary(written)
    assert "2 empty in truth and prediction" in text and "undefined" in text
    assert "undefined" in format_summary(summary)     # NaN in memory reads the same as null
    page = report(tiny_run, eval_dir=tmp_path / "eval", out=tmp_path / "r.html").read_text()
    assert "undefined: all 2 images are empty in truth and prediction" in page


def test_a_false_positive_on_an_empty_truth_costs(tiny_run, tmp_path, monkeypatch):
    split = write_pairs(tmp_path / "split", [(48, 48), (48, 48)], png_at((72, 72)), empty_labels=True)
    speck = np.zeros((48, 48), np.uint8)
    speck[20:24, 20:24] = 1
    masks = iter([np.zeros_like(speck), speck])
    monkeypatch.setattr(Predictor, "to_mask", lambda self, probs: next(masks))
    summary = evaluate(tiny_run, split, tmp_path / "eval", device="cpu")
    assert summary["dice_mean"] == 0.0                 # the old rule: (1.0 + 0.0) / 2
    assert summary["n_empty_both"] == 1 and summary["n_empty_truth"] == 2
    assert "1 with a false positive" in format_summary(summary)


# --- pixel spacing -------------------------------------------------------------------------------

SIZES = [(48, 48), (40, 56)]


def test_print_dpi_of_a_png_gives_pixels(tiny_run, tmp_path):
    split = write_pairs(tmp_path / "split", SIZES, png_at((300, 300)))
    summary = evaluate(tiny_run, split, tmp_path / "eval", device="cpu")
    assert summary["distance_unit"] == "px" and summary["spacing_mm"] is None


def test_tiffs_in_centimetres_give_millimetres(tiny_run, tmp_path):
    split = write_pairs(tmp_path / "split", SIZES, tiff_per_cm(20))      # 0.5 mm pixels
    summary = evaluate(tiny_run, split, tmp_path / "eval", device="cpu")
    assert summary["distance_unit"] == "mm"
    rows = list(csv.DictReader((tmp_path / "eval" / "metrics.csv").open()))
    assert {r["distance_unit"] for r in rows} == {"mm"}


def test_one_image_without_a_spacing_puts_the_whole_split_in_pixels(tiny_run, tmp_path, caplog):
    split = write_pairs(tmp_path / "split", SIZES, tiff_per_cm(20))
    (split / "image" / "001.tif").unlink()
    tiff_per_cm(None)(split / "image" / "001", disc_pair(np.random.default_rng(1), *SIZES[1])[0])
    with caplog.at_level(logging.WARNING, logger="medunet"):
        summary = evaluate(tiny_run, split, tmp_path / "eval", device="cpu")
    assert summary["distance_unit"] == "px"
    rows = list(csv.DictReader((tmp_path / "eval" / "metrics.csv").open()))
    assert {r["distance_unit"] for r in rows} == {"px"}
    warnings = [r.getMessage() for r in caplog.records if "physical pixel size" in r.getMessage()]
    assert len(warnings) == 1 and "1 of 2 images" in warnings[0]


def test_spacing_option_gives_millimetres(tiny_run, tmp_path):
    split = write_pairs(tmp_path / "split", SIZES, png_at((300, 300)))
    base = ["-q", "evaluate", str(tiny_run), str(split), "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "px")]) == 0
    assert main([*base, "--out", str(tmp_path / "mm"), "--spacing", "0.5,0.5"]) == 0
    px = read_json_strictly(tmp_path / "px" / "summary.json")
    mm = read_json_strictly(tmp_path / "mm" / "summary.json")
    assert (px["distance_unit"], mm["distance_unit"]) == ("px", "mm")
    assert mm["spacing_mm"] == [0.5, 0.5]
    assert mm["hd95_median"] == pytest.approx(px["hd95_median"] / 2)
    assert mm["dice_mean"] == px["dice_mean"]


def test_bad_spacing_is_one_line_and_exit_code_2(tiny_run, tmp_path, capsys):
    split = write_pairs(tmp_path / "split", SIZES[:1], png_at((72, 72)))
    assert main(["evaluate", str(tiny_run), str(split), "--spacing", "0,1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "ROW,COL" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="ROW,COL"):
        evaluate(tiny_run, split, tmp_path / "eval", spacing=(0.5,), device="cpu")
