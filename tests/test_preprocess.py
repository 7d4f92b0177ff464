"""The tutorial's preprocessing as options: normalisation, crop modes, augment-to-N on disk."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medunet.cli import main
from medunet.config import DataConfig
from medunet.data.cache import Cache
from medunet.data.pairs import find_pairs
from medunet.data.sampler import CropSampler, region
from medunet.engine.checkpoint import load_checkpoint
from medunet.errors import ConfigError
from medunet.io.images import read_image, read_label
from medunet.transforms.intensity import normalise


def test_normalisations() -> None:
    image = np.array([[0, 100], [200, 1000]], np.uint16)
    z = normalise(image, DataConfig())
    assert z.shape == (1, 2, 2) and abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-5
    mm = normalise(image, DataConfig(normalise="minmax"))
    assert mm.min() == 0.0 and mm.max() == 1.0
    win = normalise(image, DataConfig(normalise="window", window=(50.0, 250.0)))
    assert np.allclose(win[0], [[0.0, 0.25], [0.75, 1.0]])
    pct = normalise(np.arange(1000, dtype=np.float32).reshape(10, 100),
                    DataConfig(normalise="percentile", percentiles=(10.0, 90.0)))
    assert pct.min() == 0.0 and pct.max() == 1.0 and np.mean(pct == 1.0) > 0.09
    rgb = np.dstack([image, image * 0, image * 0]).astype(np.uint16)
    assert normalise(rgb, DataConfig(channels=3)).shape == (3, 2, 2)
    assert normalise(rgb, DataConfig(channels=1)).shape == (1, 2, 2)
    with pytest.raises(ConfigError, match="--window"):
        DataConfig(normalise="window")


def test_crop_regions() -> None:
    label = np.zeros((100, 120), np.uint8)
    label[40:50, 60:70] = 1
    assert region(label.shape, "random", 32, 5) == (0, 0, 100, 120)
    assert region(label.shape, "center", 32, 5) == (34, 44, 66, 76)
    assert region(label.shape, "label_box", 32, 5, label) == (29, 49, 61, 81)   # box ± 5 (20×20) grown to 32×32
    assert region(label.shape, "label_box", 8, 5, label) == (35, 55, 55, 75)    # box ± 5 when it exceeds the crop
    assert region((10, 10), "label_box", 32, 5, np.zeros((10, 10), np.uint8)) == (0, 0, 10, 10)
    corner = np.zeros((100, 120), np.uint8)
    corner[0:4, 116:120] = 1
    assert region(corner.shape, "label_box", 32, 5, corner) == (0, 88, 32, 120)   # grown inwards at the edges


def test_label_box_crops_show_real_surroundings_not_a_blank_canvas() -> None:
    """A box smaller than the crop used to be pasted on zeros: the network never saw real
    background away from the object. Every crop pixel must now come from the image."""
    rng = np.random.default_rng(0)
    label = np.zeros((200, 200), np.uint8)
    label[150:160, 20:30] = 1
    image = rng.uniform(1.0, 2.0, size=(1, 200, 200)).astype(np.float32)   # no zero anywhere
    sampler = CropSampler(Cache(["a"], [image], [label]), 64, rng, mode="label_box", margin=4)
    images, labels = sampler.batch(16)
    assert (images > 0).all()
    assert all(labels[i].any() for i in range(16))


def test_label_box_crops_hold_the_label_and_foreground_share() -> None:
    rng = np.random.default_rng(0)
    label = np.zeros((200, 200), np.uint8)
    label[150:160, 20:30] = 1
    cache = Cache(["a"], [rng.normal(size=(1, 200, 200)).astype(np.float32)], [label])
    boxed = CropSampler(cache, 32, rng, mode="label_box", margin=8)
    assert all(y[i].any() for y in [boxed.batch(8)[1]] for i in range(8))
    centred = CropSampler(cache, 32, rng, foreground_share=1.0)
    assert all(y[i].any() for y in [centred.batch(8)[1]] for i in range(8))
    plain = CropSampler(cache, 32, rng)
    assert sum(y[i].any() for y in [plain.batch(64)[1]] for i in range(64)) < 32


def test_augment_to_n_writes_pairs_that_open(disc_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "aug"
    assert main(["-q", "augment", str(disc_data / "train"), "--to", "13", "--out", str(out), "--preview", "6",
                 "--preset", "default"]) == 0
    pairs = find_pairs(out)
    assert len(pairs) == 13
    for pair in pairs:
        image, label = read_image(pair.image), read_label(pair.label).values
        assert image.shape == label.shape and image.dtype == np.uint8
        assert set(np.unique(label)) <= {0, 255}
    assert read_image(out / "preview.png").ndim == 3
    assert main(["-q", "augment", str(disc_data / "train"), "--to", "2", "--out", str(out)]) == 2


def test_centre_crop_training_is_recorded_and_predict_does_the_same(disc_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["-q", "train", str(disc_data), "--out", str(run), "--epochs", "1", "--size", "32", "--batch", "4",
                 "--samples-per-epoch", "4", "--device", "cpu", "--crop-mode", "center",
                 "--normalise", "minmax"]) == 0
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    assert ckpt.data_config.crop == "center" and ckpt.data_config.normalise == "minmax"
    out = tmp_path / "pred"
    assert main(["-q", "predict", str(run), str(disc_data / "test" / "image"), "--out", str(out),
                 "--threshold", "0.01", "--no-postprocess"]) == 0
    mask = read_image(out / "000.png")  # 61×77: only the centred 32×32 box can be foreground
    outside = mask.copy()
    outside[14:46, 22:54] = 0
    assert mask.shape == (61, 77) and not outside.any()
    # evaluate goes through the same Predictor and so sees the same centred crop
    ev = tmp_path / "eval"
    assert main(["-q", "evaluate", str(run), str(disc_data / "test"), "--out", str(ev),
                 "--threshold", "0.01", "--no-postprocess"]) == 0
    for predicted in out.glob("*.png"):
        assert np.array_equal(read_image(ev / "masks" / f"{predicted.stem}.png"), read_image(predicted))


def test_window_alone_means_window_normalisation(disc_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["-q", "train", str(disc_data), "--out", str(run), "--epochs", "1", "--size", "32", "--batch", "4",
                 "--samples-per-epoch", "4", "--device", "cpu", "--window", "-50,200"]) == 0
    cfg = load_checkpoint(run / "checkpoints" / "best.pt").data_config
    assert cfg.normalise == "window" and tuple(cfg.window) == (-50.0, 200.0)
