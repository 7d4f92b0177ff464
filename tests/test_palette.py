"""Palette masks end to end: trained on palette PNGs, predicted and evaluated as palette PNGs with
the same colours and the same index values."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_split
from medunet.engine.checkpoint import load_checkpoint

FOREGROUND = 3   # not 1 or 255: the written indices must be the ones the labels used
PALETTE = tuple([0, 0, 0, 90, 90, 90, 0, 0, 255, 230, 40, 40] + [0] * 756)


def to_palette_labels(split: Path) -> None:
    """Rewrite a split's 0/255 disc masks as palette PNGs: index 0 background, 3 the disc."""
    for path in sorted((split / "label").iterdir()):
        with Image.open(path) as im:
            disc = np.asarray(im) > 0
        out = Image.fromarray(np.where(disc, FOREGROUND, 0).astype(np.uint8))
        out.putpalette(list(PALETTE))
        out.save(path)


@pytest.fixture(scope="module")
def palette_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run, data): a small run trained on palette-PNG masks; validation/test share the palette."""
    from medunet.api.train import train
    from medunet.config import DataConfig, TrainConfig

    root = tmp_path_factory.mktemp("palette")
    data = root / "data"
    write_split(data / "train", 6, [(64, 64)], seed=1)
    write_split(data / "validation", 2, [(64, 64)], seed=2)
    write_split(data / "test", 3, [(64, 64), (48, 80)], seed=3)
    for split in ("train", "validation", "test"):
        to_palette_labels(data / split)
    cfg = TrainConfig(epochs=1, batch=4, samples_per_epoch=8, device="cpu", preset="small")
    return train(data, root / "run", data_cfg=DataConfig(size=64), cfg=cfg, progress=False), data


def test_checkpoint_and_config_keep_the_palette(palette_run):
    run, _ = palette_run
    enc = load_checkpoint(run).encoding
    assert (enc.mode, enc.values, enc.palette) == ("binary", (0, FOREGROUND), PALETTE)
    stored = json.loads((run / "config.json").read_text())["label_encoding"]
    assert tuple(stored["palette"]) == PALETTE and "reason" in stored


def assert_palette_mask(path: Path, expected: np.ndarray) -> None:
    """`path` is a mode "P" PNG with PALETTE whose indices are `expected`."""
    with Image.open(path) as im:
        assert im.mode == "P"
        assert tuple(im.getpalette()) == PALETTE
        np.testing.assert_array_equal(np.asarray(im), expected)


def test_predicted_masks_are_palette_pngs(palette_run, tmp_path):
    from medunet.api.predict import predict
    from medunet.config import PredictConfig
    from medunet.engine.predictor import Predictor
    from medunet.io.images import read_image

    run, data = palette_run
    written = predict(run, data / "test" / "image", tmp_path / "out", device="cpu", progress=False)
    predictor = Predictor.from_checkpoint(run, PredictConfig(device="cpu"))
    assert len(written) == 3
    for path in written:
        expected = predictor.predict(read_image(data / "test" / "image" / path.name))
        assert set(np.unique(expected).tolist()) <= {0, FOREGROUND}
        assert_palette_mask(path, expected)


def test_evaluated_masks_are_palette_pngs(palette_run, tmp_path):
    from medunet.api.evaluate import evaluate

    run, data = palette_run
    summary = evaluate(run, data / "test", tmp_path / "eval", device="cpu")
    masks = sorted((Path(summary["out"]) / "masks").iterdir())
    assert len(masks) == 3
    for path in masks:
        with Image.open(path) as im:
            indices = np.asarray(im)
        assert set(np.unique(indices).tolist()) <= {0, FOREGROUND}
        assert_palette_mask(path, indices)
