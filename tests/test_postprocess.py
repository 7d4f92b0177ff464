"""Post-processing steps on hand-made masks, `apply` on probabilities, and `tune` on synthetic
probabilities whose best settings are known."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medunet.engine.postprocess import (
    PostprocessConfig,
    TuneResult,
    apply,
    fill_holes,
    keep_largest_components,
    remove_small_objects,
    tune,
)
from medunet.errors import ConfigError
from medunet.metrics import mean_dice as metric_mean_dice


def disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


def two_blobs() -> np.ndarray:
    mask = np.zeros((40, 40), bool)
    mask[2:8, 2:8] = True        # 36 px
    mask[20:35, 20:30] = True    # 150 px
    return mask


# --- config --------------------------------------------------------------------------------------

def test_config_round_trips_and_validates():
    cfg = PostprocessConfig(threshold=0.35, keep_largest=2, fill_holes=True, min_size=12)
    assert PostprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert PostprocessConfig.from_dict({}) == PostprocessConfig()
    assert PostprocessConfig.from_dict({"threshold": 0.4, "tuned_on": "val"}).threshold == 0.4
    for bad in ({"threshold": 1.0}, {"threshold": 0}, {"keep_largest": -1}, {"min_size": 2.5},
                {"fill_holes": "yes"}, {"keep_largest": True}):
        with pytest.raises(ConfigError):
            PostprocessConfig.from_dict(bad)


# --- steps ---------------------------------------------------------------------------------------

def test_keep_largest_keeps_the_bigger_blob():
    mask = two_blobs()
    out = keep_largest_components(mask, 1)
    assert out.sum() == 150 and out[25, 25] and not out[4, 4]
    assert (keep_largest_components(mask, 2) == mask).all()


def test_components_are_8_connected():
    mask = np.zeros((10, 10), bool)
    mask[2:4, 2:4] = True
    mask[4:7, 4:7] = True        # touches the first only at a corner: one object
    mask[8, 0] = True
    assert keep_largest_components(mask, 1).sum() == 13
    assert remove_small_objects(mask, 5).sum() == 13


def test_fill_holes_fills_a_ring():
    ring = disc(30, 30, 15, 15, 10) & ~disc(30, 30, 15, 15, 5)
    filled = fill_holes(ring)
    assert filled[15, 15] and (filled == disc(30, 30, 15, 15, 10)).all()
    # a ring cut open by the image border has no hole
    open_ring = np.zeros((10, 10), bool)
    open_ring[0:6, 0] = open_ring[0:6, 5] = open_ring[5, 0:6] = True
    assert (fill_holes(open_ring) == open_ring).all()


def test_remove_small_objects_removes_specks_keeps_the_big_one():
    mask = two_blobs()
    mask[38, 38] = mask[0, 39] = True
    out = remove_small_objects(mask, 40)
    assert out.sum() == 150
    assert remove_small_objects(mask, 36).sum() == 186
    assert (remove_small_objects(mask, 0) == mask).all()


def test_multi_class_masks_keep_their_ids():
    mask = np.zeros((40, 40), np.uint8)
    mask[2:10, 2:10] = 1          # class 1: big blob and a speck
    mask[30, 30] = 1
    mask[15:30, 15:30] = 2        # class 2: a ring around class 3, and a background hole
    mask[18:27, 18:27] = 3
    mask[20:22, 16:18] = 0
    probs = np.eye(4, dtype=np.float32)[mask].transpose(2, 0, 1)
    out = apply(probs, PostprocessConfig(min_size=4, fill_holes=True))
    assert out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 1, 2, 3}
    assert out[30, 30] == 0                       # speck removed to background
    assert (out[18:27, 18:27] == 3).all()         # class 3 inside the ring is not overwritten
    assert (out[20:22, 16:18] == 2).all()         # the background hole takes the ring's class
    assert (out[2:10, 2:10] == 1).all()


def test_apply_thresholds_one_channel_and_argmaxes_several():
    p = np.zeros((1, 20, 20), np.float32)
    p[0, 5:15, 5:15] = 0.4
    p[0, 0, 0] = 0.9
    assert apply(p, PostprocessConfig()).sum() == 1
    assert apply(p, PostprocessConfig(threshold=0.3)).sum() == 101
    assert apply(p, PostprocessConfig(threshold=0.3, keep_largest=1)).sum() == 100
    three = np.zeros((3, 20, 20), np.float32)
    three[0] = 0.5
    three[1, :, :10] = 0.6
    three[2, 15:, 15:] = 0.7
    out = apply(three, PostprocessConfig(threshold=0.9))   # threshold ignored for softmax
    assert out.shape == (20, 20) and out.dtype == np.uint8
    assert (out[:, :10] == 1).all() and (out[15:, 15:] == 2).all() and out[5, 12] == 0
    with pytest.raises(ValueError, match="K, H, W"):
        apply(np.zeros((20, 20)), PostprocessConfig())


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, (12, 12), elements=st.integers(0, 3)),
       st.integers(0, 6), st.integers(0, 2), st.booleans())
def test_cleaning_never_invents_classes(mask, min_size, keep, holes):
    probs = np.eye(4, dtype=np.float32)[mask].transpose(2, 0, 1)
    cfg = PostprocessConfig(min_size=min_size, keep_largest=keep)
    removed = apply(probs, cfg)
    # removal only turns pixels into background
    assert ((removed == mask) | (removed == 0)).all()
    assert set(np.unique(removed)) <= set(np.unique(mask)) | {0}
    if holes:
        filled = apply(probs, replace(cfg, fill_holes=True))
        # filling only writes on background, with classes the mask had
        assert (filled[removed != 0] == removed[removed != 0]).all()
        assert set(np.unique(filled)) <= set(np.unique(mask)) | {0}


# --- tune ----------------------------------------------------------------------------------------

def speckled_discs(n: int = 8, size: int = 64, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Truth discs at probability 0.35, background 0.05, and 2×2 false-positive specks at 0.6."""
    rng = np.random.default_rng(seed)
    probs, truths = [], []
    for _ in range(n):
        truth = disc(size, size, *rng.uniform(24, 40, 2), rng.uniform(8, 12))
        p = np.where(truth, 0.35, 0.05).astype(np.float32)
        for _ in range(3):
            y, x = rng.integers(0, 6, 2)
            p[y:y + 2, x * 10:x * 10 + 2] = 0.6 if not truth[y:y + 2, x * 10:x * 10 + 2].any() else 0.35
        probs.append(p[None])
        truths.append(truth.astype(np.uint8))
    return probs, truths


def mean_dice(probs, truths, cfg, n_classes=2):
    """Evaluation's dice_mean of the masks `cfg` makes (images empty in truth and prediction left out)."""
    return metric_mean_dice(truths, [apply(p, cfg) for p in probs], n_classes)


def test_tune_finds_the_threshold_and_removes_specks():
    probs, truths = speckled_discs()
    result = tune(probs, truths, n_classes=2)
    assert isinstance(result, TuneResult)
    cfg = result.config
    assert cfg.threshold <= 0.35 and cfg.min_size > 4
    assert cfg.keep_largest == 0 and not cfg.fill_holes   # nothing left for them to fix
    assert result.dice == pytest.approx(1.0)
    assert result.dice >= result.baseline_dice
    assert result.baseline_dice == pytest.approx(mean_dice(probs, truths, PostprocessConfig()))
    assert result.dice == pytest.approx(mean_dice(probs, truths, cfg))
    names = [s.description.split()[0] for s in result.steps]
    assert names == ["threshold", "min_size", "keep_largest", "fill_holes"]
    for step in result.steps:
        assert step.kept == (step.dice_after > step.dice_before)
    assert [s.kept for s in result.steps] == [True, True, False, False]
    d = result.to_dict()
    assert PostprocessConfig.from_dict(d["config"]) == cfg and len(d["steps"]) == 4


def test_threshold_search_agrees_with_the_metric():
    rng = np.random.default_rng(1)
    probs = [rng.random((1, 24, 24)).astype(np.float32) for _ in range(4)]
    truths = [(p[0] + rng.normal(0, 0.3, p[0].shape) > 0.6).astype(np.uint8) for p in probs]
    truths.append(np.zeros((24, 24), np.uint8))          # an empty truth: Dice 0 below 0.2, left out above
    probs.append(np.full((1, 24, 24), 0.2, np.float32))
    result = tune(probs, truths, 2)
    step = result.steps[0]
    threshold = float(step.description.split()[1])
    assert step.dice_after == pytest.approx(mean_dice(probs, truths, PostprocessConfig(threshold=threshold)))


def test_tune_multi_class_fills_holes():
    rng = np.random.default_rng(2)
    probs, truths = [], []
    for _ in range(5):
        truth = np.zeros((48, 48), np.uint8)
        truth[disc(48, 48, *rng.uniform(14, 20, 2), 9)] = 1
        truth[disc(48, 48, *rng.uniform(30, 34, 2), 8)] = 2
        pred = truth.copy()
        pred[(truth == 1) & disc(48, 48, *np.argwhere(truth == 1).mean(0), 3)] = 0   # a hole
        probs.append(np.eye(3, dtype=np.float32)[pred].transpose(2, 0, 1))
        truths.append(truth)
    result = tune(probs, truths, n_classes=3)
    assert result.config.fill_holes
    assert [s.description.split()[0] for s in result.steps] == ["min_size", "keep_largest", "fill_holes"]
    assert result.dice > result.baseline_dice
    assert result.dice == pytest.approx(mean_dice(probs, truths, result.config, 3))


def test_tune_keeps_as_many_objects_as_the_truth_has():
    """Two true objects and a false one bigger than any min_size candidate: keep the 2 largest."""
    probs, truths = [], []
    for shift in range(4):
        truth = np.zeros((40, 40), np.uint8)
        truth[2 + shift:12 + shift, 2:12] = 1     # two 10×10 objects (median size 100 px)
        truth[25:35, 25 - shift:35 - shift] = 1
        pred = truth.copy()
        pred[28:36, 3:11] = 1                     # a false 8×8 object: 64 px > 0.5 × 100
        probs.append(pred[None].astype(np.float32))
        truths.append(truth)
    result = tune(probs, truths, n_classes=2)
    assert result.config.keep_largest == 2 and result.dice == pytest.approx(1.0)


def under_confident_lesion(n_empty: int = 9) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One true disc at probability 0.15 and `n_empty` empty truths with a 2×2 speck at 0.2."""
    truth = disc(48, 48, 24, 24, 10)
    probs = [np.where(truth, 0.15, 0.05).astype(np.float32)[None]]
    truths = [truth.astype(np.uint8)]
    for i in range(n_empty):
        p = np.full((1, 48, 48), 0.05, np.float32)
        p[0, 4 + i:6 + i, 30:32] = 0.2
        probs.append(p)
        truths.append(np.zeros((48, 48), np.uint8))
    return probs, truths


def test_tune_does_not_empty_every_prediction_to_please_empty_images():
    """Scoring empty-in-both as Dice 1.0 kept threshold 0.5, which predicts nothing anywhere (mean
    0.9 from the nine empty images, the lesion missed); left out, they cannot outvote the lesion."""
    probs, truths = under_confident_lesion()
    assert mean_dice(probs, truths, PostprocessConfig()) == 0.0    # only the missed lesion counts
    result = tune(probs, truths, n_classes=2)
    assert result.config.threshold == pytest.approx(0.1)           # finds the lesion ...
    assert result.config.min_size > 4                              # ... then drops the specks
    assert result.baseline_dice == 0.0 and result.dice == pytest.approx(1.0)
    assert result.dice == pytest.approx(mean_dice(probs, truths, result.config))
    masks = [apply(p, result.config) for p in probs]
    assert masks[0].sum() > 0 and not any(m.any() for m in masks[1:])


def test_tune_keeps_the_defaults_when_no_truth_has_foreground(caplog):
    rng = np.random.default_rng(3)
    probs = [rng.random((1, 16, 16)).astype(np.float32) for _ in range(3)]
    truths = [np.zeros((16, 16), np.uint8)] * 3
    result = tune(probs, truths, n_classes=2)
    assert result.config == PostprocessConfig() and result.steps == []
    assert np.isnan(result.baseline_dice) and np.isnan(result.dice)
    assert "not tuned" in caplog.text and "no foreground" in caplog.text


def test_tune_refuses_mismatched_inputs():
    probs, truths = speckled_discs(2)
    with pytest.raises(ValueError, match="as many"):
        tune(probs, truths[:1], 2)
    with pytest.raises(ValueError, match="channels"):
        tune(probs, truths, 3)
