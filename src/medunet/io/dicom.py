"""DICOM series: find them in a folder, choose one, order its slices by geometry, check the stack.

Headers are read with pydicom (only the tags needed, no pixels), and the slices are ordered by
their position along the slice normal (ImagePositionPatient · (row × column direction)), never by
InstanceNumber or file name. The spacing between slices comes from those positions, not from
SliceThickness (5 mm slices 6.5 mm apart are 6.5 mm apart). The pixels are decoded by SimpleITK
(GDCM: compressed transfer syntaxes included) from the ordered file list, with the rescale slope
and intercept applied (CT in HU).

Privacy: messages and logs name the folder, file names, counts, sizes and positions, and the
SeriesInstanceUIDs when a series must be chosen; never a patient's name, ID, or any date.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medunet.errors import DataError
from medunet.io.volume_geometry import VolumeGeometry

logger = logging.getLogger(__name__)

_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
         "FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
         "Rows", "Columns", "NumberOfFrames", "SliceThickness", "RescaleSlope", "RescaleIntercept",
         "SamplesPerPixel", "Modality"]
_DICOMDIR = "1.2.840.10008.1.3.10"
MAX_SHOWN = 3  # irregular steps shown in one message


@dataclass(frozen=True)
class DicomSeries:
    """What DICOM outputs (SEG, RTSTRUCT) must reference: UIDs and files, no patient data.

    Attributes:
        series_uid, study_uid, frame_of_reference_uid, sop_class_uid: of the source series.
        files: the slice files in array order (files[k] holds array[k]).
        sop_instance_uids: SOPInstanceUID of each slice, in array order.
        float_pixels: the rescale slope or intercept is fractional or differs between slices,
            so the pixels decode to float32 (GDCM would take the first slice's integer type).
        modality: "CT", "MR", ... (chooses CT normalisation); "" when the header has none.
    """

    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    files: tuple[Path, ...]
    sop_instance_uids: tuple[str, ...]
    float_pixels: bool = False
    modality: str = ""


@dataclass(frozen=True)
class _Slice:
    path: Path
    header: object  # pydicom Dataset of _TAGS only; never formatted into a message


def is_dicom_file(path: Path) -> bool:
    """Whether a file carries the DICOM preamble ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_series_folder(path: Path) -> bool:
    """Whether `path` is a folder holding DICOM files directly (hidden files ignored)."""
    path = Path(path)
    return path.is_dir() and any(_dicom_files(path, first_only=True))


def read_dicom_header(folder: Path, series_uid: str | None = None) -> tuple[VolumeGeometry, DicomSeries]:
    """Choose a series in `folder`, order its slices by position and check they form one even stack.

    Args:
        folder: a folder of DICOM files (one or several series; other files are ignored).
        series_uid: the SeriesInstanceUID to read; needed when the folder holds several series.

    Returns:
        (geometry of the (Z, Y, X) array, the series' UIDs and ordered files).

    Raises:
        DataError: no image series, several without `series_uid` (the UIDs and slice counts are
            listed), an unknown UID, multi-frame files, slices of different sizes, orientations or
            pixel spacings, several slices at one position, missing slices or uneven spacing.
    """
    folder = Path(folder)
    slices = _choose(folder, _scan(folder), series_uid)
    _check_uniform(folder, slices)
    ordered, steps = _ordered(folder, slices)
    geometry = _geometry(ordered, steps)
    first = ordered[0].header
    series = DicomSeries(series_uid=str(first.SeriesInstanceUID), study_uid=str(first.get("StudyInstanceUID", "")),
                         frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
                         sop_class_uid=str(first.SOPClassUID),
                         files=tuple(s.path for s in ordered),
                         sop_instance_uids=tuple(str(s.header.SOPInstanceUID) for s in ordered),
                         float_pixels=_float_rescale(ordered), modality=str(first.get("Modality", "")))
    logger.info("%s: DICOM series of %d slices, %s", folder, len(ordered),
                "×".join(f"{v:.4g}" for v in geometry.spacing) + " mm (z, y, x)")
    return geometry, series


def read_dicom_array(folder: Path, series: DicomSeries) -> np.ndarray:
    """Decode the slices of `series` into a (Z, Y, X) array in `files` order, rescaled (HU for CT).

    Returns:
        int16 when the rescaled values fit it (CT in HU), else uint8, uint16 or int32; float32
        for a fractional rescale slope. Memory: the decoded image and this array, once each.
    """
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in series.files])  # our order: SimpleITK keeps it
    if series.float_pixels:
        reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError:
        raise DataError(f"{folder}: cannot decode the pixels of the DICOM series "
                        f"({len(series.files)} files)") from None
    view = sitk.GetArrayViewFromImage(image)  # no copy; valid while `image` lives
    array = view.astype(_narrowest(view))  # the one copy, already in its final type
    del view, image
    return array


def _narrowest(pixels: np.ndarray) -> type:
    """GDCM picks the type from the header's value range (int32 for 16-bit stored CT with an
    intercept); the values themselves nearly always fit int16, half the memory. A fractional slope
    gives float64, of which float32 holds all that scanners store."""
    if pixels.dtype.kind == "f":
        return np.float32
    if pixels.size and pixels.dtype.itemsize > 2 and \
            np.iinfo(np.int16).min <= pixels.min() and pixels.max() <= np.iinfo(np.int16).max:
        return np.int16
    return pixels.dtype.type


def _dicom_files(folder: Path, first_only: bool = False):
    """Non-hidden files directly in `folder` with the DICOM preamble, in name order."""
    for path in sorted(folder.iterdir()):
        if not path.name.startswith(".") and path.is_file() and is_dicom_file(path):
            yield path
            if first_only:
                return


def _scan(folder: Path) -> dict[str, list[_Slice]]:
    """Image slices of `folder` by SeriesInstanceUID; objects without an image plane are skipped
    (DICOMDIR, RTSTRUCT, SEG, reports)."""
    import pydicom

    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    series: dict[str, list[_Slice]] = {}
    skipped = 0
    for path in _dicom_files(folder):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        except Exception:  # a damaged file among many: counted and skipped, named in the log
            logger.warning("%s: not a readable DICOM file; skipped", path)
            skipped += 1
            continue
        if str(header.get("SOPClassUID", "")) == _DICOMDIR or "ImagePositionPatient" not in header \
                or "ImageOrientationPatient" not in header or "SeriesInstanceUID" not in header:
            skipped += 1
            continue
        series.setdefault(str(header.SeriesInstanceUID), []).append(_Slice(path, header))
    if not series:
        raise DataError(f"{folder}: no DICOM image series (no file with an image position; "
                        f"{skipped} DICOM file(s) skipped)")
    return series


def _choose(folder: Path, series: dict[str, list[_Slice]], uid: str | None) -> list[_Slice]:
    if uid is not None:
        if uid not in series:
            raise DataError(f"{folder}: no series with SeriesInstanceUID {uid}; the folder holds "
                            f"{_listing(series)}")
        return series[uid]
    if len(series) > 1:
        raise DataError(f"{folder}: {len(series)} DICOM series in one folder: {_listing(series)}; "
                        "choose one with --series-uid UID")
    return next(iter(series.values()))


def _listing(series: dict[str, list[_Slice]]) -> str:
    return ", ".join(f"{uid} ({len(s)} slices)" for uid, s in series.items())


def _check_uniform(folder: Path, slices: list[_Slice]) -> None:
    """One grid for the whole series: single-frame, one size, orientation and pixel spacing."""
    frames = [s for s in slices if int(s.header.get("NumberOfFrames", 1) or 1) > 1]
    if frames:
        raise DataError(f"{folder}: multi-frame DICOM ({frames[0].path.name} holds "
                        f"{int(frames[0].header.NumberOfFrames)} frames); medunet reads series of "
                        "single-frame slices (convert with dcm2niix)")
    if any(int(s.header.get("SamplesPerPixel", 1) or 1) != 1 for s in slices):
        raise DataError(f"{folder}: colour DICOM images; medunet reads single-channel series")
    _same(folder, slices, "sizes", lambda h: (int(h.Rows), int(h.Columns)),
          lambda v: f"{v[0]} rows × {v[1]} columns")
    _same(folder, slices, "orientations", lambda h: tuple(np.round(_floats(h.ImageOrientationPatient), 4)),
          lambda v: "(" + ", ".join(f"{x:g}" for x in v) + ")")
    _same(folder, slices, "pixel spacings", lambda h: tuple(np.round(_floats(h.get("PixelSpacing", [1, 1])), 4)),
          lambda v: "×".join(f"{x:g}" for x in v) + " mm")


def _same(folder: Path, slices: list[_Slice], what: str, key, show) -> None:
    """DataError when `key(header)` takes several values across the slices (each counted, one file named)."""
    groups: dict[object, list[Path]] = {}
    for s in slices:
        groups.setdefault(key(s.header), []).append(s.path)
    if len(groups) > 1:
        found = "; ".join(f"{len(paths)} of {show(v)} (e.g. {paths[0].name})" for v, paths in groups.items())
        raise DataError(f"{folder}: one series with slices of different {what}: {found}; "
                        "medunet reads one evenly spaced stack per series")


def _ordered(folder: Path, slices: list[_Slice]) -> tuple[list[_Slice], np.ndarray]:
    """Slices sorted along the normal and the steps between them; DataError when uneven."""
    orientation = _floats(slices[0].header.ImageOrientationPatient)
    normal = np.cross(_unit(orientation[:3]), _unit(orientation[3:]))
    positions = np.array([_floats(s.header.ImagePositionPatient) for s in slices])
    order = np.argsort(positions @ normal, kind="stable")
    ordered = [slices[i] for i in order]
    positions = positions[order]
    steps = np.diff(positions @ normal)
    if len(steps):
        _check_steps(folder, steps, len(ordered))
        sideways = positions[-1] - positions[0] - (positions[-1] - positions[0]) @ normal * normal
        if np.linalg.norm(sideways) > 1e-2 * steps.sum():
            raise DataError(f"{folder}: slice positions drift sideways by {np.linalg.norm(sideways):.3g} mm "
                            "over the stack (a tilted gantry?); resample the series to an orthogonal grid")
    return ordered, steps


def _check_steps(folder: Path, steps: np.ndarray, n: int) -> None:
    """Refuse slices sharing a position (4D series) and steps that differ (missing slices, uneven)."""
    pixel = 1e-3
    if (steps < pixel).any():
        shared = int((steps < pixel).sum()) + 1
        raise DataError(f"{folder}: {shared} of {n} slices share a position (several echoes, phases "
                        "or time points in one series?); medunet reads one 3D stack per series")
    typical = float(np.median(steps))
    odd = np.flatnonzero(np.abs(steps - typical) > max(1e-2 * typical, 1e-3))
    if not len(odd):
        return
    shown = ", ".join(f"{steps[i]:.4g} mm between slices {i + 1} and {i + 2}" for i in odd[:MAX_SHOWN])
    more = f" and {len(odd) - MAX_SHOWN} more" if len(odd) > MAX_SHOWN else ""
    ratio = steps[odd] / typical
    hint = "missing slices?" if np.allclose(ratio, np.round(ratio), atol=0.05) and (ratio > 1.5).all() \
        else "uneven spacing"
    raise DataError(f"{folder}: slice positions step {typical:.4g} mm except {shown}{more} "
                    f"({hint}); medunet needs evenly spaced slices")


def _float_rescale(slices: list[_Slice]) -> bool:
    """Whether the rescaled pixels need floats: a fractional slope or intercept, or several."""
    pairs = {(float(s.header.get("RescaleSlope", 1) or 1), float(s.header.get("RescaleIntercept", 0) or 0))
             for s in slices}
    return len(pairs) > 1 or any(v != round(v) for pair in pairs for v in pair)


def _geometry(ordered: list[_Slice], steps: np.ndarray) -> VolumeGeometry:
    first = ordered[0].header
    orientation = _floats(first.ImageOrientationPatient)
    row, col = _unit(orientation[:3]), _unit(orientation[3:])  # along a row (x) and down a column (y)
    direction = np.column_stack([row, col, np.cross(row, col)])
    row_spacing, col_spacing = _floats(first.get("PixelSpacing", [1.0, 1.0]))
    z = float(steps.mean()) if len(steps) else float(first.get("SliceThickness", 1.0) or 1.0)
    return VolumeGeometry(shape=(len(ordered), int(first.Rows), int(first.Columns)),
                          spacing=(z, float(row_spacing), float(col_spacing)),
                          origin=tuple(float(v) for v in _floats(first.ImagePositionPatient)),
                          direction=tuple(float(v) for v in direction.ravel()))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)  # headers round the cosines to a few digits


def _floats(values) -> np.ndarray:
    return np.asarray([float(v) for v in values], dtype=np.float64)
