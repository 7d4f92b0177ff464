"""Per-image and pooled segmentation metrics from class-index masks.

Empty cases follow the field's rule (nnU-Net, MONAI): when truth and prediction are both empty for
a class, Dice, IoU, precision and recall are undefined (NaN) and that class is left out of the
image's mean over classes; an image with no defined class is left out of the means over images.
Scoring such a case 1.0 would reward predicting nothing on data with many empty images. With an
empty truth and a non-empty prediction, Dice, IoU and precision are 0.0 (the false positive costs)
and recall is 1.0 (nothing was missed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

NAN = float("nan")
SCORES = ("dice", "iou", "precision", "recall")   # undefined (NaN) for a class empty in both masks

EMPTY_RULE = ("a class empty in both truth and prediction of an image has no Dice, IoU, precision "
              "or recall (NaN) and is left out of that image's mean over classes; an image where "
              "every foreground class is empty in both (n_empty_both) is left out of the means over "
              "images, and a mean over no image is NaN (null in summary.json). An empty truth with a "
              "non-empty prediction scores Dice 0")


@dataclass(frozen=True)
class Counts:
    """Confusion counts of one foreground class in one image."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def both_empty(self) -> bool:
        return self.tp + self.fp + self.fn == 0

    def dice(self) -> float:
        return NAN if self.both_empty else 2 * self.tp / (2 * self.tp + self.fp + self.fn)

    def iou(self) -> float:
        return NAN if self.both_empty else self.tp / (self.tp + self.fp + self.fn)

    def precision(self) -> float:
        if self.both_empty:
            return NAN
        # nothing predicted but something missed: no correct prediction among none made
        return 0.0 if self.tp + self.fp == 0 else self.tp / (self.tp + self.fp)

    def recall(self) -> float:
        if self.both_empty:
            return NAN
        return 1.0 if self.tp + self.fn == 0 else self.tp / (self.tp + self.fn)


def defined_mean(values: Iterable[float]) -> float:
    """Mean of the values that are not NaN; NaN when none is (and no numpy "empty slice" warning)."""
    a = np.asarray(list(values), dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else NAN


def class_counts(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> list[Counts]:
    """Counts for each foreground class 1..n_classes-1 of `(H, W)` class-index masks."""
    joint = np.bincount(truth.ravel().astype(np.int64) * n_classes + pred.ravel(),
                        minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    total = int(joint.sum())
    out = []
    for c in range(1, n_classes):
        tp = int(joint[c, c])
        fp = int(joint[:, c].sum()) - tp
        fn = int(joint[c, :].sum()) - tp
        out.append(Counts(tp, fp, fn, total - tp - fp - fn))
    return out


def image_metrics(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """Dice, IoU, precision, recall and pixel accuracy of one image.

    Args:
        truth, pred: `(H, W)` class indices.
        n_classes: classes including background.

    Returns:
        `dice` etc.: means over the foreground classes that are defined (NaN when every class is
        empty in both masks); `dice_c{k}` etc. per class when there are several (NaN for a class
        empty in both); `accuracy`; `empty_truth` (1 when the truth has no foreground at all) and
        `both_empty` (1 when every foreground class is empty in truth and prediction).
    """
    counts = class_counts(truth, pred, n_classes)
    row: dict[str, float] = {}
    for name in SCORES:
        values = [getattr(c, name)() for c in counts]
        row[name] = defined_mean(values)
        if n_classes > 2:
            row.update({f"{name}_c{k}": v for k, v in enumerate(values, start=1)})
    row["accuracy"] = float(np.mean(truth == pred))
    row["empty_truth"] = int(not np.any(truth))
    row["both_empty"] = int(all(c.both_empty for c in counts))
    return row


def mean_dice(truths: Sequence[np.ndarray], preds: Sequence[np.ndarray], n_classes: int) -> float:
    """The `dice_mean` of summary.json, for training's validation and post-processing tuning too.

    Args:
        truths, preds: `(H, W)` class-index masks, pairwise of one size.
        n_classes: classes including background.

    Returns:
        Mean over images of the per-image Dice of `image_metrics`, leaving out images where every
        foreground class is empty in truth and prediction; NaN when no image is left.
    """
    if len(truths) != len(preds):
        raise ValueError(f"need as many predictions as truths, got {len(preds)} and {len(truths)}")
    return defined_mean(image_metrics(t, p, n_classes)["dice"] for t, p in zip(truths, preds))


def pooled_dice(all_counts: list[list[Counts]]) -> list[float]:
    """Dice per foreground class over all pixels of all images (one number a class; NaN for a class
    absent from every truth and prediction)."""
    out = []
    for k in range(len(all_counts[0])):
        c = [counts[k] for counts in all_counts]
        tp, fp, fn = (sum(getattr(x, a) for x in c) for a in ("tp", "fp", "fn"))
        out.append(NAN if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return out


def summarise(rows: list[dict[str, float]], all_counts: list[list[Counts]], n_classes: int) -> dict:
    """The `summary.json` content: means over the defined values, pooled Dice, per class, counts of
    empty images and the empty-case rule. Undefined means are NaN (the writer turns them into null)."""
    summary: dict = {"n_images": len(rows)}
    for name in SCORES:
        summary[f"{name}_mean"] = defined_mean(r[name] for r in rows)
    summary["accuracy_mean"] = float(np.mean([r["accuracy"] for r in rows]))
    pooled = pooled_dice(all_counts)
    summary["dice_global"] = defined_mean(pooled)
    summary["n_empty_both"] = int(sum(r["both_empty"] for r in rows))
    summary["n_empty_truth"] = int(sum(r["empty_truth"] for r in rows))
    summary["empty_rule"] = EMPTY_RULE
    if n_classes > 2:
        summary["per_class"] = {
            str(k): {"dice_mean": defined_mean(r[f"dice_c{k}"] for r in rows),
                     "iou_mean": defined_mean(r[f"iou_c{k}"] for r in rows),
                     "dice_global": pooled[k - 1],
                     "n_empty_both": int(sum(counts[k - 1].both_empty for counts in all_counts))}
            for k in range(1, n_classes)
        }
    return summary
