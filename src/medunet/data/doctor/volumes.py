"""Volume checks: readable volumes and series, image/label geometry, label values, per-case
intensity ranges, spacing spread; every problem a finding, so the doctor lists them all at once."""
from __future__ import annotations

from collections import Counter

import numpy as np

from medunet.data.doctor.findings import _Scan, _listing, _rel
from medunet.data.doctor.masks import _labels, set_training_encoding
from medunet.data.pairs import check_one_kind
from medunet.data.volume_cache import AXIS_NAMES, volume_encoding
from medunet.data.volume_fingerprint import HU_AIR, RESAMPLE_TOLERANCE
from medunet.errors import DataError
from medunet.io.images import LabelFile
from medunet.io.volumes import check_pair, read_label_volume, read_volume

SCALE_SPREAD = 100.0  # per-case maxima further apart than this factor: intensities have no common scale


def report_mixed(scan: _Scan) -> bool:
    """An error when the dataset mixes 2D images and volumes (nothing more is read then)."""
    entries = [p for items in scan.items.values() for i in items for p in (i.image, i.label)]
    try:
        check_one_kind(scan.root, entries)
    except DataError as exc:
        scan.report.add("error", "", None, str(exc).removeprefix(f"{scan.root}: "), "mixed")
        return True
    return False


def read_volume_pair(item, scan: _Scan, try_read) -> None:
    """Read an image volume (file or DICOM series) and its label volume; unreadable files and
    geometry differences become errors, each difference its own."""
    image = try_read(read_volume, item.image, item.split, scan)
    label = try_read(read_label_volume, item.label, item.split, scan)
    if scan.decoded is not None:
        scan.decoded.update({p.resolve(): v for p, v in ((item.image, image), (item.label, label)) if v is not None})
    if image is not None:
        item.shape, item.dtype, item.geometry = image.array.shape, str(image.array.dtype), image.geometry
        item.intensity = (float(image.array.min()), float(image.array.max()))
        item.mean = float(image.array.mean(dtype=np.float64))
        item.blank = item.intensity[0] == item.intensity[1]
    if label is not None:
        item.label_file = LabelFile(path=label.path, values=label.array, lossy=False, palette=False)
    if image is None or label is None:
        return
    where = _rel(item.label, scan.root)
    problems = check_pair(image.geometry, label.geometry, where)
    for message in problems:
        scan.report.add("error", item.split, where, message.removeprefix(f"{where}: "), "geometry")
    if problems:
        scan.left_out.append((item.split, where, "its grid differs from its image's"))
        return
    item.usable = True


def check_volume_encoding(scan: _Scan) -> None:
    """What the label volumes' values mean, per split and for training; test values training lacks."""
    for name, items in scan.items.items():
        labels = _labels(items)
        if labels:
            try:
                scan.report.splits[name].masks = volume_encoding(labels).describe()
            except DataError as exc:
                scan.report.add("error", name, None, f"label volumes: {exc}", "encoding")
    if not set_training_encoding(scan, volume_encoding, lambda enc, labels: enc.describe(), "the label volumes"):
        return
    known = set(scan.training.values)
    for items in scan.items.values():
        for item in items:
            if item.usable and item.label_file is not None:
                extra = sorted(set(np.unique(item.label_file.values).tolist()) - known)
                if extra:
                    scan.report.add("error", item.split, _rel(item.label, scan.root),
                                    f"class ids {', '.join(map(str, extra[:8]))} are not in the training label "
                                    f"volumes ({scan.training.describe(why=False)})", "unrepresentable")


def check_volumes(scan: _Scan) -> None:
    """Per split: sizes, spacing spread and slice axes; per-case intensity ranges; blank volumes."""
    for name, items in scan.items.items():
        read = [i for i in items if i.geometry is not None]
        if not read:
            continue
        scan.report.splits[name].images = _describe(read)
        blank = [_rel(i.image, scan.root) for i in read if i.blank]
        if blank:
            scan.report.add("warning", name, None, f"{len(blank)} volume(s) hold one value only (blank): "
                            f"{_listing(blank)}", "blank")
    read = [i for items in scan.items.values() for i in items if i.geometry is not None]
    if read:
        _report_spacing(read, scan)
        _report_intensity(read, scan)


def _describe(items) -> str:
    """"12 volumes int16, 12–40 × 20–512 × 24–512 voxels (z, y, x), spacing 3 × 0.7 × 0.7 mm"."""
    shapes = np.array([i.shape for i in items])
    spacing = np.array([i.geometry.spacing for i in items])
    dtypes = ", ".join(f"{n} {d}" if len(set(i.dtype for i in items)) > 1 else d
                       for d, n in Counter(i.dtype for i in items).most_common())
    return (f"{len(items)} volumes, {dtypes}, {' × '.join(_span(shapes[:, a], 'd') for a in range(3))} voxels "
            f"(z, y, x), spacing {' × '.join(_span(spacing[:, a], '.4g') for a in range(3))} mm")


def _report_spacing(items, scan: _Scan) -> None:
    """The slice axis of each case, and cases whose in-plane spacing differs (the plan resamples)."""
    axes = Counter(i.geometry.through_plane_axis for i in items)
    if len(axes) > 1:
        scan.report.add("info", "", None, "the through-plane axis (largest spacing) differs between cases: "
                        + ", ".join(f"{AXIS_NAMES[a]} in {n}" for a, n in sorted(axes.items()))
                        + "; each case is sliced along its own (or give --slice-axis)", "spacing")
    in_plane = np.array([[s for a, s in enumerate(i.geometry.spacing) if a != i.geometry.through_plane_axis]
                         for i in items])
    off = np.abs(in_plane / np.median(in_plane, axis=0) - 1).max(axis=1)
    if (off > RESAMPLE_TOLERANCE).any():
        scan.report.add("info", "", None, f"in-plane spacing differs between cases ({_span(in_plane[:, 0], '.4g')} × "
                        f"{_span(in_plane[:, 1], '.4g')} mm; {int((off > RESAMPLE_TOLERANCE).sum())} case(s) more than "
                        f"{RESAMPLE_TOLERANCE:.0%} off the median): training resamples every case to the median "
                        "(--spacing off keeps each grid)", "spacing")


def _report_intensity(items, scan: _Scan) -> None:
    """Per-case minimum and maximum; a warning when the scales differ by orders of magnitude."""
    low = np.array([i.intensity[0] for i in items])
    high = np.array([i.intensity[1] for i in items])
    scan.report.add("info", "", None, f"intensity per case: minimum {_span(low, '.4g')}, maximum "
                    f"{_span(high, '.4g')}", "intensity")
    positive = high[high > 0]
    if positive.size and positive.max() > SCALE_SPREAD * max(positive.min(), 1e-12) and not (low <= HU_AIR).any():
        scan.report.add("warning", "", None, f"the cases' intensity scales differ by a factor of "
                        f"{positive.max() / positive.min():.3g} (maximum {positive.min():.4g} to {positive.max():.4g}): "
                        "normalise per volume (the default for non-CT volumes); a fixed --window would not fit",
                        "intensity")


def _span(values: np.ndarray, fmt: str) -> str:
    lo, hi = np.min(values), np.max(values)
    return f"{lo:{fmt}}" if lo == hi else f"{lo:{fmt}}–{hi:{fmt}}"
