"""HD95 / ASSD against hand-computed and independently computed values, empty cases, and the
pixel spacing read from files: only TIFF in centimetres or with an ImageJ unit, never PNG or JPEG dpi."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from medunet.errors import ConfigError, DataError
from medunet.surface import (EMPTY_RULE, parse_spacing, pixel_spacing, split_spacings, summarise_surface,
                             surface_metrics)


def square(h: int = 64, w: int = 64, top: int = 10, left: int = 10, side: int = 20) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[top:top + side, left:left + side] = 1
    return mask


def reference(truth: np.ndarray, pred: np.ndarray, spacing=(1.0, 1.0)) -> tuple[float, float]:
    """HD95 and ASSD computed without MONAI, with its conventions: surface = pixels with a
    4-neighbour outside; Euclidean distances between surface pixels; HD95 = the larger directed
    95th percentile; ASSD = mean of both directions pooled."""
    def surface(m):
        return m & ~ndimage.binary_erosion(m)

    st, sp = surface(truth.astype(bool)), surface(pred.astype(bool))
    d_pred = ndimage.distance_transform_edt(~st, sampling=spacing)[sp]
    d_truth = ndimage.distance_transform_edt(~sp, sampling=spacing)[st]
    hd95 = max(np.percentile(d_pred, 95), np.percentile(d_truth, 95))
    return float(hd95), float(np.concatenate([d_pred, d_truth]).mean())


def blob(seed: int, h: int = 96, w: int = 80) -> np.ndarray:
    """An irregular object, touching the image border, with a detached speck."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(h, w)), 6)
    mask = field > np.quantile(field, 0.7)
    mask[rng.integers(h), rng.integers(w)] = True
    return mask.astype(np.uint8)


def test_shifted_square_hd95_is_the_shift():
    truth, pred = square(), square(left=13)
    row = surface_metrics(truth, pred, n_classes=2)
    assert row["hd95"] == pytest.approx(3.0)
    assert row["distance_unit"] == "px" and row["surface_note"] == ""
    assert row["assd"] == pytest.approx(reference(truth, pred)[1], rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_an_independent_computation(seed):
    truth, pred = blob(seed), blob(seed + 10)
    row = surface_metrics(truth, pred, n_classes=2)
    hd95, assd = reference(truth, pred)
    assert row["hd95"] == pytest.approx(hd95, rel=1e-5)
    assert row["assd"] == pytest.approx(assd, rel=1e-5)


def test_spacing_scales_to_millimetres():
    truth, pred = square(), square(left=13)
    px = surface_metrics(truth, pred, 2)
    half = surface_metrics(truth, pred, 2, spacing=(0.5, 0.5))
    assert half["distance_unit"] == "mm"
    assert half["hd95"] == pytest.approx(px["hd95"] / 2)
    assert half["assd"] == pytest.approx(px["assd"] / 2)
    # a shift along columns is measured with the column spacing
    assert surface_metrics(truth, pred, 2, spacing=(1.0, 2.0))["hd95"] == pytest.approx(6.0)
    truth, pred = blob(3), blob(4)
    aniso = surface_metrics(truth, pred, 2, spacing=(0.7, 1.3))
    assert (aniso["hd95"], aniso["assd"]) == pytest.approx(reference(truth, pred, (0.7, 1.3)), rel=1e-5)


@pytest.mark.parametrize("truth_empty, pred_empty, expected, note", [
    (True, True, math.nan, "truth and prediction empty: HD95 and ASSD undefined"),
    (True, False, math.hypot(64, 48), "truth empty, prediction not"),
    (False, True, math.hypot(64, 48), "prediction empty, truth not"),
])
def test_empty_cases_follow_the_rule(truth_empty, pred_empty, expected, note):
    full = square(64, 48)
    empty = np.zeros_like(full)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # nor does MONAI warn: empty classes never reach it
        row = surface_metrics(empty if truth_empty else full, empty if pred_empty else full, 2)
    assert row["hd95"] == pytest.approx(expected, nan_ok=True)
    assert row["assd"] == pytest.approx(expected, nan_ok=True)
    assert not any(math.isinf(v) for v in (row["hd95"], row["assd"]))
    assert note in row["surface_note"]
    assert "NaN" in EMPTY_RULE and "diagonal" in EMPTY_RULE and "0.0" not in EMPTY_RULE


def test_empty_diagonal_is_in_millimetres_with_spacing():
    row = surface_metrics(square(64, 48), np.zeros((64, 48), np.uint8), 2, spacing=(0.5, 2.0))
    assert row["hd95"] == pytest.approx(math.hypot(32, 96))
    assert "mm" in row["surface_note"]


def test_multi_class_keys_and_means():
    truth = square()
    truth[40:60, 40:60] = 2
    pred = square(left=13)
    pred[40:60, 40:60] = 2
    row = surface_metrics(truth, pred, n_classes=4)   # class 3 absent from both
    assert row["hd95_c1"] == pytest.approx(3.0)
    assert row["hd95_c2"] == 0.0 and row["assd_c2"] == 0.0
    assert math.isnan(row["hd95_c3"]) and math.isnan(row["assd_c3"])
    assert row["hd95"] == pytest.approx(1.5)          # mean of classes 1 and 2; class 3 left out
    assert "class 3: truth and prediction empty" in row["surface_note"]
    assert set(surface_metrics(square(), square(), 2)) == {"hd95", "assd", "distance_unit", "surface_note"}


def summary_row(hd95: float, unit: str = "px", note: str = "") -> dict:
    return {"hd95": hd95, "assd": hd95 / 2, "distance_unit": unit, "surface_note": note}


def test_summary_leaves_out_images_empty_in_both():
    rows = [summary_row(2.0), summary_row(4.0), summary_row(math.nan, note="truth and prediction empty"),
            summary_row(80.0, note="truth empty, prediction not")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = summarise_surface(rows)
    assert s["hd95_mean"] == pytest.approx(86 / 3) and s["hd95_median"] == 4.0
    assert s["assd_mean"] == pytest.approx(43 / 3) and s["assd_median"] == 2.0
    assert s["n_surface_empty"] == 2 and s["n_surface_empty_both"] == 1 and s["distance_unit"] == "px"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        none = summarise_surface([summary_row(math.nan, note="empty")] * 2)
    assert all(math.isnan(none[k]) for k in ("hd95_mean", "hd95_median", "assd_mean", "assd_median"))


def test_summary_never_mixes_pixels_and_millimetres():
    with pytest.raises(ValueError, match="averaged"):
        summarise_surface([summary_row(2.0, "px"), summary_row(1.0, "mm")])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="one size"):
        surface_metrics(square(), square(32, 32), 2)
    with pytest.raises(ValueError, match="spacing"):
        surface_metrics(square(), square(), 2, spacing=(0.0, 1.0))


# --- pixel_spacing ------------------------------------------------------------------------------

IMAGE = np.zeros((8, 12), np.uint8)


def test_tiff_centimetre_resolution(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, IMAGE, resolution=(10, 10), resolutionunit="CENTIMETER")
    assert pixel_spacing(path) == pytest.approx((1.0, 1.0))


def test_tiff_anisotropic_centimetre_resolution(tmp_path):
    path = tmp_path / "a.tiff"
    # tifffile's resolution is (x, y): 100 pixels per cm across, 50 down
    tifffile.imwrite(path, IMAGE, resolution=(100, 50), resolutionunit="CENTIMETER")
    assert pixel_spacing(path) == pytest.approx((0.2, 0.1))


@pytest.mark.parametrize("unit, mm", [("um", 0.0005), ("micron", 0.0005), ("\\u00B5m", 0.0005),
                                      ("mm", 0.5), ("cm", 5.0), ("nm", 5e-7)])
def test_imagej_tiff_unit(tmp_path, unit, mm):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, IMAGE, imagej=True, resolution=(2.0, 2.0), metadata={"unit": unit})
    assert pixel_spacing(path) == pytest.approx((mm, mm))


@pytest.mark.parametrize("kwargs", [{}, {"resolution": (72, 72), "resolutionunit": "INCH"},
                                    {"resolution": (300, 300), "resolutionunit": "INCH"},
                                    {"resolution": (254, 127)},          # no unit tag: inch, the default
                                    {"resolution": (28.35, 28.35), "resolutionunit": "CENTIMETER"},  # 72 dpi
                                    {"resolution": (37.8, 37.8), "resolutionunit": "CENTIMETER"},    # 96 dpi
                                    {"resolution": (1, 1), "resolutionunit": "CENTIMETER"},
                                    {"resolution": (10, 10), "resolutionunit": "NONE"}])
def test_tiff_without_a_physical_spacing(tmp_path, kwargs):
    """An inch resolution is a print size (what scanners and image editors store), not a measurement."""
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, IMAGE, **kwargs)
    assert pixel_spacing(path) is None


def test_imagej_tiff_without_a_length_unit(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, IMAGE, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "pixel"})
    assert pixel_spacing(path) is None


@pytest.mark.parametrize("dpi", [None, (72, 72), (96, 96), (254, 254), (300, 300)])
def test_png_and_jpeg_dpi_never_give_millimetres(tmp_path, dpi):
    for name in ("a.png", "a.jpg"):
        path = tmp_path / name
        Image.fromarray(IMAGE).save(path, **({"dpi": dpi} if dpi else {}))
        assert pixel_spacing(path) is None, (name, dpi)


def test_unreadable_file_names_itself(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00 broken after the magic number")
    with pytest.raises(DataError, match="broken.tif"):
        pixel_spacing(path)


def test_a_split_uses_millimetres_only_when_every_image_has_a_spacing(caplog):
    mm = (0.5, 0.5)
    assert split_spacings([mm, (0.2, 0.3)]) == [mm, (0.2, 0.3)]
    assert split_spacings([None, None]) == [None, None]
    assert not caplog.records                       # all in pixels is the ordinary case: no warning
    assert split_spacings([mm, None, mm]) == [None, None, None]
    (record,) = caplog.records
    assert record.levelname == "WARNING" and "1 of 3 images" in record.getMessage()
    assert split_spacings([mm, None], given=(1.0, 2.0)) == [(1.0, 2.0)] * 2


def test_parse_spacing():
    assert parse_spacing("0.5,0.7") == (0.5, 0.7)
    assert parse_spacing((1, 2)) == (1.0, 2.0)
    for bad in ("0.5", "0,1", "a,b", "1,2,3", "-1,1", "nan,1", (1.0,)):
        with pytest.raises(ConfigError, match="ROW,COL"):
            parse_spacing(bad)
