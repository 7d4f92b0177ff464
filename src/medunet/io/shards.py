"""One output folder shared by N processes (shards), each predicting every N-th input.

The folder's shared state lives in `DIR/.shards/`:
  job.json               what the job is (N, run, inputs, options): a shard of another job is refused
  lock                   a file lock (flock) held for each change of that state, so that joining,
                         clearing an old result, delivering a shard and merging never interleave;
                         the kernel drops it when a process dies, which an O_EXCL lock file would not
  stage-I-of-N-*/        where shard I writes; when it is done its files move into DIR, one rename each
  flags-I-of-N.csv       shard I's part of a summary CSV, moved there with its files
The shard that finds all N parts present (under the lock: exactly one does) writes the merged
`DIR/flags.csv`, rows in the order of one un-sharded run, and removes `.shards/`. A shard that
failed can be run again alone: the others' parts are kept. DIR must be on a filesystem whose file
locks hold across the machines that share it (a local disk; NFS).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from medunet.errors import ConfigError
from medunet.io.outputs import check_free, mark, write_json, write_text

logger = logging.getLogger(__name__)

T = TypeVar("T")
SHARDS = ".shards"
JOB = "job.json"


@dataclass(frozen=True)
class Shard:
    """Process `index` of `count` (0 ≤ index < count): it takes inputs index, index + count, ..."""

    index: int
    count: int

    def __post_init__(self) -> None:
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.index, self.count))
        if not ints or self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(f"shard {self.index}/{self.count}: expected I/N with N ≥ 1 and 0 ≤ I < N "
                              "(I counts from 0)")

    @classmethod
    def parse(cls, text: str, source: str = "--shard") -> Shard:
        """"1/4" → Shard(1, 4); ConfigError naming `source` for anything else."""
        index, _, count = str(text).strip().partition("/")
        try:
            return cls(int(index), int(count))
        except (ValueError, ConfigError):
            raise ConfigError(f"{source} {text}: expected I/N with N ≥ 1 and 0 ≤ I < N (I counts from 0), "
                              "e.g. 0/2 and 1/2") from None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Shard | None:
        """The shard torchrun (or any launcher setting RANK and WORLD_SIZE) gives this process; None
        unless both are set."""
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        return cls.parse(f"{env['RANK']}/{env['WORLD_SIZE']}",
                         f"RANK={env['RANK']}, WORLD_SIZE={env['WORLD_SIZE']}:")

    def take(self, items: Sequence[T]) -> list[T]:
        """This shard's items of the (already sorted) `items`: disjoint across shards, together all."""
        return list(items[self.index::self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@contextlib.contextmanager
def shard_folder(final: Path, shard: Shard, job: dict[str, Any], overwrite: bool, *,
                 order: Sequence[str], merged: Sequence[str] = ("flags.csv",),
                 what: str = "prediction folder") -> Iterator[Path]:
    """Yield a folder for shard `shard` of `job` to write into; when the block succeeds its files are
    moved into the shared `final`, and the CSVs named in `merged` become parts that the last shard
    merges into `final`, rows sorted by the position of their `stem` value in `order`.

    Raises:
        ConfigError: `final` holds something other than this job (an old result: unless
            `overwrite`; another job's shards; a folder medunet did not write).
    """
    final = Path(final)
    job = _json_ready({**job, "shards": shard.count})
    _join(final, shard, job, overwrite, what, merged)
    stage = Path(tempfile.mkdtemp(prefix=f"stage-{shard.index}-of-{shard.count}-", dir=final / SHARDS))
    try:
        yield stage
        with _locked(final):
            _deliver(stage, final, shard, job, merged)
            _merge_when_complete(final, shard.count, merged, order)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _deliver(stage: Path, final: Path, shard: Shard, job: dict[str, Any], merged: Sequence[str]) -> None:
    """Under the lock: move the shard's files into `final` (one rename each: a file is there whole
    or not at all) and its summaries into parts, unless another job has taken the folder meanwhile."""
    if _read_job(final) != job:
        raise ConfigError(f"{final}: another job replaced this sharded prediction while shard {shard} ran "
                          "(--overwrite); nothing of this shard was kept")
    for entry in stage.iterdir():
        os.replace(entry, _part(final, entry.name, shard) if entry.name in merged else final / entry.name)


def _join(final: Path, shard: Shard, job: dict[str, Any], overwrite: bool, what: str,
          merged: Sequence[str]) -> None:
    """Make `final` this job's folder, or refuse; then drop a part this shard left earlier, so that a
    rerun shard is waited for rather than merged from its stale part."""
    if final.exists() and not final.is_dir():
        raise ConfigError(f"{final}: exists and is not a folder")
    with _locked(final):
        try:
            _claim(final, shard, job, overwrite, what)
        except ConfigError:
            if not (final / SHARDS / JOB).exists():  # leave an old result as it was: no lock file in it
                shutil.rmtree(final / SHARDS, ignore_errors=True)
            raise
        for name in merged:
            _part(final, name, shard).unlink(missing_ok=True)


def _claim(final: Path, shard: Shard, job: dict[str, Any], overwrite: bool, what: str) -> None:
    """Under the lock: join the job recorded in `final`, or start it there."""
    found = _read_job(final)
    if found == job:
        return
    if found is not None and not overwrite:
        raise ConfigError(f"{final}: {_difference(found, job, shard)}; use another --out, "
                          "or --overwrite to replace it")
    if found is None:  # an old result, or nothing yet
        check_free(final, overwrite, what, ignore=(SHARDS,))
    _clear(final)
    write_json(final / SHARDS / JOB, job)  # before the marker: a crash between the two leaves a folder that
    mark(final)                            # is this job's, not an old result to refuse
    logger.info("%s: sharded job of %d started by shard %s", final, shard.count, shard)


def _difference(found: dict[str, Any], job: dict[str, Any], shard: Shard) -> str:
    """What makes the job in the folder another job, in a few words."""
    if found.get("shards") != job["shards"]:
        return f"shard {shard} joins a prediction split into {found.get('shards')} shards there"
    key = next(k for k in sorted({*found, *job}) if found.get(k) != job.get(k))
    there, here = (_short(repr(v)) for v in (found.get(key), job.get(key)))
    return f"a sharded prediction with another {key} is there ({there} there, {here} here)"


def _short(text: str, most: int = 60) -> str:
    return text if len(text) <= most else f"{text[:most - 1]}…"


def _clear(final: Path) -> None:
    """Remove everything in `final` but the lock this process holds."""
    for entry in final.iterdir():
        if entry.name != SHARDS:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for entry in (final / SHARDS).iterdir():
        if entry.name != "lock":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _merge_when_complete(final: Path, count: int, merged: Sequence[str], order: Sequence[str]) -> None:
    """Under the lock: when every shard's parts are there, write the merged files and remove `.shards`."""
    parts = {name: [_part(final, name, Shard(i, count)) for i in range(count)] for name in merged}
    if not all(p.exists() for paths in parts.values() for p in paths):
        return
    position = {stem: i for i, stem in enumerate(order)}
    for name, paths in parts.items():
        _merge_csv(paths, final / name, lambda row: position.get(row.get("stem"), len(position)))
    shutil.rmtree(final / SHARDS)
    logger.info("%s: %s merged from %d shards", final, ", ".join(merged), count)


def _merge_csv(parts: list[Path], out: Path, key: Callable[[dict[str, str]], int]) -> None:
    """The rows of `parts` (CSVs with one header) in `key` order, written as one CSV as csv.DictWriter does."""
    fieldnames, rows = None, []
    for path in parts:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows += list(reader)
            fieldnames = fieldnames or reader.fieldnames
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fieldnames or [])
    writer.writeheader()
    writer.writerows(sorted(rows, key=key))
    write_text(out, text.getvalue())


def _part(final: Path, name: str, shard: Shard) -> Path:
    stem, dot, suffix = name.partition(".")
    return final / SHARDS / f"{stem}-{shard.index}-of-{shard.count}{dot}{suffix}"


def _read_job(final: Path) -> dict[str, Any] | None:
    try:
        return json.loads((final / SHARDS / JOB).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{final / SHARDS / JOB}: unreadable ({exc}); remove {final / SHARDS} to start over") from None


def _json_ready(job: dict[str, Any]) -> dict[str, Any]:
    """As it reads back from job.json (tuples become lists, paths strings), so that jobs compare equal."""
    return json.loads(json.dumps(job, default=str))


@contextlib.contextmanager
def _locked(final: Path) -> Iterator[None]:
    """Hold `final/.shards/lock` exclusively (flock: released by the kernel when the process dies).

    The merge removes `.shards` with the lock in it: a process that was waiting then holds the
    lock of a deleted file, sees that the path no longer names it, and locks the new one.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        raise ConfigError("--shard needs file locks (fcntl): Linux or macOS") from None
    path = final / SHARDS / "lock"
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # `.shards` removed between the two calls
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _names(path, fd):
            break
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still names the open file `fd`."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
