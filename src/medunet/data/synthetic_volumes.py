"""Synthetic CT-like volumes: the data of ``medunet demo --volumes`` (nothing is downloaded).

A case is a small neck-like CT volume in Hounsfield units, anisotropic as CT is (3 mm slices,
1.5 mm pixels): air around an elliptic body whose outline drifts from slice to slice, a fat rim,
muscle, a vertebra with its canal, and two glands. The label volume has class ids: 1 the glands
(hypodense, about 0 HU), 2 lesions inside them (about 70 HU, muscle's level, so a global threshold
fails: context tells them apart). Everything is a smooth 3D shape, so neighbouring slices agree and
2.5D context helps. Noise (sigma NOISE_HU) and a slow texture make single voxels ambiguous.

Layout::

    ROOT/<split>/image/case_001.nii.gz     int16 HU
    ROOT/<split>/label/case_001.nii.gz     uint8 class ids 0, 1, 2
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage

from medunet.io.nifti import write_nifti
from medunet.io.volume_geometry import VolumeGeometry

SHAPE = (24, 96, 96)               # (Z, Y, X) voxels
SPACING = (3.0, 1.5, 1.5)          # mm: CT slices thicker than its pixels
NOISE_HU = 18.0
LESION_FRACTION = 0.9              # share of cases with lesions
DEFAULT_VOLUME_COUNTS = {"train": 16, "validation": 4, "test": 4}


def make_volume(rng: np.random.Generator, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """One case: image `(Z, Y, X)` int16 HU and labels `(Z, Y, X)` uint8 (0, 1 gland, 2 lesion)."""
    nz, ny, nx = shape
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    drift = 0.06 * np.sin(np.pi * z * rng.uniform(0.5, 1.0) + rng.uniform(0, 2 * np.pi))
    ry, rx = rng.uniform(0.62, 0.72), rng.uniform(0.78, 0.88)
    body = ((y - drift) / ry) ** 2 + ((x + drift) / rx) ** 2
    image = np.full(shape, -1000.0, np.float32)
    image[body < 1] = -100.0                                        # fat
    image[body < 0.8] = rng.uniform(45, 60)                         # muscle
    spine_y = 0.35 + drift
    bone = (y - spine_y) ** 2 + x ** 2 < 0.16 ** 2
    image[bone] = rng.uniform(500, 800)
    image[(y - spine_y - 0.2) ** 2 + x ** 2 < 0.06 ** 2] = 20.0     # canal
    labels = np.zeros(shape, np.uint8)
    for side in (-1, 1):
        cy, cx = rng.uniform(-0.25, -0.05), side * rng.uniform(0.36, 0.44)
        az, ay, ax = rng.uniform(0.55, 0.85), rng.uniform(0.2, 0.26), rng.uniform(0.17, 0.22)
        gland = ((z - rng.uniform(-0.2, 0.2)) / az) ** 2 + ((y - cy - drift) / ay) ** 2 + ((x - cx) / ax) ** 2 < 1
        labels[gland] = 1
        if rng.random() < LESION_FRACTION:
            inside = ndimage.distance_transform_edt(gland, sampling=SPACING) > 5.0   # a rim of gland around it
            if inside.any():
                centre = np.argwhere(inside)[rng.integers(int(inside.sum()))]
                radius = rng.uniform(8.0, 12.0)                      # mm
                zz, yy, xx = np.ogrid[:nz, :ny, :nx]
                ball = (((zz - centre[0]) * SPACING[0]) ** 2 + ((yy - centre[1]) * SPACING[1]) ** 2
                        + ((xx - centre[2]) * SPACING[2]) ** 2) < radius ** 2
                labels[ball & gland] = 2
    image[labels == 1] = rng.uniform(-5, 10)
    image[labels == 2] = rng.uniform(65, 80)
    image = ndimage.gaussian_filter(image, (0.4, 0.7, 0.7))        # partial volume
    texture = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), (2, 6, 6))
    image += 5.0 * texture / max(float(texture.std()), 1e-6) + rng.normal(0, NOISE_HU, shape).astype(np.float32)
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16), labels


def volume_geometry(shape: tuple[int, int, int] = SHAPE) -> VolumeGeometry:
    """Axial LPS-aligned geometry of a case (rows run anterior → posterior, as CT stores them)."""
    return VolumeGeometry(shape=shape, spacing=SPACING, origin=(-72.0, -72.0, -36.0),
                          direction=tuple(np.eye(3).ravel()))


def make_volume_dataset(root: Path, counts: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write the synthetic volume dataset under `root` (default 16 train, 4 validation, 4 test
    cases); each case is seeded from (seed, split, index), so the output is deterministic."""
    root = Path(root)
    geometry = volume_geometry()
    for split, n in (DEFAULT_VOLUME_COUNTS if counts is None else counts).items():
        for sub in ("image", "label"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(1, int(n) + 1):
            rng = np.random.default_rng([int(seed), zlib.crc32(split.encode()), i])
            image, labels = make_volume(rng)
            name = f"case_{i:03d}.nii.gz"
            write_nifti(root / split / "image" / name, image, None, geometry, intent="none")
            write_nifti(root / split / "label" / name, labels, None, geometry)
    return root
