"""Per-image and pooled segmentation metrics from class-index masks.

Empty cases follow one stated rule instead of NaN: when truth and prediction are both empty for a
class, Dice, IoU, precision and recall are 1.0; with an empty truth and a non-empty prediction,
precision and Dice are 0.0 and recall is 1.0 (nothing was missed).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EMPTY_RULE = ("an image whose truth and prediction are both empty for a class scores Dice 1.0 "
              "for that class")


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
        return 1.0 if self.both_empty else 2 * self.tp / (2 * self.tp + self.fp + self.fn)

    def iou(self) -> float:
        return 1.0 if self.both_empty else self.tp / (self.tp + self.fp + self.fn)

    def precision(self) -> float:
        if self.tp + self.fp == 0:
            return 1.0 if self.fn == 0 else 0.0
        return self.tp / (self.tp + self.fp)

    def recall(self) -> float:
        return 1.0 if self.tp + self.fn == 0 else self.tp / (self.tp + self.fn)


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
    """Dice, IoU, precision, recall (means over foreground classes) and pixel accuracy of one image.

    Also `dice_c{k}` etc. per class when there are several, and `empty` (1 when the truth has no
    foreground at all).
    """
    counts = class_counts(truth, pred, n_classes)
    row: dict[str, float] = {}
    for name in ("dice", "iou", "precision", "recall"):
        values = [getattr(c, name)() for c in counts]
        row[name] = float(np.mean(values))
        if n_classes > 2:
            row.update({f"{name}_c{k}": v for k, v in enumerate(values, start=1)})
    row["accuracy"] = float(np.mean(truth == pred))
    row["empty_truth"] = int(not np.any(truth))
    row["both_empty"] = int(all(c.both_empty for c in counts))
    return row


def pooled_dice(all_counts: list[list[Counts]]) -> list[float]:
    """Dice per foreground class over all pixels of all images (one number a class)."""
    out = []
    for k in range(len(all_counts[0])):
        c = [counts[k] for counts in all_counts]
        tp, fp, fn = (sum(getattr(x, a) for x in c) for a in ("tp", "fp", "fn"))
        out.append(1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return out


def summarise(rows: list[dict[str, float]], all_counts: list[list[Counts]], n_classes: int) -> dict:
    """The `summary.json` content: means, pooled Dice, per class, and the empty-case rule."""
    summary: dict = {"n_images": len(rows)}
    for name in ("dice", "iou", "precision", "recall", "accuracy"):
        summary[f"{name}_mean"] = float(np.mean([r[name] for r in rows]))
    pooled = pooled_dice(all_counts)
    summary["dice_global"] = float(np.mean(pooled))
    summary["n_both_empty"] = int(sum(r["both_empty"] for r in rows))
    summary["empty_rule"] = EMPTY_RULE
    if n_classes > 2:
        summary["per_class"] = {
            str(k): {"dice_mean": float(np.mean([r[f"dice_c{k}"] for r in rows])),
                     "iou_mean": float(np.mean([r[f"iou_c{k}"] for r in rows])),
                     "dice_global": pooled[k - 1]}
            for k in range(1, n_classes)
        }
    return summary
