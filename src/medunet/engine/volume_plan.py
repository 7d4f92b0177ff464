"""The plan's choices for volume datasets: slice axis, in-plane spacing, normalisation, 2.5D context.

Each rule fits in one line, stated in the units a user knows (mm, slices, HU):

- slice axis: each case's through-plane axis, the one with the largest spacing (Z on a tie);
- in-plane spacing: resample to the cases' median only when some case differs from it by more
  than RESAMPLE_TOLERANCE (else each case keeps its grid: no interpolation at all);
- normalisation: CT (DICOM Modality, or a minimum at air in HU) → nnU-Net's scheme, the dataset's
  foreground 0.5/99.5 percentiles as clip and its foreground mean/std; anything else → z-score
  per volume (MR intensities have no absolute scale);
- context: CONTEXT slices either side as extra channels (hippocampus benchmark, BENCHMARKS.md);
- crop, foreground crops, input scale: the 2D rules, on the slices at the network's spacing.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from medunet.config import DataConfig
from medunet.data.fingerprint import Fingerprint
from medunet.data.volume_cache import AXIS_NAMES
from medunet.data.volume_fingerprint import RESAMPLE_TOLERANCE
from medunet.errors import ConfigError

CONTEXT = 1                # default slices either side


def plan_volume_grid(fp: Fingerprint, data: DataConfig, choose) -> tuple[DataConfig, Fingerprint]:
    """Slice axis and in-plane spacing; returns the settings and `fp` with the slice sizes and
    class statistics at the chosen spacing, for the 2D rules that follow."""
    if data.crop != "random":
        raise ConfigError(f"--crop-mode {data.crop} is for 2D images; volumes train on random crops of slices")
    if data.class_names is not None and len(data.class_names) != len(fp.classes):
        raise ConfigError(f"--class-names gives {len(data.class_names)} name(s) for the {len(fp.classes)} "
                          f"foreground class(es) of the labels ({fp.encoding})")
    v = fp.volumes
    counts = ", ".join(f"axis {a} ({AXIS_NAMES[a]}) in {n} of {len(v.axes)} cases" for a, n in v.axis_counts().items())
    axis = choose("slice axis", data.slice_axis, "through-plane",
                  f"each case along its largest spacing (ties: Z): {counts}")
    spacing = _spacing(np.asarray(v.in_plane, dtype=np.float64), data.target_spacing, choose)
    data = replace(data, slice_axis=axis, target_spacing=spacing)
    if not isinstance(spacing, tuple):
        return data, fp
    factor = float(np.median(np.asarray(v.in_plane) / np.asarray(spacing)))
    scale = (lambda t: tuple(max(1, round(n * factor)) for n in t))
    classes = [replace(c, area=c.area * factor ** 2, extent=c.extent * factor, extent_p90=c.extent_p90 * factor,
                       thickness=c.thickness * factor) for c in fp.classes]
    return data, replace(fp, height=scale(fp.height), width=scale(fp.width), classes=classes)


def _spacing(in_plane: np.ndarray, requested, choose) -> tuple[float, float] | str:
    median = tuple(round(float(s), 6) for s in np.median(in_plane, axis=0))
    spread = f"{_range(in_plane[:, 0])} × {_range(in_plane[:, 1])} mm"
    if requested == "median":
        return choose("in-plane spacing", median, median, "")  # recorded as the user's: they asked for it
    off = np.abs(in_plane / np.asarray(median) - 1).max(axis=1)
    if (off > RESAMPLE_TOLERANCE).any():
        return choose("in-plane spacing", requested, median,
                      f"cases differ ({spread}; {int((off > RESAMPLE_TOLERANCE).sum())} more than "
                      f"{RESAMPLE_TOLERANCE:.0%} off the median): each resampled to the median, outputs back to its grid")
    return choose("in-plane spacing", requested, "off",
                  f"every case within {RESAMPLE_TOLERANCE:.0%} of the median {median[0]:g} × {median[1]:g} mm: "
                  "each keeps its own grid (no interpolation)")


def normalisation(fp: Fingerprint) -> tuple[str, str]:
    """The normalisation of a volume dataset and why."""
    v = fp.volumes
    if v.ct:
        return "ct", (f"CT ({v.ct_reason}): clipped to the dataset's foreground 0.5–99.5% and z-scored "
                      "with its foreground mean and std, the same numbers for every case (nnU-Net's CT scheme)")
    return "zscore", (f"per volume: mean 0, standard deviation 1 over each case (not CT: {v.ct_reason}; "
                      f"per-case maximum {_range(np.asarray(v.maxima))})")


def plan_volume_input(fp: Fingerprint, data: DataConfig, choose) -> DataConfig:
    """The CT numbers (when the normalisation is "ct") and the 2.5D context."""
    if data.normalise == "ct" and data.ct_clip is None:
        stats = fp.intensity_foreground or fp.intensity
        data = replace(data, ct_clip=(stats["p0.5"], stats["p99.5"]), ct_stats=(stats["mean"], max(stats["std"], 1e-6)))
        choose("CT clip, mean, std", None, f"{stats['p0.5']:.4g}…{stats['p99.5']:.4g}, {stats['mean']:.4g} ± {stats['std']:.4g}",
               "of the training foreground voxels (all voxels when no label has foreground); stored in the checkpoint")
    slices = int(np.median(fp.volumes.slices))
    context = choose("context", data.context, min(CONTEXT, max(slices // 2, 0)),
                     f"{CONTEXT} slice(s) either side as extra input channels (edge slices repeated): the "
                     "neighbours show how a structure continues through the plane, for one wider first "
                     "convolution; BENCHMARKS.md compares 0, 1 and 2 on hippocampus")
    return replace(data, context=context)


def training_slices(fp: Fingerprint) -> int:
    return fp.volumes.n_slices - fp.volumes.n_validation_slices


def describe_volumes(fp: Fingerprint) -> list[str]:
    """The volume part of the fingerprint in a few lines (no file names)."""
    v = fp.volumes
    sp = np.asarray(v.spacings)
    lines = [f"volumes     {len(v.shapes)} cases, {v.n_slices} slices (per case {_range(np.asarray(v.slices))}); "
             f"spacing z {_range(sp[:, 0])}, y {_range(sp[:, 1])}, x {_range(sp[:, 2])} mm",
             f"intensity   per case: minimum {_range(np.asarray(v.minima))}, maximum {_range(np.asarray(v.maxima))}; "
             f"{'CT' if v.ct else 'not CT'} ({v.ct_reason})"]
    return lines


def _range(values: np.ndarray) -> str:
    lo, hi = float(np.min(values)), float(np.max(values))
    return f"{lo:.4g}" if math.isclose(lo, hi, rel_tol=1e-6) else f"{lo:.4g}–{hi:.4g}"
