"""A preprocessed cache on disk, for datasets larger than RAM: one `.npy` per case, read on access.

It holds exactly what the RAM `Cache` holds (`cache.cache_entry`: the float32 `(C, h, w)` input
and the uint8 class ids), in `ROOT/<key>/`, where the key hashes the files (paths, sizes, mtimes),
the preprocessing settings, the label encoding and the medunet version: a change to any of them
gives another folder, built afresh; the same ones reuse it. A build writes into a temporary
folder renamed into place at the end, so a killed build leaves nothing that is trusted later,
and it holds an exclusive `flock`, so ranks on one node build once and the others wait and reuse
(across nodes only on a shared file system whose locks work, which NFS does not promise).

Memory: each access reads one file into a fresh array that goes when it is dropped (`NpyFiles`),
so only the images of the batch being cut are resident; foreground indices are computed on
demand and kept for the most recent `FOREGROUND_LRU` images only.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medunet import __version__
from medunet.config import DataConfig, to_dict
from medunet.data.cache import cache_entry, read_pair, roles_share
from medunet.data.encoding import LabelEncoding
from medunet.data.pairs import Pair
from medunet.errors import ConfigError, DataError
from medunet.io.images import image_size

logger = logging.getLogger(__name__)

FORMAT = 2                 # of the folder layout; part of the key
FOREGROUND_LRU = 256       # images whose foreground indices are kept (about 100 KB each at 512²)
INDEX = "index.json"       # written last: a folder without it is not a cache
# DataConfig fields that only steer sampling or splitting, never what is cached.
NOT_CACHED = ("crop_margin", "foreground_share", "label_mode", "val_fraction", "group_by", "class_names")


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where caches live: `cache_dir`, else `$MEDUNET_CACHE_DIR`, else `~/.cache/medunet`."""
    chosen = cache_dir or os.environ.get("MEDUNET_CACHE_DIR") or Path.home() / ".cache" / "medunet"
    return Path(chosen).expanduser()


def cache_key(pairs: Sequence[Pair], data_cfg: DataConfig, encoding: LabelEncoding, training: bool) -> str:
    """A hash of what the cached arrays depend on: each file's resolved path, size and mtime, the
    preprocessing settings, the label encoding, the role (training or validation) and the version."""
    h = hashlib.sha256()
    for pair in pairs:
        for path in (pair.image, pair.label):
            st = Path(path).stat()
            h.update(f"{Path(path).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    settings = {k: v for k, v in to_dict(data_cfg).items() if k not in NOT_CACHED}
    labels = {k: v for k, v in encoding.to_dict().items() if k != "reason"}
    h.update(json.dumps({"data": settings, "labels": labels, "training": training, "version": __version__,
                         "format": FORMAT}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


class NpyFiles(Sequence):
    """Arrays in `folder/NNNNNN.npy` (spilled probabilities, or a `DiskCache`'s images or labels):
    item i is the array of file `indices[i]`, read on each access into a fresh array.

    Read, not memory-mapped: mapped file pages count in the resident set while mapped, and a
    read into anonymous memory is freed exactly when the array is dropped. With `layout` (a
    cache's `Layout`: each file's shape, dtype and data offset) an access is one `preadv`, about
    60 µs for 256 KiB from the page cache, against 140 µs to map it and fault its pages in and
    300 µs for `np.load` to parse the header; without, `np.load(mmap_mode="r")`.
    """

    def __init__(self, folder: Path, indices: Sequence[int], layout: Layout | None = None) -> None:
        self.folder, self.indices, self.layout = folder, indices, layout

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Each array's shape, from the layout: no file is read (without a layout, headers only)."""
        if self.layout is None:
            return [self[i].shape for i in range(len(self))]
        return [tuple(int(v) for v in self.layout.shapes[k]) for k in self.indices]

    @property
    def nbytes(self) -> int:
        """What all the arrays take once read."""
        dtype = self.layout.dtype if self.layout is not None else (self[0].dtype if len(self) else np.uint8)
        return sum(int(np.prod(shape)) for shape in self.shapes) * np.dtype(dtype).itemsize

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        k = self.indices[i]
        path = self.folder / f"{k:06d}.npy"
        if self.layout is None:
            return np.load(path, mmap_mode="r")
        return self.layout.read(path, k)


class Layout:
    """Shape `(n, ndim)`, data offset `(n,)` and the one dtype of a cache's images or labels."""

    def __init__(self, shapes: np.ndarray, offsets: np.ndarray, dtype: str) -> None:
        self.shapes, self.offsets, self.dtype = shapes, offsets, np.dtype(dtype)

    def read(self, path: Path, k: int) -> np.ndarray:
        """The array of entry `k`, stored in `path`."""
        out = np.empty(tuple(int(v) for v in self.shapes[k]), self.dtype)
        fd = os.open(path, os.O_RDONLY)
        try:
            got = os.preadv(fd, [memoryview(out).cast("B")], int(self.offsets[k]))
        finally:
            os.close(fd)
        if got != out.nbytes:
            raise DataError(f"{path}: cache file is truncated ({got} of {out.nbytes} bytes); delete the "
                            f"folder {path.parent.parent} to rebuild it")
        return out

    def to_dict(self) -> dict:
        return {"shapes": self.shapes.tolist(), "offsets": self.offsets.tolist(), "dtype": self.dtype.str}

    @classmethod
    def from_dict(cls, d: dict) -> "Layout":
        return cls(np.asarray(d["shapes"], np.int64), np.asarray(d["offsets"], np.int64), d["dtype"])


class DiskCache:
    """The `Cache` interface over a cache folder: `len`, `stems`, `images[i]` float32 `(C, h, w)`,
    `labels[i]` uint8, `subset`, `foreground(i)`; the samplers and validation take either.

    `indices` are the file numbers in the folder of this cache's images (all of them when None),
    `stems` their stems, in the same order.
    """

    def __init__(self, folder: Path, stems: list[str], layouts: tuple[Layout, Layout],
                 indices: Sequence[int] | None = None) -> None:
        self.folder, self.stems, self.layouts = folder, stems, layouts
        self.indices = range(len(stems)) if indices is None else indices
        self.images = NpyFiles(folder / "images", self.indices, layouts[0])
        self.labels = NpyFiles(folder / "labels", self.indices, layouts[1])
        self._foreground: OrderedDict[int, np.ndarray] = OrderedDict()

    @classmethod
    def open(cls, folder: Path) -> "DiskCache":
        index = json.loads((folder / INDEX).read_text())
        return cls(folder, index["stems"], (Layout.from_dict(index["images"]), Layout.from_dict(index["labels"])))

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, indices: list[int]) -> "DiskCache":
        """The cache of the images at `indices` (the same files, nothing copied)."""
        return DiskCache(self.folder, [self.stems[i] for i in indices], self.layouts,
                         [self.indices[i] for i in indices])

    def foreground(self, i: int) -> np.ndarray:
        """Flat int32 indices of image i's foreground pixels (as `Cache.foreground`), from a small LRU."""
        if i in self._foreground:
            self._foreground.move_to_end(i)
            return self._foreground[i]
        label = self.labels[i]
        flat = np.flatnonzero(label)
        self._foreground[i] = flat.astype(np.int32) if label.size < 2**31 else flat
        if len(self._foreground) > FOREGROUND_LRU:
            self._foreground.popitem(last=False)
        return self._foreground[i]


def open_or_build(pairs: Sequence[Pair], data_cfg: DataConfig, encoding: LabelEncoding, root: Path,
                  training: bool = True, progress: bool = True) -> DiskCache:
    """The disk cache of `pairs` under `root`: reused when its key's folder exists, else built
    (under the key's lock: a second process waits for the first and then reuses its folder)."""
    key = cache_key(pairs, data_cfg, encoding, training)
    final = root / key
    if (final / INDEX).is_file():
        logger.info("cache: reusing %s (%d images)", final, len(pairs))
        return DiskCache.open(final)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{key}.lock"):
        if not (final / INDEX).is_file():   # nobody built it while this process waited
            _build(pairs, data_cfg, encoding, training, root, key, progress)
        else:
            logger.info("cache: reusing %s, built by another process meanwhile", final)
    return DiskCache.open(final)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive `flock` on `path`, released when the block ends or the process dies."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("cache: another process is building %s; waiting for it", path.with_suffix(""))
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(pairs: Sequence[Pair], data_cfg: DataConfig, encoding: LabelEncoding, training: bool, root: Path,
           key: str, progress: bool) -> None:
    """Write every entry into `<key>.partial`, then rename it to `<key>`; called under the key's lock,
    so a `.partial` folder found here is what a killed build left, and is removed."""
    tmp = root / f"{key}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("images", "labels"):
        (tmp / sub).mkdir(parents=True)
    role = "training" if training else "validation"
    logger.info("cache: building the %s cache of %d images in %s", role, len(pairs), root / key)
    layouts: dict[str, list] = {"images": [], "labels": []}
    try:
        for i, pair in enumerate(tqdm(pairs, desc=f"caching {role} images", unit="img",
                                      disable=None if progress else True, leave=False)):
            for kind, array in zip(layouts, cache_entry(*read_pair(pair), data_cfg, encoding, training)):
                layouts[kind].append(_save(tmp / kind / f"{i:06d}.npy", array))
        (tmp / INDEX).write_text(json.dumps({"version": __version__, "format": FORMAT, "training": training,
                                             "stems": [p.stem for p in pairs],
                                             **{kind: _layout(entries) for kind, entries in layouts.items()}}))
        os.rename(tmp, root / key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _save(path: Path, array: np.ndarray) -> tuple[tuple[int, ...], int, str]:
    """Write `array` as `.npy`; (shape, offset of the data in the file, dtype)."""
    np.save(path, array)
    return array.shape, path.stat().st_size - array.nbytes, array.dtype.str


def _layout(entries: list[tuple[tuple[int, ...], int, str]]) -> dict:
    dtypes = {dtype for _, _, dtype in entries}
    if len(dtypes) > 1:   # preprocess gives float32 and encode uint8, always
        raise AssertionError(f"one cache holds arrays of several dtypes: {sorted(dtypes)}")
    shapes = np.array([e[0] for e in entries], np.int64) if entries else np.zeros((0, 0), np.int64)
    return Layout(shapes,
                  np.array([e[1] for e in entries], np.int64), dtypes.pop() if dtypes else "<f4").to_dict()


def disk_caches(pairs: Sequence[Pair], data_cfg: DataConfig, encoding: LabelEncoding, root: Path,
                progress: bool = True) -> tuple[DiskCache, DiskCache]:
    """A training and a validation disk cache of the same files (cross-validation, as
    `cache.build_caches`); one folder serves both where the two roles hold the same arrays."""
    train = open_or_build(pairs, data_cfg, encoding, root, True, progress)
    if roles_share(data_cfg):
        return train, train.subset(list(range(len(train))))
    return train, open_or_build(pairs, data_cfg, encoding, root, False, progress)


# --- RAM or disk ---------------------------------------------------------------------------------

CACHES = ("auto", "ram", "disk")
RAM_SHARE = 0.5            # "auto" caches on disk when the decoded dataset needs more of the available RAM


def available_ram() -> int:
    """Bytes the kernel says can be had without swapping (MemAvailable); all of RAM where unknown."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def decoded_bytes(pairs: Sequence[Pair]) -> int:
    """What the RAM cache of `pairs` would take, from the images' headers alone: float32 images at
    the stored size with their channels, plus uint8 labels (an upper bound when the plan shrinks them)."""
    total = 0
    for pair in pairs:
        h, w, c = image_size(pair.image)
        total += h * w * (4 * c + 1)
    return total


def choose_cache(setting: str, pairs: Sequence[Pair], volumes: bool, where: Path) -> str:
    """"ram" or "disk" for `--cache setting` on the dataset `where` of `pairs`; "auto" measures
    and logs its choice in one line. Volumes are cached in RAM (`VolumeCache`)."""
    if setting == "disk" and volumes:
        raise ConfigError(f"{where}: --cache disk is for 2D images; volume datasets are cached in RAM "
                          "(--cache ram or auto)")
    if setting != "auto":
        return setting
    if volumes:
        return "ram"
    # Under torchrun every process on this machine would hold its own RAM copy; a disk cache is
    # one copy in the page cache for all of them.
    copies = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    need, have = decoded_bytes(pairs) * copies, available_ram()
    chosen = "disk" if need > RAM_SHARE * have else "ram"
    logger.info("cache: %s, the decoded dataset takes about %.1f GB%s, %s %d%% of the %.1f GB of RAM available",
                chosen, need / 1e9, f" ({copies} processes on this machine, a copy each)" if copies > 1 else "",
                "over" if chosen == "disk" else "under", round(100 * RAM_SHARE), have / 1e9)
    return chosen
