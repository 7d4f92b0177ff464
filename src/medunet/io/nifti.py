"""NIfTI through nibabel: reading into the (Z, Y, X) convention, and writing outputs that keep the
source's header (affine, qform and sform codes, units).

nibabel, not SimpleITK, for NIfTI: SimpleITK rebuilds a header on write, so the qform/sform codes
are lost and the affine is re-derived (nnU-Net #459, #2477); copying nibabel's header keeps them.
nibabel's `data[i, j, k]` becomes `array[k, j, i]`, SimpleITK's order, so both readers agree.
nibabel is imported inside the functions: it takes most of a second to import.
"""
from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import numpy as np

from medunet.errors import DataError
from medunet.io.volume_geometry import VolumeGeometry

logger = logging.getLogger(__name__)

_LABEL_INTENT = "label"  # NIFTI_INTENT_LABEL: the values are class ids
_CHUNK = 1 << 20  # bytes decompressed at a time


def read_nifti_header(path: Path) -> tuple[object, VolumeGeometry]:
    """A NIfTI file's header and geometry, without reading the voxels.

    Returns:
        (nibabel Nifti1Header or Nifti2Header, geometry of the (Z, Y, X) array).

    Raises:
        DataError: unreadable, 4D or more (a trailing axis of length 1 is dropped), sheared affine.
    """
    image = _load(path)
    shape = _shape_xyz(image.shape, path)
    try:
        geometry = VolumeGeometry.from_nifti_affine(image.affine, shape)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None
    _warn_if_forms_differ(image.header, path)
    return image.header, geometry


def read_nifti_array(path: Path) -> np.ndarray:
    """The voxels as a (Z, Y, X) array in the stored type, with the header's scaling applied
    (integer scaling stays integer: CT stored as uint16 with intercept -1024 gives int16 HU).

    Raises:
        DataError: as `read_nifti_header`, or truncated data.
    """
    image = _load(path)
    shape = _shape_xyz(image.shape, path)
    try:
        raw = _read_stored(path, image.dataobj)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read the voxels ({type(exc).__name__}: {_first_line(exc)})") from None
    slope, inter = image.dataobj.slope, image.dataobj.inter
    if _integral(slope) and _integral(inter):
        data = _scale_integers(raw, int(slope), int(inter))
    else:
        data = raw * np.float32(slope) + np.float32(inter)  # float32, never a float64 copy
    # Stored x fastest (Fortran order), so the transpose is C-contiguous: no copy.
    return data.reshape(shape, order="F").T


def _read_stored(path: Path, proxy) -> np.ndarray:
    """The stored values, Fortran-ordered, read in chunks straight into the array (float64 cast to
    float32 chunk by chunk, so no float64 copy of the volume exists). nibabel's own read of a
    .nii.gz peaks near three times the volume (whole-size buffers inside gzip), and it memory-maps
    a .nii, which a later rewrite of the file would pull from under the array."""
    stored = np.dtype(proxy.dtype)  # the proxy, not the image's header: that one's offset is reset to 0
    out = np.empty(proxy.shape, dtype=np.float32 if stored.kind == "f" else stored, order="F")
    flat = out.T.reshape(-1)  # out.T is C-contiguous over the same memory: a view
    direct = memoryview(flat).cast("B") if out.dtype == stored else None
    step = _CHUNK // stored.itemsize * stored.itemsize
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        f.seek(int(proxy.offset))
        done, total = 0, flat.size * stored.itemsize
        while done < total:
            if direct is not None:
                n = f.readinto(direct[done:done + step])
            else:
                chunk = f.read(min(step, total - done))
                n = len(chunk) // stored.itemsize * stored.itemsize
                i = done // stored.itemsize
                flat[i:i + n // stored.itemsize] = np.frombuffer(chunk[:n], dtype=stored)
            if not n:
                raise EOFError(f"the file ends after {done} of {total} bytes of voxels")
            done += n
    return out


def write_nifti(path: Path, array: np.ndarray, header: object | None, geometry: VolumeGeometry,
                intent: str = _LABEL_INTENT) -> None:
    """Write a (Z, Y, X) or (C, Z, Y, X) array as NIfTI (gzip for ".nii.gz"), atomically.

    Args:
        path: ".nii" or ".nii.gz"; the temporary is renamed over it when complete.
        array: (Z, Y, X) labels or floats in the dtype to store; (C, Z, Y, X) becomes a 4D file
            whose 4th axis is C.
        header: the source's NIfTI header: copied, so the affine, qform/sform codes and units stay;
            only the data type, scaling (none), intent and description change. None for a source
            that was not NIfTI: a header is built from `geometry` with qform and sform code 1
            (scanner), as dcm2niix writes, which ITK and 3D Slicer place on the source series.
        geometry: the source geometry, used only when `header` is None.
        intent: "label" for class ids, "none" for probabilities.
    """
    import nibabel as nib

    data = array.T  # (X, Y, Z[, C]) view
    if header is None:
        image = nib.Nifti1Image(data, geometry.nifti_affine())
        image.header.set_qform(geometry.nifti_affine(), code=1)
        image.header.set_sform(geometry.nifti_affine(), code=1)
        image.header.set_xyzt_units("mm", "sec")
    else:
        image = _like_header(nib, data, header)
    image.set_data_dtype(array.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    image.header.set_intent(intent)
    image.header["cal_min"], image.header["cal_max"] = 0, 0
    image.header["descrip"] = b"medunet"
    _save(path, image)


def _like_header(nib, data: np.ndarray, header) -> object:
    """An image of `data` with a copy of `header`, its qform and sform (matrices and codes) as they were."""
    kind = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = kind(data, None, header=header.copy())
    image.header.set_qform(header.get_qform(), code=int(header["qform_code"]))
    image.header.set_sform(header.get_sform(), code=int(header["sform_code"]))
    return image


def _save(path: Path, image) -> None:
    from medunet.io.outputs import atomic_target

    # atomic_target's temporary ends in ".gz" alone, which nibabel would refuse: write the stream.
    # The gzip header names the final file, not the random temporary, and mtime is 0: the same
    # volume gives the same bytes (reruns and sharded predictions compare equal).
    with atomic_target(path, durable=False) as tmp:
        if path.name.lower().endswith(".gz"):
            with open(tmp, "wb") as raw, gzip.GzipFile(path.name[:-3], "wb", compresslevel=1, fileobj=raw,
                                                       mtime=0) as f:  # nibabel's own level
                image.to_stream(f)
        else:
            with open(tmp, "wb") as f:
                image.to_stream(f)


def _load(path: Path):
    import nibabel as nib

    try:
        return nib.load(str(path))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except Exception as exc:  # nibabel raises many kinds on bad bytes; the user needs one line
        raise DataError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {_first_line(exc)})") from None


def _shape_xyz(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """(X, Y, Z) of a 2D or 3D file; trailing axes of length 1 (a 4D file of one volume) are dropped."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 3:
        raise DataError(f"{path}: {len(dims)}D volume (shape {'×'.join(map(str, shape))}); "
                        "medunet reads 3D volumes: split it into one file per volume")
    if len(dims) < 2 or 0 in dims:
        raise DataError(f"{path}: no voxels (shape {shape})")
    return tuple(dims + [1] * (3 - len(dims)))


def _integral(value) -> bool:
    return value is not None and np.isfinite(value) and float(value) == round(float(value))


def _scale_integers(raw: np.ndarray, slope: int, inter: int) -> np.ndarray:
    """raw * slope + inter in the smallest integer type that holds the result, in place after one cast."""
    if raw.dtype.kind not in "iu" or (slope, inter) == (1, 0):
        return raw
    ends = [int(raw.min()) * slope + inter, int(raw.max()) * slope + inter]
    dtype = next(t for t in (np.int16, np.int32, np.int64)
                 if np.iinfo(t).min <= min(ends) and max(ends) <= np.iinfo(t).max)
    out = raw.astype(dtype)
    if slope != 1:
        out *= dtype(slope)
    out += dtype(inter)
    return out


def _warn_if_forms_differ(header, path: Path) -> None:
    """Tools disagree on which of two different transforms wins (nibabel and medunet: the sform)."""
    if header["qform_code"] > 0 and header["sform_code"] > 0 \
            and not np.allclose(header.get_qform(), header.get_sform(), atol=1e-3):
        logger.warning("%s: qform and sform differ; using the sform, as nibabel does", path)


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [""])[0][:160]
