"""`fix`: a cleaned copy of a dataset — lossless images, masks as 0/255 or class ids."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from medunet.data.doctor.findings import Finding, Report, _Item, _Scan, _rel
from medunet.data.doctor.masks import _labels
from medunet.data.doctor.scan import _scan, diagnose
from medunet.data.encoding import detect_encoding, value_counts
from medunet.errors import DataError
from medunet.io.images import LabelFile, is_tiff, read_image, write_image, write_mask
from medunet.io.outputs import staged_folder

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fix(data_dir: Path, out: Path) -> Report:
    """Write a cleaned copy of a dataset to `out`; the original is never touched.

    Same layout; masks become 0/255 PNG (binary, near-binary, JPEG, 0/1 mixed with 0/255) or
    class ids 0..K-1 PNG; images stay as they are when PNG or TIFF and already named so, otherwise
    become PNG (8/16-bit grey, 8-bit RGB) or TIFF (anything else), stems kept. Orphans, unreadable
    files, size mismatches and masks that look like images are left out.

    Returns:
        The report of the cleaned copy, its first findings naming what was left out.

    Raises:
        DataError: `data_dir` is missing; `out` is non-empty, or inside `data_dir`.
    """
    data_dir, out = Path(data_dir), Path(out)
    _check_target(data_dir, out)
    scan = _scan(data_dir, quick=True)
    if any(item.volume for items in scan.items.values() for item in items):
        raise DataError(f"{data_dir}: --fix writes cleaned 2D images and masks; for volumes, correct the "
                        "files the report names (medunet doctor without --fix)")
    if not scan.folders:
        raise DataError(f"{data_dir}: {scan.report.first_error() or 'nothing to copy'}")
    with staged_folder(out, overwrite=False, what="cleaned copy") as stage:  # whole or not at all
        written = _write_copy(scan, stage)
    report = diagnose(out)
    notes = [Finding("warning", s, str(data_dir / p), f"left out of the copy: {why}", "left_out")
             for s, p, why in dict.fromkeys(scan.left_out)]
    notes.append(Finding("info", "", None, f"cleaned copy of {data_dir}: {written} pairs written", "fix"))
    report.findings[:0] = notes
    return report


def _write_copy(scan: _Scan, out: Path) -> int:
    """The usable pairs of `scan` into `out` in the same layout; returns how many were written."""
    to_mask = _mask_writer(scan)
    written = 0
    for name, items in scan.items.items():
        target = out if scan.report.layout == "single" else out / name
        (target / "image").mkdir(parents=True, exist_ok=True)
        (target / "label").mkdir(parents=True, exist_ok=True)
        for item in items:
            if item.usable:
                _copy_image(item, target / "image")
                write_mask(target / "label" / f"{item.stem}.png", to_mask(item.label_file))
                written += 1
            else:
                _leave_out_partner(item, scan)
    return written


def _leave_out_partner(item: _Item, scan: _Scan) -> None:
    """A pair goes as a whole: name the partner of the file that was left out."""
    image, label = _rel(item.image, scan.root), _rel(item.label, scan.root)
    out = {p for _, p, _ in scan.left_out}
    if image in out and label not in out:
        scan.left_out.append((item.split, label, f"its image {item.image.name} was left out"))
    elif label in out and image not in out:
        scan.left_out.append((item.split, image, f"its label {item.label.name} was left out"))


def _check_target(data_dir: Path, out: Path) -> None:
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such folder")
    src, dst = data_dir.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise DataError(f"{out}: the cleaned copy must go outside the dataset folder {data_dir}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not empty; give a new folder for the cleaned copy")


def _mask_writer(scan: _Scan):
    """LabelFile → uint8 mask to write: 0/255 for binary-like masks, class ids 0..K-1 otherwise.

    Binary-like: the pooled encoding has two classes, or the masks mix 0/1 with 0/255. Then a
    mask holding 0 and one other value keeps that value as foreground (a 0/1 mask among JPEG 0/255
    ones does not become empty); noisier masks are thresholded as the pooled encoding says.
    """
    labels = [lab for items in scan.items.values() for lab in _labels(items)]
    if not labels:
        return lambda label: label.values
    counts = [value_counts(lab.values)[0] for lab in labels]
    nonzero = {int(v) for values in counts for v in values if v != 0}
    mixed = {1, 255} <= nonzero and all(len(v) <= 2 and v[0] == 0 for v in counts)
    try:
        enc = None if mixed else detect_encoding(labels)
    except DataError as exc:
        raise DataError(f"{scan.root}: cannot clean the masks: {exc}") from None
    if enc is not None and enc.n_classes > 2:
        return lambda label: enc.encode(label.values, label.path)

    def binarise(label: LabelFile) -> np.ndarray:
        values = value_counts(label.values)[0]
        if enc is None or (len(values) <= 2 and values[0] == 0):
            return ((label.values != 0) * 255).astype(np.uint8)
        return enc.encode(label.values, label.path) * np.uint8(255)
    return binarise


def _copy_image(item: _Item, folder: Path) -> None:
    """Keep a PNG/TIFF as it is (its tags, e.g. pixel spacing, survive); convert anything else."""
    suffix = item.image.suffix.lower()
    if item.kind != "grey saved as RGB" and _format_matches(item.image, suffix):
        shutil.copyfile(item.image, folder / f"{item.stem}{suffix}")
        return
    image = read_image(item.image)
    if item.kind == "grey saved as RGB":
        image = np.ascontiguousarray(image[..., 0])
    png = image.dtype == np.uint8 or (image.dtype == np.uint16 and image.ndim == 2)
    write_image(folder / f"{item.stem}{'.png' if png else '.tif'}", image)


def _format_matches(path: Path, suffix: str) -> bool:
    if suffix not in (".png", ".tif", ".tiff"):
        return False
    if suffix != ".png":
        return is_tiff(path)
    with open(path, "rb") as f:
        return f.read(8) == _PNG_MAGIC
