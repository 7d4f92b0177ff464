"""What the doctor finds and reports: findings, per-split summaries, the report, and the
per-file records one scan gathers."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medunet.data.encoding import LabelEncoding
from medunet.io.images import LabelFile

LEVELS = ("error", "warning", "info")
MAX_NAMES = 10            # names shown in one message or report group before "and N more"
# Errors about what mask values mean; a forced --label-mode (binary, classes) decides those itself.
ENCODING_CHECKS = ("image_like", "encoding", "unrepresentable")


@dataclass(frozen=True)
class Finding:
    """One problem or fact about a dataset.

    Attributes:
        level: "error" (training or evaluation would fail or be wrong), "warning" (probably a
            mistake), or "info".
        split: the split it concerns ("train", ...; the folder name for a single split; "" for all).
        path: the file, relative to the dataset folder, or None for a whole split.
        message: what is wrong, in words, without the path.
        check: which check found it (groups findings in the text report).
    """

    level: str
    split: str
    path: str | None
    message: str
    check: str = ""


@dataclass
class SplitSummary:
    """Counts of one split. `class_share` maps a class name ("0", "255", "foreground") to its pixel share."""

    name: str
    n_images: int = 0
    n_labels: int = 0
    n_pairs: int = 0
    n_readable: int = 0
    images: str = ""
    masks: str = ""
    n_empty: int = 0
    class_share: dict[str, float] = field(default_factory=dict)


@dataclass
class Report:
    """What `diagnose` found: findings, per-split summaries, and the masks' encoding overall."""

    data_dir: str
    quick: bool = False
    layout: str = "splits"                 # "splits" (train/ ...) or "single" (image/, label/)
    findings: list[Finding] = field(default_factory=list)
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    encoding: str | None = None            # in words, for the labels training would use
    label_values: list[int] | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return not self.errors

    def add(self, level: str, split: str, path: str | None, message: str, check: str = "") -> None:
        self.findings.append(Finding(level, split, path, message, check))

    def first_error(self, ignore: Sequence[str] = (), splits: Sequence[str] | None = None) -> str:
        """The first error as one line naming the file, and how many more; "" when there is none.

        E.g. "DATA/train/label/a.png: label is 64×48 (W×H), image a.png is 48×64 (and 2 more
        errors: run `medunet doctor DATA`)", for the trainer to refuse with. Errors of the checks
        in `ignore` (e.g. ENCODING_CHECKS), and of splits not in `splits` (when given), are passed over.
        """
        errors = [f for f in self.errors if f.check not in ignore and (splits is None or f.split in splits)]
        if not errors:
            return ""
        f = errors[0]
        where = str(Path(self.data_dir) / f.path) if f.path else str(Path(self.data_dir) / f.split)
        more = (f" (and {len(errors) - 1} more error{'s' * (len(errors) > 2)}: "
                f"run `medunet doctor {self.data_dir}`)" if len(errors) > 1 else "")
        return f"{where}: {f.message}{more}"


@dataclass
class _Item:
    """One image/label pair, with what reading it showed (arrays are not kept, masks are)."""

    split: str
    stem: str
    image: Path
    label: Path
    shape: tuple[int, ...] | None = None   # image (H, W) or (H, W, 3)
    dtype: str = ""
    kind: str = ""                          # "grey", "RGB", "grey saved as RGB"
    mean: float = math.nan
    blank: bool = False
    digest: str = ""
    label_file: LabelFile | None = None
    label_digest: str = ""
    usable: bool = False                    # both readable, sizes agree
    volume: bool = False                    # a volume pair (`doctor.volumes`); shape is then (Z, Y, X)
    geometry: Any = None                    # the image volume's VolumeGeometry
    intensity: tuple[float, float] | None = None  # the image volume's minimum and maximum


@dataclass
class _Scan:
    """Everything one pass over a dataset gathered; `fix` reuses it."""

    root: Path
    report: Report
    folders: dict[str, Path]
    items: dict[str, list[_Item]]
    left_out: list[tuple[str, str, str]] = field(default_factory=list)  # (split, path, why)
    training: LabelEncoding | None = None
    decoded: dict[Path, Any] | None = None  # resolved path → array / LabelFile, when asked to keep them
    packed: bool = False                    # keep ImageInfo and PackedLabel, not pixels (`check_and_read`)


def _listing(names: Sequence[str], sep: str = ", ") -> str:
    shown = sep.join(names[:MAX_NAMES])
    extra = len(names) - MAX_NAMES
    return f"{shown}, and {extra} more" if extra > 0 else shown


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)
