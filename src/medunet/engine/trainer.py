"""fit(): the training loop as small functions — sample, augment, step, validate, checkpoint.

An epoch is a fixed number of optimiser steps (the plan's); validation and checkpoints follow every
`val_every` epochs and the last. Nothing is read back from the device per step (`engine.step`), batches
are cut ahead on CUDA (`engine.feeder`), and checkpoints are written in the background
(`engine.background`). Under torchrun every rank runs this loop on its share of the batch
(`engine.distributed`): rank 0 alone writes, and every decision that depends on the clock is
rank 0's, broadcast at epoch boundaries.
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from medunet.config import AugmentConfig, DataConfig, PredictConfig, TrainConfig
from medunet.data.cache import Cache
from medunet.data.encoding import LabelEncoding
from medunet.data.slice_sampler import build_sampler
from medunet.data.volume_cache import VolumeCache
from medunet.engine import distributed, step as steps
from medunet.engine.background import Writer, to_host
from medunet.engine.checkpoint import Checkpoint, save_checkpoint
from medunet.engine.device import keep_freed_memory
from medunet.engine.distributed import World
from medunet.engine.feeder import Feeder, build_feeder
from medunet.engine.planner import MIN_SAMPLES_PER_EPOCH
from medunet.engine.precision import Precision
from medunet.engine.predictor import Predictor
from medunet.engine.step import StepTally
from medunet.engine.train_state import State, Streams, restore, snapshot
from medunet.engine.validation import validate
from medunet.errors import MedunetError
from medunet.io.outputs import write_text
from medunet.losses import build_loss
from medunet.models.unet import UNet
from medunet.report.curves import plot_history
from medunet.transforms.augment import augment_batch

logger = logging.getLogger(__name__)

LOG_EVERY = 25                # steps between reads of the loss from the device (progress bar, divergence)

__all__ = ["Job", "State", "TrainingDiverged", "TrainingInterrupted", "fit", "learning_rate", "validate"]


class TrainingDiverged(MedunetError):
    """The loss stayed NaN/Inf; the last good checkpoint is kept."""


@dataclass
class Job:
    """What fit() needs besides the model, the data and the TrainConfig."""

    run_dir: Path
    data_cfg: DataConfig
    augment: AugmentConfig
    encoding: LabelEncoding
    device: torch.device
    batch: int                   # the global batch: split over the ranks of a torchrun job
    progress: bool = True
    area_stats: dict = field(default_factory=dict)
    precision: Precision = field(default_factory=Precision)
    data_summary: dict = field(default_factory=dict)   # counts, sizes, mirror images (model card, TTA)
    origin: dict = field(default_factory=dict)         # where the first weights came from (--init)
    world: World = field(default_factory=World)        # this process among the torchrun ranks

    @property
    def rank_batch(self) -> int:
        """This rank's share of the global batch (the caller checks that it divides)."""
        return self.batch // self.world.size


def fit(model: UNet, train: Cache | VolumeCache, val: Cache | VolumeCache, cfg: TrainConfig, job: Job,
        resume: dict | None = None) -> State:
    """Train `model` in place; writes checkpoints, history.csv and curves.png into `job.run_dir`
    (rank 0 alone, under torchrun).

    `resume` is the "train" dict of a `last.pt`: training continues after its epoch with the
    optimiser, RNG states and history it holds. Ctrl-C raises TrainingInterrupted after the last
    recorded epoch's `last.pt` is on disk.
    """
    with _determinism(cfg.deterministic):
        return _fit(model, train, val, cfg, job, resume)


@contextlib.contextmanager
def _determinism(on: bool) -> Iterator[None]:
    """Deterministic kernels for this run only (a caller's setting is restored afterwards); else
    cuDNN times its kernels once per shape and keeps the fastest."""
    before, benchmark = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(on or before)
    torch.backends.cudnn.benchmark = not (on or before)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.benchmark = benchmark


@dataclass
class Loop:
    """The moving parts of one training run, passed around as one."""

    model: UNet
    net: torch.nn.Module             # what a step runs: the model, or DDP around it, compiled or not
    optimiser: torch.optim.Optimizer
    feeder: Feeder
    loss_fn: object
    streams: Streams
    steps: int
    scaler: torch.amp.GradScaler     # loss scaling for fp16; a pass-through otherwise
    tally: StepTally
    ema: AveragedModel | None = None  # the average of the weights that is validated and saved
    writer: Writer = field(default_factory=Writer)
    saved_epoch: int = 0             # the epoch checkpoints/last.pt holds

    @property
    def evaluated(self) -> UNet:
        """The network validation scores and checkpoints hold: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.model


def _fit(model: UNet, train, val, cfg: TrainConfig, job: Job, resume: dict | None) -> State:
    loop = _build_loop(model, train, cfg, job)
    state = State()
    if resume is not None:
        restore(resume, state, loop.optimiser, loop.scaler, loop.model, loop.ema, loop.streams, cfg.seed, job.world)
    loop.saved_epoch = state.epoch
    predictor = Predictor(loop.evaluated, job.data_cfg, job.encoding, job.device,
                          PredictConfig(batch=job.rank_batch), precision=job.precision)
    try:
        while _should_continue(state, cfg):
            _run_epoch(loop, state, cfg, job, predictor, val)
        loop.writer.wait()
        _check_agreement(loop, job.world)
    except KeyboardInterrupt:
        _close(loop)
        raise TrainingInterrupted(loop.saved_epoch) from None
    except BaseException:
        _close(loop)
        raise
    return state


def _build_loop(model: UNet, train, cfg: TrainConfig, job: Job) -> Loop:
    seed = distributed.rank_seed(cfg.seed, job.world.rank)  # each rank its own crops, augmentation, dropout
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device=job.device).manual_seed(seed)
    if job.device.type == "cpu":
        keep_freed_memory()
    model.to(job.device, memory_format=job.precision.memory_format)
    net = distributed.wrap(model, job.world, job.device)
    sampler = build_sampler(train, job.data_cfg, rng)
    return Loop(model, _compiled(net, cfg.compile), steps.make_optimiser(model, cfg.lr, cfg.weight_decay),
                build_feeder(sampler, job.rank_batch, job.device), build_loss(model.cfg.out_channels),
                Streams(rng, generator), steps_per_epoch(cfg, len(train), job.batch),
                job.precision.scaler(job.device), StepTally(job.device), ema=_averaged(model, cfg.ema))


def _run_epoch(loop: Loop, state: State, cfg: TrainConfig, job: Job, predictor: Predictor, val) -> None:
    """One epoch of training; then, on the cadence and after the last epoch, validation and
    checkpoints. The clock is rank 0's, so every rank counts the same elapsed time."""
    start = time.perf_counter()
    loss = _train_epoch(loop, state, cfg, job)
    state.epoch += 1
    trained = job.world.broadcast(time.perf_counter() - start)
    state.elapsed += trained
    if state.epoch % (cfg.val_every or 1) and _should_continue(state, cfg):
        state.history.append(_row(state, loop, job, loss, float("nan"), trained))
        return
    job.world.broadcast_buffers(loop.evaluated)   # every rank validates rank 0's batch-norm statistics
    val_dice = validate(predictor, val, job.world)
    seconds = job.world.broadcast(time.perf_counter() - start)
    state.elapsed += seconds - trained
    _record(state, cfg, job, loop, loss, val_dice, seconds)


def steps_per_epoch(cfg: TrainConfig, n_train: int, batch: int) -> int:
    """Optimiser steps per epoch: `cfg.steps_per_epoch` (the plan's), else the crops of
    `cfg.samples_per_epoch` (or the training images, at least MIN_SAMPLES_PER_EPOCH) at `batch`."""
    if cfg.steps_per_epoch:
        return cfg.steps_per_epoch
    return math.ceil((cfg.samples_per_epoch or max(n_train, MIN_SAMPLES_PER_EPOCH)) / batch)


def _compiled(net: torch.nn.Module, on: bool) -> torch.nn.Module:
    """`torch.compile(net)` for `--compile`: the training step only (validation runs the plain
    module, whose image sizes vary)."""
    if not on:
        return net
    logger.info("compiling the training step (torch.compile): the first steps take longer")
    return torch.compile(net)


def _close(loop: Loop) -> None:
    """Stop the batch thread and let the checkpoint in hand reach the disk."""
    loop.feeder.close()
    loop.writer.wait()


def _averaged(model: UNet, decay: float) -> AveragedModel | None:
    """An exponential moving average of `model`'s weights and batch-norm statistics (`decay` per
    step), or None when `decay` is 0."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


class TrainingInterrupted(Exception):
    """Ctrl-C: `last.pt` holds the last recorded epoch (`epoch`)."""

    def __init__(self, epoch: int) -> None:
        super().__init__(epoch)
        self.epoch = epoch


def _should_continue(state: State, cfg: TrainConfig) -> bool:
    """Epoch limit, a time budget (stop before an epoch that would not end inside it), or patience."""
    return state.epoch == 0 or _epochs_left(state, cfg) >= 1


def _epochs_left(state: State, cfg: TrainConfig) -> float:
    """Epochs still to run: up to the epoch limit; with a time budget only those that fit in it at
    the mean epoch time so far; with neither, until validation has not improved for
    `cfg.patience` epochs (at most `cfg.max_epochs`): a count of epochs, whatever the machine's speed."""
    if cfg.epochs is None and cfg.time_budget is None:
        return max(min(cfg.max_epochs - state.epoch, state.best_epoch + cfg.patience - state.epoch), 0)
    left = cfg.epochs - state.epoch if cfg.epochs is not None else math.inf
    if cfg.time_budget is not None and state.epoch > 0 and state.elapsed > 0:
        left = min(left, (cfg.time_budget - state.elapsed) // (state.elapsed / state.epoch))
    return max(left, 0)


def learning_rate(cfg: TrainConfig, state: State, epoch_fraction: float, seconds_in: float) -> float:
    """Cosine decay to 5% over whichever runs out first: the epochs or the time budget; with the
    patience rule, halved at each plateau (half the patience without improvement)."""
    if cfg.epochs is None and cfg.time_budget is None:
        return cfg.lr * 0.5 ** state.lr_drops
    progress = 0.0
    if cfg.time_budget is not None:
        progress = (state.elapsed + seconds_in) / cfg.time_budget
    if cfg.epochs is not None:
        progress = max(progress, (state.epoch + epoch_fraction) / cfg.epochs)
    progress = min(progress, 1.0)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _train_epoch(loop: Loop, state: State, cfg: TrainConfig, job: Job) -> float:
    """One epoch of `loop.steps` steps; the mean loss of its good steps over all ranks (NaN when
    none was good).

    The learning rate comes from what every rank shares (epochs, rank 0's elapsed time, the mean
    epoch time so far), never from this rank's clock: ranks must not disagree on it.
    """
    loop.net.train()
    loop.tally.new_epoch()
    start = time.perf_counter()
    per_epoch = state.elapsed / state.epoch if state.epoch else 0.0
    bar = tqdm(range(loop.steps), desc=f"epoch {state.epoch + 1}", unit="batch", leave=False,
               disable=not (job.progress and job.world.main), dynamic_ncols=True)
    loop.feeder.start(loop.steps)
    for step in bar:
        fraction = step / loop.steps
        for group in loop.optimiser.param_groups:
            group["lr"] = learning_rate(cfg, state, fraction, fraction * per_epoch)
        x, y = loop.feeder.next()
        x, y = augment_batch(x, y, job.augment, loop.streams.generator)
        loss, ok = steps.train_step(loop.net, loop.model, loop.optimiser, loop.loss_fn, loop.scaler,
                                    x.contiguous(memory_format=job.precision.memory_format), y,
                                    job.precision.autocast(job.device))
        if loop.ema is not None:  # a skipped step leaves the weights as they were; the average takes them again
            loop.ema.update_parameters(loop.model)
        loop.tally.add(loss, ok)
        if (step + 1) % LOG_EVERY == 0 or step + 1 == loop.steps:
            _check_divergence(loop, job)
            rate = (step + 1) * job.batch / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loop.tally.mean_loss():.3f}", img_s=f"{rate:.1f}")
    skipped = loop.tally.skipped()
    if skipped:
        logger.warning("epoch %d: %d of %d steps skipped (non-finite loss or gradient)", state.epoch + 1,
                       skipped, loop.steps)
    return job.world.mean(loop.tally.mean_loss())


def _check_divergence(loop: Loop, job: Job) -> None:
    """Stop after MAX_BAD_STEPS non-finite steps in a row (the same on every rank: the verdict is
    taken on gradients averaged over them)."""
    worst = loop.tally.diverged()
    if worst:
        raise TrainingDiverged(f"{job.run_dir}: loss was NaN/Inf for {worst} steps in a row; "
                               "training stopped, checkpoints/last.pt holds the last good epoch "
                               "(try a lower --lr)")


def _row(state: State, loop: Loop, job: Job, loss: float, val_dice: float, seconds: float) -> dict:
    """The history.csv row of the epoch just trained (val_dice NaN between validations)."""
    rate = loop.steps * job.batch / seconds
    return dict(epoch=state.epoch, train_loss=round(loss, 5), val_dice=round(val_dice, 5),
                lr=f"{loop.optimiser.param_groups[0]['lr']:.3g}", seconds=round(seconds, 2),
                images_per_s=round(rate, 2))


def _record(state: State, cfg: TrainConfig, job: Job, loop: Loop, loss: float, val_dice: float,
            seconds: float) -> None:
    """History row, the best epoch and the patience rule's plateaus (on every rank: the same
    numbers), then best.pt when validation Dice improves and last.pt, written by rank 0."""
    state.history.append(_row(state, loop, job, loss, val_dice, seconds))
    # Until validation has something to score (NaN: every image empty in truth and prediction),
    # best.pt follows the latest epoch, so there always is one.
    improved = state.best_dice < 0 or val_dice > state.best_dice
    if not math.isnan(val_dice):
        state.best_dice = max(state.best_dice, val_dice)
    if improved:
        state.best_epoch = state.epoch
    else:  # a plateau each half patience without improvement: the patience rule halves the learning rate
        half, before = max(cfg.patience // 2, 1), max(state.epoch - (cfg.val_every or 1), state.best_epoch)
        state.lr_drops += (state.epoch - state.best_epoch) // half - (before - state.best_epoch) // half
    streams = job.world.gather(loop.streams.state())
    loop.saved_epoch = state.epoch
    if job.world.main:
        _save(state, job, loop, val_dice, improved, streams)
        budget = f"/{cfg.epochs}" if cfg.epochs else ""
        if cfg.epochs is None and cfg.time_budget is None:
            budget = f" (best {state.best_epoch}, patience {cfg.patience})"
        logger.info("epoch %d%s  loss %.4f  val Dice %.4f%s  %.1f img/s  %.0fs  ETA %s", state.epoch, budget, loss,
                    val_dice, "  (best)" if improved else "", state.history[-1]["images_per_s"], state.elapsed,
                    _eta(state, cfg))


def _save(state: State, job: Job, loop: Loop, val_dice: float, improved: bool, streams: list[dict]) -> None:
    """Copies on the host now; best.pt, history.csv, curves.png and last.pt (last: once it names
    epoch N, everything of epoch N is on disk) written in the background while training goes on."""
    weights = to_host(loop.evaluated.state_dict())
    snap = to_host(snapshot(state, loop.optimiser, loop.scaler, loop.model, loop.ema, streams))
    history = [dict(row) for row in state.history]
    ckpt_dir, epoch = job.run_dir / "checkpoints", state.epoch

    def checkpoint(train: dict) -> Checkpoint:
        return Checkpoint(loop.model.cfg, job.data_cfg, job.encoding, weights, train=train,
                          area_stats=job.area_stats, data_summary=job.data_summary, origin=job.origin)

    def write() -> None:
        if improved:
            save_checkpoint(ckpt_dir / "best.pt", checkpoint(dict(epoch=epoch, val_dice=val_dice)))
        write_history(job.run_dir / "history.csv", history)
        plot_history(history, job.run_dir / "curves.png")
        save_checkpoint(ckpt_dir / "last.pt", checkpoint(snap))

    loop.writer.submit(write)


def _check_agreement(loop: Loop, world: World) -> None:
    """At the end of a distributed run every rank must hold the same network (a digest of its
    weights and buffers, gathered). They do by construction; a difference is a bug, said loudly."""
    if not world.distributed:
        return
    digests = world.gather(distributed.digest(loop.evaluated))
    if len(set(digests)) > 1:
        raise RuntimeError(f"the ranks ended with different weights ({', '.join(digests)}): a bug in medunet")
    if world.main:
        logger.info("weights identical on all %d ranks (digest %s)", world.size, digests[0])


def _eta(state: State, cfg: TrainConfig) -> str:
    """Time left for the whole run: the epochs left at the mean epoch time."""
    per_epoch = state.elapsed / max(state.epoch, 1)
    seconds = int(_epochs_left(state, cfg) * per_epoch) if per_epoch > 0 else 0
    return f"{seconds // 60}m{seconds % 60:02d}s"


def write_history(path: Path, history: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    write_text(path, text.getvalue())
