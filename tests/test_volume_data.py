"""Volumes as training data: pairing, the cache (slice axis first, volumes not slices), 2.5D context,
in-plane resampling that goes back exactly, normalisation per volume or CT, and the plan's choices."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from medunet.api.train import decode_dataset, prepare_dataset
from medunet.cli import main
from medunet.config import DataConfig, TrainConfig
from medunet.data.pairs import dataset_splits, find_pairs
from medunet.data.slice_sampler import SliceSampler
from medunet.data.volume_cache import VolumeCache, case_grid, context_stack, from_slices, to_slices
from medunet.errors import DataError
from medunet.io.volume_geometry import VolumeGeometry
from medunet.transforms.intensity import normalise_volume
from volume_data import SMALL, mr_series_dataset, volume_dataset, write_case
from volumes import oblique_geometry, phantom

CPU = torch.device("cpu")
TINY = TrainConfig(preset="tiny", epochs=1, batch=4, samples_per_epoch=8, device="cpu", precision="fp32")


def test_volume_stems_pair_nifti_and_dicom_folders(tmp_path: Path) -> None:
    data, _ = mr_series_dataset(tmp_path / "mr", {"train": 2})
    pairs = find_pairs(data / "train")
    assert [(p.stem, p.image.name, p.label.name) for p in pairs] == [
        ("subject01", "subject01", "subject01.nii.gz"), ("subject02", "subject02", "subject02.nii.gz")]
    nifti = volume_dataset(tmp_path / "nii", {"train": 2})
    assert [p.stem for p in find_pairs(nifti / "train")] == ["case_01", "case_02"]  # ".nii.gz" is one suffix


def test_mixed_2d_and_volume_files_are_refused_in_one_line(tmp_path: Path, capsys) -> None:
    from conftest import write_split

    data = volume_dataset(tmp_path / "data", {"train": 2})
    write_split(data / "validation", 2, [(20, 24)], seed=0)
    with pytest.raises(DataError, match="volumes and 2D images in one dataset"):
        dataset_splits(data)
    assert main(["train", str(data), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "volumes and 2D images in one dataset" in err[0] and "medunet trains on one kind" in err[0]


def test_a_label_on_another_grid_names_the_file_and_what_differs(tmp_path: Path, capsys) -> None:
    data = volume_dataset(tmp_path / "data", {"train": 3})
    image, labels = phantom(SMALL)
    geometry = oblique_geometry(SMALL)
    write_case(data / "train", "case_02", image, labels, geometry)
    from volumes import write_nifti_file

    write_nifti_file(data / "train" / "label" / "case_02.nii.gz", labels, replace(geometry, spacing=(2.5, 0.9, 0.7)))
    assert main(["train", str(data), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label/case_02.nii.gz: spacing 2.5×0.9×0.7 mm (z, y, x), image 3×0.9×0.7 mm" in err[0]


def test_context_repeats_the_edge_slices() -> None:
    volume = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 2, 3), np.float32)
    stack = context_stack(volume, np.array([0, 2, 4]), 2)
    assert stack.shape == (3, 5, 2, 3)
    assert stack[:, :, 0, 0].tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [2, 3, 4, 4, 4]]


def test_slice_sampler_draws_slices_with_their_neighbours_and_oversamples_foreground() -> None:
    volume = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 8, 8), np.float32)
    labels = np.zeros((6, 8, 8), np.uint8)
    labels[5, 2:4, 2:4] = 1  # only the last slice holds foreground
    cache = VolumeCache(["a"], [volume], [labels], [None])  # type: ignore[list-item]
    images, targets = SliceSampler(cache, 8, np.random.default_rng(0), foreground_share=1.0, context=1).batch(16)
    assert images.shape == (16, 3, 8, 8) and targets.shape == (16, 8, 8)
    assert (images[:, :, 4, 4] == [4, 5, 5]).all()  # slice 5 and its neighbours, the edge repeated
    assert (targets.sum(axis=(1, 2)) == 4).all()
    plain, _ = SliceSampler(cache, 8, np.random.default_rng(0), context=0).batch(64)
    assert plain.shape[1] == 1 and len(np.unique(plain[:, 0, 4, 4])) == 6  # every slice is drawn


def test_cache_holds_one_array_per_case_with_the_slice_axis_first(tmp_path: Path) -> None:
    """Sliced along the largest spacing: X for these sagittal-like stacks. No copy per slice, no
    context stored: one float32 (S, H, W) array per case; validation is split by case."""
    geometry = VolumeGeometry(shape=(20, 16, 6), spacing=(0.8, 0.8, 4.0), origin=(0, 0, 0),
                              direction=tuple(np.eye(3).ravel()))
    data = volume_dataset(tmp_path / "data", {"train": 6}, shape=(20, 16, 6), geometry=geometry)
    decoded = decode_dataset(data, DataConfig(), seed=0)
    dataset = prepare_dataset(decoded, DataConfig(), TINY, CPU)
    assert isinstance(dataset.train, VolumeCache) and len(dataset.train) == 5 and len(dataset.val) == 1
    assert dataset.plan.data.context == 1 and dataset.plan.data.slice_axis == "through-plane"
    for volume, labels, grid in zip(dataset.train.volumes, dataset.train.labels, dataset.train.grids):
        assert grid.axis == 2 and volume.shape == (6, 20, 16) and volume.dtype == np.float32
        assert labels.shape == (6, 20, 16) and labels.dtype == np.uint8
    total = sum(v.nbytes for v in dataset.train.volumes)
    assert total == 5 * 6 * 20 * 16 * 4
    stems = {name: [p.stem for p in pairs] for name, pairs in dataset.splits.items()}
    assert not set(stems["train"]) & set(stems["validation"]) and len(stems["validation"]) == 1


def test_in_plane_resampling_goes_back_to_the_case_grid() -> None:
    """A case on 0.9 mm pixels resampled to a 0.75 mm target and back: the same shape, and a
    smooth map comes back close to itself."""
    geometry = replace(oblique_geometry((9, 20, 24)), spacing=(6.5, 0.9, 0.9))
    grid = case_grid(geometry, DataConfig(target_spacing=(0.75, 0.75)))
    assert grid.axis == 0 and grid.geometry.network_shape == (24, 29)
    yy, xx = np.mgrid[:20, :24]
    smooth = np.sin(yy / 5.0)[None] * np.cos(xx / 7.0)[None]
    there = grid.geometry.apply(smooth.astype(np.float32))
    back = grid.geometry.invert(there)
    assert there.shape == (1, 24, 29) and back.shape == (1, 20, 24)
    np.testing.assert_allclose(back[0, 2:-2, 2:-2], smooth[0, 2:-2, 2:-2], atol=0.03)
    same = case_grid(replace(geometry, spacing=(6.5, 0.75, 0.75)), DataConfig(target_spacing=(0.75, 0.75)))
    assert same.geometry.shape is None  # on the target grid already: nothing is interpolated


def test_slices_and_back_are_the_same_array() -> None:
    array = np.random.default_rng(0).random((4, 5, 6))
    for axis in range(3):
        assert np.shares_memory(to_slices(array, axis), array)
        np.testing.assert_array_equal(from_slices(to_slices(array, axis), axis), array)
    probs = np.random.default_rng(1).random((2, 4, 5, 6))
    np.testing.assert_array_equal(from_slices(to_slices(probs, 2), 2), probs)
    assert to_slices(probs, 2).shape == (2, 6, 4, 5)


def test_normalisation_per_volume_and_ct() -> None:
    volume = np.random.default_rng(0).normal(1000, 300, (6, 8, 8)).astype(np.float32)
    z = normalise_volume(volume, DataConfig(normalise="zscore"))
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 1e-4  # over the volume, not per slice
    assert abs(float(z[0].mean())) > 1e-3
    ct = normalise_volume(np.array([[[-1000, 0, 40, 2000]]], np.int16),
                          DataConfig(normalise="ct", ct_clip=(-100.0, 200.0), ct_stats=(40.0, 20.0)))
    np.testing.assert_allclose(ct.ravel(), [-7.0, -2.0, 0.0, 8.0])


def test_the_plan_tells_ct_from_mr_and_resamples_only_differing_grids(tmp_path: Path) -> None:
    ct = decode_dataset(volume_dataset(tmp_path / "ct", {"train": 4}), DataConfig(), seed=0)
    plan = prepare_dataset(ct, DataConfig(), TINY, CPU).plan
    assert plan.data.normalise == "ct" and plan.data.target_spacing == "off"
    lo, hi = plan.data.ct_clip
    assert -1000 < lo < 100 < hi < 400 and plan.data.ct_stats[1] > 0  # the foreground's range, in HU
    reasons = {c.name: c.reason for c in plan.choices}
    assert "air in HU" in reasons["normalisation"] and "keeps its own grid" in reasons["in-plane spacing"]
    assert plan.train.augment == "none" and "never meets a mirrored slice" in reasons["augmentation"]   # few passes
    long = prepare_dataset(ct, DataConfig(), replace(TINY, epochs=400, samples_per_epoch=64), CPU).plan
    assert long.train.augment == "upright"                                  # many passes: no mirrors still
    assert "no mirrors or 90° turns" in {c.name: c.reason for c in long.choices}["augmentation"]
    data, _ = mr_series_dataset(tmp_path / "mr", {"train": 4})
    mr = prepare_dataset(decode_dataset(data, DataConfig(), seed=0), DataConfig(), TINY, CPU).plan
    assert mr.data.normalise == "zscore" and mr.data.target_spacing == (0.825, 0.825)
    assert "Modality CT in 0 of 4" in {c.name: c.reason for c in mr.choices}["normalisation"]
    given = prepare_dataset(decode_dataset(data, DataConfig(), seed=0), DataConfig(target_spacing="off", context=2),
                            TINY, CPU).plan
    assert given.data.target_spacing == "off" and given.data.context == 2


def test_slice_axis_and_window_given_on_the_command_line_are_kept(tmp_path: Path) -> None:
    """`--slice-axis z` slices the sagittal-like stacks along Z instead of their largest spacing (X);
    `--window` replaces the plan's CT normalisation, applied over the whole volume."""
    from medunet.cli import _join_negative_pairs, _settings, build_parser

    geometry = VolumeGeometry(shape=(8, 16, 6), spacing=(0.8, 0.8, 4.0), origin=(0, 0, 0),
                              direction=tuple(np.eye(3).ravel()))
    data = volume_dataset(tmp_path / "data", {"train": 3}, shape=(8, 16, 6), geometry=geometry)
    argv = ["train", str(data), "--slice-axis", "z", "--window", "-200,300", "--context", "0"]
    args = build_parser().parse_args(_join_negative_pairs(argv))
    data_cfg, _ = _settings(args)
    assert data_cfg.slice_axis == 0 and data_cfg.normalise == "window"
    dataset = prepare_dataset(decode_dataset(data, data_cfg, seed=0), data_cfg, TINY, CPU)
    assert dataset.plan.data.slice_axis == 0 and dataset.plan.data.normalise == "window"
    assert dataset.plan.data.input_channels == 1
    for volume, grid in zip(dataset.train.volumes, dataset.train.grids):
        assert grid.axis == 0 and volume.shape == (8, 16, 6)
        assert 0.0 <= float(volume.min()) and float(volume.max()) <= 1.0  # (clip(x, -200, 300) + 200) / 500
