"""The plan: a fingerprint of the dataset, choices with reasons, the input scale, and the patience rule."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medunet.cli import main
from medunet.config import DataConfig, TrainConfig
from medunet.data.cache import RawSplit
from medunet.data.encoding import LabelEncoding
from medunet.data.fingerprint import fingerprint
from medunet.engine.planner import make_plan
from medunet.errors import ConfigError
from medunet.io.images import LabelFile
from medunet.transforms.geometry import Geometry, default_geometry
from medunet.transforms.resize import shrink_labels

CPU = torch.device("cpu")
BINARY = LabelEncoding((0, 255), "binary")


def raw_split(labels: list[np.ndarray]) -> RawSplit:
    images = [np.random.default_rng(i).integers(0, 255, lab.shape).astype(np.uint8) for i, lab in enumerate(labels)]
    return RawSplit([None] * len(labels), images, [LabelFile(Path(f"{i}.png"), lab, False, False)
                                                   for i, lab in enumerate(labels)])


def lines(h: int, w: int, width: int, n: int = 4) -> list[np.ndarray]:
    """Masks of vertical lines `width` px wide every 20 px (membrane- or vessel-like)."""
    mask = np.zeros((h, w), np.uint8)
    for x in range(5, w - width, 20):
        mask[:, x:x + width] = 255
    return [mask] * n


def discs(h: int, w: int, r: int, n: int = 4) -> list[np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    return [((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < r * r).astype(np.uint8) * 255] * n


def test_thickness_tells_thin_from_thick() -> None:
    thin = fingerprint(raw_split(lines(200, 300, 4)), BINARY).classes[0]
    thick = fingerprint(raw_split(discs(400, 500, 60)), BINARY).classes[0]
    assert 3.5 <= thin.thickness <= 4.5          # a line w px wide: 2·area/boundary ≈ w
    assert 60 <= thick.thickness <= 72           # a disc of radius r: ≈ 1.1 r (a pixel boundary is short of 2πr)
    assert thick.objects == 1 and 115 <= thick.extent <= 125
    assert thin.present == 1.0 and 0.15 < thin.share < 0.25


def plan_for(labels: list[np.ndarray], data: DataConfig | None = None, train: TrainConfig | None = None):
    fp = fingerprint(raw_split(labels), BINARY)
    return make_plan(fp, data or DataConfig(), train or TrainConfig(preset="tiny", device="cpu"), CPU, 1)


def test_thin_structures_keep_full_resolution_and_large_objects_are_seen_smaller() -> None:
    thin = plan_for(lines(512, 512, 7))
    assert thin.data.scale == 1 and thin.data.size == 256
    large = plan_for(discs(480, 560, 70))          # a lesion 140 px across in a 560×480 image
    assert large.data.scale == 4                   # 70/4 ≥ 8 px thick, short side 480/4 ≥ 64
    assert large.data.size == 144                  # 140×120 at 1/4: the whole image, padded to 16s
    small_images = plan_for(discs(200, 200, 60))   # thick, but a 200 px image stays ≥ 64 px only at 1/2
    assert small_images.data.scale == 2
    frames = plan_for(discs(288, 384, 50))         # a polyp-sized disc in a 384×288 frame
    assert frames.data.scale == 4                  # 55/4 ≥ 8 px thick, short side 288/4 = 72 ≥ 64
    reasons = {c.name: c.reason for c in large.choices}
    assert f"{large.fingerprint.thinnest:.1f} px thick" in reasons["input scale"]
    assert "whole images" in reasons["crop"]


def test_rare_foreground_is_oversampled() -> None:
    masks = [np.zeros((512, 512), np.uint8) for _ in range(4)]
    for m in masks:
        m[100:110, 200:210] = 255                  # 0.04% of the pixels
    assert plan_for(masks).data.foreground_share == pytest.approx(1 / 3)
    assert plan_for(lines(512, 512, 7)).data.foreground_share == 0.0


def test_given_settings_are_kept_and_marked_as_the_users() -> None:
    plan = plan_for(discs(480, 560, 70), DataConfig(scale=1, size=128), TrainConfig(preset="tiny", batch=3))
    assert (plan.data.scale, plan.data.size, plan.train.batch) == (1, 128, 3)
    sources = {c.name: c.source for c in plan.choices}
    assert sources["input scale"] == sources["crop"] == sources["batch"] == sources["model"] == "user"
    assert sources["foreground crops"] == "plan"
    assert plan.seconds_per_epoch and plan.seconds_per_epoch > 0


def test_augmentation_follows_how_often_the_run_sees_each_pixel() -> None:
    # 4 images of 512² cut into 256² crops: 2 epochs of 10 steps of 8 see each pixel 160/4/4 = 10 times
    fixed = TrainConfig(preset="tiny", device="cpu", batch=8, steps_per_epoch=10)
    many = plan_for(lines(512, 512, 7), train=replace(fixed, epochs=2))
    few = plan_for(lines(512, 512, 7, n=400), train=replace(fixed, epochs=2))   # 100× the images: 0.1 times
    assert many.train.augment == "default" and few.train.augment == "flips"
    assert "~10 times" in {c.name: c.reason for c in many.choices}["augmentation"]
    # 4 of 8 fingerprinted images are the validation split's: the same crops see the 4 that train 10 times
    pooled = fingerprint(raw_split(lines(512, 512, 7, n=8)), BINARY, n_validation=4)
    held_out = make_plan(pooled, DataConfig(), replace(fixed, epochs=2), CPU, 1)
    assert held_out.train.augment == "default"
    assert "of the 4 images" in {c.name: c.reason for c in held_out.choices}["augmentation"]
    patient = plan_for(lines(512, 512, 7, n=400))   # no epochs, no budget: trained until it stops improving
    assert patient.train.augment == "default"
    given = plan_for(lines(512, 512, 7, n=400), train=replace(fixed, epochs=2, augment="seed"))
    assert given.train.augment == "seed"
    assert {c.name: c.source for c in given.choices}["augmentation"] == "user"
    with pytest.raises(ConfigError, match="--augment must be auto or one of"):
        TrainConfig(augment="strong")


def test_a_short_budget_gets_fewer_epochs_not_epochs_too_short_to_train(monkeypatch) -> None:
    """20 epochs of a 2-minute budget would train 6 s each; an epoch trains MIN_EPOCH_SECONDS at least."""
    from medunet.engine import planner

    monkeypatch.setattr(planner, "_training_rate", lambda *args: 40.0)     # img/s, as if timed
    many = lines(512, 512, 7, n=4000)                                   # the images once: 250 steps (the cap)
    short = plan_for(many, train=TrainConfig(preset="tiny", device="cpu", time_budget=120))
    assert short.train.steps_per_epoch == int(planner.MIN_EPOCH_SECONDS * 40 / 8) == 100   # 20 s, not 6 s
    assert "epochs of 20 s" in {c.name: c.reason for c in short.choices}["epoch"]
    long = plan_for(many, train=TrainConfig(preset="tiny", device="cpu", time_budget=800))
    assert long.train.steps_per_epoch == 200                             # 20 epochs of 40 s fit 800 s


def test_geometry_with_a_scale_goes_down_and_back_to_the_original_grid() -> None:
    g = Geometry.whole(101, 77, scale=2)
    x = np.random.default_rng(0).random((3, 101, 77)).astype(np.float32)
    small = g.apply(x)
    assert small.shape == (3, 50, 38) and g.network_shape == (50, 38)
    assert np.isclose(small.mean(), x.mean(), atol=0.01)       # area averaging keeps the mean
    back = g.invert(np.full((1, 50, 38), 0.7, np.float32))
    assert back.shape == (1, 101, 77) and np.allclose(back, 0.7)
    centre = default_geometry(300, 200, DataConfig(crop="center", size=64, scale=2))
    assert centre.box == (86, 36, 128, 128) and centre.network_shape == (64, 64)


def test_labels_shrink_to_the_majority_class() -> None:
    labels = np.zeros((8, 8), np.uint8)
    labels[:, :4] = 2
    labels[0, 4] = 1                                # one stray pixel of class 1 in a 2×2 block
    small = shrink_labels(labels, (4, 4))
    assert small.dtype == np.uint8 and small.shape == (4, 4)
    assert (small[:, :2] == 2).all() and (small[:, 2:] == 0).all()


def write_disc_data(root: Path, n: int, h: int, w: int, r: int) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    for split, count in (("train", n), ("validation", 2), ("test", 2)):
        for sub in ("image", "label"):
            (root / split / sub).mkdir(parents=True)
        for i in range(count):
            cy, cx = rng.uniform(0.4, 0.6) * h, rng.uniform(0.4, 0.6) * w
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8) * 255
            image = np.clip(60 + 0.5 * mask + rng.normal(0, 10, (h, w)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / split / "image" / f"{i:02d}.png")
            Image.fromarray(mask).save(root / split / "label" / f"{i:02d}.png")
    return root


def test_a_planned_run_at_a_coarser_scale_predicts_full_size_masks(tmp_path: Path) -> None:
    data = write_disc_data(tmp_path / "data", 4, 240, 200, 50)   # 200/2 ≥ 64 px; 200/4 is not
    run = tmp_path / "run"
    assert main(["-q", "train", str(data), "--out", str(run), "--epochs", "2", "--samples-per-epoch", "8",
                 "--preset", "tiny", "--device", "cpu"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["scale"] == 2 and config["requested"]["data"]["scale"] is None
    assert {c["name"]: c["source"] for c in config["plan"]["choices"]}["input scale"] == "plan"
    out = tmp_path / "masks"
    assert main(["-q", "predict", str(run), str(data / "test" / "image"), "--out", str(out)]) == 0
    for path in sorted((data / "test" / "image").iterdir()):
        mask = np.asarray(Image.open(out / path.name))
        assert mask.shape == (240, 200) and set(np.unique(mask)) <= {0, 255}


def test_plan_command_prints_reasons_and_writes_json(disc_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "plan.json"
    assert main(["plan", str(disc_data), "--out", str(out), "--device", "cpu", "--batch", "2"]) == 0
    text = capsys.readouterr().out
    assert "input scale" in text and "thickness" in text and "(yours)" in text
    doc = json.loads(out.read_text())
    assert doc["train"]["batch"] == 2 and doc["fingerprint"]["n_images"] == 11


def test_patience_stops_a_run_that_no_longer_improves(disc_data: Path, tmp_path: Path, monkeypatch) -> None:
    """Without --epochs or --time the run ends `patience` epochs after its best validation Dice."""
    from medunet.engine import trainer

    scores = iter([0.5, 0.6, 0.55, 0.58, 0.59, 0.9, 0.95])
    monkeypatch.setattr(trainer, "validate", lambda predictor, val, world: next(scores))
    run = tmp_path / "run"
    assert main(["-q", "train", str(disc_data), "--out", str(run), "--patience", "3", "--size", "32",
                 "--samples-per-epoch", "4", "--batch", "4", "--preset", "tiny", "--device", "cpu"]) == 0
    rows = (run / "history.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == 5                                  # best at epoch 2, then 3 without improvement
    lrs = [float(r.split(",")[3]) for r in rows]
    assert lrs[-1] < lrs[0]                                # a plateau halved the learning rate
