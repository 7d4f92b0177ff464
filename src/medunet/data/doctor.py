"""The dataset doctor: every trap in a folder of images and masks, found before training.

`diagnose` reads a dataset (DATA/train|validation|test/{image,label}, or one split folder with
image/ and label/) and turns every problem into a `Finding`; it never raises on bad data.
`format_report` renders a `Report` as text. `fix` writes a cleaned copy: lossless images, masks as
0/255 or class-id PNGs, unusable files left out.

Checks (quick=True runs only the first four, the ones that stop training):
    layout and pairing: missing folders, orphans, duplicate stems, files the readers ignore;
    readability: each file the readers refuse, with their reason;
    sizes: image and label of a pair must agree;
    mask encoding: per file, per split and overall, in words; values a split's encoding cannot
        represent; masks that look like images; 0/1 mixed with 0/255;
    images: channels, bit depths, sizes, blank images, grey saved as RGB;
    masks: empty masks, class balance;
    duplicates by content (sha1 of decoded pixels + shape), also across splits (leakage);
    outliers: images far from the others in size or mean intensity (robust z-score > 4).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import shutil
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medunet.data.encoding import LabelEncoding, detect_encoding, value_counts
from medunet.data.pairs import SPLITS, group_by_stem, natural_key
from medunet.errors import DataError
from medunet.io.images import (IMAGE_SUFFIXES, LabelFile, is_tiff, read_image, read_label, write_image,
                               write_mask)
from medunet.io.outputs import staged_folder

logger = logging.getLogger(__name__)

LEVELS = ("error", "warning", "info")
MAX_NAMES = 10            # names shown in one message or report group before "and N more"
OUTLIER_Z = 4.0           # robust z-score beyond which an image is "far from the others"
MIN_FOR_OUTLIERS = 5      # fewer images than this: no statistics
# Errors about what mask values mean; a forced --label-mode (binary, classes) decides those itself.
ENCODING_CHECKS = ("image_like", "encoding", "unrepresentable")
_FOREIGN = {".dcm": "DICOM", ".nii": "NIfTI", ".gz": "NIfTI/gzip", ".nrrd": "NRRD", ".mha": "MetaImage",
            ".mhd": "MetaImage", ".npy": "NumPy", ".npz": "NumPy", ".jp2": "JPEG 2000", ".webp": "WebP"}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Finding:
    """One problem or fact about a dataset.

    Attributes:
        level: "error" (training or evaluation would fail or be wrong), "warning" (probably a
            mistake), or "info".
        split: the split it concerns ("train", ...; the folder name for a single split; "" for all).
        path: the file, relative to the dataset folder, or None for a whole split.
        message: what is wrong, in words, without the path.
        check: which check found it (groups findings in the text report).
    """

    level: str
    split: str
    path: str | None
    message: str
    check: str = ""


@dataclass
class SplitSummary:
    """Counts of one split. `class_share` maps a class name ("0", "255", "foreground") to its pixel share."""

    name: str
    n_images: int = 0
    n_labels: int = 0
    n_pairs: int = 0
    n_readable: int = 0
    images: str = ""
    masks: str = ""
    n_empty: int = 0
    class_share: dict[str, float] = field(default_factory=dict)


@dataclass
class Report:
    """What `diagnose` found: findings, per-split summaries, and the masks' encoding overall."""

    data_dir: str
    quick: bool = False
    layout: str = "splits"                 # "splits" (train/ ...) or "single" (image/, label/)
    findings: list[Finding] = field(default_factory=list)
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    encoding: str | None = None            # in words, for the labels training would use
    label_values: list[int] | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return not self.errors

    def add(self, level: str, split: str, path: str | None, message: str, check: str = "") -> None:
        self.findings.append(Finding(level, split, path, message, check))

    def first_error(self, ignore: Sequence[str] = (), splits: Sequence[str] | None = None) -> str:
        """The first error as one line naming the file, and how many more; "" when there is none.

        E.g. "DATA/train/label/a.png: label is 64×48 (W×H), image a.png is 48×64 (and 2 more
        errors: run `medunet doctor DATA`)", for the trainer to refuse with. Errors of the checks
        in `ignore` (e.g. ENCODING_CHECKS), and of splits not in `splits` (when given), are passed over.
        """
        errors = [f for f in self.errors if f.check not in ignore and (splits is None or f.split in splits)]
        if not errors:
            return ""
        f = errors[0]
        where = str(Path(self.data_dir) / f.path) if f.path else str(Path(self.data_dir) / f.split)
        more = (f" (and {len(errors) - 1} more error{'s' * (len(errors) > 2)}: "
                f"run `medunet doctor {self.data_dir}`)" if len(errors) > 1 else "")
        return f"{where}: {f.message}{more}"


@dataclass
class _Item:
    """One image/label pair, with what reading it showed (arrays are not kept, masks are)."""

    split: str
    stem: str
    image: Path
    label: Path
    shape: tuple[int, ...] | None = None   # image (H, W) or (H, W, 3)
    dtype: str = ""
    kind: str = ""                          # "grey", "RGB", "grey saved as RGB"
    mean: float = math.nan
    blank: bool = False
    digest: str = ""
    label_file: LabelFile | None = None
    label_digest: str = ""
    usable: bool = False                    # both readable, sizes agree


@dataclass
class _Scan:
    """Everything one pass over a dataset gathered; `fix` reuses it."""

    root: Path
    report: Report
    folders: dict[str, Path]
    items: dict[str, list[_Item]]
    left_out: list[tuple[str, str, str]] = field(default_factory=list)  # (split, path, why)
    training: LabelEncoding | None = None
    decoded: dict[Path, Any] | None = None  # resolved path → array / LabelFile, when asked to keep them


# ------------------------------------------------------------------------------------------ public

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


def check_and_read(data_dir: Path, splits: tuple[str, ...]) -> tuple[Report, dict[Path, Any]]:
    """The quick check of `splits` only, keeping what it decoded so training reads no file twice.

    Returns:
        The report, and {resolved path: image array or LabelFile} of every file it could read.
    """
    scan = _scan(Path(data_dir), quick=True, splits=splits, keep=True)
    return scan.report, scan.decoded or {}


def _scan(root: Path, *, quick: bool, splits: tuple[str, ...] | None = None, keep: bool = False) -> _Scan:
    report = Report(data_dir=str(root), quick=quick)
    folders = _layout(root, report)
    if splits is not None and report.layout != "single":
        folders = {name: folder for name, folder in folders.items() if name in splits}
    scan = _Scan(root, report, folders, {}, decoded={} if keep else None)
    with _quiet_readers():
        for name, folder in scan.folders.items():
            try:
                scan.items[name] = _pair_split(name, folder, scan)
            except OSError as exc:  # a folder that cannot be listed (permissions, a vanished mount)
                report.add("error", name, _rel(folder, root) + "/", f"cannot list: {exc}", "layout")
                scan.items[name] = []
            for item in scan.items[name]:
                _read_pair(item, scan)
        _check_encoding(scan)
        if not quick:
            _check_images(scan)
            _check_masks(scan)
            _check_duplicates(scan)
            _check_outliers(scan)
    for name, items in scan.items.items():
        report.splits[name].n_readable = sum(i.usable for i in items)
    return scan


# ------------------------------------------------------------------------------- layout, pairing

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
    items = [_Item(name, stem, paths[0], labels[stem][0])
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
                      and (p.is_dir() or p.suffix.lower() not in IMAGE_SUFFIXES)),
                     key=lambda p: natural_key(p.name))
    if not skipped:
        return
    kinds = sorted({"NIfTI" if p.name.lower().endswith(".nii.gz") else _FOREIGN[p.suffix.lower()]
                    for p in skipped if p.suffix.lower() in _FOREIGN})
    hint = (f" ({', '.join(kinds)} files are not read: convert each 2D slice to TIFF or PNG)"
            if kinds else "")
    names = [p.name + ("/" if p.is_dir() else "") for p in skipped]
    scan.report.add("warning", split, _rel(folder, scan.root) + "/",
                    f"{len(names)} entries ignored (not {'/'.join(IMAGE_SUFFIXES)} files): "
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


# ------------------------------------------------------------------------------------------ reading

def _read_pair(item: _Item, scan: _Scan) -> None:
    """Read image and label, note what they are; unreadable files and size mismatches become errors."""
    image = _try_read(read_image, item.image, item.split, scan)
    label = _try_read(read_label, item.label, item.split, scan)
    if scan.decoded is not None:
        scan.decoded.update({p.resolve(): v for p, v in ((item.image, image), (item.label, label))
                             if v is not None})
    if image is not None:
        item.shape, item.dtype = image.shape, str(image.dtype)
        item.kind = _kind(image)
        item.mean = float(image.mean(dtype=np.float64))
        item.blank = bool(image.min() == image.max())
        item.digest = _digest(image)
    if label is not None:
        item.label_file = label
        item.label_digest = _digest(label.values)
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


# ------------------------------------------------------------------------------------------ masks

def _check_encoding(scan: _Scan) -> None:
    """Per file, per split and overall: what the mask values mean, in words; values that do not fit."""
    for items in scan.items.values():
        for item in items:
            if item.usable:
                _check_mask_file(item, scan)
    per_split = {}
    for name, items in scan.items.items():
        per_split[name] = _split_encoding(name, _labels(items), scan)
    _check_mixed_binary(scan)
    training = [n for n in scan.items if n in ("train", "validation")] or list(scan.items)
    labels = [lab for n in training for lab in _labels(scan.items[n])]
    if not labels:
        return
    try:
        scan.training = detect_encoding(labels)
    except DataError as exc:
        scan.report.add("error", "", None, f"the masks training would read: {exc}", "encoding")
        return
    scan.report.encoding = _describe(scan.training, labels)
    scan.report.label_values = list(scan.training.values)
    _check_conventions(per_split, scan)
    _check_unrepresentable(scan)


def _labels(items: Sequence[_Item]) -> list[LabelFile]:
    return [i.label_file for i in items if i.usable and i.label_file is not None]


def _check_mask_file(item: _Item, scan: _Scan) -> None:
    """One mask alone: looks like an image (error), JPEG or interpolated noise (warning)."""
    label = item.label_file
    values, counts = value_counts(label.values)
    path = _rel(item.label, scan.root)
    try:
        enc = detect_encoding([label])
    except DataError:
        scan.report.add("error", item.split, path,
                        f"this mask has {len(values)} distinct values spread between {values[0]} and "
                        f"{values[-1]}: it looks like an image, not a mask", "image_like")
        scan.left_out.append((item.split, path, "looks like an image, not a mask"))
        item.usable = False
        return
    if label.lossy and len(values) > 2 and _spread_share(values, counts) > 0.1:
        scan.report.add("warning", item.split, path,
                        f"this JPEG mask has {len(values)} distinct values spread between {values[0]} "
                        f"and {values[-1]}: several classes in a JPEG? It is read as binary "
                        f"(threshold {enc.threshold:g}); JPEG cannot keep class ids, save masks as PNG",
                        "jpeg_classes")
    elif label.lossy:
        what = (f"{len(values)} distinct values around {values[0]} and {values[-1]}: a JPEG-compressed "
                "binary mask" if len(values) > 2 else
                f"values {', '.join(map(str, values))}, saved as JPEG (lossy)")
        scan.report.add("warning", item.split, path, f"this mask has {what}; read as binary, "
                        f"thresholded at {enc.threshold:g}; save masks as PNG", "jpeg_mask")
    elif enc.mode == "near_binary":
        scan.report.add("warning", item.split, path,
                        f"this mask has {len(values)} distinct values around {values[0]} and "
                        f"{values[-1]}: a binary mask resized or smoothed (interpolated edges); "
                        f"read as binary, thresholded at {enc.threshold:g}", "near_binary")


def _spread_share(values: np.ndarray, counts: np.ndarray) -> float:
    """Share of pixels more than 1/8 of the range away from both the lowest and the highest value."""
    margin = (values[-1] - values[0]) / 8
    middle = (values > values[0] + margin) & (values < values[-1] - margin)
    return float(counts[middle].sum() / counts.sum())


def _split_encoding(name: str, labels: list[LabelFile], scan: _Scan) -> LabelEncoding | None:
    if not labels:
        return None
    summary = scan.report.splits[name]
    try:
        enc = detect_encoding(labels)
    except DataError as exc:
        summary.masks = "unreadable as masks"
        scan.report.add("error", name, None, f"masks pooled: {exc}", "encoding")
        return None
    summary.masks = _describe(enc, labels)
    return enc


def _describe(enc: LabelEncoding, labels: Sequence[LabelFile]) -> str:
    """The encoding of a set of masks in words, e.g. "JPEG-compressed binary masks (37 values ...)"."""
    values = sorted({int(v) for lab in labels for v in value_counts(lab.values)[0]})
    n_lossy = sum(lab.lossy for lab in labels)
    if enc.mode == "binary":
        return f"binary masks {enc.values[0]}/{enc.values[1]}"
    if enc.mode == "near_binary":
        why = (f"{n_lossy} JPEG-compressed" if n_lossy else "resized or smoothed")
        return (f"near-binary masks ({why}; {len(values)} distinct values around {values[0]} and "
                f"{values[-1]}), read as 0/{enc.values[1]} thresholded at {enc.threshold:g}")
    palette = all(lab.palette for lab in labels)
    ids = ", ".join(map(str, enc.values[:12])) + (", ..." if len(enc.values) > 12 else "")
    return f"{enc.n_classes} classes{' (palette indices)' if palette else ''}: {ids}"


def _check_mixed_binary(scan: _Scan) -> None:
    """Some masks 0/1, others 0/255: together they read as three classes, not one foreground."""
    styles: dict[int, list[_Item]] = defaultdict(list)
    for items in scan.items.values():
        for item in items:
            if item.usable:
                nonzero = [int(v) for v in value_counts(item.label_file.values)[0] if v != 0]
                if len(nonzero) > 1:
                    return
                if nonzero:
                    styles[nonzero[0]].append(item)
    if not {1, 255} <= set(styles):
        return
    few = min(styles.values(), key=len)
    names = [_rel(i.label, scan.root) for i in few]
    many = len(styles[255]) if few is styles[1] else len(styles[1])
    scan.report.add("warning", "", None,
                    f"masks mix binary conventions: {len(styles[1])} are 0/1, {len(styles[255])} are 0/255 "
                    f"({many} vs {_listing(names)}); together they read as 3 classes (0, 1, 255). "
                    "If 1 and 255 mean the same structure, save all masks as 0/255 "
                    "(medunet doctor --fix does)", "mixed_binary")


def _check_conventions(per_split: dict[str, LabelEncoding | None], scan: _Scan) -> None:
    found = {n: e for n, e in per_split.items() if e is not None}
    if len({(e.values, e.mode) for e in found.values()}) > 1:
        text = "; ".join(f"{n}: {scan.report.splits[n].masks}" for n in found)
        scan.report.add("warning", "", None, f"the splits store masks differently ({text})", "conventions")


def _check_unrepresentable(scan: _Scan) -> None:
    """Values outside what training learnt (a 0/1 test mask for a 0/255 model): evaluate would fail.

    With near-binary masks nothing fails, but a 0/1 mask among 0/255 ones falls below the
    threshold and silently reads as empty.
    """
    enc = scan.training
    if enc is None:
        return
    known = set(enc.values)
    for items in scan.items.values():
        for item in items:
            if not item.usable:
                continue
            values = value_counts(item.label_file.values)[0]
            if enc.mode == "near_binary":
                if values[-1] > values[0] >= 0 and values[-1] <= enc.threshold:
                    scan.report.add("error", item.split, _rel(item.label, scan.root),
                                    f"values {', '.join(map(str, values[:8]))} all fall below the "
                                    f"masks' threshold {enc.threshold:g} ({enc.describe()}): it reads "
                                    "as empty. 0/1 masks mixed with 0/255 ones? (medunet doctor --fix "
                                    "makes them all 0/255)", "unrepresentable")
                continue
            extra = sorted(set(values.tolist()) - known)
            if extra:
                scan.report.add("error", item.split, _rel(item.label, scan.root),
                                f"values {', '.join(map(str, extra[:8]))} are not in the training masks' "
                                f"encoding ({enc.describe()})", "unrepresentable")


def _check_masks(scan: _Scan) -> None:
    """Empty masks and class balance per split, with the training encoding."""
    enc = scan.training
    if enc is None:
        return
    for name, items in scan.items.items():
        usable = [i for i in items if i.usable]
        if not usable:
            continue
        totals: Counter = Counter()
        empty = []
        for item in usable:
            shares = _class_pixels(item.label_file.values, enc)
            totals.update(shares)
            if sum(n for c, n in shares.items() if c != 0) == 0:
                empty.append(_rel(item.label, scan.root))
        _report_balance(name, totals, enc, scan)
        _report_empty(name, empty, len(usable), scan)


def _class_pixels(values: np.ndarray, enc: LabelEncoding) -> Counter:
    """Pixels per class index; values outside the encoding are not counted."""
    raw, counts = value_counts(values)
    if enc.mode == "near_binary":
        fg = int(counts[raw > enc.threshold].sum())
        return Counter({0: int(counts.sum()) - fg, 1: fg})
    index = {v: i for i, v in enumerate(enc.values)}
    out: Counter = Counter()
    for v, n in zip(raw.tolist(), counts.tolist()):
        if v in index:
            out[index[v]] += n
    return out


def _report_balance(name: str, totals: Counter, enc: LabelEncoding, scan: _Scan) -> None:
    total = sum(totals.values()) or 1
    summary = scan.report.splits[name]
    names = ([str(v) for v in enc.values] if enc.mode != "near_binary" else ["background", "foreground"])
    summary.class_share = {names[c]: totals.get(c, 0) / total for c in range(enc.n_classes)}
    text = ", ".join(f"{k} {100 * v:.2f}%" for k, v in summary.class_share.items())
    scan.report.add("info", name, None, f"class balance (share of pixels): {text}", "balance")
    missing = [k for k, v in summary.class_share.items() if v == 0 and k not in ("0", "background")]
    if missing and name == "train":
        scan.report.add("warning", name, None, f"class {', '.join(missing)} never appears in train: "
                        "the model cannot learn it", "balance")


def _report_empty(name: str, empty: list[str], n: int, scan: _Scan) -> None:
    scan.report.splits[name].n_empty = len(empty)
    if not empty:
        return
    if len(empty) == n:
        scan.report.add("warning", name, None, f"all {n} masks are empty (background only): "
                        "nothing to learn or measure", "empty")
    else:
        scan.report.add("info", name, None, f"{len(empty)} of {n} masks are empty (background only): "
                        f"{_listing(empty)}", "empty")


# ----------------------------------------------------------------------------------------- images

def _check_images(scan: _Scan) -> None:
    """Channels, bit depths and sizes per split; colour mixed with grey; blank images."""
    kinds_all: Counter = Counter()
    for name, items in scan.items.items():
        read = [i for i in items if i.shape is not None]
        if not read:
            continue
        groups: dict[tuple[str, str], list[_Item]] = defaultdict(list)
        for item in read:
            groups[(_colour(item.kind), item.dtype)].append(item)
            kinds_all[_colour(item.kind)] += 1
        scan.report.splits[name].images = _describe_images(groups, scan)
        scan.report.add("info", name, None, f"{len(read)} images, {scan.report.splits[name].images}",
                        "images")
        if len({d for _, d in groups}) > 1:
            scan.report.add("warning", name, None, "images of different bit depths: "
                            f"{', '.join(sorted({d for _, d in groups}))} (per-image z-score copes; "
                            "a fixed --normalise window does not)", "bit_depth")
        _report_grey_rgb(name, read, scan)
        blank = [_rel(i.image, scan.root) for i in read if i.blank]
        if blank:
            scan.report.add("warning", name, None, f"{len(blank)} image(s) hold one value only "
                            f"(blank): {_listing(blank)}", "blank")
    if len(kinds_all) > 1:
        rgb = [_rel(i.image, scan.root) for items in scan.items.values() for i in items if i.kind == "RGB"]
        scan.report.add("warning", "", None, f"colour and grey images are mixed ({kinds_all['RGB']} RGB, "
                        f"{kinds_all['grey']} grey): the network will take 3 channels and see grey "
                        f"images as R=G=B. RGB: {_listing(rgb)}", "channels")


def _colour(kind: str) -> str:
    return "RGB" if kind == "RGB" else "grey"


def _describe_images(groups: dict[tuple[str, str], list[_Item]], scan: _Scan) -> str:
    """"grey uint16 256×256; 2 RGB uint8 images: a.png, b.png"."""
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    parts = []
    for n, ((colour, dtype), items) in enumerate(ordered):
        text = f"{colour} {dtype} {_sizes(items)}"
        if n == 0:
            parts.append(text)
        else:
            names = [i.image.name for i in items]
            parts.append(f"{len(items)} {text}: {_listing(names)}")
    return "; ".join(parts)


def _sizes(items: Sequence[_Item]) -> str:
    sizes = Counter((i.shape[1], i.shape[0]) for i in items)
    if len(sizes) == 1:
        (w, h), = sizes
        return f"{w}×{h}"
    (w, h), n = sizes.most_common(1)[0]
    areas = sorted(sizes, key=lambda s: s[0] * s[1])
    return (f"{len(sizes)} sizes from {areas[0][0]}×{areas[0][1]} to {areas[-1][0]}×{areas[-1][1]} "
            f"(most often {w}×{h}, {n})")


def _report_grey_rgb(name: str, items: Sequence[_Item], scan: _Scan) -> None:
    grey_rgb = [_rel(i.image, scan.root) for i in items if i.kind == "grey saved as RGB"]
    if grey_rgb:
        scan.report.add("info", name, None, f"{len(grey_rgb)} image(s) stored as RGB hold grey "
                        f"pixels (R=G=B) and are read as grey: {_listing(grey_rgb)}", "grey_rgb")


def _check_duplicates(scan: _Scan) -> None:
    """Identical decoded pixels: within a split (wasted, or conflicting masks) and across splits (leakage)."""
    seen: dict[str, list[_Item]] = defaultdict(list)
    for items in scan.items.values():
        for item in items:
            if item.digest:
                seen[item.digest].append(item)
    for group in seen.values():
        if len(group) < 2:
            continue
        names = [_rel(i.image, scan.root) for i in group]
        splits = sorted({i.split for i in group}, key=lambda s: (SPLITS + (s,)).index(s))
        masks = {i.label_digest for i in group if i.label_digest}
        conflict = "; their masks differ" if len(masks) > 1 else ""
        if len(splits) > 1:
            msg = (f"the same image is in {' and '.join(splits)}: {_listing(names, sep=' = ')} "
                   f"(leakage: the {splits[-1]} score will flatter the model){conflict}")
        else:
            msg = f"identical images: {_listing(names, sep=' = ')}{conflict}"
        scan.report.add("warning", splits[0] if len(splits) == 1 else "", names[0], msg, "duplicate")


def _check_outliers(scan: _Scan) -> None:
    """Images far from the others (robust z > OUTLIER_Z) in size or mean intensity, per pixel type."""
    by_type: dict[str, list[_Item]] = defaultdict(list)
    for items in scan.items.values():
        for item in items:
            if item.shape is not None:
                by_type[item.dtype].append(item)
    for items in by_type.values():
        if len(items) < MIN_FOR_OUTLIERS:
            continue
        areas = np.log2([i.shape[0] * i.shape[1] for i in items])
        means = np.array([i.mean for i in items])
        med_w, med_h = np.median([i.shape[1] for i in items]), np.median([i.shape[0] for i in items])
        # Floors keep near-constant sets sane: "far" means > 2× the median area, > 20 % off its mean.
        for item, z in zip(items, _robust_z(areas, floor=0.25)):
            if abs(z) > OUTLIER_Z:
                scan.report.add("warning", item.split, _rel(item.image, scan.root),
                                f"size {item.shape[1]}×{item.shape[0]} is far from the others "
                                f"(median {med_w:g}×{med_h:g}, robust z {z:+.1f})", "outlier")
        for item, z in zip(items, _robust_z(means, floor=0.05 * abs(float(np.median(means))))):
            if abs(z) > OUTLIER_Z:
                scan.report.add("warning", item.split, _rel(item.image, scan.root),
                                f"mean intensity {item.mean:.4g} is far from the others (median "
                                f"{np.median(means):.4g}, robust z {z:+.1f}): another scanner, "
                                "window or bit depth?", "outlier")


def _robust_z(x: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """(x - median) / max(1.4826 MAD, floor); the mean absolute deviation stands in when MAD is 0."""
    med = np.median(x)
    dev = np.abs(x - med)
    scale = max(1.4826 * np.median(dev) or 1.2533 * dev.mean(), floor)
    if scale == 0 or not np.isfinite(scale):
        return np.zeros_like(x)
    return (x - med) / scale


# -------------------------------------------------------------------------------------------- fix

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


# ----------------------------------------------------------------------------------------- report

def format_report(report: Report) -> str:
    """The report as text: per-split summaries, then errors, warnings and notes, then "N errors, M warnings".

    Findings of one check in one split beyond MAX_NAMES are cut to "... and N more".
    """
    lines = [f"medunet doctor: {report.data_dir}" + (" (quick check)" if report.quick else "")]
    for s in report.splits.values():
        lines.append(f"\n{s.name}: {s.n_pairs} pairs ({s.n_images} image names, {s.n_labels} label "
                     f"names), {s.n_readable} usable")
        if s.images:
            lines.append(f"  images  {s.images}")
        if s.masks:
            lines.append(f"  masks   {s.masks}" + (f"; {s.n_empty} empty" if s.n_empty else ""))
        if s.class_share:
            lines.append("  classes " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in s.class_share.items()))
    if report.encoding:
        lines.append(f"\nmasks for training: {report.encoding}")
    titles = {"error": "Errors", "warning": "Warnings", "info": "Notes"}
    for level in LEVELS:
        found = [f for f in report.findings if f.level == level]
        if found:
            lines.append(f"\n{titles[level]} ({len(found)})")
            lines += _grouped(found)
    lines.append(f"\n{len(report.errors)} error{'s' * (len(report.errors) != 1)}, "
                 f"{len(report.warnings)} warning{'s' * (len(report.warnings) != 1)}")
    return "\n".join(lines)


def _grouped(findings: Sequence[Finding]) -> list[str]:
    """One line per finding, at most MAX_NAMES per (split, check), then "... and N more"."""
    shown: Counter = Counter()
    hidden: Counter = Counter()
    lines: list[str] = []
    for f in findings:
        key = (f.split, f.check)
        if shown[key] >= MAX_NAMES:
            hidden[key] += 1
            continue
        shown[key] += 1
        where = f.path or (f"{f.split}" if f.split else "")
        lines.append(f"  {where + ': ' if where else ''}{f.message}")
    for (split, check), n in hidden.items():
        lines.append(f"  ... and {n} more {check.replace('_', ' ')} finding(s)"
                     f"{' in ' + split if split else ''}")
    return lines


def _listing(names: Sequence[str], sep: str = ", ") -> str:
    shown = sep.join(names[:MAX_NAMES])
    extra = len(names) - MAX_NAMES
    return f"{shown}, and {extra} more" if extra > 0 else shown


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)
