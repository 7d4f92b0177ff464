"""Where a volume's voxels lie in the patient, in one convention for every format, and whether an
image and its label volume agree.

The convention (the same whichever file a volume came from, NIfTI, NRRD, MetaImage or DICOM):
    array:     (Z, Y, X), SimpleITK's numpy order. `array[k, j, i]` is ITK's voxel index (i, j, k)
               and nibabel's `data[i, j, k]`; for a DICOM series k follows the slice normal and
               each `array[k]` is one slice as the scanner stored it (rows Y, columns X).
    spacing:   (sz, sy, sx) in mm, in the ARRAY's axis order (nnU-Net's convention).
    origin:    (x, y, z) in mm, patient LPS coordinates (DICOM and ITK: +x to the patient's left,
               +y posterior, +z superior) of the centre of voxel `array[0, 0, 0]`.
    direction: the 3×3 ITK direction matrix as 9 numbers, row-major (SimpleITK's GetDirection):
               column c is the LPS unit vector of ITK index axis c, in ITK's order (i, j, k) =
               array axes (2, 1, 0). `axis_vectors` gives them in array order instead.

nibabel's RAS affines convert with `nifti_affine` and `from_nifti_affine` (RAS = LPS with x and y
negated), so the order mix-ups between nibabel (x, y, z) and SimpleITK (z, y, x) stay in here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class VolumeGeometry:
    """Shape and physical placement of a volume's (Z, Y, X) array (conventions: module docstring).

    Attributes:
        shape: (Z, Y, X) voxels.
        spacing: (sz, sy, sx) mm, array order.
        origin: (x, y, z) mm, LPS, of the centre of voxel [0, 0, 0].
        direction: 9 floats, row-major ITK direction (columns: LPS unit vectors of i, j, k).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def direction_matrix(self) -> np.ndarray:
        """(3, 3) ITK direction: column c is the LPS unit vector of index axis i, j, k."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def axis_vectors(self) -> np.ndarray:
        """(3, 3): row a is the LPS unit vector along array axis a (Z, Y, X)."""
        return self.direction_matrix[:, ::-1].T.copy()

    @property
    def through_plane_axis(self) -> int:
        """The array axis (0 = Z, 1 = Y, 2 = X) with the largest spacing, Z on a tie: the axis to
        slice along for a 2D network (the slice axis of a CT or MR acquisition)."""
        return int(np.argmax(np.asarray(self.spacing) > max(self.spacing) * (1 - 1e-6)))

    def index_to_lps(self) -> np.ndarray:
        """(4, 4): LPS point (x, y, z, 1) = M @ (z, y, x, 1) for an array index (z, y, x)."""
        m = np.eye(4)
        m[:3, :3] = self.axis_vectors.T * np.asarray(self.spacing)
        m[:3, 3] = self.origin
        return m

    def nifti_affine(self) -> np.ndarray:
        """(4, 4) nibabel affine: RAS point = A @ (i, j, k, 1) for `data[i, j, k]` = `array.T`."""
        a = np.eye(4)
        a[:3, :3] = _LPS_FROM_RAS @ self.direction_matrix * np.asarray(self.spacing[::-1])
        a[:3, 3] = _LPS_FROM_RAS @ np.asarray(self.origin)
        return a

    @classmethod
    def from_nifti_affine(cls, affine: np.ndarray, shape_xyz: tuple[int, ...]) -> VolumeGeometry:
        """The geometry of nibabel's `data[i, j, k]` (shape `shape_xyz`) placed by a RAS `affine`.

        Raises:
            ValueError: a zero-length axis or a sheared affine (its axes are not orthogonal).
        """
        affine = np.asarray(affine, dtype=np.float64)
        lps = _LPS_FROM_RAS @ affine[:3, :3]
        spacing_ijk = np.linalg.norm(lps, axis=0)
        if not np.all(spacing_ijk > 0):
            raise ValueError(f"the affine has a zero-length axis (voxel sizes {_mm(spacing_ijk)})")
        direction = lps / spacing_ijk
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise ValueError("the affine is sheared (its axes are not orthogonal)")
        return cls(shape=tuple(int(n) for n in shape_xyz[::-1]),
                   spacing=tuple(float(s) for s in spacing_ijk[::-1]),
                   origin=tuple(float(v) for v in _LPS_FROM_RAS @ affine[:3, 3]),
                   direction=tuple(float(v) for v in direction.ravel()))


@dataclass(frozen=True)
class GeometryTolerance:
    """How far an image and its label may differ and still count as the same grid.

    Attributes:
        spacing: relative difference per axis (nnU-Net accepts about 1e-3).
        origin: distance between the origins, as a share of the smallest voxel size: a hundredth of a
            voxel is far below what a viewer shows, and above float32 rounding in NIfTI headers.
        direction: largest difference of a direction cosine (1e-4 moves a point 250 mm away by 0.025 mm).
    """

    spacing: float = 1e-3
    origin: float = 1e-2
    direction: float = 1e-4


def check_pair(image: VolumeGeometry, label: VolumeGeometry, label_path: object,
               tol: GeometryTolerance = GeometryTolerance()) -> list[str]:
    """How a label volume's grid differs from its image's, one message per kind of difference.

    Args:
        image, label: the two geometries.
        label_path: named at the start of each message.
        tol: the tolerances.

    Returns:
        Messages such as "label/c1.nii.gz: spacing 1×1×3 mm (z, y, x), image 1×1×2.5 mm"; [] when
        shape, spacing, origin and direction agree. The trainer raises the first, the doctor lists all.
    """
    out = []
    if tuple(image.shape) != tuple(label.shape):
        out.append(f"{label_path}: shape {_dims(label.shape)} (z, y, x), image {_dims(image.shape)}")
    if not np.allclose(label.spacing, image.spacing, rtol=tol.spacing, atol=0):
        out.append(f"{label_path}: spacing {_mm(label.spacing)} (z, y, x), image {_mm(image.spacing)}")
    shift = float(np.linalg.norm(np.subtract(label.origin, image.origin)))
    if shift > tol.origin * min(image.spacing):
        out.append(f"{label_path}: origin {_mm(label.origin, ', ')} (LPS), image "
                   f"{_mm(image.origin, ', ')}: {shift:.3g} mm apart")
    cosines = np.abs(label.direction_matrix - image.direction_matrix).max()
    if cosines > tol.direction:
        out.append(f"{label_path}: direction {_cosines(label)}, image {_cosines(image)} "
                   f"(axes i, j, k in LPS; cosines differ by up to {cosines:.3g})")
    return out


def _dims(shape: tuple[int, ...]) -> str:
    return "×".join(str(int(n)) for n in shape)


def _mm(values, sep: str = "×") -> str:
    return sep.join(f"{float(v):.6g}" for v in values) + " mm"


def _cosines(geometry: VolumeGeometry) -> str:
    cols = geometry.direction_matrix.T
    return "[" + "; ".join(" ".join(f"{v:.4g}" for v in col) for col in cols) + "]"
