"""Volumes in RAM for a 2D network: one array per case, slice axis first, and the grid it is sliced on.

A volume case is sliced along one array axis (each case's through-plane axis, the one with the
largest spacing, unless `DataConfig.slice_axis` names one), optionally resampled in-plane to the
dataset's spacing (`DataConfig.target_spacing`), and normalised over the whole volume. The cache
holds, per case, that image as `(S, h, w)` float32 on the network's in-plane grid and its labels:
`(S, h, w)` uint8 on the same grid for training (what crops are cut from), `(S, H, W)` on the
original grid for validation (where `evaluate` measures). 2.5D context (`context_stack`) is built
from these arrays when a batch is cut, never stored per slice.

`case_grid` and `prepare_case` are shared with the volume predictor, so training, validation and
prediction slice, resample and normalise a volume the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medunet.config import DataConfig
from medunet.data.cache import RawSplit, each_file
from medunet.data.encoding import LabelEncoding, value_counts
from medunet.data.pairs import Pair
from medunet.errors import DataError
from medunet.io.images import LabelFile
from medunet.io.volumes import Volume, VolumeGeometry, check_pair, read_label_volume, read_volume
from medunet.transforms.geometry import Geometry
from medunet.transforms.preprocess import preprocess_volume
from medunet.transforms.resize import scaled_shape, shrink_labels

AXIS_NAMES = ("Z", "Y", "X")


# ------------------------------------------------------------------------------------ reading

def read_volume_split(pairs: Sequence[Pair], decoded: dict[Path, Any] | None = None) -> RawSplit:
    """Read every image and label volume of a split; a geometry mismatch names the label file.

    Returns:
        RawSplit whose `images` are `Volume`s (array `(Z, Y, X)` and source) and whose `labels` are
        LabelFiles of `(Z, Y, X)` integer class ids. `decoded` ({resolved path: Volume}, from the
        doctor's quick check) is used instead of reading a file again.

    Raises:
        DataError: unreadable files, or an image/label pair whose shape, spacing, origin or
            direction differ (`check_pair`: the first difference, and how many more).
    """
    decoded = decoded or {}
    images, labels = [], []
    for pair in pairs:
        image = decoded.get(pair.image.resolve()) or read_volume(pair.image)
        label = decoded.get(pair.label.resolve()) or read_label_volume(pair.label)  # type: ignore[union-attr]
        problems = check_pair(image.geometry, label.geometry, pair.label)
        if problems:
            more = f" (and {len(problems) - 1} more difference(s))" if len(problems) > 1 else ""
            raise DataError(problems[0] + more)
        images.append(image)
        labels.append(LabelFile(path=label.path, values=label.array, lossy=False, palette=False))
    return RawSplit(list(pairs), images, labels)


def volume_encoding(labels: Sequence[LabelFile], mode: str = "auto") -> LabelEncoding:
    """What the values of label volumes mean: class ids, 0 background.

    Two values (with 0) are a binary mask in its own convention (0/1, 0/255); more are classes.
    `mode` "binary" makes every non-zero id the foreground; "classes" keeps the ids even for two.

    Raises:
        DataError: negative ids, or more than 256 distinct ids (the file with the most is named).
    """
    values: set[int] = {0}
    busiest, busiest_n = None, -1
    for label in labels:
        found = value_counts(label.values)[0]
        if found.size and found[0] < 0:
            raise DataError(f"{label.path}: negative label value {int(found[0])}; class ids are 0 (background), 1, 2, …")
        values.update(int(v) for v in found)
        if found.size > busiest_n:
            busiest, busiest_n = label.path, found.size
    ids = sorted(values)
    if len(ids) > 256:
        raise DataError(f"{busiest}: {len(ids)} distinct label values in the label volumes; at most 256 classes")
    if mode == "binary":
        top = max(ids[-1], 1)
        return LabelEncoding((0, top), "near_binary", threshold=0.5,
                             reason="--label-mode binary: every non-zero class id is the foreground")
    if len(ids) == 1:
        ids = [0, 1]
    if mode == "classes" or len(ids) > 2:
        return LabelEncoding(tuple(ids), "classes", reason="class ids of label volumes (0 background)")
    return LabelEncoding(tuple(ids), "binary", reason=f"label volumes hold {ids[0]} and {ids[1]} only: one class")


# -------------------------------------------------------------------------- slicing a case

@dataclass(frozen=True)
class CaseGrid:
    """How one volume is sliced: the array axis, each slice's grid → the network's, the shape.

    Attributes:
        axis: the array axis (0 = Z, 1 = Y, 2 = X) slices are taken along.
        geometry: a slice's original `(H, W)` grid → the network's (`Geometry.network_shape`).
        shape: the volume's `(Z, Y, X)` shape.
        spacing: its voxel size `(sz, sy, sx)` in mm, array order (for distances in mm).
    """

    axis: int
    geometry: Geometry
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def n_slices(self) -> int:
        return int(self.shape[self.axis])


def slice_axis(geometry: VolumeGeometry, cfg: DataConfig) -> int:
    """The array axis to slice along: `cfg.slice_axis`, or the case's through-plane axis."""
    if cfg.slice_axis in (None, "through-plane"):
        return geometry.through_plane_axis
    return int(cfg.slice_axis)  # type: ignore[arg-type]


def in_plane(values: Sequence, axis: int) -> tuple:
    """The two entries of a (Z, Y, X) triple (shape, spacing) that are not `axis`, in array order."""
    return tuple(v for a, v in enumerate(values) if a != axis)


def case_grid(geometry: VolumeGeometry, cfg: DataConfig) -> CaseGrid:
    """The slicing of a volume of `geometry` under `cfg` (slice axis, in-plane grid, input scale).

    With a target spacing (ty, tx) a slice of H × W pixels of (sy, sx) mm goes through the
    network at round(H sy / ty) × round(W sx / tx), divided by the input scale; "off" or None keeps
    each case's own grid (at the input scale).
    """
    axis = slice_axis(geometry, cfg)
    h, w = in_plane(geometry.shape, axis)
    return CaseGrid(axis, _slice_geometry(geometry, cfg, axis, h, w), tuple(geometry.shape),
                    tuple(float(v) for v in geometry.spacing))


def _slice_geometry(geometry: VolumeGeometry, cfg: DataConfig, axis: int, h: int, w: int) -> Geometry:
    target = cfg.target_spacing
    if not isinstance(target, tuple):
        if target not in (None, "off"):
            raise ValueError(f"target spacing {target!r} must be resolved by the plan first")
        return Geometry.whole(h, w, cfg.input_scale)
    (sy, sx), (ty, tx), s = in_plane(geometry.spacing, axis), target, cfg.input_scale
    shape = (max(1, round(h * sy / (ty * s))), max(1, round(w * sx / (tx * s))))
    if s > 1 and shape == scaled_shape(h, w, s):  # on the target grid already: the integer path
        return Geometry.whole(h, w, s)
    return Geometry.resampled(h, w, shape)


def to_slices(array: np.ndarray, axis: int) -> np.ndarray:
    """`(Z, Y, X)` → `(S, H, W)` with the slice axis first (a view); leading axes of a `(K, Z, Y, X)`
    array stay in front."""
    return np.moveaxis(array, array.ndim - 3 + axis, array.ndim - 3)


def from_slices(array: np.ndarray, axis: int) -> np.ndarray:
    """The inverse of `to_slices` (a view)."""
    return np.moveaxis(array, array.ndim - 3, array.ndim - 3 + axis)


def prepare_case(array: np.ndarray, geometry: VolumeGeometry, cfg: DataConfig) -> tuple[np.ndarray, CaseGrid]:
    """A volume `(Z, Y, X)` → (network input `(S, h, w)` float32, its CaseGrid)."""
    grid = case_grid(geometry, cfg)
    return preprocess_volume(to_slices(array, grid.axis), cfg, grid.geometry), grid


def context_stack(volume: np.ndarray, ks: np.ndarray, k: int) -> np.ndarray:
    """Slices `ks` of `(S, h, w)` with `k` neighbours either side → `(B, 2k + 1, h, w)`; beyond the
    first and last slice the edge slice is repeated."""
    ks = np.asarray(ks, dtype=np.int64)
    index = np.clip(ks[:, None] + np.arange(-k, k + 1)[None, :], 0, len(volume) - 1)
    return volume[index]


# ------------------------------------------------------------------------------------ the cache

@dataclass
class VolumeCache:
    """Network-ready volumes of one split (module docstring): `volumes[i]` float32 `(S, h, w)`,
    `labels[i]` uint8 (training `(S, h, w)`, validation `(S, H, W)`), `grids[i]` the CaseGrid."""

    stems: list[str]
    volumes: list[np.ndarray]
    labels: list[np.ndarray]
    grids: list[CaseGrid]
    _foreground: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.volumes)

    @property
    def n_slices(self) -> int:
        return int(sum(len(v) for v in self.volumes))

    def append(self, volume: np.ndarray, labels: np.ndarray, grid: CaseGrid) -> None:
        self.volumes.append(volume)
        self.labels.append(labels)
        self.grids.append(grid)

    def subset(self, indices: Sequence[int]) -> "VolumeCache":
        """The cache of the cases at `indices` (the arrays are shared, not copied)."""
        return VolumeCache([self.stems[i] for i in indices], [self.volumes[i] for i in indices],
                           [self.labels[i] for i in indices], [self.grids[i] for i in indices])

    def foreground(self, i: int) -> np.ndarray:
        """Flat indices of case i's foreground voxels in `labels[i]` (int32 where they fit)."""
        if i not in self._foreground:
            flat = np.flatnonzero(self.labels[i])
            self._foreground[i] = flat.astype(np.int32) if self.labels[i].size < 2**31 else flat
        return self._foreground[i]


def build_volume_cache(raw: RawSplit, cfg: DataConfig, encoding: LabelEncoding, consume: bool = False,
                       training: bool = True) -> VolumeCache:
    """The cache of a volume split (see `build_cache`, which comes here for volumes); with
    `consume`, each decoded volume is let go as soon as its cached form exists."""
    cache = VolumeCache([p.stem for p in raw.pairs], [], [], [])
    for i in each_file(raw, consume):
        inputs, grid, labels = _cached_case(raw.images[i], raw.labels[i], cfg, encoding)
        cache.append(inputs, _on_network_grid(labels, grid) if training else labels, grid)
    return cache


def build_volume_caches(raw: RawSplit, cfg: DataConfig, encoding: LabelEncoding) -> tuple[VolumeCache, VolumeCache]:
    """A training and a validation cache of the same cases (cross-validation: every case is in
    both, on different folds), consuming `raw`. They share each case's network input, and its
    labels too where the network's grid is the original one."""
    stems = [p.stem for p in raw.pairs]
    train, val = VolumeCache(list(stems), [], [], []), VolumeCache(list(stems), [], [], [])
    for i in each_file(raw, consume=True):
        inputs, grid, labels = _cached_case(raw.images[i], raw.labels[i], cfg, encoding)
        train.append(inputs, _on_network_grid(labels, grid), grid)
        val.append(inputs, labels, grid)
    return train, val


def _cached_case(volume: Volume, label: LabelFile, cfg: DataConfig,
                 encoding: LabelEncoding) -> tuple[np.ndarray, CaseGrid, np.ndarray]:
    """One case as the caches hold it: network input `(S, h, w)`, its grid, labels `(S, H, W)` uint8."""
    inputs, grid = prepare_case(volume.array, volume.geometry, cfg)
    labels = to_slices(encoding.encode(label.values, label.path), grid.axis)
    return inputs, grid, np.ascontiguousarray(labels, dtype=np.uint8)


def _on_network_grid(labels: np.ndarray, grid: CaseGrid) -> np.ndarray:
    """Labels `(S, H, W)` on the network's in-plane grid (what training crops are cut from)."""
    shape = grid.geometry.network_shape
    if tuple(labels.shape[1:]) == tuple(shape):
        return labels
    return np.stack([shrink_labels(s, shape) for s in labels])
