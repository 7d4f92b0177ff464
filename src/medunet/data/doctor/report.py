"""`format_report`: a Report as readable text, errors first."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from medunet.data.doctor.findings import Finding, LEVELS, MAX_NAMES, Report


def format_report(report: Report) -> str:
    """The report as text: per-split summaries, then errors, warnings and notes, then "N errors, M warnings".

    Findings of one check in one split beyond MAX_NAMES are cut to "... and N more".
    """
    lines = [f"medunet doctor: {report.data_dir}" + (" (quick check)" if report.quick else "")]
    for s in report.splits.values():
        lines.append(f"\n{s.name}: {s.n_pairs} pairs ({s.n_images} image names, {s.n_labels} label "
                     f"names), {s.n_readable} usable")
        if s.images:
            lines.append(f"  images  {s.images}")
        if s.masks:
            lines.append(f"  masks   {s.masks}" + (f"; {s.n_empty} empty" if s.n_empty else ""))
        if s.class_share:
            lines.append("  classes " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in s.class_share.items()))
    if report.encoding:
        lines.append(f"\nmasks for training: {report.encoding}")
    titles = {"error": "Errors", "warning": "Warnings", "info": "Notes"}
    for level in LEVELS:
        found = [f for f in report.findings if f.level == level]
        if found:
            lines.append(f"\n{titles[level]} ({len(found)})")
            lines += _grouped(found)
    lines.append(f"\n{len(report.errors)} error{'s' * (len(report.errors) != 1)}, "
                 f"{len(report.warnings)} warning{'s' * (len(report.warnings) != 1)}")
    return "\n".join(lines)


def _grouped(findings: Sequence[Finding]) -> list[str]:
    """One line per finding, at most MAX_NAMES per (split, check), then "... and N more"."""
    shown: Counter = Counter()
    hidden: Counter = Counter()
    lines: list[str] = []
    for f in findings:
        key = (f.split, f.check)
        if shown[key] >= MAX_NAMES:
            hidden[key] += 1
            continue
        shown[key] += 1
        where = f.path or (f"{f.split}" if f.split else "")
        lines.append(f"  {where + ': ' if where else ''}{f.message}")
    for (split, check), n in hidden.items():
        lines.append(f"  ... and {n} more {check.replace('_', ' ')} finding(s)"
                     f"{' in ' + split if split else ''}")
    return lines
