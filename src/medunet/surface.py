"""Boundary distances beyond Dice: HD95 and average symmetric surface distance (ASSD).

Both come from MONAI (`compute_hausdorff_distance`, `compute_average_surface_distance`) on
one-hot masks, in pixels, or in millimetres when a pixel spacing is given (`pixel_spacing` reads it
from the image file). MONAI's conventions: a mask's surface is its pixels with a 4-neighbour outside
it (binary erosion XOR mask); distances are Euclidean between surface pixel centres; HD95 is the
larger of the two directed 95th percentiles (linear interpolation), not the 95th percentile of both
directions pooled; ASSD is the mean of both directions' distances pooled.

MONAI returns NaN when truth and prediction are both empty and inf when one is; here those cases
follow `EMPTY_RULE` instead, and `surface_note` says which case occurred.
"""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from medunet.errors import DataError

logger = logging.getLogger(__name__)

EMPTY_RULE = ("for a class whose truth and prediction are both empty, HD95 and ASSD are 0.0; "
              "when exactly one of them is empty, both are set to the image diagonal "
              "(height × width in the distance unit), the worst case")

MM_PER_UNIT = {2: 25.4, 3: 10.0}            # TIFF ResolutionUnit: 2 inch, 3 centimetre
IMAGEJ_MM_PER_UNIT = {"mm": 1.0, "cm": 10.0, "micron": 1e-3, "um": 1e-3, "\u00b5m": 1e-3,
                      "\\u00B5m": 1e-3, "nm": 1e-6}
DEFAULT_DPI = (72.0, 96.0)                  # what writers store when nobody measured anything
DPI_TOLERANCE = 0.01                        # pHYs stores pixels per metre: 72 dpi reads as 72.009


def surface_metrics(truth: np.ndarray, pred: np.ndarray, n_classes: int,
                    spacing: tuple[float, float] | None = None) -> dict[str, float | str]:
    """HD95 and ASSD of one image, for each foreground class and their mean.

    Args:
        truth: `(H, W)` class indices.
        pred: `(H, W)` class indices, same size.
        n_classes: classes including background.
        spacing: (row, column) pixel size in mm, or None for pixels.

    Returns:
        `hd95`, `assd` (means over foreground classes), `hd95_c{k}`, `assd_c{k}` when there are
        several foreground classes, `distance_unit` ("px" or "mm"), and `surface_note` ("" when no
        class is empty in truth or prediction, else which class fell under `EMPTY_RULE`).
        Never NaN or inf.
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.ndim != 2 or truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} must be (H, W) of one size")
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    sy, sx = _check_spacing(spacing)
    diagonal = math.hypot(truth.shape[0] * sy, truth.shape[1] * sx)
    unit = "px" if spacing is None else "mm"
    hd95, assd, notes = {}, {}, []
    measured = []
    for c in range(1, n_classes):
        in_truth, in_pred = bool((truth == c).any()), bool((pred == c).any())
        if in_truth and in_pred:
            measured.append(c)
            continue
        value = 0.0 if not (in_truth or in_pred) else diagonal
        hd95[c] = assd[c] = value
        notes.append(_empty_note(c, n_classes, in_truth, in_pred, value, unit))
    if measured:
        for c, h, a in zip(measured, *_monai_distances(truth, pred, measured, (sy, sx))):
            hd95[c], assd[c] = h, a
    row: dict[str, float | str] = {"hd95": float(np.mean(list(hd95.values()))),
                                   "assd": float(np.mean(list(assd.values())))}
    if n_classes > 2:
        for c in range(1, n_classes):
            row[f"hd95_c{c}"], row[f"assd_c{c}"] = hd95[c], assd[c]
    row["distance_unit"] = unit
    row["surface_note"] = "; ".join(notes)
    return row


def _check_spacing(spacing: tuple[float, float] | None) -> tuple[float, float]:
    if spacing is None:
        return 1.0, 1.0
    values = tuple(float(s) for s in spacing)
    if len(values) != 2 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be two positive numbers (row, column), got {spacing}")
    return values  # type: ignore[return-value]


def _empty_note(c: int, n_classes: int, in_truth: bool, in_pred: bool, value: float, unit: str) -> str:
    prefix = f"class {c}: " if n_classes > 2 else ""
    if not (in_truth or in_pred):
        return f"{prefix}truth and prediction empty: HD95 and ASSD set to 0"
    which = "truth empty, prediction not" if in_pred else "prediction empty, truth not"
    return f"{prefix}{which}: HD95 and ASSD set to the image diagonal ({value:.1f} {unit})"


def _monai_distances(truth: np.ndarray, pred: np.ndarray, classes: list[int],
                     spacing: tuple[float, float]) -> tuple[list[float], list[float]]:
    """HD95 and ASSD of `classes` (each non-empty in both masks) from one MONAI call each."""
    import torch  # noqa: PLC0415  (monai's import takes seconds: paid only when distances are asked for)
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    # channel 0 is a background placeholder that include_background=False drops
    channels = [np.zeros_like(truth, dtype=bool)]
    y = torch.from_numpy(np.stack(channels + [truth == c for c in classes])[None])
    y_pred = torch.from_numpy(np.stack(channels + [pred == c for c in classes])[None])
    per_image = [list(spacing)]   # nested, one entry per image: MONAI reads a flat list whose
    # length equals the batch size as one isotropic spacing per image
    with warnings.catch_warnings():
        # MONAI 1.5+ passes its own deprecated `always_return_as_numpy` to get_mask_edges
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        hd = compute_hausdorff_distance(y_pred, y, include_background=False, percentile=95,
                                        spacing=per_image)
        asd = compute_average_surface_distance(y_pred, y, include_background=False, symmetric=True,
                                               spacing=per_image)
    hd_list, asd_list = hd[0].tolist(), asd[0].tolist()
    if not all(math.isfinite(v) for v in hd_list + asd_list):
        raise RuntimeError(f"MONAI returned a non-finite distance for classes {classes}: {hd_list}, {asd_list}")
    return hd_list, asd_list


def pixel_spacing(path: Path) -> tuple[float, float] | None:
    """The (row, column) pixel size in mm stored in an image file, or None.

    TIFF: YResolution / XResolution with ResolutionUnit inch or centimetre (or an ImageJ file's
    `unit` of mm, cm, micron, nm). Other formats: Pillow's `dpi` (PNG pHYs in pixels per metre,
    JPEG JFIF density). None when absent, unit-less, 1 pixel per unit, or a writer's default
    (`DEFAULT_DPI`).

    Raises:
        DataError: the file cannot be read.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            spacing = _tiff_spacing(path)
        else:
            spacing = _pillow_spacing(path)
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise DataError(f"{path}: cannot read its pixel spacing ({exc})") from None
    if spacing is not None:
        logger.debug("%s: pixel spacing %.4g × %.4g mm", path, *spacing)
    return spacing


def _tiff_spacing(path: Path) -> tuple[float, float] | None:
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        if "XResolution" not in tags or "YResolution" not in tags:
            return None
        per_unit_x = _rational(tags["XResolution"].value)
        per_unit_y = _rational(tags["YResolution"].value)
        unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2  # TIFF default: inch
        imagej_unit = (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None
    if unit in MM_PER_UNIT:
        mm = MM_PER_UNIT[unit]
        if _is_default_dpi(per_unit_x * 25.4 / mm, per_unit_y * 25.4 / mm):
            return None
        return _spacing(per_unit_y, per_unit_x, mm)
    mm = IMAGEJ_MM_PER_UNIT.get(str(imagej_unit))
    return None if mm is None else _spacing(per_unit_y, per_unit_x, mm)


def _pillow_spacing(path: Path) -> tuple[float, float] | None:
    with Image.open(path) as im:
        dpi = im.info.get("dpi")
    if not dpi or len(dpi) != 2:
        return None
    dpi_x, dpi_y = float(dpi[0]), float(dpi[1])
    if _is_default_dpi(dpi_x, dpi_y):
        return None
    return _spacing(dpi_y, dpi_x, 25.4)


def _rational(value: object) -> float:
    if isinstance(value, tuple):
        return value[0] / value[1] if value[1] else 0.0
    return float(value)  # type: ignore[arg-type]


def _spacing(per_unit_row: float, per_unit_col: float, mm_per_unit: float) -> tuple[float, float] | None:
    """Pixels per unit → mm per pixel; None for 1 pixel per unit (no one measured) or nonsense."""
    if per_unit_row <= 0 or per_unit_col <= 0 or (per_unit_row == 1 and per_unit_col == 1):
        return None
    return mm_per_unit / per_unit_row, mm_per_unit / per_unit_col


def _is_default_dpi(dpi_x: float, dpi_y: float) -> bool:
    return any(abs(dpi_x - d) <= DPI_TOLERANCE * d and abs(dpi_y - d) <= DPI_TOLERANCE * d
               for d in DEFAULT_DPI)


def summarise_surface(rows: list[dict]) -> dict:
    """Means and medians of HD95 and ASSD over images, with the empty-case rule and how often it applied.

    The median is reported beside the mean because the empty-case value (the image diagonal) can
    dominate a mean.
    """
    hd95 = [float(r["hd95"]) for r in rows]
    assd = [float(r["assd"]) for r in rows]
    units = {r["distance_unit"] for r in rows}
    return {"hd95_mean": float(np.mean(hd95)), "hd95_median": float(np.median(hd95)),
            "assd_mean": float(np.mean(assd)), "assd_median": float(np.median(assd)),
            "distance_unit": units.pop() if len(units) == 1 else "mixed (px and mm)",
            "n_surface_empty": int(sum(bool(r["surface_note"]) for r in rows)),
            "surface_empty_rule": EMPTY_RULE}
