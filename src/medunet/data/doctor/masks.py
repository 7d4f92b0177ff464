"""Mask checks: encodings per file, per split and overall; empty masks; class balance."""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from medunet.data.doctor.findings import _Item, _Scan, _listing, _rel
from medunet.data.encoding import LabelEncoding, detect_encoding, value_counts
from medunet.errors import DataError
from medunet.io.images import LabelFile


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
    if set_training_encoding(scan, detect_encoding, _describe, "the masks"):
        _check_conventions(per_split, scan)
        _check_unrepresentable(scan)


def set_training_encoding(scan: _Scan, detect, describe, what: str) -> bool:
    """The encoding of the labels training would read (train and validation, else all), into
    `scan.training` and the report; False (and an error) when there are none or they cannot be read."""
    training = [n for n in scan.items if n in ("train", "validation")] or list(scan.items)
    labels = [lab for n in training for lab in _labels(scan.items[n])]
    if not labels:
        return False
    try:
        scan.training = detect(labels)
    except DataError as exc:
        scan.report.add("error", "", None, f"{what} training would read: {exc}", "encoding")
        return False
    scan.report.encoding = describe(scan.training, labels)
    scan.report.label_values = list(scan.training.values)
    return True


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
    """The encoding of a set of masks in words, and why it was chosen.

    E.g. "near-binary masks (resized or smoothed; 5 distinct values around 0 and 255), read as
    0/255 thresholded at 127.5: intermediate values 64, 128, 191 lie on edges ..." or
    "3 classes: 0, 128, 255: value 128 forms regions of its own (...)". The reason is left out
    where the words already give it (JPEG, palette indices).
    """
    values = sorted({int(v) for lab in labels for v in value_counts(lab.values)[0]})
    n_lossy = sum(lab.lossy for lab in labels)
    palette = all(lab.palette for lab in labels)
    why = f": {enc.reason}" if enc.reason and not (n_lossy or palette) else ""
    if enc.mode == "binary":
        return f"binary masks {enc.values[0]}/{enc.values[1]}{why}"
    if enc.mode == "near_binary":
        how = (f"{n_lossy} JPEG-compressed" if n_lossy else "resized or smoothed")
        return (f"near-binary masks ({how}; {len(values)} distinct values around {values[0]} and "
                f"{values[-1]}), read as 0/{enc.values[1]} thresholded at {enc.threshold:g}{why}")
    ids = ", ".join(map(str, enc.values[:12])) + (", ..." if len(enc.values) > 12 else "")
    return f"{enc.n_classes} classes{' (palette indices)' if palette else ''}: {ids}{why}"


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
                                    f"masks' threshold {enc.threshold:g} ({enc.describe(why=False)}): it reads "
                                    "as empty. 0/1 masks mixed with 0/255 ones? (medunet doctor --fix "
                                    "makes them all 0/255)", "unrepresentable")
                continue
            extra = sorted(set(values.tolist()) - known)
            if extra:
                scan.report.add("error", item.split, _rel(item.label, scan.root),
                                f"values {', '.join(map(str, extra[:8]))} are not in the training masks' "
                                f"encoding ({enc.describe(why=False)})", "unrepresentable")


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
