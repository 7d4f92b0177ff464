"""What `last.pt` holds for resume beyond the weights, and how a run continues from it.

Every rank has its own random streams (crops, augmentation, dropout): rank 0 writes them all, its
own at the top of the snapshot and the others' under "rank_streams", so a resumed distributed run
draws what an uninterrupted one would have drawn.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from medunet.engine import distributed
from medunet.engine.distributed import World

logger = logging.getLogger(__name__)


@dataclass
class State:
    """Everything that changes during training (and what resume restores)."""

    epoch: int = 0
    elapsed: float = 0.0
    best_dice: float = -1.0
    best_epoch: int = 0
    lr_drops: int = 0            # plateaus so far (patience stop rule: each halves the learning rate)
    history: list[dict] = field(default_factory=list)


@dataclass
class Streams:
    """One rank's random streams."""

    rng: np.random.Generator          # crops (the sampler's)
    generator: torch.Generator        # augmentation

    def state(self) -> dict:
        out = dict(numpy_rng=self.rng.bit_generator.state, torch_rng=torch.get_rng_state(),
                   augment_rng=self.generator.get_state(), augment_rng_device=self.generator.device.type)
        if torch.cuda.is_available():
            out["cuda_rng"] = torch.cuda.get_rng_state_all()
        return out

    def restore(self, saved: dict, seed: int, epoch: int) -> None:
        self.rng.bit_generator.state = saved["numpy_rng"]
        torch.set_rng_state(saved["torch_rng"])
        _restore_generator(self.generator, saved, seed, epoch)
        if "cuda_rng" in saved and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])

    def reseed(self, seed: int, rank: int, epoch: int) -> None:
        """Fresh streams for a rank the snapshot has none for, reproducible from (seed, rank, epoch)."""
        base = distributed.rank_seed(seed, rank) * 1_000_003 + epoch
        self.rng.bit_generator.state = np.random.default_rng(base).bit_generator.state
        torch.manual_seed(base)
        self.generator.manual_seed(base)


def snapshot(state: State, optimiser: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
             model: torch.nn.Module, ema: AveragedModel | None, streams: list[dict]) -> dict:
    """Everything resume needs beyond the weights: optimiser, every rank's streams (`streams`, in
    rank order), progress, history."""
    snap = dict(epoch=state.epoch, elapsed=state.elapsed, best_dice=state.best_dice, best_epoch=state.best_epoch,
                lr_drops=state.lr_drops, history=state.history, optimiser=optimiser.state_dict(),
                scaler=scaler.state_dict(), world_size=len(streams), **streams[0])
    if len(streams) > 1:
        snap["rank_streams"] = streams[1:]
    if ema is not None:  # the checkpoint's weights are the average; training goes on from these
        snap["raw_weights"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        snap["ema_steps"] = int(ema.n_averaged)
    return snap


def restore(snap: dict, state: State, optimiser: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
            model: torch.nn.Module, ema: AveragedModel | None, streams: Streams, seed: int,
            world: World = distributed.SINGLE) -> None:
    """Continue from a `snapshot`, also on another device or with another number of processes.

    The optimiser's moments follow the parameters to their device. A rank the run did not have
    before starts streams seeded from the seed, its rank and the epoch (said in a warning).
    """
    if ema is not None and "raw_weights" in snap:  # the model was built from the average
        model.load_state_dict(snap["raw_weights"])
        ema.n_averaged.fill_(snap["ema_steps"])
    optimiser.load_state_dict(snap["optimiser"])
    if snap.get("scaler"):
        scaler.load_state_dict(snap["scaler"])
    epoch, saved = int(snap["epoch"]), int(snap.get("world_size", 1))
    if saved != world.size and world.main:
        logger.warning("resuming with %d process(es); the run had %d: ranks from %d on start new random streams "
                       "(training continues, not as an uninterrupted run would)", world.size, saved, saved)
    mine = snap if world.rank == 0 else _rank_streams(snap, world.rank)
    if mine is None:
        streams.reseed(seed, world.rank, epoch)
    else:
        streams.restore(mine, seed, epoch)
    state.epoch, state.elapsed, state.best_dice = epoch, snap["elapsed"], snap["best_dice"]
    state.best_epoch, state.lr_drops = snap.get("best_epoch", epoch), snap.get("lr_drops", 0)
    state.history = list(snap["history"])


def _rank_streams(snap: dict, rank: int) -> dict | None:
    others = snap.get("rank_streams") or []
    return others[rank - 1] if rank - 1 < len(others) else None


def _restore_generator(generator: torch.Generator, saved: dict, seed: int, epoch: int) -> None:
    """A generator's state only fits a generator of the same device type (a CUDA state is 16
    bytes, a CPU state 5,056): after a move between CPU and CUDA the augmentation stream restarts
    from the seed and the epoch, and the run is no longer bit-identical to an uninterrupted one."""
    saved_on = saved.get("augment_rng_device", generator.device.type)
    if saved_on == generator.device.type:
        try:
            generator.set_state(saved["augment_rng"])
            return
        except RuntimeError:  # a state from another device type, written before the device was recorded
            saved_on = "another device"
    generator.manual_seed(seed * 1_000_003 + epoch)
    logger.warning("the run moved from %s to %s: the augmentation random stream restarts from the seed "
                   "(training continues, not bit-identical to an uninterrupted run)", saved_on,
                   generator.device.type)
