"""doctor(): check a dataset folder, optionally write a cleaned copy; the CLI prints the report."""
from __future__ import annotations

from pathlib import Path

from medunet.data.doctor import Report, diagnose, fix
from medunet.errors import DataError


def doctor(data: Path, fix_out: Path | None = None) -> Report:
    """Diagnose `data`; with `fix_out`, write a cleaned copy there and return the copy's report.

    Prints nothing: `medunet.data.doctor.format_report` renders the result.

    Args:
        data: DATA with train/ (validation/, test/ optional), or one split folder with image/, label/.
        fix_out: a new or empty folder outside `data` for the cleaned copy.

    Returns:
        Report: problems of the data (or of the cleaned copy, whose first findings say what was
        left out). Check `report.ok` / `report.errors`.

    Raises:
        DataError: `data` is not a folder; `fix_out` is not empty or lies inside `data`.
    """
    data = Path(data)
    if not data.is_dir():
        raise DataError(f"{data}: no such folder")
    if fix_out is None:
        return diagnose(data)
    return fix(data, Path(fix_out))
