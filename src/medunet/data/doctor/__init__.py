"""The dataset doctor: every trap in a folder of images and masks, found before training.

`diagnose` reads a dataset (DATA/train|validation|test/{image,label}, or one split folder with
image/ and label/) and turns every problem into a `Finding`; it never raises on bad data.
`format_report` renders a `Report` as text. `fix` writes a cleaned copy: lossless images, masks as
0/255 or class-id PNGs, unusable files left out.

Checks (quick=True runs only the first four, the ones that stop training):
    layout and pairing: missing folders, orphans, duplicate stems, files the readers ignore;
    readability: each file the readers refuse, with their reason;
    sizes: image and label of a pair must agree;
    mask encoding: per file, per split and overall, in words; values a split's encoding cannot
        represent; masks that look like images; 0/1 mixed with 0/255;
    images: channels, bit depths, sizes, blank images, grey saved as RGB;
    masks: empty masks, class balance;
    duplicates by content (sha1 of decoded pixels + shape), also across splits (leakage);
    outliers: images far from the others in size or mean intensity (robust z-score > 4).

Modules: `findings` (Finding, Report and the per-file records), `scan` (layout, pairing, reading,
and the order the checks run in), `masks` and `images` (the checks), `cleaning` (fix), `report`
(format_report).
"""
from __future__ import annotations

from medunet.data.doctor.cleaning import fix
from medunet.data.doctor.findings import ENCODING_CHECKS, Finding, Report, SplitSummary
from medunet.data.doctor.report import format_report
from medunet.data.doctor.scan import check_and_read, diagnose

__all__ = ["ENCODING_CHECKS", "Finding", "Report", "SplitSummary", "check_and_read", "diagnose", "fix",
           "format_report"]
