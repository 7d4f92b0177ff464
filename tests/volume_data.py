"""Small volume datasets for the tests: NIfTI/NRRD/MHA files and DICOM series folders with their
label volumes, all synthetic (tests/volumes.py writes them with the libraries directly)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from medunet.io.volume_geometry import VolumeGeometry
from volumes import oblique_geometry, phantom, write_dicom_series, write_itk_file, write_nifti_file

SMALL = (10, 20, 24)  # (Z, Y, X): a few hundred slices of this train in seconds


def shifted_phantom(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`phantom` rolled by a seeded few voxels in-plane, so cases differ."""
    image, labels = phantom(shape, seed)
    shift = np.random.default_rng(seed).integers(-2, 3, 2)
    return (np.roll(image, tuple(shift), axis=(1, 2)), np.roll(labels, tuple(shift), axis=(1, 2)))


def write_case(folder: Path, stem: str, image: np.ndarray, labels: np.ndarray, geometry: VolumeGeometry,
               suffix: str = ".nii.gz") -> None:
    for sub, array in (("image", image), ("label", labels)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        path = folder / sub / f"{stem}{suffix}"
        if suffix in (".nii", ".nii.gz"):
            write_nifti_file(path, array, geometry)
        else:
            write_itk_file(path, array, geometry)


def volume_dataset(root: Path, counts: dict[str, int], shape: tuple[int, int, int] = SMALL,
                   geometry: VolumeGeometry | None = None, suffix: str = ".nii.gz", seed: int = 0) -> Path:
    """DATA/<split>/{image,label}/case_NN<suffix>: CT-like phantoms (int16 HU, classes 0, 1, 2)."""
    geometry = geometry or oblique_geometry(shape)
    n = 0
    for split, count in counts.items():
        for _ in range(count):
            n += 1
            image, labels = shifted_phantom(shape, seed + n)
            write_case(root / split, f"case_{n:02d}", image, labels, geometry, suffix)
    return root


def mr_series_dataset(root: Path, counts: dict[str, int], seed: int = 0) -> tuple[Path, list[dict]]:
    """MR-like DICOM series as a scanner writes them: file names and InstanceNumbers out of slice
    order, 5 mm slices 6.5 mm apart, and two grid sizes (20×24 at 0.9 mm, 24×28 at 0.75 mm pixels:
    the same field of view); labels are NIfTI files named after the series folders. Intensities are
    positive MR-like values (no HU): the plan must z-score per volume and resample in-plane.

    Returns:
        (DATA, one dict per series: folder, uids, sop_uids, geometry)."""
    series = []
    n = 0
    for split, count in counts.items():
        for _ in range(count):
            n += 1
            rows, cols, pixel = ((20, 24, 0.9), (24, 28, 0.75))[n % 2]
            base = oblique_geometry((9, rows, cols))
            geometry = replace(base, spacing=(6.5, pixel, pixel))
            image, labels = shifted_phantom((9, rows, cols), seed + n)
            mr = (np.where(labels == 2, 900, np.where(labels == 1, 500, 120)) * (1 + 0.1 * n)
                  + np.random.default_rng(n).normal(0, 30, labels.shape)).clip(0, 3000).astype(np.int16)
            folder = root / split / "image" / f"subject{n:02d}"
            info = write_dicom_series(folder, mr, geometry, seed=n, thickness=5.0, modality="MR",
                                      offsets=[6.5 * k for k in range(9)])
            (root / split / "label").mkdir(parents=True, exist_ok=True)
            write_nifti_file(root / split / "label" / f"subject{n:02d}.nii.gz", labels, geometry)
            series.append({**info, "folder": folder, "geometry": geometry})
    return root, series


def brain_like_dataset(root: Path, counts: dict[str, int], shape: tuple[int, int, int] = (16, 30, 30)) -> Path:
    """BraTS-like cases at a small size (the real ones are 240×240×155): float32 images whose
    background is not zero (a scanner offset of 80 plus noise), labels float32 with ids 0, 1, 2, 4
    (BraTS skips 3), RAS-aligned 1 mm voxels."""
    geometry = VolumeGeometry(shape=shape, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                              direction=(-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    n = 0
    for split, count in counts.items():
        for _ in range(count):
            n += 1
            _, labels = shifted_phantom(shape, n)
            brats = np.where(labels == 2, 4, labels).astype(np.float32)
            brats[(labels == 1) & (np.random.default_rng(n).random(shape) < 0.2)] = 2
            rng = np.random.default_rng(100 + n)
            image = (80 + 300 * (labels > 0) + 250 * (labels == 2) + rng.normal(0, 25, shape)).astype(np.float32)
            for sub, array in (("image", image), ("label", brats)):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
                write_nifti_file(root / split / sub / f"brats_{n:03d}.nii.gz", array, geometry, dtype=np.float32)
    return root
