"""Metrics on hand-made masks: counts, the empty-case rules, pooled against per-image Dice, classes."""
from __future__ import annotations

import numpy as np
import pytest

from medunet.metrics import class_counts, image_metrics, summarise


def _masks() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((4, 5), np.uint8)
    truth[0, :4] = 1          # 4 true pixels
    pred = np.zeros((4, 5), np.uint8)
    pred[0, 2:] = 1           # 3 predicted: 2 hit, 1 false positive; 2 missed
    return truth, pred


def test_binary_counts_and_scores_by_hand() -> None:
    truth, pred = _masks()
    (c,) = class_counts(truth, pred, 2)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 2, 15)
    m = image_metrics(truth, pred, 2)
    assert m["dice"] == pytest.approx(4 / 7)
    assert m["iou"] == pytest.approx(2 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["accuracy"] == pytest.approx(17 / 20)
    assert m["empty_truth"] == 0 and m["both_empty"] == 0


def test_empty_cases_follow_the_stated_rule_never_nan() -> None:
    empty = np.zeros((3, 3), np.uint8)
    speck = empty.copy()
    speck[1, 1] = 1
    both = image_metrics(empty, empty, 2)
    assert both["dice"] == both["iou"] == both["precision"] == both["recall"] == 1.0 and both["both_empty"] == 1
    false_alarm = image_metrics(empty, speck, 2)
    assert false_alarm["dice"] == 0.0 and false_alarm["precision"] == 0.0 and false_alarm["recall"] == 1.0
    missed = image_metrics(speck, empty, 2)
    assert missed["dice"] == 0.0 and missed["recall"] == 0.0 and missed["precision"] == 0.0
    assert not any(np.isnan(v) for m in (both, false_alarm, missed) for v in m.values())


def test_pooled_dice_weights_pixels_not_images() -> None:
    truth, pred = _masks()
    empty = np.zeros_like(truth)
    rows = [image_metrics(truth, pred, 2), image_metrics(empty, empty, 2)]
    counts = [class_counts(truth, pred, 2), class_counts(empty, empty, 2)]
    summary = summarise(rows, counts, 2)
    assert summary["dice_mean"] == pytest.approx((4 / 7 + 1.0) / 2)   # the empty image counts 1.0
    assert summary["dice_global"] == pytest.approx(4 / 7)             # and adds no pixels
    assert summary["n_both_empty"] == 1 and "Dice 1.0" in summary["empty_rule"]
    assert "per_class" not in summary


def test_classes_are_scored_one_by_one() -> None:
    truth = np.array([[0, 1, 1, 2],
                      [0, 1, 2, 2]], np.uint8)
    pred = np.array([[0, 1, 2, 2],
                     [0, 0, 2, 2]], np.uint8)
    m = image_metrics(truth, pred, 3)
    assert m["dice_c1"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 2))     # class 1: 1 hit, 2 missed
    assert m["dice_c2"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 0))     # class 2: 3 hits, 1 extra
    assert m["dice"] == pytest.approx((m["dice_c1"] + m["dice_c2"]) / 2)
    summary = summarise([m], [class_counts(truth, pred, 3)], 3)
    assert set(summary["per_class"]) == {"1", "2"}
    assert summary["per_class"]["2"]["dice_global"] == pytest.approx(6 / 7)
