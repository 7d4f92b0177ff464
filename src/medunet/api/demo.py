"""demo(): the whole workflow on the embedded synthetic CT data — generate, train, evaluate, predict."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from medunet.api.evaluate import evaluate
from medunet.io.outputs import check_free, clear
from medunet.api.predict import predict
from medunet.api.train import train
from medunet.config import DataConfig, TrainConfig
from medunet.data.synthetic import make_dataset

logger = logging.getLogger(__name__)

# Training budget that keeps the whole demo within 5 minutes on 2 CPU cores.
DEMO_TRAIN_SECONDS = 200.0
DEMO_WINDOW_HU = (-200.0, 300.0)


def demo(out: Path = Path("runs/demo"), *, train_seconds: float = DEMO_TRAIN_SECONDS, device: str = "auto",
         counts: dict[str, int] | None = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Run the tutorial's workflow end to end into `out`; returns the test summary plus paths and time."""
    out = Path(out)
    check_free(out, overwrite, "demo folder")
    clear(out)
    out.mkdir(parents=True)
    (out / ".medunet").write_text("medunet demo folder\n")
    start = time.perf_counter()
    data = make_dataset(out / "data", counts=counts, seed=0)
    logger.info("demo data written to %s", data)
    cfg = TrainConfig(time_budget=train_seconds, device=device)
    # A soft-tissue window, as CT is read: a per-image z-score would let air and bone set the scale.
    data_cfg = DataConfig(normalise="window", window=DEMO_WINDOW_HU)
    run = train(data, out / "run", data_cfg=data_cfg, cfg=cfg, overwrite=True, progress=progress)
    summary = evaluate(run, data / "test", out / "eval", device=device)
    predict(run, data / "test" / "image", out / "predictions", overlay=True, device=device, progress=progress)
    summary.update(run=str(run), data=str(data), predictions=str(out / "predictions"),
                   seconds=round(time.perf_counter() - start, 1))
    return summary
