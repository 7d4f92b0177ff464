"""Image checks: channels, bit depths, sizes, blank images, duplicates, outliers."""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from medunet.data.doctor.findings import _Item, _Scan, _listing, _rel
from medunet.data.pairs import SPLITS

OUTLIER_Z = 4.0           # robust z-score beyond which an image is "far from the others"
MIN_FOR_OUTLIERS = 5      # fewer images than this: no statistics


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
