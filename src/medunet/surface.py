"""Boundary distances beyond Dice: HD95 and average symmetric surface distance (ASSD).

Both come from MONAI (`compute_hausdorff_distance`, `compute_average_surface_distance`) on
one-hot masks, in pixels, or in millimetres when a pixel spacing is given (`pixel_spacing` reads it
from the image file). MONAI's conventions: a mask's surface is its pixels with a 4-neighbour outside
it (binary erosion XOR mask); distances are Euclidean between surface pixel centres; HD95 is the
larger of the two directed 95th percentiles (linear interpolation), not the 95th percentile of both
directions pooled; ASSD is the mean of both directions' distances pooled.

MONAI returns NaN when truth and prediction are both empty and inf when one is. Here the first
stays NaN (undefined, left out of means and medians, as for Dice in `medunet.metrics`) and the
second becomes the image diagonal (`EMPTY_RULE`); `surface_note` says which case occurred.

Volumes: the same in 3D on `(Z, Y, X)` masks with the voxel spacing `(sz, sy, sx)` from the header
(surface voxels have a 6-neighbour outside; the "diagonal" is the volume's, in mm).

Millimetres come only from a real physical-size source (`pixel_spacing`): a TIFF resolution in
centimetres or an ImageJ TIFF's length unit. Inch resolutions, PNG pHYs and JPEG dpi are what print
and screen writers store, not measurements, so they give no spacing.
"""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import tifffile

from medunet.errors import ConfigError, DataError
from medunet.io.images import is_tiff
from medunet.metrics import NAN, defined_mean

logger = logging.getLogger(__name__)

EMPTY_RULE = ("for a class whose truth and prediction are both empty, HD95 and ASSD are undefined "
              "(NaN) and left out of the image's mean over classes; an image with no defined class "
              "is left out of the means and medians over images (null when none is left). When "
              "exactly one of them is empty, both are set to the image diagonal "
              "(height × width in the distance unit), the worst case")

CENTIMETRE = 3                              # TIFF ResolutionUnit; 2 (inch, the default) is a print size
IMAGEJ_MM_PER_UNIT = {"mm": 1.0, "cm": 10.0, "micron": 1e-3, "um": 1e-3, "\u00b5m": 1e-3,
                      "\\u00B5m": 1e-3, "nm": 1e-6}
DEFAULT_DPI = (72.0, 96.0)                  # what writers store when nobody measured anything
DPI_TOLERANCE = 0.01                        # writers round per-cm values: 28.35/cm reads as 72.009 dpi


def surface_metrics(truth: np.ndarray, pred: np.ndarray, n_classes: int,
                    spacing: tuple[float, ...] | None = None) -> dict[str, float | str]:
    """HD95 and ASSD of one image (or volume), for each foreground class and their mean.

    Args:
        truth: `(H, W)` class indices, or `(Z, Y, X)` for a volume.
        pred: class indices of the same shape.
        n_classes: classes including background.
        spacing: (row, column) pixel size in mm — (sz, sy, sx) voxel size for a volume —, or None
            for pixels (voxels).

    Returns:
        `hd95`, `assd` (means over the foreground classes that are defined; NaN when every class
        is empty in truth and prediction), `hd95_c{k}`, `assd_c{k}` when there are several
        foreground classes (NaN for a class empty in both), `distance_unit` ("px" or "mm"), and
        `surface_note` ("" when no class is empty in truth or prediction, else which class fell
        under `EMPTY_RULE`). Never inf.
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.ndim not in (2, 3) or truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} must be (H, W) or (Z, Y, X) of one size")
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    steps = _check_spacing(spacing, truth.ndim)
    diagonal = math.hypot(*(n * s for n, s in zip(truth.shape, steps)))
    unit = "px" if spacing is None else "mm"
    hd95, assd, notes = {}, {}, []
    measured = []
    for c in range(1, n_classes):
        in_truth, in_pred = bool((truth == c).any()), bool((pred == c).any())
        if in_truth and in_pred:
            measured.append(c)
            continue
        value = NAN if not (in_truth or in_pred) else diagonal
        hd95[c] = assd[c] = value
        notes.append(_empty_note(c, n_classes, in_truth, in_pred, value, unit))
    if measured:
        for c, h, a in zip(measured, *_monai_distances(truth, pred, measured, steps)):
            hd95[c], assd[c] = h, a
    row: dict[str, float | str] = {"hd95": defined_mean(hd95.values()), "assd": defined_mean(assd.values())}
    if n_classes > 2:
        for c in range(1, n_classes):
            row[f"hd95_c{c}"], row[f"assd_c{c}"] = hd95[c], assd[c]
    row["distance_unit"] = unit
    row["surface_note"] = "; ".join(notes)
    return row


def _check_spacing(spacing: tuple[float, ...] | None, ndim: int = 2) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        what = "two positive numbers (row, column)" if ndim == 2 else "three positive numbers (z, y, x)"
        raise ValueError(f"spacing must be {what}, got {spacing}")
    return values


def _empty_note(c: int, n_classes: int, in_truth: bool, in_pred: bool, value: float, unit: str) -> str:
    prefix = f"class {c}: " if n_classes > 2 else ""
    if not (in_truth or in_pred):
        return f"{prefix}truth and prediction empty: HD95 and ASSD undefined"
    which = "truth empty, prediction not" if in_pred else "prediction empty, truth not"
    return f"{prefix}{which}: HD95 and ASSD set to the image diagonal ({value:.1f} {unit})"


def _monai_distances(truth: np.ndarray, pred: np.ndarray, classes: list[int],
                     spacing: tuple[float, ...]) -> tuple[list[float], list[float]]:
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

    Only a real physical-size source counts: an ImageJ TIFF's `unit` (mm, cm, micron, µm, nm), or a
    TIFF YResolution / XResolution whose ResolutionUnit is centimetre, unless it equals a writer's
    default of 72 or 96 dpi (`DEFAULT_DPI`) or is 1 pixel per unit. None for every other file:
    inch resolutions (the TIFF default), PNG pHYs and JPEG dpi are print or screen sizes.

    Raises:
        DataError: a TIFF file whose tags cannot be read.
    """
    path = Path(path)
    if not is_tiff(path):
        return None
    try:
        spacing = _tiff_spacing(path)
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:  # IndexError: no first page
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
    mm = IMAGEJ_MM_PER_UNIT.get(str(imagej_unit))
    if mm is not None:   # ImageJ stores its calibration here, whatever ResolutionUnit says
        return _spacing(per_unit_y, per_unit_x, mm)
    if unit != CENTIMETRE or _is_default_dpi(per_unit_x * 2.54, per_unit_y * 2.54):
        return None
    return _spacing(per_unit_y, per_unit_x, 10.0)


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


def parse_spacing(spacing: str | tuple[float, float] | list[float]) -> tuple[float, float]:
    """"ROW,COL" text or a pair of numbers → (row, column) pixel size in mm, both positive.

    Raises:
        ConfigError: not two positive finite numbers.
    """
    try:
        values = tuple(float(v) for v in (spacing.split(",") if isinstance(spacing, str) else spacing))
    except (TypeError, ValueError):
        values = ()
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"spacing must be ROW,COL: two positive pixel sizes in mm, got {spacing!r}")
    return values  # type: ignore[return-value]


def split_spacings(found: list[tuple[float, float] | None],
                   given: tuple[float, float] | None = None) -> list[tuple[float, float] | None]:
    """The spacing each image of a split is measured with: `given` for all when there is one, the
    files' own when every image has one, else None (pixels) for all, so that no mean mixes px and mm.
    """
    if given is not None:
        return [given] * len(found)
    missing = sum(s is None for s in found)
    if missing and missing < len(found):
        logger.warning("%d of %d images have no physical pixel size (a TIFF resolution in cm or an "
                       "ImageJ unit): HD95 and ASSD of all %d images in pixels; give --spacing ROW,COL "
                       "for millimetres", missing, len(found), len(found))
    return list(found) if not missing else [None] * len(found)


def summarise_surface(rows: list[dict]) -> dict:
    """Means and medians of HD95 and ASSD over the images where they are defined, with the empty-case
    rule and how often it applied.

    The median is reported beside the mean because the empty-case value (the image diagonal) can
    dominate a mean. Images whose every class is empty in truth and prediction (NaN, counted in
    `n_surface_empty_both`) are left out; a mean or median over no image is NaN. `n_surface_empty`
    counts the images where some class is empty in truth or prediction (a `surface_note`).

    Raises:
        ValueError: the rows mix pixel and millimetre distances.
    """
    units = {r["distance_unit"] for r in rows}
    if len(units) > 1:
        raise ValueError(f"distances in {sorted(units)} cannot be averaged together")
    hd95 = np.array([float(r["hd95"]) for r in rows])
    assd = np.array([float(r["assd"]) for r in rows])
    return {"hd95_mean": defined_mean(hd95), "hd95_median": _defined_median(hd95),
            "assd_mean": defined_mean(assd), "assd_median": _defined_median(assd),
            "distance_unit": units.pop() if units else "px",
            "n_surface_empty": int(sum(bool(r["surface_note"]) for r in rows)),
            "n_surface_empty_both": int(np.isnan(hd95).sum()),
            "surface_empty_rule": EMPTY_RULE}


def _defined_median(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(np.median(defined)) if defined.size else NAN
