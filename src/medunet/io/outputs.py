"""Output folders: never overwrite without being asked; finished folders appear whole or not at all."""
from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import IO, Any

from medunet.errors import ConfigError

MARKERS = ("config.json", "summary.json", ".medunet")  # files that show medunet wrote a folder


def check_free(folder: Path, overwrite: bool, what: str = "folder", ignore: Collection[str] = ()) -> None:
    """Refuse an existing non-empty `folder` unless `overwrite`; even then only a medunet folder.
    Entries named in `ignore` do not make it non-empty."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ConfigError(f"{folder}: exists and is not a folder")
    if not any(p.name not in ignore for p in folder.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"{folder}: {what} exists; pass --overwrite to replace it")
    if not any((folder / m).exists() for m in MARKERS):
        raise ConfigError(f"{folder}: not a folder medunet wrote; refusing to delete it with --overwrite")


def clear(folder: Path) -> None:
    """Remove a folder that check_free allowed to be replaced."""
    if folder.exists():
        shutil.rmtree(folder)


def mark(folder: Path) -> None:
    """The marker that lets a later --overwrite know medunet wrote `folder`."""
    (folder / ".medunet").write_text("written by medunet\n")


@contextlib.contextmanager
def staged_folder(final: Path, overwrite: bool, what: str = "output folder") -> Iterator[Path]:
    """Write into a hidden sibling folder, then move it to `final` when the block succeeds.

    On any error the staging folder is removed, so a half-written result never looks complete.
    """
    check_free(final, overwrite, what)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        mark(stage)
        yield stage
        clear(final)
        os.replace(stage, final)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def atomic_target(path: Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds its file is flushed to disk and
    renamed over `path` in one step, so `path` is always either the old file or the whole new one.

    The temporary name is hidden and unique (".name.1a2b3c4d.tmp.png", two writers never share
    one) and keeps the real suffix, so writers that pick the format from the suffix still work.
    On an error it is removed; a crash leaves it for `remove_stale_temporaries`. Not mkstemp: its
    0600 mode would stay on the final file; the writer creates it with the user's umask.
    `durable=False` skips flushing to disk: for files inside a staged folder (`staged_folder`),
    which become visible all together when the folder is renamed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
        if durable:
            _fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (the folder's entry, not only the file's bytes)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename itself has happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a file through `write(binary_file)`, atomically (see `atomic_target`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(path) as tmp, open(tmp, "xb") as f:
        write(f)


def write_text(path: Path, text: str) -> None:
    """UTF-8 text, written atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: Path, data: Any) -> None:
    """JSON, written atomically; NaN and ±inf become null (JSON has neither: `json.dumps` would write
    an invalid `NaN` that strict readers refuse)."""
    write_text(path, json.dumps(_json_ready(data), indent=2, allow_nan=False) + "\n")


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete `.NAME.*.tmp` files a killed writer left in `folder` (SIGKILL skips atomic_write's cleanup)."""
    stale = sorted(Path(folder).glob(".*.tmp*"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale
