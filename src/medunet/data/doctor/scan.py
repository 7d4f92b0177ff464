"""One pass over a dataset: layout, pairing by stem, reading every file; then the checks."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medunet.data.doctor.findings import Report, SplitSummary, _Item, _Scan, _listing, _rel
from medunet.data.doctor.images import _check_duplicates, _check_images, _check_outliers
from medunet.data.doctor.masks import _check_encoding, _check_masks
from medunet.data.doctor.volumes import check_volume_encoding, check_volumes, read_volume_pair, report_mixed
from medunet.data.packed import ImageInfo, PackedLabel
from medunet.data.pairs import SPLITS, group_by_stem, is_image_file, is_volume_entry, looks_grouped, natural_key
from medunet.errors import DataError
from medunet.io.images import IMAGE_SUFFIXES, read_image, read_label

_FOREIGN = {".npy": "NumPy", ".npz": "NumPy", ".jp2": "JPEG 2000", ".webp": "WebP"}
_MHD_DATA = (".raw", ".zraw")  # the voxels of a .mhd header, read with it


def diagnose(data_dir: Path, *, quick: bool = False) -> Report:
    """Check a dataset folder and report every problem; never raises on bad data.

    Args:
        data_dir: DATA with train/ (validation/, test/ optional), each holding image/ and label/;
            or one split folder holding image/ and label/.
        quick: only the checks that would stop training (layout, pairing, readability, sizes,
            mask encoding); what the trainer runs first.

    Returns:
        Report: findings (errors, warnings, info), per-split summaries and the mask encoding.
    """
    return _scan(Path(data_dir), quick=quick).report


def check_and_read(data_dir: Path, splits: tuple[str, ...], pixels: bool = True) -> tuple[Report, dict[Path, Any]]:
    """The quick check of `splits` only, keeping what it decoded so training reads no file twice.

    With `pixels` False (a dataset larger than RAM, cached on disk) one file at a time is decoded
    and let go: only each image's `ImageInfo` and each mask compressed (`PackedLabel`) are kept.

    Returns:
        The report, and {resolved path: image array or LabelFile} of every file it could read
        (`ImageInfo` or `PackedLabel` without `pixels`).
    """
    scan = _scan(Path(data_dir), quick=True, splits=splits, keep=True, packed=not pixels)
    return scan.report, scan.decoded or {}


def _scan(root: Path, *, quick: bool, splits: tuple[str, ...] | None = None, keep: bool = False,
          packed: bool = False) -> _Scan:
    report = Report(data_dir=str(root), quick=quick)
    folders = _layout(root, report)
    if splits is not None and report.layout != "single":
        folders = {name: folder for name, folder in folders.items() if name in splits}
    scan = _Scan(root, report, folders, {}, decoded={} if keep else None, packed=packed)
    with _quiet_readers():
        for name, folder in scan.folders.items():
            try:
                scan.items[name] = _pair_split(name, folder, scan)
            except OSError as exc:  # a folder that cannot be listed (permissions, a vanished mount)
                report.add("error", name, _rel(folder, root) + "/", f"cannot list: {exc}", "layout")
                scan.items[name] = []
        if report_mixed(scan):
            return scan
        for name in scan.folders:
            for item in scan.items[name]:
                _read_pair(item, scan)
        volumes = any(item.volume for items in scan.items.values() for item in items)
        (check_volume_encoding if volumes else _check_encoding)(scan)
        if not quick:
            for check in ((check_volumes, _check_masks) if volumes else
                          (_check_images, _check_masks, _check_duplicates, _check_outliers)):
                check(scan)
            _check_grouping(scan)
    for name, items in scan.items.items():
        report.splits[name].n_readable = sum(i.usable for i in items)
    return scan


def _check_grouping(scan: _Scan) -> None:
    """Stems like slices of a few patients, and no validation/ folder: training's per-file split
    would put one patient on both sides unless --group-by names the groups."""
    if "train" not in scan.items or "validation" in scan.items:
        return
    prefixes = looks_grouped([item.stem for item in scan.items["train"]])
    if prefixes:
        scan.report.add("warning", "train", None,
                        f"file names look like slices or frames of {len(prefixes)} sources ({_listing(prefixes)}); "
                        "the validation split is drawn per file, so one source can sit on both sides: "
                        "train with --group-by REGEX (e.g. '^[^_]+') to keep each source whole, "
                        "or add a validation/ folder", "grouping")


def _layout(root: Path, report: Report) -> dict[str, Path]:
    """The split folders to check, by name; problems with the layout become findings."""
    if not root.is_dir():
        report.add("error", "", None, f"{root}: no such folder", "layout")
        return {}
    splits = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if not splits and ((root / "image").is_dir() or (root / "label").is_dir()):
        report.layout = "single"
        return {root.name or str(root): root}
    others = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                    and p.name not in SPLITS)
    for name in others:
        hint = _split_hint(name)
        report.add("warning" if hint else "info", "", f"{name}/",
                   f"not a split medunet reads (train, validation, test){hint}", "layout")
    if "train" not in splits:
        where = "" if splits else "; or image/ and label/ directly in it"
        report.add("error", "", None, "no train/ folder (expected train/image and train/label"
                   f"{where})", "layout")
    return splits


def _split_hint(name: str) -> str:
    low = name.lower()
    for split, aliases in (("validation", ("val", "valid", "dev", "validate")),
                           ("test", ("testing", "tests", "eval")), ("train", ("training", "trn"))):
        if low in aliases or (low != name and low == split):
            return f": rename it to {split}/"
    return ""


def _pair_split(name: str, folder: Path, scan: _Scan) -> list[_Item]:
    """Pair image/ with label/ by stem; orphans, duplicate stems and ignored files become findings."""
    summary = scan.report.splits.setdefault(name, SplitSummary(name))
    images = _by_stem(name, folder, "image", scan)
    labels = _by_stem(name, folder, "label", scan)
    summary.n_images, summary.n_labels = len(images or {}), len(labels or {})
    if images is None or labels is None:
        return []
    _report_orphans(name, images, labels, scan)
    extra = sorted(p.name + "/" for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and p.name not in ("image", "label") and not (p.name in SPLITS and folder == scan.root))
    if extra and scan.report.layout == "splits":
        scan.report.add("info", name, _rel(folder, scan.root) + "/",
                        f"not read: {', '.join(extra)} (only image/ and label/ are)", "layout")
    items = [_Item(name, stem, paths[0], labels[stem][0], volume=is_volume_entry(paths[0]))
             for stem, paths in images.items()
             if stem in labels and len(paths) == 1 and len(labels[stem]) == 1]
    summary.n_pairs = len(items)
    return items


def _by_stem(split: str, folder: Path, sub: str, scan: _Scan) -> dict[str, list[Path]] | None:
    """Files of folder/sub grouped by stem; None when the folder is missing."""
    where = folder / sub
    if not where.is_dir():
        found = [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
        alias = [n for n in found if n.lower() in _ALIASES[sub]]
        hint = f"; rename {alias[0]}/ to {sub}/" if alias else ""
        scan.report.add("error", split, _rel(where, scan.root) + "/", f"no {sub}/ folder{hint}", "layout")
        return None
    _report_ignored(split, where, scan)
    try:
        by_stem = group_by_stem(where)
    except DataError:
        scan.report.add("error", split, _rel(where, scan.root) + "/",
                        f"no images ({', '.join(IMAGE_SUFFIXES)})", "layout")
        return {}
    for stem, paths in by_stem.items():
        if len(paths) > 1:
            names = " and ".join(p.name for p in paths)
            scan.report.add("error", split, _rel(paths[0], scan.root),
                            f"{names} share the stem {stem!r} in {sub}/: which one pairs is ambiguous",
                            "duplicate_stem")
            scan.left_out += [(split, _rel(p, scan.root), "shares its stem with another file")
                              for p in paths]
    return by_stem


_ALIASES = {"image": ("images", "img", "imgs", "input", "inputs", "x", "raw"),
            "label": ("labels", "mask", "masks", "gt", "ground_truth", "groundtruth", "seg",
                      "segmentation", "annotations", "y", "target", "targets")}


def _report_ignored(split: str, folder: Path, scan: _Scan) -> None:
    """Files in image/ or label/ that the readers skip: other suffixes, sub-folders."""
    skipped = sorted((p for p in folder.iterdir() if not p.name.startswith(".")
                      and not (is_image_file(p) or is_volume_entry(p) or p.suffix.lower() in _MHD_DATA)),
                     key=lambda p: natural_key(p.name))
    if not skipped:
        return
    kinds = sorted({_FOREIGN[p.suffix.lower()] for p in skipped if p.suffix.lower() in _FOREIGN})
    hint = (f" ({', '.join(kinds)} files are not read: convert each 2D slice to TIFF or PNG)"
            if kinds else "")
    if any(p.suffix.lower() == ".dcm" for p in skipped):
        hint += " (DICOM files are read as series: put each series in a folder of its own, image/<case>/)"
    names = [p.name + ("/" if p.is_dir() else "") for p in skipped]
    scan.report.add("warning", split, _rel(folder, scan.root) + "/",
                    f"{len(names)} entries ignored (not {'/'.join(IMAGE_SUFFIXES)} images, volumes or DICOM series folders): "
                    f"{_listing(names)}{hint}", "ignored")


def _report_orphans(split: str, images: dict, labels: dict, scan: _Scan) -> None:
    lonely_images = [paths[0] for stem, paths in images.items() if stem not in labels]
    lonely_labels = [paths[0] for stem, paths in labels.items() if stem not in images]
    hint = _naming_hint(lonely_images, lonely_labels)
    for path in lonely_images:
        scan.report.add("error", split, _rel(path, scan.root), f"image without a label{hint}", "orphan")
    for path in lonely_labels:
        scan.report.add("error", split, _rel(path, scan.root), f"label without an image{hint}", "orphan")
    scan.left_out += [(split, _rel(p, scan.root), "no partner with the same stem")
                      for p in lonely_images + lonely_labels]


def _naming_hint(images: Sequence[Path], labels: Sequence[Path]) -> str:
    """", labels seem named <stem>_mask" when orphan labels are orphan images' stems plus a suffix."""
    stems = {p.stem for p in images}
    extras = Counter(lab.stem[len(s):] for lab in labels for s in stems
                     if lab.stem.startswith(s) and len(lab.stem) > len(s))
    extras += Counter(img.stem[len(lab.stem):] for img in images for lab in labels
                      if img.stem.startswith(lab.stem) and len(img.stem) > len(lab.stem))
    if extras:
        extra, n = extras.most_common(1)[0]
        if n >= max(1, len(labels) // 2):
            verb = "names differ" if n > 1 else "name differs"
            return (f" (files pair by name without suffix; {n} {verb} only by {extra!r}: "
                    "give image and label the same name)")
    folded = {p.stem.lower() for p in images} & {p.stem.lower() for p in labels}
    if folded:
        return " (names differ only in upper/lower case; pairing is case-sensitive)"
    return " (files pair by name without suffix)"


def _read_pair(item: _Item, scan: _Scan) -> None:
    """Read image and label, note what they are; unreadable files and size mismatches become errors."""
    if item.volume:
        read_volume_pair(item, scan, _try_read)
        return
    image = _try_read(read_image, item.image, item.split, scan)
    label = _try_read(read_label, item.label, item.split, scan)
    if image is not None:
        item.shape, item.dtype = image.shape, str(image.dtype)
        item.kind = _kind(image)
        item.mean = float(image.mean(dtype=np.float64))
        item.blank = bool(image.min() == image.max())
        item.digest = _digest(image)
    if label is not None:
        item.label_digest = _digest(label.values)
        item.label_file = PackedLabel(label) if scan.packed else label
    _keep(item, image, item.label_file, scan)
    if image is None or label is None:
        return
    if image.shape[:2] != label.values.shape:
        (ih, iw), (lh, lw) = image.shape[:2], label.values.shape
        turned = " (rotated or transposed?)" if (lh, lw) == (iw, ih) else ""
        scan.report.add("error", item.split, _rel(item.label, scan.root),
                        f"label is {lw}×{lh} (W×H), image {item.image.name} is {iw}×{ih}{turned}", "size")
        scan.left_out.append((item.split, _rel(item.label, scan.root), "size differs from its image"))
        return
    if item.digest == item.label_digest and not item.blank:
        scan.report.add("error", item.split, _rel(item.label, scan.root),
                        f"label holds the same pixels as its image {item.image.name}: "
                        "the image was saved as the mask?", "label_is_image")
        scan.left_out.append((item.split, _rel(item.label, scan.root), "a copy of its image"))
        return
    item.usable = True


def _keep(item: _Item, image: np.ndarray | None, label: Any, scan: _Scan) -> None:
    """Into `scan.decoded` (when kept): the arrays, or in a packed scan the image's `ImageInfo`."""
    if scan.decoded is None:
        return
    if image is not None:
        scan.decoded[item.image.resolve()] = (ImageInfo(image.shape, image.dtype, item.kind == "RGB")
                                              if scan.packed else image)
    if label is not None:
        scan.decoded[item.label.resolve()] = label


def _try_read(reader, path: Path, split: str, scan: _Scan):
    """reader(path), or None with an error finding carrying the reader's reason."""
    with _captured() as notes:
        try:
            result = reader(path)
        except (DataError, OSError) as exc:
            reason = str(exc).removeprefix(f"{path}: ")
            scan.report.add("error", split, _rel(path, scan.root), reason, "unreadable")
            scan.left_out.append((split, _rel(path, scan.root), "cannot be read"))
            return None
    for note in notes[:1]:
        scan.report.add("info", split, _rel(path, scan.root), f"read, with a reader warning: {note}",
                        "reader_warning")
    return result


def _kind(image: np.ndarray) -> str:
    if image.ndim == 2:
        return "grey"
    same = np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])
    return "grey saved as RGB" if same else "RGB"


def _digest(array: np.ndarray) -> str:
    h = hashlib.sha1(np.ascontiguousarray(array).tobytes())
    h.update(f"{array.shape}{array.dtype}".encode())
    return h.hexdigest()


@contextlib.contextmanager
def _quiet_readers() -> Iterator[None]:
    """tifffile logs every bad tag; the doctor reports the files itself, so keep the console clean."""
    tiff_logger = logging.getLogger("tifffile")
    level = tiff_logger.level
    tiff_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        tiff_logger.setLevel(level)


@contextlib.contextmanager
def _captured() -> Iterator[list[str]]:
    """Warnings raised while reading one file (Pillow's "Truncated File Read", 16-bit colour PNG...)."""
    notes: list[str] = []
    handler = _ListHandler(notes)
    io_logger = logging.getLogger("medunet.io.images")
    io_logger.addHandler(handler)
    propagate, io_logger.propagate = io_logger.propagate, False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield notes
        notes += [str(w.message).strip() for w in caught]
    finally:
        io_logger.removeHandler(handler)
        io_logger.propagate = propagate


class _ListHandler(logging.Handler):
    def __init__(self, notes: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.notes = notes

    def emit(self, record: logging.LogRecord) -> None:
        self.notes.append(record.getMessage().split(": ", 1)[-1])
