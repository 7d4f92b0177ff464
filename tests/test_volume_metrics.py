"""3D metrics per case in millimetres, and post-processing in 3D (26-connected objects)."""
from __future__ import annotations

import numpy as np
import pytest

from medunet.engine import postprocess
from medunet.engine.postprocess import PostprocessConfig, clean, fill_holes, keep_largest_components
from medunet.metrics import image_metrics, mean_dice
from medunet.surface import surface_metrics


def box(shape, z, y, x) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = 1
    return mask


def test_dice_is_per_volume_not_per_slice() -> None:
    """Slice-wise Dice would average 1, 1 and 0 (one empty-truth slice with a false positive);
    per volume it counts voxels: 2·64 / (64 + 80)."""
    truth = box((3, 8, 8), (0, 2), (0, 4), (0, 8))
    pred = truth.copy()
    pred[2, :2, :8] = 1
    assert image_metrics(truth, pred, 2)["dice"] == pytest.approx(2 * 64 / (64 + 80))
    assert mean_dice([truth], [pred], 2) == pytest.approx(2 * 64 / (64 + 80))


def test_surface_distances_use_the_anisotropic_voxel_spacing() -> None:
    """The prediction is the truth one slice further along z: every surface voxel moves 3 mm along
    z (1 mm in-plane voxels would have given 1)."""
    truth = box((12, 16, 16), (3, 7), (4, 12), (4, 12))
    pred = box((12, 16, 16), (4, 8), (4, 12), (4, 12))
    row = surface_metrics(truth, pred, 2, spacing=(3.0, 1.0, 1.0))
    assert row["distance_unit"] == "mm" and row["hd95"] == pytest.approx(3.0)
    assert 0 < row["assd"] < 3.0  # the sides of the box do not move
    in_plane = surface_metrics(truth, box((12, 16, 16), (3, 7), (4, 12), (5, 13)), 2, spacing=(3.0, 0.5, 0.5))
    assert in_plane["hd95"] == pytest.approx(0.5)


def test_an_empty_class_in_a_case_follows_the_rule() -> None:
    truth = box((4, 8, 8), (0, 2), (0, 4), (0, 4))
    pred = np.zeros_like(truth)
    row = surface_metrics(truth, pred, 3, spacing=(2.0, 1.0, 1.0))
    diagonal = float(np.sqrt(8.0 ** 2 + 8 ** 2 + 8 ** 2))
    assert row["hd95_c1"] == pytest.approx(diagonal) and np.isnan(row["hd95_c2"])  # class 2: empty in both
    assert "class 2: truth and prediction empty" in row["surface_note"]
    assert np.isnan(image_metrics(truth, pred, 3)["dice_c2"])


def test_objects_touching_across_slices_at_a_corner_are_one_object() -> None:
    """26-connectivity: two voxels that touch only at a corner, in neighbouring slices, are one
    object (a 2D, per-slice clean-up would keep only one of them)."""
    mask = np.zeros((3, 5, 5), bool)
    mask[0, 1, 1] = mask[1, 2, 2] = True  # a diagonal chain through z
    mask[2, 4, 4] = True                  # apart from it
    kept = keep_largest_components(mask, 1)
    assert kept[0, 1, 1] and kept[1, 2, 2] and not kept[2, 4, 4]


def test_clean_and_fill_holes_work_on_volumes() -> None:
    shell = np.zeros((8, 8, 8), np.uint8)
    shell[1:6, 1:6, 1:6] = 1
    shell[3, 3, 3] = 0                    # a cavity enclosed in 3D
    shell[7, 7, 7] = 1                    # a speck apart (not even touching at a corner)
    cleaned = clean(shell, PostprocessConfig(min_size=2, fill_holes=True))
    assert cleaned[3, 3, 3] == 1 and cleaned[7, 7, 7] == 0
    tube = np.zeros((5, 7, 7), bool)
    tube[:, 1:6, 1:6] = True
    tube[:, 3, 3] = False                 # open at both ends of the stack: not a hole in 3D
    assert not fill_holes(tube)[2, 3, 3]


def test_tuning_scores_volumes_by_per_case_3d_dice() -> None:
    truth = box((6, 12, 12), (1, 5), (2, 9), (2, 9))
    probs = np.zeros((1, 6, 12, 12), np.float32)
    probs[0][truth > 0] = 0.6
    probs[0, 0, 0, 0] = 0.9               # a false-positive speck in another slice
    result = postprocess.tune([probs], [truth], 2)
    assert result.dice > result.baseline_dice
    assert result.config.keep_largest == 1 or result.config.min_size > 1
