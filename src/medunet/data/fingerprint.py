"""A dataset's fingerprint: what the plan's choices are derived from.

Counts, image sizes, channels, pixel spacing, intensity statistics, and per foreground class how
much of an image it covers and how large and how thick its objects are. Thickness is the
characteristic width of a class's regions, `2 × area / boundary length` (a line w pixels wide
gives w, a disc of radius r gives r): it tells whether the structure survives a coarser input
scale (membranes and vessels do not; a lesion 100 pixels across does).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from medunet.data.cache import RawSplit
from medunet.data.encoding import LabelEncoding
from medunet.data.packed import ImageInfo
from medunet.io.images import read_image
from medunet.transforms.intensity import is_colour

if TYPE_CHECKING:
    from medunet.data.volume_fingerprint import VolumeStats

EIGHT = np.ones((3, 3), dtype=bool)
MAX_IMAGES = 200          # images measured for the object statistics (a seeded sample beyond)
INTENSITY_SAMPLES = 100_000  # pixels drawn for the intensity percentiles (at most 1/8 of an image's)


@dataclass(frozen=True)
class ClassStats:
    """One foreground class over the measured images (pixel units of the original images).

    Attributes:
        index: class index (1 for a binary mask).
        value: the raw label value it is stored as.
        present: share of images in which it occurs.
        share: mean share of an image's pixels it covers (over all images).
        objects: median number of 8-connected objects per image where present.
        area: median object area in pixels.
        extent: median of the longer side of the objects' bounding boxes, pixels.
        extent_p90: 90th percentile of that side: the large objects a crop must see whole.
        thickness: median over images of `2 × area / boundary pixels` of the class.
    """

    index: int
    value: int
    present: float
    share: float
    objects: float
    area: float
    extent: float
    extent_p90: float
    thickness: float


@dataclass(frozen=True)
class Fingerprint:
    """What a plan needs to know about a dataset (train and validation files together)."""

    n_images: int
    n_validation: int
    n_test: int
    channels: int
    height: tuple[int, int, int]          # min, median, max
    width: tuple[int, int, int]
    dtype: str
    spacing: tuple[float, float] | None   # (row, column) mm when every file stores it, else None
    intensity: dict[str, float]           # p0.5, p50, p99.5, mean, std over all pixels
    intensity_foreground: dict[str, float]
    encoding: str
    classes: list[ClassStats] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)   # the 5 most common W×H and their counts
    distinct_sizes: int = 0
    # Volume datasets: spacing, slicing and intensity per case (`volume_fingerprint`); else None.
    # Counts, sizes and class statistics above are then of cases and of their slices.
    volumes: VolumeStats | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def thinnest(self) -> float:
        """Thickness of the thinnest foreground class (pixels); inf when no class has objects."""
        values = [c.thickness for c in self.classes if c.thickness > 0]
        return min(values) if values else float("inf")

    @property
    def largest_extent(self) -> float:
        """The 90th-percentile object extent of the class with the largest objects (pixels)."""
        return max((c.extent_p90 for c in self.classes), default=0.0)


def fingerprint(raw: RawSplit, encoding: LabelEncoding, n_validation: int = 0, n_test: int = 0,
                spacing: tuple[float, float] | None = None, seed: int = 0) -> Fingerprint:
    """Measure `raw` (decoded images and labels; not changed).

    Args:
        raw: the decoded files the plan is for; of an indexed split (no pixels) only the sampled
            images are read again, one at a time.
        encoding: how the label values map to classes.
        n_validation, n_test: counts of the other splits, for the record.
        spacing: the pixel size when known (`medunet.surface.split_spacings`).
        seed: for the sample of images and pixels on large datasets.
    """
    rng = np.random.default_rng(seed)
    n = len(raw.images)
    chosen = np.sort(rng.permutation(n)[:MAX_IMAGES]) if n > MAX_IMAGES else np.arange(n)
    labels = [encoding.encode(raw.labels[i].values, raw.labels[i].path) for i in chosen]
    images = [_pixels(raw, i) for i in chosen]
    sizes = Counter(f"{im.shape[1]}×{im.shape[0]}" for im in raw.images)
    heights = [im.shape[0] for im in raw.images]
    widths = [im.shape[1] for im in raw.images]
    return Fingerprint(
        n_images=n, n_validation=n_validation, n_test=n_test,
        channels=3 if any(_colour(im) for im in raw.images) else 1,
        height=_min_median_max(heights), width=_min_median_max(widths),
        dtype=str(raw.images[0].dtype), spacing=spacing,
        intensity=_intensity(images, [None] * len(images), rng),
        intensity_foreground=_intensity(images, [lab > 0 for lab in labels], rng),
        encoding=encoding.describe(why=False),
        classes=[_class_stats(labels, c, encoding.values[c]) for c in range(1, encoding.n_classes)],
        sizes=dict(sizes.most_common(5)), distinct_sizes=len(sizes),
    )


def _pixels(raw: RawSplit, i: int) -> np.ndarray:
    """Image i of `raw`, read again from its file when the split is indexed (holds `ImageInfo`)."""
    image = raw.images[i]
    return read_image(raw.pairs[i].image) if isinstance(image, ImageInfo) else image


def _colour(image: np.ndarray | ImageInfo) -> bool:
    return image.colour if isinstance(image, ImageInfo) else is_colour(image)


def _min_median_max(values: list[int]) -> tuple[int, int, int]:
    return int(min(values)), int(np.median(values)), int(max(values))


def _intensity(images: list[np.ndarray], masks: list[np.ndarray | None],
               rng: np.random.Generator) -> dict[str, float]:
    """Percentiles, mean and std of a pixel sample (grey: channels averaged), inside `masks`."""
    per_image = max(1, INTENSITY_SAMPLES // max(len(images), 1))
    per_image = min(per_image, max(1, min(im.shape[0] * im.shape[1] for im in images) // 8)) if images else per_image
    samples = []
    for image, mask in zip(images, masks):
        grey = image.astype(np.float32).mean(axis=-1) if image.ndim == 3 else image.astype(np.float32)
        values = grey[mask] if mask is not None else grey.ravel()
        if values.size:
            samples.append(values[rng.integers(0, values.size, min(per_image, values.size))])
    if not samples:
        return {}
    x = np.concatenate(samples)
    p = np.percentile(x, (0.5, 50, 99.5))
    return {"p0.5": float(p[0]), "p50": float(p[1]), "p99.5": float(p[2]),
            "mean": float(x.mean()), "std": float(x.std())}


def _class_stats(labels: list[np.ndarray], c: int, value: int) -> ClassStats:
    shares, counts, areas, extents, thickness = [], [], [], [], []
    for label in labels:
        mask = label == c
        area = int(mask.sum())
        shares.append(area / mask.size)
        if not area:
            continue
        components, k = ndimage.label(mask, structure=EIGHT)
        counts.append(k)
        areas.extend(np.bincount(components.ravel())[1:].tolist())
        extents.extend(max(s[0].stop - s[0].start, s[1].stop - s[1].start)
                       for s in ndimage.find_objects(components))
        thickness.append(2.0 * area / max(_boundary_pixels(mask), 1))
    if not counts:
        return ClassStats(c, int(value), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    return ClassStats(index=c, value=int(value), present=len(counts) / len(labels),
                      share=float(np.mean(shares)), objects=float(np.median(counts)),
                      area=float(np.median(areas)), extent=float(np.median(extents)),
                      extent_p90=float(np.percentile(extents, 90)), thickness=float(np.median(thickness)))


def _boundary_pixels(mask: np.ndarray) -> int:
    """Foreground pixels with a background 4-neighbour (outside the image counts as background)."""
    padded = np.pad(mask, 1)
    inner = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return int(np.count_nonzero(mask & ~inner))
