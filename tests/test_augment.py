"""Batch augmentation: image and label stay aligned, labels keep their ids, seeds reproduce."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter

from medunet.config import AUGMENT_PRESETS, AugmentConfig, augment_preset, from_dict, mirrored_views, to_dict
from medunet.errors import ConfigError
from medunet.transforms.augment import augment_batch

GEOMETRY = {
    "rotate": dict(rotate_p=1.0, rotate_deg=30.0),
    "shift": dict(shift_p=1.0, shift=0.2),
    "shear": dict(shear_p=1.0, shear=20.0),
    "zoom": dict(zoom_p=1.0, zoom=0.3),
    "zoom_aniso": dict(zoom_p=1.0, zoom_aniso=0.3),
    "hflip": dict(hflip_p=1.0),
    "vflip": dict(vflip_p=1.0),
    "rot90": dict(rot90_p=1.0),
    "elastic": dict(elastic_p=1.0, elastic_alpha=4.0, elastic_grid=4),
}
GEOMETRY["all"] = {k: v for params in GEOMETRY.values() for k, v in params.items()}
INTENSITY = dict(brightness_p=1.0, brightness=0.2, contrast_p=1.0, contrast=0.3, gamma_p=1.0, gamma=0.5,
                 noise_p=1.0, noise_std=0.2, blur_p=1.0, blur_sigma=(0.5, 1.5))
FILLS = ("nearest", "reflect", "constant")


def smooth_batch(batch: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, H, W) smooth z-scored noise and its sign as a (B, H, W) binary label."""
    noise = np.random.default_rng(seed).standard_normal((batch, 1, height, width))
    image = gaussian_filter(noise, sigma=(0, 0, 4, 4))
    image /= image.std(axis=(1, 2, 3), keepdims=True)
    image = torch.from_numpy(image).float()
    return image, (image[:, 0] > 0).long()


def blob_labels(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """(B, H, W) labels with class ids {0, 2, 5} in smooth blobs."""
    image, _ = smooth_batch(batch, height, width, seed)
    values = image[:, 0]
    return torch.where(values > 0.5, 5, torch.where(values < -0.5, 2, 0))


def run(image, label, seed=0, **params):
    return augment_batch(image, label, AugmentConfig(**params), torch.Generator().manual_seed(seed))


def far_from_edges(label: torch.Tensor, border: int = 4, margin: int = 2) -> torch.Tensor:
    """(B, H, W) bool: pixels `border` px inside the image and `margin` px from a label change."""
    lab = label[:, None].float()
    size = 2 * margin + 1
    high = F.max_pool2d(lab, size, stride=1, padding=margin)
    low = -F.max_pool2d(-lab, size, stride=1, padding=margin)
    keep = (high == low)[:, 0]
    keep[:, :border] = keep[:, -border:] = False
    keep[:, :, :border] = keep[:, :, -border:] = False
    return keep


@pytest.mark.parametrize("name", sorted(GEOMETRY))
@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 4), height=st.integers(64, 96),
       width=st.integers(64, 80), fill=st.sampled_from(FILLS), seed=st.integers(0, 2**31 - 1))
def test_geometry_keeps_image_and_label_aligned(name, batch, height, width, fill, seed):
    image, label = smooth_batch(batch, height, width, seed)
    out_image, out_label = run(image, label, seed, fill=fill, **GEOMETRY[name])
    keep = far_from_edges(out_label)
    assert keep.sum() > 100
    agree = ((out_image[:, 0] > 0).long() == out_label)[keep].float().mean().item()
    assert agree >= 0.99, f"{name}: image and label agree on {agree:.3f} of the pixels"


@pytest.mark.parametrize("name", sorted(GEOMETRY))
def test_each_geometric_transform_moves_something(name):
    image, label = smooth_batch(8, 64, 64, seed=1)
    out_image, out_label = run(image, label, **GEOMETRY[name])
    assert not torch.equal(out_image, image) and not torch.equal(out_label, label)


@settings(max_examples=15, deadline=None)
@given(fill=st.sampled_from(FILLS), seed=st.integers(0, 2**31 - 1),
       preset=st.sampled_from(["seed", "default", "all"]))
def test_labels_keep_their_class_ids(fill, seed, preset):
    label = blob_labels(4, 64, 72, seed)
    image = label[:, None].float() + 0.1 * torch.randn(4, 1, 64, 72)
    params = GEOMETRY["all"] if preset == "all" else AUGMENT_PRESETS[preset]
    _, out_label = run(image, label, seed, **{**params, "fill": fill})
    assert set(out_label.unique().tolist()) <= {0, 2, 5}
    assert out_label.dtype == torch.int64


def test_none_preset_returns_the_input_exactly():
    image, label = smooth_batch(4, 64, 64, seed=2)
    out_image, out_label = augment_batch(image, label, augment_preset("none"), torch.Generator().manual_seed(0))
    assert torch.equal(out_image, image) and torch.equal(out_label, label)


def test_zero_ranges_with_probability_one_change_nothing():
    zero = dict(rotate_p=1.0, shift_p=1.0, shear_p=1.0, zoom_p=1.0, elastic_p=1.0, brightness_p=1.0,
                contrast_p=1.0, gamma_p=1.0, noise_p=1.0, blur_p=1.0)
    image, label = smooth_batch(4, 64, 80, seed=3)
    out_image, out_label = run(image, label, **zero)
    assert torch.allclose(out_image, image, atol=1e-4)
    assert torch.equal(out_label, label)


def test_input_is_not_modified():
    image, label = smooth_batch(8, 64, 64, seed=4)
    before = image.clone(), label.clone()
    run(image, label, **AUGMENT_PRESETS["default"])
    run(image, label, **{**GEOMETRY["all"], **INTENSITY})
    assert torch.equal(image, before[0]) and torch.equal(label, before[1])


def test_unmoved_samples_are_bit_identical_and_flips_exact():
    image, label = smooth_batch(16, 48, 64, seed=5)
    out_image, out_label = run(image, label, hflip_p=0.5)
    flipped = 0
    for i in range(16):
        if torch.equal(out_image[i], image[i]):
            assert torch.equal(out_label[i], label[i])
        else:
            flipped += 1
            assert torch.equal(out_image[i], image[i].flip(-1))
            assert torch.equal(out_label[i], label[i].flip(-1))
    assert 0 < flipped < 16


@pytest.mark.parametrize("height, width", [(64, 64), (48, 80)])
def test_rot90_is_exact_and_only_180_when_not_square(height, width):
    image, label = smooth_batch(16, height, width, seed=6)
    out_image, out_label = run(image, label, rot90_p=1.0)
    assert out_image.shape == image.shape and out_label.shape == label.shape
    turns = [0, 1, 2, 3] if height == width else [0, 2]
    seen = set()
    for i in range(16):
        k = next(k for k in turns if torch.equal(out_image[i], torch.rot90(image[i], k, (-2, -1))))
        assert torch.equal(out_label[i], torch.rot90(label[i], k, (-2, -1)))
        seen.add(k)
    assert len(seen) > 1


@pytest.mark.parametrize("preset", sorted(AUGMENT_PRESETS))
def test_shapes_dtypes_for_non_square_batches(preset):
    image, label = smooth_batch(3, 40, 72, seed=7)
    image = image.repeat(1, 3, 1, 1)
    out_image, out_label = augment_batch(image, label, augment_preset(preset), torch.Generator().manual_seed(0))
    assert out_image.shape == (3, 3, 40, 72) and out_image.dtype == torch.float32
    assert out_label.shape == (3, 40, 72) and out_label.dtype == torch.int64
    assert torch.isfinite(out_image).all()


def test_same_seed_same_batch_other_seed_other_batch():
    image, label = smooth_batch(8, 64, 64, seed=8)
    params = {**GEOMETRY["all"], **INTENSITY}
    first, again, other = (run(image, label, seed, **params) for seed in (11, 11, 12))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("fill", FILLS)
def test_fill_modes_after_a_big_shift(fill):
    label = torch.full((8, 64, 64), 2)
    image = 1.0 + torch.rand(8, 1, 64, 64)
    out_image, out_label = run(image, label, seed=3, shift_p=1.0, shift=0.45, fill=fill)
    corners = out_image[:, 0][:, [0, 0, -1, -1], [0, -1, 0, -1]]
    if fill == "constant":
        assert (corners == 0).any(dim=1).sum() >= 6
        assert (out_label[out_image[:, 0] == 0] == 0).all()
        assert set(out_label.unique().tolist()) == {0, 2}
    else:
        assert (out_image > 0).all() and (out_label == 2).all()


def test_intensity_ranges():
    image, label = smooth_batch(6, 64, 64, seed=9)
    out, _ = run(image, label, brightness_p=1.0, brightness=0.3)
    shift = (out - image).flatten(1)
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-5) and shift.abs().max() <= 0.3
    out, _ = run(image, label, contrast_p=1.0, contrast=0.5)
    assert torch.allclose(out.mean((1, 2, 3)), image.mean((1, 2, 3)), atol=1e-5)
    out, _ = run(image, label, gamma_p=1.0, gamma=1.0)
    assert torch.allclose(out.amin((1, 2, 3)), image.amin((1, 2, 3)), atol=1e-5)
    assert torch.allclose(out.amax((1, 2, 3)), image.amax((1, 2, 3)), atol=1e-5)
    noise = torch.randn(6, 1, 64, 64)
    out, _ = run(noise, label, blur_p=1.0, blur_sigma=(1.0, 2.0))
    assert (out.std((1, 2, 3)) < 0.5 * noise.std((1, 2, 3))).all()
    assert torch.allclose(out.mean((1, 2, 3)), noise.mean((1, 2, 3)), atol=0.05)
    out, _ = run(image, label, noise_p=1.0, noise_std=0.5)
    assert ((out - image).std((1, 2, 3)) <= 0.55).all() and not torch.equal(out, image)


def test_presets_build_and_round_trip():
    for name in AUGMENT_PRESETS:
        cfg = augment_preset(name)
        assert from_dict(AugmentConfig, to_dict(cfg)) == cfg
    assert augment_preset("none") == AugmentConfig()
    assert augment_preset("flips") == AugmentConfig(hflip_p=0.5, vflip_p=0.5)
    # upright: the default without mirrors and turns, so TTA has no mirror image to average
    upright, default = augment_preset("upright"), augment_preset("default")
    assert upright == dataclasses.replace(default, hflip_p=0.0, vflip_p=0.0, rot90_p=0.0)
    assert mirrored_views(upright) == [] and mirrored_views(default) == ["horizontal", "vertical", "both"]


@pytest.mark.parametrize("bad, words", [
    (dict(rotate_p=1.5), "rotate_p"), (dict(hflip_p=-0.1), "hflip_p"), (dict(shift=1.0), "shift"),
    (dict(zoom=-0.1), "zoom"), (dict(shear=90.0), "shear"), (dict(elastic_grid=1), "elastic_grid"),
    (dict(elastic_alpha=-1.0), "elastic_alpha"), (dict(blur_sigma=(2.0, 1.0)), "blur_sigma"),
    (dict(contrast=1.0), "contrast"), (dict(fill="wrap"), "fill"),
])
def test_bad_config_raises_config_error(bad, words):
    with pytest.raises(ConfigError, match=words):
        AugmentConfig(**bad)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="none, flips, seed, default"):
        augment_preset("strong")


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="label"):
        augment_batch(torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 9, dtype=torch.long), AugmentConfig(),
                      torch.Generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("generator_device", ["cpu", "cuda"])
def test_cuda_batch_stays_on_device_and_reproduces(generator_device):
    image, label = smooth_batch(4, 64, 64, seed=10)
    image, label = image.cuda(), label.cuda()
    cfg = dataclasses.replace(augment_preset("default"), elastic_p=1.0, blur_p=1.0, noise_p=1.0)
    outs = [augment_batch(image, label, cfg, torch.Generator(generator_device).manual_seed(5)) for _ in range(2)]
    assert outs[0][0].device == image.device and outs[0][1].device == label.device
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_samples_without_intensity_changes_are_bit_identical():
    image, label = smooth_batch(16, 32, 32, seed=11)
    out, _ = run(image, label, brightness_p=0.3, brightness=0.2, contrast_p=0.3, contrast=0.2,
                 gamma_p=0.3, gamma=0.3, noise_p=0.3, noise_std=0.1, blur_p=0.3, blur_sigma=(1.0, 1.0))
    same = [torch.equal(out[i], image[i]) for i in range(16)]
    assert 0 < sum(same) < 16
