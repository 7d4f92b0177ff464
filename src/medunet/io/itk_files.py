"""NRRD and MetaImage (.mha, .mhd) through SimpleITK, in the (Z, Y, X) convention of
`volume_geometry`. SimpleITK is imported inside the functions: it takes most of a second to import.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medunet.errors import DataError
from medunet.io.volume_geometry import VolumeGeometry

logger = logging.getLogger(__name__)


def read_itk_header(path: Path) -> VolumeGeometry:
    """The geometry of a NRRD or MetaImage file, without reading the voxels.

    Raises:
        DataError: missing or unreadable, 4D or more (a trailing axis of length 1 is dropped),
            or several components per voxel (RGB, vector images).
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    _run(reader.ReadImageInformation, path)
    size = list(reader.GetSize())
    if reader.GetNumberOfComponents() != 1:
        raise DataError(f"{path}: {reader.GetNumberOfComponents()} components per voxel "
                        f"(size {_dims(size)}); medunet reads single-channel volumes")
    n = _spatial_dims(size, path)
    return _geometry(size[:n], reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), n)


def read_itk_array(path: Path) -> np.ndarray:
    """The voxels of a NRRD or MetaImage file as a (Z, Y, X) array in the stored type.

    Raises:
        DataError: as `read_itk_header`.
    """
    import SimpleITK as sitk

    image = _run(lambda: sitk.ReadImage(str(path)), path)
    array = sitk.GetArrayFromImage(image)  # (…, Z, Y, X): reversed ITK order
    del image  # the voxels now live in `array` alone
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    return array.reshape((1,) * (3 - array.ndim) + array.shape)


def write_itk(path: Path, array: np.ndarray, geometry: VolumeGeometry) -> None:
    """Write a (Z, Y, X) array, or (C, Z, Y, X) as a C-component vector image, with `geometry`,
    compressed, atomically. `path` ends in ".nrrd" or ".mha" (one file, so the rename is atomic)."""
    import SimpleITK as sitk

    from medunet.io.outputs import atomic_target

    vector = array.ndim == 4
    image = sitk.GetImageFromArray(np.moveaxis(array, 0, -1) if vector else array, isVector=vector)
    image.SetSpacing([float(s) for s in geometry.spacing[::-1]])
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    with atomic_target(path, durable=False) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def _spatial_dims(size: list[int], path: Path) -> int:
    n = len(size)
    while n > 3 and size[n - 1] == 1:
        n -= 1
    if n > 3:
        raise DataError(f"{path}: {n}D volume (size {_dims(size)}, x first); medunet reads 3D "
                        "volumes: split it into one file per volume")
    return n


def _geometry(size, spacing, origin, direction, n: int) -> VolumeGeometry:
    """A geometry from ITK's (x, y, z) values of the first `n` ≤ 3 axes; a 2D file gets one slice."""
    d = np.eye(3)
    d[:n, :n] = np.asarray(direction, dtype=np.float64).reshape(len(spacing), len(spacing))[:n, :n]
    pad = 3 - n
    return VolumeGeometry(shape=tuple(int(v) for v in (list(size) + [1] * pad)[::-1]),
                          spacing=tuple(float(v) for v in (list(spacing[:n]) + [1.0] * pad)[::-1]),
                          origin=tuple(float(v) for v in list(origin[:n]) + [0.0] * pad),
                          direction=tuple(float(v) for v in d.ravel()))


def _run(step, path: Path):
    """Run a SimpleITK call; its RuntimeError (a paragraph of ITK internals) becomes one line."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    try:
        return step()
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines()
                       if "rror" in line and "sitk::ERROR" not in line), "")
        raise DataError(f"{path}: cannot read the volume{f' ({detail[:160]})' if detail else ''}") from None


def _dims(size) -> str:
    return "×".join(str(int(v)) for v in size)
