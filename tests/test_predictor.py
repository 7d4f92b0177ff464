"""Prediction geometry and inference options: exact paste-back, TTA, tiles, boxes, flags."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medunet.cli import main
from medunet.config import DataConfig, ModelConfig, PredictConfig
from medunet.data.encoding import LabelEncoding
from medunet.engine.checkpoint import load_checkpoint
from medunet.engine.predictor import Predictor, _warn_once
from medunet.io.images import read_image
from medunet.models.unet import UNet
from medunet.transforms.geometry import Geometry


@pytest.mark.parametrize("hw", [(37, 53), (64, 64), (5, 200)])
@pytest.mark.parametrize("make", [
    lambda h, w: Geometry.whole(h, w),
    lambda h, w: Geometry.centre_crop(h, w, 16),
    lambda h, w: Geometry.centre_crop(h, w, 500),   # larger than the image: taken whole
    lambda h, w: Geometry.from_box(h, w, 3, 1, 20, 30),
    lambda h, w: Geometry.from_box(h, w, -5, -5, 12, 9),  # clipped at the top-left corner
])
def test_paste_back_is_exact(hw: tuple[int, int], make) -> None:
    image = np.random.default_rng(0).integers(0, 1000, hw)
    g = make(*hw)
    pasted = g.invert(g.apply(image), fill=-1)
    y0, x0, h, w = g.box
    assert pasted.shape == hw
    assert np.array_equal(pasted[y0:y0 + h, x0:x0 + w], image[y0:y0 + h, x0:x0 + w])
    outside = np.ones(hw, bool)
    outside[y0:y0 + h, x0:x0 + w] = False
    assert np.all(pasted[outside] == -1)


def _predictor(cfg: PredictConfig, symmetric: bool = False) -> Predictor:
    torch.manual_seed(0)
    model = UNet(ModelConfig(base_width=4, depth=2, norm="none", dropout=0.0, head="plain"))
    if symmetric:  # every kernel flip-symmetric: the network commutes with flips
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3):
                    w = m.weight
                    w.copy_((w + w.flip(-1) + w.flip(-2) + w.flip(-1, -2)) / 4)
                if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (2, 2):
                    m.weight.copy_(m.weight.mean(dim=(-2, -1), keepdim=True).expand_as(m.weight))
    return Predictor(model, DataConfig(), LabelEncoding((0, 255), "binary"), torch.device("cpu"), cfg)


def test_single_clean_up_steps_override_the_stored_choice() -> None:
    from medunet.engine.postprocess import PostprocessConfig

    model = UNet(ModelConfig(base_width=4, depth=2, norm="none", dropout=0.0, head="plain"))
    stored = PostprocessConfig(threshold=0.3, min_size=5, fill_holes=True)

    def post(cfg: PredictConfig) -> PostprocessConfig:
        return Predictor(model, DataConfig(), LabelEncoding((0, 255), "binary"), torch.device("cpu"), cfg, stored).post

    assert post(PredictConfig()) == stored
    assert post(PredictConfig(keep_largest=2, fill_holes=False)) == PostprocessConfig(
        threshold=0.3, min_size=5, keep_largest=2, fill_holes=False)
    assert post(PredictConfig(postprocess=False, min_size=7)) == PostprocessConfig(min_size=7)


def test_tta_on_a_flip_symmetric_input_equals_no_tta() -> None:
    rng = np.random.default_rng(1)
    quarter = rng.normal(size=(16, 16))
    half = np.concatenate([quarter, quarter[:, ::-1]], axis=1)
    image = np.concatenate([half, half[::-1]], axis=0).astype(np.float32)  # symmetric under both flips
    plain = _predictor(PredictConfig()).outputs([image])[0]
    tta = _predictor(PredictConfig(tta="flips")).outputs([image])[0]
    assert plain.variance is None and tta.variance is not None
    np.testing.assert_allclose(tta.probs, plain.probs, atol=2e-2)  # bf16 autocast rounds a little
    assert float(tta.variance.max()) < 1e-3


def test_tta_averages_flipped_predictions() -> None:
    image = np.random.default_rng(2).normal(size=(32, 48)).astype(np.float32)
    p = _predictor(PredictConfig())
    flips = [p.outputs([image[:, ::-1].copy()])[0].probs[..., ::-1],
             p.outputs([image[::-1].copy()])[0].probs[..., ::-1, :],
             p.outputs([image[::-1, ::-1].copy()])[0].probs[..., ::-1, ::-1],
             p.outputs([image])[0].probs]
    tta = _predictor(PredictConfig(tta="flips")).outputs([image])[0].probs
    np.testing.assert_allclose(tta, np.mean(flips, axis=0), atol=1e-5)


def test_tta_keeps_to_the_mirror_images_training_showed(tiny_run: Path, caplog: pytest.LogCaptureFixture) -> None:
    from medunet.config import AugmentConfig, augment_preset, mirrored_views

    assert mirrored_views(augment_preset("none")) == []
    assert mirrored_views(augment_preset("flips")) == mirrored_views(augment_preset("default")) == [
        "horizontal", "vertical", "both"]
    assert mirrored_views(AugmentConfig(hflip_p=0.5)) == ["horizontal"]
    image = np.random.default_rng(4).normal(size=(32, 48)).astype(np.float32)
    model = _predictor(PredictConfig()).network.module

    def tta(mirrored: list[str] | None) -> np.ndarray:
        p = Predictor(model, DataConfig(), LabelEncoding((0, 255), "binary"), torch.device("cpu"),
                      PredictConfig(tta="flips"), mirrored=mirrored)
        return p.outputs([image])[0]

    plain = _predictor(PredictConfig()).outputs([image])[0].probs
    _warn_once.cache_clear()              # another test may have said it already
    with caplog.at_level(logging.WARNING, logger="medunet"):
        unseen = tta([])                  # trained without flips: TTA is the plain prediction
        tta([])                           # a second member of the same ensemble: said once
    assert unseen.variance is None and np.array_equal(unseen.probs, plain)
    assert sum("no mirror images" in r.getMessage() for r in caplog.records) == 1
    mirrored = _predictor(PredictConfig()).outputs([image[:, ::-1].copy()])[0].probs[..., ::-1]
    np.testing.assert_allclose(tta(["horizontal"]).probs, (plain + mirrored) / 2, atol=1e-5)
    assert [Predictor(model, DataConfig(), LabelEncoding((0, 255), "binary"), torch.device("cpu"),
                      PredictConfig(tta="flips"), mirrored=m).views for m in ([], ["horizontal"], None)] == [1, 2, 4]
    assert not np.allclose(tta(None).probs, tta(["horizontal"]).probs, atol=1e-4)   # old checkpoints: all four
    # a trained run records what its augmentation mirrored (tiny_run trains with flips)
    assert json.loads((tiny_run / "config.json").read_text())["augment"]["hflip_p"] > 0
    assert load_checkpoint(tiny_run).data_summary["mirrored"] == ["horizontal", "vertical", "both"]


def test_tiles_agree_with_whole_image_inside() -> None:
    image = np.random.default_rng(3).normal(size=(150, 210)).astype(np.float32)
    whole = _predictor(PredictConfig(max_size=1024)).outputs([image])[0].probs
    tiled = _predictor(PredictConfig(max_size=64, overlap=0.5)).outputs([image])[0].probs
    assert tiled.shape == whole.shape == (1, 150, 210)
    inner = (slice(None), slice(8, -8), slice(8, -8))
    assert float(np.abs(tiled[inner] - whole[inner]).mean()) < 0.02
    assert float(np.abs(tiled - whole).max()) < 0.25


def test_boxes_file_and_flags(tiny_run: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for stem, value in (("bright", 250), ("dark", 0)):
        Image.fromarray(np.full((50, 70), value, np.uint8)).save(images / f"{stem}.png")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("stem,x,y,w,h\nbright,10,5,20,30\n")
    out = tmp_path / "pred"
    assert main(["-q", "predict", str(tiny_run), str(images), "--out", str(out), "--boxes", str(boxes),
                 "--threshold", "0.01", "--no-postprocess", "--probabilities", "--tta", "flips"]) == 0
    mask = read_image(out / "bright.png")
    assert mask.shape == (50, 70)
    assert mask[5:35, 10:30].all() and mask.sum() == mask[5:35, 10:30].sum()
    assert read_image(out / "bright_prob.tif").shape == (50, 70)
    assert read_image(out / "bright_var.tif").shape == (50, 70)
    flagged = {r["stem"]: r["reason"] for r in csv.DictReader((out / "flags.csv").open())}
    stats = load_checkpoint(tiny_run / "checkpoints" / "best.pt").area_stats
    for stem in ("bright", "dark"):
        share = float(np.mean(read_image(out / f"{stem}.png") > 0))
        unusual = share == 0 or not stats["min"] / 2 <= share <= stats["max"] * 2
        assert (stem in flagged) == unusual, (stem, share, stats)
    assert "dark" in flagged  # a constant image: all foreground at threshold 0.01, or empty


def test_bad_boxes_file(tiny_run: Path, tmp_path: Path, capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(images / "a.png")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("a,1,2,three,4\n")
    assert main(["predict", str(tiny_run), str(images), "--out", str(tmp_path / "p"), "--boxes", str(boxes)]) == 2
    err = capsys.readouterr().err
    assert "boxes.csv" in err and "line 1" in err


def test_tiff_masks_keep_resolution_tags(tiny_run: Path, tmp_path: Path) -> None:
    import tifffile

    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", np.full((40, 30), 100, np.uint8), resolution=(20, 20),
                     resolutionunit="CENTIMETER")
    out = tmp_path / "pred"
    assert main(["-q", "predict", str(tiny_run), str(images), "--out", str(out)]) == 0
    with tifffile.TiffFile(out / "a.tif") as tif:
        page = tif.pages[0]
        assert page.shape == (40, 30)
        assert page.tags["XResolution"].value == (20, 1)
        assert int(page.tags["ResolutionUnit"].value) == 3  # centimetre


def test_large_images_are_batched_by_pixels_not_by_count() -> None:
    """Validation on CUDA used the training batch (32) on whole images: 32 × 1024² through the
    31 M network is ~25 GB of activations. Each forward call must stay within MAX_BATCH_PIXELS."""
    from medunet.engine import predictor as module

    model = UNet(ModelConfig(base_width=2, depth=2, norm="batch", head="plain"))
    seen: list[int] = []
    model.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0] * args[0].shape[-2] * args[0].shape[-1]))
    cfg = PredictConfig(batch=32, device="cpu", max_size=2048)
    predictor = Predictor(model, DataConfig(), LabelEncoding((0, 255), "binary"), torch.device("cpu"), cfg)
    images = [np.zeros((1, 1024, 1024), np.float32)] * 5 + [np.zeros((1, 64, 64), np.float32)] * 40
    outputs = predictor.predict_normalised(images)
    assert [o.probs.shape for o in outputs] == [(1, 1024, 1024)] * 5 + [(1, 64, 64)] * 40
    assert max(seen) == 1024 * 1024          # one large image at a time: over the CPU budget alone
    assert all(n <= module.MAX_BATCH_PIXELS["cpu"] for n in seen if n != 1024 * 1024)
    assert sum(seen) == 5 * 1024 * 1024 + 40 * 64 * 64
    assert seen.count(32 * 64 * 64) == 1     # small images still go 32 at a time
