"""plan(): what `medunet train` would choose for a dataset, and why, without training."""
from __future__ import annotations

from pathlib import Path

from medunet.api.train import decode_dataset
from medunet.config import DataConfig, TrainConfig
from medunet.engine.device import resolve_device
from medunet.engine.planner import Plan, make_plan
from medunet.io.outputs import write_json


def plan(data: Path, *, data_cfg: DataConfig | None = None, cfg: TrainConfig | None = None,
         out: Path | None = None) -> Plan:
    """The plan for training on `data`; settings given in `data_cfg`/`cfg` are kept as the user's.

    Decodes the train and validation files (the same checks as `train`) and times a few training
    steps of the planned model on `cfg.device`. With `out`, the plan is also written there as JSON.
    """
    data_cfg, cfg = data_cfg or DataConfig(), cfg or TrainConfig()
    decoded = decode_dataset(Path(data), data_cfg, cfg.seed, cache=cfg.cache, cache_dir=cfg.cache_dir)
    n = decoded.encoding.n_classes
    result = make_plan(decoded.fingerprint, data_cfg, cfg, resolve_device(cfg.device), 1 if n == 2 else n)
    if out is not None:
        write_json(Path(out), result.to_dict())
    return result
