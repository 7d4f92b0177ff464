"""A preprocessed cache on disk, for datasets larger than RAM: one `.npy` per case, memory-mapped on access.

It holds exactly what the RAM `Cache` holds (`cache.cache_entry`: the float32 `(C, h, w)` input
and the uint8 class ids), in `ROOT/<key>/`, where the key hashes the files (paths, sizes, mtimes),
the preprocessing settings, the label encoding and the medunet version: a change to any of them
gives another folder, built afresh; the same ones reuse it. A build writes into a temporary
folder renamed into place at the end, so a killed build leaves nothing that is trusted later,
and it holds an exclusive lock, so ranks on one node build once and the others wait and reuse.

Memory: each access maps the file and the map goes when the array is dropped, so file pages
count in the resident set only while a batch is cut from them; foreground indices are computed
on demand and kept for the most recent `FOREGROUND_LRU` images only.
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
from medunet.errors import ConfigError
from medunet.io.images import image_size

logger = logging.getLogger(__name__)

FORMAT = 1                 # of the folder layout; part of the key
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
    """Arrays in `folder/NNNNNN.npy` (`images` or `labels` of a `DiskCache`, spilled probabilities):
    item i is the memory-mapped, read-only array of file `indices[i]`, mapped anew on each access."""

    def __init__(self, folder: Path, indices: Sequence[int]) -> None:
        self.folder, self.indices = folder, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return np.load(self.folder / f"{self.indices[i]:06d}.npy", mmap_mode="r")


class DiskCache:
    """The `Cache` interface over a cache folder: `len`, `stems`, `images[i]` float32 `(C, h, w)`,
    `labels[i]` uint8, `subset`, `foreground(i)`; the samplers and validation take either.

    `indices` are the file numbers in the folder of this cache's images (all of them when None),
    `stems` their stems, in the same order.
    """

    def __init__(self, folder: Path, stems: list[str], indices: Sequence[int] | None = None) -> None:
        self.folder, self.stems = folder, stems
        self.indices = range(len(stems)) if indices is None else indices
        self.images = NpyFiles(folder / "images", self.indices)
        self.labels = NpyFiles(folder / "labels", self.indices)
        self._foreground: OrderedDict[int, np.ndarray] = OrderedDict()

    @classmethod
    def open(cls, folder: Path) -> "DiskCache":
        return cls(folder, json.loads((folder / INDEX).read_text())["stems"])

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, indices: list[int]) -> "DiskCache":
        """The cache of the images at `indices` (the same files, nothing copied)."""
        return DiskCache(self.folder, [self.stems[i] for i in indices], [self.indices[i] for i in indices])

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
    try:
        for i, pair in enumerate(tqdm(pairs, desc=f"caching {role} images", unit="img", disable=None if progress else True,
                                      leave=False)):
            image, label = cache_entry(*read_pair(pair), data_cfg, encoding, training)
            np.save(tmp / "images" / f"{i:06d}.npy", image)
            np.save(tmp / "labels" / f"{i:06d}.npy", label)
        (tmp / INDEX).write_text(json.dumps({"version": __version__, "format": FORMAT, "training": training,
                                             "stems": [p.stem for p in pairs]}))
        os.rename(tmp, root / key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    need, have = decoded_bytes(pairs), available_ram()
    chosen = "disk" if need > RAM_SHARE * have else "ram"
    logger.info("cache: %s, the decoded dataset takes about %.1f GB, %s %d%% of the %.1f GB of RAM available",
                chosen, need / 1e9, "over" if chosen == "disk" else "under", round(100 * RAM_SHARE), have / 1e9)
    return chosen
