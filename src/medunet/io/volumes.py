"""Read and write volumes: NIfTI, NRRD, MetaImage files and DICOM series, in one axis convention.

Every reader returns the voxels as a (Z, Y, X) array with a `VolumeGeometry` (spacing in array
order, origin and direction in LPS; see `volume_geometry`), whatever the format. Which library
reads what, and why:
    .nii, .nii.gz     nibabel (`nifti`): keeps the header, so outputs keep the affine and the
                      qform/sform codes, which SimpleITK would rewrite.
    .nrrd, .mha, .mhd SimpleITK (`itk_files`).
    DICOM folder      pydicom for the headers (ordering and checks), SimpleITK/GDCM for the pixels
                      (`dicom`).

Outputs are written "like" their source: the same shape and geometry; for NIfTI the source header.
Heavy libraries are imported only when a volume is read or written, so listing a dataset is fast.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medunet.errors import DataError
from medunet.io import dicom, itk_files, nifti
from medunet.io.dicom import DicomSeries, is_dicom_series_folder
from medunet.io.images import check_values, integer_labels, normalise_dtype
from medunet.io.volume_geometry import GeometryTolerance, VolumeGeometry, check_pair

__all__ = ["VOLUME_SUFFIXES", "DicomSeries", "GeometryTolerance", "Volume", "VolumeGeometry",
           "VolumeSource", "check_pair", "is_dicom_series_folder", "is_volume_file", "output_name",
           "read_label_volume", "read_volume", "read_volume_source", "volume_stem",
           "write_float_volume", "write_label_volume"]

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
_NIFTI = (".nii", ".nii.gz")
_ITK_WRITABLE = (".nrrd", ".mha")
_OUTPUT_SUFFIX = {".mhd": ".mha"}  # one file: a header and a raw file cannot be renamed atomically together
_DICOM_OUTPUT = ".nii.gz"


@dataclass(frozen=True)
class VolumeSource:
    """Where a volume came from: its geometry, and what writing an output like it needs.

    Attributes:
        path: the file or DICOM folder the user named.
        format: "nifti", "nrrd", "metaimage" or "dicom".
        geometry: of the (Z, Y, X) array.
        nifti_header: the nibabel header of a NIfTI source (copied into outputs), else None.
        dicom: the series' UIDs and ordered files for a DICOM source, else None.
    """

    path: Path
    format: str
    geometry: VolumeGeometry
    nifti_header: object | None = field(default=None, repr=False, compare=False)
    dicom: DicomSeries | None = field(default=None, repr=False)


@dataclass(frozen=True, eq=False)
class Volume:
    """A volume's voxels and its source.

    Attributes:
        array: (Z, Y, X): uint8, uint16, int16, int32 or float32 for images (CT in HU), uint8,
            uint16 or int32 class ids for labels.
        source: geometry and what outputs need; keep it alone to write outputs without the voxels.
    """

    array: np.ndarray = field(repr=False)
    source: VolumeSource

    @property
    def geometry(self) -> VolumeGeometry:
        return self.source.geometry

    @property
    def path(self) -> Path:
        return self.source.path


# ------------------------------------------------------------------------------------------ names

def _suffix(path: Path) -> str:
    """".nii.gz" for "a.nii.gz" (any case), else the last suffix lower-cased."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def is_volume_file(path: Path) -> bool:
    """Whether `path` names a volume file by its suffix (case-insensitive), hidden files excluded."""
    path = Path(path)
    return not path.name.startswith(".") and _suffix(path) in VOLUME_SUFFIXES and path.is_file()


def volume_stem(path: Path) -> str:
    """"case_001.nii.gz" → "case_001", "ct.mha" → "ct"; a DICOM folder → its name."""
    path = Path(path)
    suffix = _suffix(path)
    if path.is_dir() or suffix not in VOLUME_SUFFIXES:
        return path.name
    return path.name[: len(path.name) - len(suffix)]


def output_name(source: Path, kind: str = "mask") -> str:
    """The file name of a prediction for `source`: its stem, and its suffix family.

    "c1.nii.gz" → "c1.nii.gz" (mask) or "c1_prob.nii.gz" (prob); ".nii", ".nrrd" and ".mha" stay;
    ".mhd" gives ".mha" (the same MetaImage format in one file); a DICOM folder "ct" → "ct.nii.gz".
    """
    if kind not in ("mask", "prob"):
        raise ValueError(f"kind must be 'mask' or 'prob', got {kind!r}")
    source = Path(source)
    suffix = _DICOM_OUTPUT if source.is_dir() else _suffix(source)
    suffix = _OUTPUT_SUFFIX.get(suffix, suffix)
    return f"{volume_stem(source)}{'_prob' if kind == 'prob' else ''}{suffix}"


# ---------------------------------------------------------------------------------------- reading

def read_volume_source(path: Path, series_uid: str | None = None) -> VolumeSource:
    """A volume's geometry and source, from its header(s) alone (no voxels decoded).

    Args:
        path: a volume file (VOLUME_SUFFIXES) or a folder holding a DICOM series.
        series_uid: the SeriesInstanceUID to read when a DICOM folder holds several series.

    Raises:
        DataError: a missing or unreadable file, an unknown suffix, a 4D volume, or a DICOM folder
            that is not one evenly spaced series (see `dicom.read_dicom_header`).
    """
    path = Path(path)
    if path.is_dir():
        geometry, series = dicom.read_dicom_header(path, series_uid)
        return VolumeSource(path, "dicom", geometry, dicom=series)
    suffix = _suffix(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if suffix in _NIFTI:
        header, geometry = nifti.read_nifti_header(path)
        return VolumeSource(path, "nifti", geometry, nifti_header=header)
    if suffix in (".nrrd", ".mha", ".mhd"):
        return VolumeSource(path, "nrrd" if suffix == ".nrrd" else "metaimage", itk_files.read_itk_header(path))
    raise DataError(f"{path}: not a volume file (use one of {', '.join(VOLUME_SUFFIXES)} or a DICOM folder)")


def read_volume(path: Path, series_uid: str | None = None) -> Volume:
    """Read an image volume.

    Args:
        path: a volume file or a DICOM series folder.
        series_uid: the SeriesInstanceUID to read when a DICOM folder holds several series.

    Returns:
        Volume whose array is (Z, Y, X): integers stay integer (uint8, uint16, int16, int32),
        floats become float32; DICOM pixels are rescaled (CT in HU).

    Raises:
        DataError: as `read_volume_source`; also NaN/Inf voxels or truncated data.
    """
    source = read_volume_source(path, series_uid)
    array = check_values(normalise_dtype(_read_array(source), source.path), source.path)
    _check_shape(array, source)
    return Volume(array=array, source=source)


def read_label_volume(path: Path) -> Volume:
    """Read a label volume of integer class ids (0 background) or a binary mask.

    Returns:
        Volume whose array is (Z, Y, X) uint8, uint16 or int32; float files with whole-number
        values (labels saved as float32) become integers.

    Raises:
        DataError: as `read_volume`; also non-integer float values.
    """
    volume = read_volume(path)
    return Volume(array=integer_labels(volume.array, volume.path), source=volume.source)


def _read_array(source: VolumeSource) -> np.ndarray:
    if source.format == "dicom":
        return dicom.read_dicom_array(source.path, source.dicom)
    if source.format == "nifti":
        return nifti.read_nifti_array(source.path)
    return itk_files.read_itk_array(source.path)


def _check_shape(array: np.ndarray, source: VolumeSource) -> None:
    if tuple(array.shape) != tuple(source.geometry.shape):  # a header that lies about its data
        raise DataError(f"{source.path}: the voxels are {array.shape}, the header says "
                        f"{source.geometry.shape} (z, y, x)")


# ---------------------------------------------------------------------------------------- writing

def write_label_volume(path: Path, labels: np.ndarray, like: Volume | VolumeSource) -> None:
    """Write class ids as a volume with the geometry of `like`, atomically.

    Args:
        path: output file; its suffix picks the format: ".nii"/".nii.gz" (the source's NIfTI
            header is copied: same affine and qform/sform codes), ".nrrd" or ".mha".
        labels: (Z, Y, X) non-negative integers, the shape of `like`; stored as uint8 when the
            largest is at most 255, else uint16.
        like: the source volume (or its `source`).

    Raises:
        ValueError: a shape that is not the source's, negative or non-integer values, ids above
            65535, or an unknown suffix.
    """
    source = like.source if isinstance(like, Volume) else like
    labels = np.asarray(labels)
    _check_output(path, labels.shape, source, labels.ndim == 3)
    if labels.dtype.kind not in "iub":
        raise ValueError(f"{path}: labels must be integers, got {labels.dtype}")
    top, low = (int(labels.max()), int(labels.min())) if labels.size else (0, 0)
    if low < 0 or top > 65535:
        raise ValueError(f"{path}: class ids must lie in 0..65535, got {low}..{top}")
    _write(Path(path), labels.astype(np.uint8 if top <= 255 else np.uint16, copy=False), source, "label")


def write_float_volume(path: Path, array: np.ndarray, like: Volume | VolumeSource) -> None:
    """Write float32 values (probabilities) with the geometry of `like`, atomically.

    Args:
        path: as `write_label_volume`.
        array: (Z, Y, X), or (C, Z, Y, X) for one value per class: one file whose 4th NIfTI axis
            is the class (3D Slicer opens it as a sequence), or a C-component vector image in
            NRRD/MetaImage.
        like: the source volume (or its `source`).

    Raises:
        ValueError: a shape that is not the source's, or an unknown suffix.
    """
    source = like.source if isinstance(like, Volume) else like
    array = np.asarray(array)
    _check_output(path, array.shape[-3:], source, array.ndim in (3, 4))
    _write(Path(path), array.astype(np.float32, copy=False), source, "none")


def _check_output(path: Path, shape: tuple[int, ...], source: VolumeSource, ndim_ok: bool) -> None:
    if not ndim_ok or tuple(shape) != tuple(source.geometry.shape):
        raise ValueError(f"{path}: output of shape {tuple(shape)} for a source of "
                         f"{source.geometry.shape} (z, y, x)")
    if _suffix(Path(path)) not in _NIFTI + _ITK_WRITABLE:
        raise ValueError(f"{path}: cannot write volumes as {_suffix(Path(path))!r}; "
                         f"use {', '.join(_NIFTI + _ITK_WRITABLE)}")


def _write(path: Path, array: np.ndarray, source: VolumeSource, intent: str) -> None:
    if _suffix(path) in _NIFTI:
        nifti.write_nifti(path, array, source.nifti_header, source.geometry, intent)
    else:
        itk_files.write_itk(path, array, source.geometry)
    logger.debug("%s: wrote %s %s", path, array.dtype, "×".join(map(str, array.shape)))
