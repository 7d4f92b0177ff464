"""Output folders: never overwrite without being asked; finished folders appear whole or not at all."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from medunet.errors import ConfigError

MARKERS = ("config.json", "summary.json", ".medunet")  # files that show medunet wrote a folder


def check_free(folder: Path, overwrite: bool, what: str = "folder") -> None:
    """Refuse an existing non-empty `folder` unless `overwrite`; even then only a medunet folder."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ConfigError(f"{folder}: exists and is not a folder")
    if not any(folder.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"{folder}: {what} exists; pass --overwrite to replace it")
    if not any((folder / m).exists() for m in MARKERS):
        raise ConfigError(f"{folder}: not a folder medunet wrote; refusing to delete it with --overwrite")


def clear(folder: Path) -> None:
    """Remove a folder that check_free allowed to be replaced."""
    if folder.exists():
        shutil.rmtree(folder)


@contextlib.contextmanager
def staged_folder(final: Path, overwrite: bool, what: str = "output folder") -> Iterator[Path]:
    """Write into a hidden sibling folder, then move it to `final` when the block succeeds.

    On any error the staging folder is removed, so a half-written result never looks complete.
    """
    check_free(final, overwrite, what)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        (stage / ".medunet").write_text("written by medunet\n")
        yield stage
        clear(final)
        os.replace(stage, final)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    """JSON, written to a temporary name and renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
