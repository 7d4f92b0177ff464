"""demo(): the whole workflow on the embedded synthetic CT data — generate, train, evaluate, predict.

The demo trains for a fixed number of steps, not for a time budget, so its result is the same on a
fast and on a slow machine (only the wait differs). The recipe is chosen to stay light: training
crops of 128² from the 256² slices (the lesions need only local context: a bright blob inside a
dark gland), half of them centred on a lesion, and the `tiny` network (a quarter of `small`'s
work), so that 3,072 crops reach test Dice 0.93–0.94 (seeds 0, 1, 2; BENCHMARKS.md).

`volumes=True` runs the same workflow on synthetic CT-like volumes (NIfTI, `synthetic_volumes`):
every data setting is the plan's (CT normalisation from the HU values, 2.5D context, whole slices),
training a fixed DEMO_VOLUME_EPOCHS × DEMO_VOLUME_SAMPLES slices; test metrics are 3D per case.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from medunet.api.evaluate import evaluate
from medunet.api.predict import predict
from medunet.api.train import train
from medunet.config import DataConfig, TrainConfig
from medunet.data.synthetic import make_dataset
from medunet.data.synthetic_volumes import make_volume_dataset
from medunet.io.outputs import check_free, clear

logger = logging.getLogger(__name__)

DEMO_WINDOW_HU = (-200.0, 300.0)
# A soft-tissue window, as CT is read: a per-image z-score would let air and bone set the scale.
DEMO_DATA = DataConfig(normalise="window", window=DEMO_WINDOW_HU, size=128, scale=1, foreground_share=0.5)
DEMO_PRESET = "tiny"
DEMO_EPOCHS = 8
DEMO_SAMPLES_PER_EPOCH = 384
DEMO_BATCH = 8
DEMO_VOLUME_EPOCHS = 10
DEMO_VOLUME_SAMPLES = 320


def demo_config(seed: int = 0, device: str = "auto", precision: str = "auto", volumes: bool = False) -> TrainConfig:
    """The demo's training settings: a fixed length, whatever the machine's speed."""
    epochs, samples = (DEMO_VOLUME_EPOCHS, DEMO_VOLUME_SAMPLES) if volumes else (DEMO_EPOCHS, DEMO_SAMPLES_PER_EPOCH)
    return TrainConfig(preset=DEMO_PRESET, epochs=epochs, samples_per_epoch=samples, val_every=1,
                       batch=DEMO_BATCH, seed=seed, device=device, precision=precision)


def demo(out: Path = Path("runs/demo"), *, seed: int = 0, device: str = "auto", precision: str = "auto",
         counts: dict[str, int] | None = None, overwrite: bool = False, progress: bool = True,
         volumes: bool = False) -> dict:
    """Run the tutorial's workflow end to end into `out`; returns the test summary plus paths and time.

    `seed` seeds the training run; the generated data are the same for every seed. `volumes`: on
    synthetic CT-like volumes instead of slices.
    """
    out = Path(out)
    check_free(out, overwrite, "demo folder")
    clear(out)
    out.mkdir(parents=True)
    (out / ".medunet").write_text("medunet demo folder\n")
    start = time.perf_counter()
    data = (make_volume_dataset(out / "data", counts=counts, seed=0) if volumes
            else make_dataset(out / "data", counts=counts, seed=0))
    logger.info("demo data written to %s", data)
    run = train(data, out / "run", data_cfg=DataConfig() if volumes else DEMO_DATA,
                cfg=demo_config(seed, device, precision, volumes), overwrite=True, progress=progress)
    summary = evaluate(run, data / "test", out / "eval", device=device, precision=precision)
    predict(run, data / "test" / "image", out / "predictions", overlay=True, device=device, precision=precision,
            progress=progress)
    summary.update(run=str(run), data=str(data), predictions=str(out / "predictions"),
                   seconds=round(time.perf_counter() - start, 1))
    return summary
