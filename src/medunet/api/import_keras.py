"""import_keras(): a Keras model of the tutorial's U-Net → a medunet run folder.

The run holds `config.json` and `checkpoints/best.pt` with the tutorial's preprocessing recorded:
images divided by 255 (`--normalise window --window 0,255`, exact for 8-bit images), one sigmoid
channel written as a 0/255 mask, threshold 0.5. `predict`, `evaluate`, `tune RUN SPLIT_DIR`,
`export`, `info` and `train DATA --init RUN` take it like any run.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from medunet import __version__
from medunet.config import DataConfig, to_dict
from medunet.data.encoding import LabelEncoding
from medunet.engine.checkpoint import Checkpoint, save_checkpoint
from medunet.engine.metadata import preset_name
from medunet.engine.postprocess import PostprocessConfig
from medunet.errors import DataError
from medunet.io.keras import KerasFile, read_keras
from medunet.io.outputs import staged_folder, write_json
from medunet.models.keras_import import tutorial_unet

logger = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = 256   # the tutorial's input; used when the file does not say


def import_keras(model: Path, out: Path, *, input_size: int | None = None, threshold: float = 0.5,
                 overwrite: bool = False) -> Path:
    """Read `model` (Keras 2/3 `.h5`/`.hdf5`, or a `.weights.h5`), check it is the tutorial's U-Net
    (any base width and depth), and write a run folder `out`; returns `out`.

    `input_size` is recorded as the training crop (default: the Keras model's input side, else 256).
    """
    model, out = Path(model), Path(out)
    keras = read_keras(model)
    imported = tutorial_unet(keras)
    cfg = imported.model_config
    if cfg.in_channels not in (1, 3):
        raise DataError(f"{model}: the network takes {cfg.in_channels} input channels; medunet reads grey (1) "
                        "or RGB (3) images")
    data_cfg = DataConfig(size=input_size or _input_side(keras) or DEFAULT_INPUT_SIZE, channels=cfg.in_channels,
                          normalise="window", window=(0.0, 255.0))
    k = cfg.out_channels
    encoding = (LabelEncoding((0, 255), "binary", reason="the Keras tutorial's masks: 0/255") if k == 1
                else LabelEncoding(tuple(range(k)), "classes", reason="class ids of the Keras model's softmax"))
    origin = {"kind": "keras", "file": model.name, "layout": keras.layout, "keras_version": keras.keras_version,
              "architecture_checked": keras.has_architecture}
    post = PostprocessConfig(threshold=threshold)  # the tutorial's 0.5 unless asked
    ckpt = Checkpoint(cfg, data_cfg, encoding, imported.state_dict, postprocess=post.to_dict(),
                      train={"epoch": 0}, origin=origin)
    with staged_folder(out, overwrite, "run folder") as stage:
        save_checkpoint(stage / "checkpoints" / "best.pt", ckpt)
        write_json(stage / "config.json", {
            "version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "preset": preset_name(cfg),
            "data": to_dict(data_cfg), "model": to_dict(cfg), "label_encoding": encoding.to_dict(), "origin": origin})
    logger.info("imported %s (%s, %s) as %s: %s, base width %d, depth %d, %d in / %d out; preprocessing x/255, "
                "threshold %g", model.name, keras.layout, "architecture checked" if keras.has_architecture
                else "weights only: the tutorial's layer order assumed", out, preset_name(cfg), cfg.base_width,
                cfg.depth, cfg.in_channels, k, threshold)
    return out


def _input_side(keras: KerasFile) -> int | None:
    """The Keras model's input side when it is square and fixed (the tutorial's 256×256×1)."""
    shape = keras.input_shape
    if shape and shape[0] is not None and shape[0] == shape[1]:
        return int(shape[0])
    return None
