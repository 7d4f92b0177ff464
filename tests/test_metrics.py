"""Metrics on hand-made masks: counts, the empty-case rules, pooled against per-image Dice, classes."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from medunet.metrics import EMPTY_RULE, class_counts, image_metrics, mean_dice, summarise


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


def test_empty_in_both_is_undefined_and_a_false_positive_costs() -> None:
    empty = np.zeros((3, 3), np.uint8)
    speck = empty.copy()
    speck[1, 1] = 1
    both = image_metrics(empty, empty, 2)
    assert all(math.isnan(both[k]) for k in ("dice", "iou", "precision", "recall"))
    assert both["accuracy"] == 1.0 and both["both_empty"] == 1 and both["empty_truth"] == 1
    false_alarm = image_metrics(empty, speck, 2)
    assert false_alarm["dice"] == false_alarm["iou"] == false_alarm["precision"] == 0.0
    assert false_alarm["recall"] == 1.0 and false_alarm["both_empty"] == 0 and false_alarm["empty_truth"] == 1
    missed = image_metrics(speck, empty, 2)
    assert missed["dice"] == 0.0 and missed["recall"] == 0.0 and missed["precision"] == 0.0
    assert not any(np.isnan(v) for m in (false_alarm, missed) for v in m.values())
    assert "NaN" in EMPTY_RULE and "left out" in EMPTY_RULE and "Dice 1.0" not in EMPTY_RULE


def test_pooled_dice_weights_pixels_not_images() -> None:
    truth, pred = _masks()
    empty = np.zeros_like(truth)
    rows = [image_metrics(truth, pred, 2), image_metrics(empty, empty, 2)]
    counts = [class_counts(truth, pred, 2), class_counts(empty, empty, 2)]
    summary = summarise(rows, counts, 2)
    assert summary["dice_mean"] == pytest.approx(4 / 7)               # the empty image is left out
    assert summary["dice_global"] == pytest.approx(4 / 7)             # and adds no pixels
    assert summary["n_empty_both"] == 1 and summary["n_empty_truth"] == 1
    assert summary["empty_rule"] == EMPTY_RULE
    assert "per_class" not in summary


def test_predicting_nothing_on_empty_images_is_not_rewarded() -> None:
    """Three empty truths and one lesion: a model that predicts nothing anywhere used to score 0.75."""
    lesion, _ = _masks()
    empty = np.zeros_like(lesion)
    speck = empty.copy()
    speck[3, 4] = 1
    truths = [lesion, empty, empty, empty]
    silent = [empty] * 4                          # misses the lesion, "right" about the empties
    assert mean_dice(truths, silent, 2) == 0.0
    careful = [lesion, empty, empty, speck]       # finds it, one false positive
    assert mean_dice(truths, careful, 2) == pytest.approx((1.0 + 0.0) / 2)
    rows = [image_metrics(t, p, 2) for t, p in zip(truths, careful)]
    summary = summarise(rows, [class_counts(t, p, 2) for t, p in zip(truths, careful)], 2)
    assert summary["dice_mean"] == mean_dice(truths, careful, 2)   # one definition of dice_mean
    assert summary["n_empty_both"] == 2 and summary["n_empty_truth"] == 3
    assert summary["accuracy_mean"] == pytest.approx(np.mean([np.mean(t == p) for t, p in zip(truths, careful)]))


def test_a_split_of_empty_images_has_undefined_means_without_warnings() -> None:
    empty = np.zeros((4, 4), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # no "mean of empty slice" from numpy
        summary = summarise([image_metrics(empty, empty, 3)] * 2, [class_counts(empty, empty, 3)] * 2, 3)
        assert math.isnan(mean_dice([empty, empty], [empty, empty], 2))
    for key in ("dice_mean", "iou_mean", "precision_mean", "recall_mean", "dice_global"):
        assert math.isnan(summary[key]), key
    assert summary["accuracy_mean"] == 1.0 and summary["n_empty_both"] == summary["n_images"] == 2
    assert math.isnan(summary["per_class"]["1"]["dice_mean"]) and summary["per_class"]["1"]["n_empty_both"] == 2
    with pytest.raises(ValueError, match="as many"):
        mean_dice([empty], [], 2)


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


def test_a_class_empty_in_both_is_left_out_of_the_image_mean() -> None:
    truth = np.array([[0, 1, 1, 0],
                      [0, 1, 1, 0]], np.uint8)
    pred = np.array([[0, 1, 0, 0],
                     [0, 1, 1, 0]], np.uint8)          # class 2 in neither
    m = image_metrics(truth, pred, 3)
    assert m["dice_c1"] == pytest.approx(6 / 7) and math.isnan(m["dice_c2"])
    assert m["dice"] == pytest.approx(6 / 7)            # not (6/7 + 1) / 2
    assert m["both_empty"] == 0
    other = np.array([[2, 2, 0, 0],
                      [0, 0, 0, 0]], np.uint8)          # class 2 found exactly, class 1 in neither
    rows = [m, image_metrics(other, other, 3)]
    summary = summarise(rows, [class_counts(truth, pred, 3), class_counts(other, other, 3)], 3)
    assert summary["dice_mean"] == pytest.approx((6 / 7 + 1.0) / 2)
    assert summary["per_class"]["1"] == pytest.approx({"dice_mean": 6 / 7, "iou_mean": 3 / 4,
                                                       "dice_global": 6 / 7, "n_empty_both": 1})
    assert summary["per_class"]["2"]["dice_mean"] == 1.0 and summary["per_class"]["2"]["n_empty_both"] == 1
    assert summary["n_empty_both"] == 0
