"""The fingerprint of a volume dataset: what the plan's volume choices come from.

Per case: shape, spacing, the through-plane axis (largest spacing), slices along the slice axis,
and the intensity range; for the dataset: whether it is CT, the foreground intensity statistics
(nnU-Net's CT normalisation uses them), and the class statistics of `fingerprint` measured on
slices (a sample of at most MAX_SLICES), in pixels of the slices' own grid.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from medunet.data.cache import RawSplit
from medunet.data.encoding import LabelEncoding
from medunet.data.fingerprint import Fingerprint, _class_stats, _intensity, _min_median_max
from medunet.data.volume_cache import in_plane, slice_axis, to_slices
from medunet.config import DataConfig

MAX_SLICES = 1000       # slices measured for the class statistics (a seeded sample beyond)
HU_AIR = -900.0         # a minimum at or below this looks like CT in Hounsfield units (air: -1000)
RESAMPLE_TOLERANCE = 0.05  # a case whose in-plane spacing is more than 5% off the median is resampled


@dataclass(frozen=True)
class VolumeStats:
    """Per-case geometry and intensity of a volume dataset (train and validation cases).

    Attributes:
        shapes: (Z, Y, X) voxels per case.
        spacings: (sz, sy, sx) mm per case.
        axes: the array axis each case is sliced along (its through-plane axis unless one is given).
        slices: slices per case along that axis.
        in_plane: (row, column) mm of each case's slices.
        n_slices, n_validation_slices: slices of all cases, of the validation cases.
        minima, maxima: intensity range per case (as stored: HU for CT).
        modalities: DICOM Modality per case ("" for files).
        ct: whether the dataset is CT (DICOM says so, or the intensities look like HU), and why.
    """

    shapes: list[tuple[int, int, int]]
    spacings: list[tuple[float, float, float]]
    axes: list[int]
    slices: list[int]
    in_plane: list[tuple[float, float]]
    n_slices: int
    n_validation_slices: int
    minima: list[float]
    maxima: list[float]
    modalities: list[str]
    ct: bool
    ct_reason: str

    def axis_counts(self) -> dict[int, int]:
        return dict(sorted(Counter(self.axes).items()))


def volume_fingerprint(raw: RawSplit, encoding: LabelEncoding, n_validation: int = 0, n_test: int = 0,
                       slice_axis_setting: int | str | None = None, seed: int = 0) -> Fingerprint:
    """Measure a volume split (`RawSplit` of Volumes, validation cases last; not changed).

    Args:
        raw: the train and validation cases the plan is for.
        encoding: how the label values map to classes.
        n_validation: how many of the cases (the last ones) are validation cases.
        n_test: test cases, for the record.
        slice_axis_setting: `DataConfig.slice_axis` (None: each case's through-plane axis).
        seed: for the samples of slices and voxels.
    """
    rng = np.random.default_rng(seed)
    cfg = DataConfig(slice_axis=slice_axis_setting)
    volumes = raw.images
    axes = [slice_axis(v.geometry, cfg) for v in volumes]
    sizes = [in_plane(v.geometry.shape, a) for v, a in zip(volumes, axes)]
    slices = [int(v.geometry.shape[a]) for v, a in zip(volumes, axes)]
    encoded = (encoding.encode(lab.values, lab.path) for lab in raw.labels)  # one case at a time
    flat_images = [v.array.reshape(len(v.array), -1) for v in volumes]  # (Z, Y·X): _intensity's grey 2D
    minima = [float(v.array.min()) for v in volumes]
    modalities = [v.source.dicom.modality if v.source.dicom is not None else "" for v in volumes]
    ct, why = _is_ct(minima, modalities)
    stats = VolumeStats(
        shapes=[tuple(int(n) for n in v.geometry.shape) for v in volumes],
        spacings=[tuple(float(s) for s in v.geometry.spacing) for v in volumes],
        axes=axes, slices=slices, in_plane=[in_plane(v.geometry.spacing, a) for v, a in zip(volumes, axes)],
        n_slices=int(sum(slices)), n_validation_slices=int(sum(slices[len(slices) - n_validation:])) if n_validation else 0,
        minima=minima, maxima=[float(v.array.max()) for v in volumes], modalities=modalities, ct=ct, ct_reason=why)
    sampled = _sample_slices(raw, encoding, axes, rng)
    return Fingerprint(
        n_images=len(volumes), n_validation=n_validation, n_test=n_test, channels=1,
        height=_min_median_max([h for h, _ in sizes]), width=_min_median_max([w for _, w in sizes]),
        dtype=str(volumes[0].array.dtype),
        spacing=tuple(float(v) for v in np.median(stats.in_plane, axis=0)),  # type: ignore[arg-type]
        intensity=_intensity(flat_images, [None] * len(volumes), rng),
        intensity_foreground=_intensity(flat_images, ((lab > 0).reshape(len(lab), -1) for lab in encoded), rng),
        encoding=encoding.describe(why=False),
        classes=[_class_stats(sampled, c, encoding.values[c]) for c in range(1, encoding.n_classes)],
        volumes=stats)


def _sample_slices(raw: RawSplit, encoding: LabelEncoding, axes: list[int],
                   rng: np.random.Generator) -> list[np.ndarray]:
    """At most MAX_SLICES label slices (class indices), drawn evenly over all slices of all cases."""
    index = [(i, k) for i, (lab, a) in enumerate(zip(raw.labels, axes)) for k in range(lab.values.shape[a])]
    if len(index) > MAX_SLICES:
        index = [index[j] for j in np.sort(rng.permutation(len(index))[:MAX_SLICES])]
    chosen: dict[int, list[int]] = {}
    for i, k in index:
        chosen.setdefault(i, []).append(k)
    out = []
    for i, ks in chosen.items():
        lab = raw.labels[i]
        out += list(to_slices(encoding.encode(lab.values, lab.path), axes[i])[ks])  # copies of the slices only
    return out


def _is_ct(minima: list[float], modalities: list[str]) -> tuple[bool, str]:
    """CT when DICOM Modality says so for every DICOM case, else when most cases' minimum is air in HU."""
    dicom = [m for m in modalities if m]
    if dicom:
        n_ct = sum(m == "CT" for m in dicom)
        return n_ct == len(dicom), f"DICOM Modality CT in {n_ct} of {len(dicom)} series"
    hu = sum(m <= HU_AIR for m in minima)
    return hu * 2 > len(minima), f"minimum ≤ {HU_AIR:g} (air in HU) in {hu} of {len(minima)} cases"
