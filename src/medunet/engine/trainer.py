"""fit(): the training loop as small functions — sample, augment, step, validate, checkpoint."""
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
from medunet.data.sampler import CropSampler
from medunet.data.slice_sampler import SliceSampler, build_sampler
from medunet.data.volume_cache import VolumeCache
from medunet.engine.checkpoint import Checkpoint, save_checkpoint
from medunet.engine.device import keep_freed_memory
from medunet.engine.precision import Precision
from medunet.engine.predictor import Predictor
from medunet.engine.volume_predictor import validate_volumes
from medunet.errors import MedunetError
from medunet.io.outputs import write_text
from medunet.losses import build_loss
from medunet.metrics import mean_dice
from medunet.models.unet import UNet
from medunet.report.curves import plot_history
from medunet.transforms.augment import augment_batch

logger = logging.getLogger(__name__)

MIN_SAMPLES_PER_EPOCH = 200   # tiny datasets still get epochs long enough to be worth validating
MAX_BAD_STEPS = 20            # consecutive non-finite losses before training gives up


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
    batch: int
    progress: bool = True
    area_stats: dict = field(default_factory=dict)
    precision: Precision = field(default_factory=Precision)
    data_summary: dict = field(default_factory=dict)   # counts and sizes, for the model card
    origin: dict = field(default_factory=dict)         # where the first weights came from (--init)


@dataclass
class State:
    """Everything that changes during training (and what resume restores)."""

    epoch: int = 0
    elapsed: float = 0.0
    best_dice: float = -1.0
    best_epoch: int = 0
    lr_drops: int = 0            # plateaus so far (patience stop rule: each halves the learning rate)
    history: list[dict] = field(default_factory=list)


def fit(model: UNet, train: Cache, val: Cache, cfg: TrainConfig, job: Job,
        resume: dict | None = None) -> State:
    """Train `model` in place; writes checkpoints, history.csv and curves.png into `job.run_dir`.

    `resume` is the "train" dict of a `last.pt`: training continues after its epoch with the
    optimiser, RNG states and history it holds. Ctrl-C raises TrainingInterrupted after the last
    completed epoch's `last.pt` is on disk.
    """
    with _determinism(cfg.deterministic):
        return _fit(model, train, val, cfg, job, resume)


@contextlib.contextmanager
def _determinism(on: bool) -> Iterator[None]:
    """Deterministic kernels for this run only; a Python caller's setting is restored afterwards."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(on or before)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _fit(model: UNet, train: Cache, val: Cache, cfg: TrainConfig, job: Job, resume: dict | None) -> State:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator(device=job.device).manual_seed(cfg.seed)
    if job.device.type == "cpu":
        keep_freed_memory()
    model.to(job.device, memory_format=job.precision.memory_format)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = build_sampler(train, job.data_cfg, rng)
    loop = Loop(model, optimiser, sampler, build_loss(model.cfg.out_channels), generator, rng,
                math.ceil((cfg.samples_per_epoch or max(len(train), MIN_SAMPLES_PER_EPOCH)) / job.batch),
                job.precision.scaler(job.device), ema=_averaged(model, cfg.ema))
    state = State()
    if resume is not None:
        _restore(resume, loop, state, cfg.seed)
    predictor = Predictor(loop.evaluated, job.data_cfg, job.encoding, job.device, PredictConfig(batch=job.batch),
                          precision=job.precision)
    try:
        while _should_continue(state, cfg):
            start = time.perf_counter()
            loss = _train_epoch(loop, state, cfg, job)
            val_dice = validate(predictor, val)
            seconds = time.perf_counter() - start
            state.elapsed += seconds
            state.epoch += 1
            _record(state, cfg, job, loop, loss, val_dice, seconds)
    except KeyboardInterrupt:
        raise TrainingInterrupted(state.epoch) from None
    return state


@dataclass
class Loop:
    """The moving parts of one training run, passed around as one."""

    model: UNet
    optimiser: torch.optim.Optimizer
    sampler: CropSampler | SliceSampler
    loss_fn: object
    generator: torch.Generator
    rng: np.random.Generator
    steps: int
    scaler: torch.amp.GradScaler     # loss scaling for fp16; a pass-through otherwise
    bad_steps: int = 0  # consecutive non-finite steps, across epoch boundaries (short epochs on CUDA)
    ema: AveragedModel | None = None  # the average of the weights that is validated and saved

    @property
    def evaluated(self) -> UNet:
        """The network validation scores and checkpoints hold: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.model


def _averaged(model: UNet, decay: float) -> AveragedModel | None:
    """An exponential moving average of `model`'s weights and batch-norm statistics (`decay` per
    step), or None when `decay` is 0."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


class TrainingInterrupted(Exception):
    """Ctrl-C: `last.pt` holds the last completed epoch (`epoch`)."""

    def __init__(self, epoch: int) -> None:
        super().__init__(epoch)
        self.epoch = epoch


def _snapshot(loop: Loop, state: State, cfg: TrainConfig) -> dict:
    """Everything resume needs beyond the weights: optimiser, RNG streams, progress, history."""
    snap = dict(epoch=state.epoch, elapsed=state.elapsed, best_dice=state.best_dice, best_epoch=state.best_epoch,
                lr_drops=state.lr_drops, history=state.history,
                optimiser=loop.optimiser.state_dict(), numpy_rng=loop.rng.bit_generator.state,
                torch_rng=torch.get_rng_state(), augment_rng=loop.generator.get_state(),
                augment_rng_device=loop.generator.device.type, scaler=loop.scaler.state_dict())
    if loop.ema is not None:  # the checkpoint's weights are the average; training goes on from these
        snap["raw_weights"] = {k: v.detach().cpu().clone() for k, v in loop.model.state_dict().items()}
        snap["ema_steps"] = int(loop.ema.n_averaged)
    if torch.cuda.is_available():
        snap["cuda_rng"] = torch.cuda.get_rng_state_all()
    return snap


def _restore(snap: dict, loop: Loop, state: State, seed: int) -> None:
    """Continue from a `_snapshot`, also on another device than the one that wrote it.

    The optimiser's moments follow the parameters to their device. A generator's state only fits a
    generator of the same device type (a CUDA state is 16 bytes, a CPU state 5,056), so after a move
    between CPU and CUDA the augmentation stream restarts from the seed and the epoch: the run goes
    on, but is no longer bit-identical to an uninterrupted one.
    """
    if loop.ema is not None and "raw_weights" in snap:  # the model was built from the average
        loop.model.load_state_dict(snap["raw_weights"])
        loop.ema.n_averaged.fill_(snap["ema_steps"])
    loop.optimiser.load_state_dict(snap["optimiser"])
    loop.rng.bit_generator.state = snap["numpy_rng"]
    torch.set_rng_state(snap["torch_rng"])
    _restore_generator(loop.generator, snap, seed)
    if snap.get("scaler"):
        loop.scaler.load_state_dict(snap["scaler"])
    if "cuda_rng" in snap and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(snap["cuda_rng"])
    state.epoch, state.elapsed, state.best_dice = snap["epoch"], snap["elapsed"], snap["best_dice"]
    state.best_epoch, state.lr_drops = snap.get("best_epoch", snap["epoch"]), snap.get("lr_drops", 0)
    state.history = list(snap["history"])


def _restore_generator(generator: torch.Generator, snap: dict, seed: int) -> None:
    saved_on = snap.get("augment_rng_device", generator.device.type)
    if saved_on == generator.device.type:
        try:
            generator.set_state(snap["augment_rng"])
            return
        except RuntimeError:  # a state from another device type, written before the device was recorded
            saved_on = "another device"
    generator.manual_seed(seed * 1_000_003 + int(snap["epoch"]))
    logger.warning("the run moved from %s to %s: the augmentation random stream restarts from the seed "
                   "(training continues, not bit-identical to an uninterrupted run)", saved_on,
                   generator.device.type)


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
    loop.model.train()
    start = time.perf_counter()
    losses = []
    bar = tqdm(range(loop.steps), desc=f"epoch {state.epoch + 1}", unit="batch", leave=False,
               disable=not job.progress, dynamic_ncols=True)
    for step in bar:
        for group in loop.optimiser.param_groups:
            group["lr"] = learning_rate(cfg, state, step / loop.steps, time.perf_counter() - start)
        images, labels = loop.sampler.batch(job.batch)
        x = torch.from_numpy(images).to(job.device, non_blocking=True)
        y = torch.from_numpy(labels).to(job.device, non_blocking=True)
        x, y = augment_batch(x, y, job.augment, loop.generator)
        loss = _step(loop, x.contiguous(memory_format=job.precision.memory_format), y, job)
        if loss is None:
            loop.bad_steps += 1
            logger.warning("epoch %d step %d: non-finite loss or gradient, step skipped", state.epoch + 1, step + 1)
            if loop.bad_steps >= MAX_BAD_STEPS:
                raise TrainingDiverged(f"{job.run_dir}: loss was NaN/Inf for {loop.bad_steps} steps in a row; "
                                       "training stopped, checkpoints/last.pt holds the last good epoch "
                                       "(try a lower --lr)")
            continue
        loop.bad_steps = 0
        losses.append(loss)
        rate = (step + 1) * job.batch / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{rate:.1f}")
    return float(np.mean(losses)) if losses else float("nan")


def _step(loop: Loop, x: torch.Tensor, y: torch.Tensor, job: Job) -> float | None:
    """One optimiser step; None (and no update) when the loss or a gradient is not finite, so NaN
    never reaches the weights or a checkpoint.

    With fp16 loss scaling the scaler finds non-finite gradients itself: it skips the update and
    halves its scale. An overflow now and then is how it finds its scale; a skipped step still
    counts as bad, so that gradients that stay NaN (not an overflow) stop the run after
    MAX_BAD_STEPS in a row, as in fp32, instead of halving the scale towards zero unnoticed.
    """
    loop.optimiser.zero_grad(set_to_none=True)
    with job.precision.autocast(job.device):
        logits = loop.model(x)
    loss = loop.loss_fn(logits, y)
    if not torch.isfinite(loss):
        return None
    if loop.scaler.is_enabled():
        scale = loop.scaler.get_scale()
        loop.scaler.scale(loss).backward()
        loop.scaler.step(loop.optimiser)
        loop.scaler.update()
        if loop.scaler.get_scale() < scale:
            return None
        if loop.ema is not None:
            loop.ema.update_parameters(loop.model)
        return float(loss.detach())
    loss.backward()
    if not torch.isfinite(total_norm(loop.model.parameters())):
        return None
    loop.optimiser.step()
    if loop.ema is not None:
        loop.ema.update_parameters(loop.model)
    return float(loss.detach())


def total_norm(parameters) -> torch.Tensor:
    """The 2-norm of all gradients together (what clip_grad_norm_ computes, without clipping)."""
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in parameters if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def validate(predictor: Predictor, val: Cache | VolumeCache) -> float:
    """Mean per-image Dice on the validation cache, through the same Predictor as `evaluate`.

    Images empty in both truth and prediction are left out, as `evaluate` does; NaN when every
    validation image is such a case. Volumes: mean per-case 3D Dice (`validate_volumes`).
    """
    if isinstance(val, VolumeCache):
        return validate_volumes(predictor, val)
    outputs = predictor.outputs_prepared(val.images, [label.shape for label in val.labels])
    return mean_dice(val.labels, [predictor.to_mask(o.probs) for o in outputs], predictor.encoding.n_classes)


def _record(state: State, cfg: TrainConfig, job: Job, loop: Loop, loss: float, val_dice: float,
            seconds: float) -> None:
    """History row, curves, best.pt when validation Dice improves, and last.pt every epoch (last)."""
    rate = loop.steps * job.batch / seconds
    lr = loop.optimiser.param_groups[0]["lr"]
    state.history.append(dict(epoch=state.epoch, train_loss=round(loss, 5), val_dice=round(val_dice, 5),
                              lr=f"{lr:.3g}", seconds=round(seconds, 2), images_per_s=round(rate, 2)))
    # Until validation has something to score (NaN: every image empty in truth and prediction),
    # best.pt follows the latest epoch, so there always is one.
    improved = state.best_dice < 0 or val_dice > state.best_dice
    if not math.isnan(val_dice):
        state.best_dice = max(state.best_dice, val_dice)
    if improved:
        state.best_epoch = state.epoch
    elif (state.epoch - state.best_epoch) % max(cfg.patience // 2, 1) == 0:
        state.lr_drops += 1  # a plateau: the patience rule halves the learning rate
    weights = {k: v.detach().cpu().clone() for k, v in loop.evaluated.state_dict().items()}
    ckpt_dir = job.run_dir / "checkpoints"

    def checkpoint(train: dict) -> Checkpoint:
        return Checkpoint(loop.model.cfg, job.data_cfg, job.encoding, weights, train=train,
                          area_stats=job.area_stats, data_summary=job.data_summary, origin=job.origin)

    if improved:
        save_checkpoint(ckpt_dir / "best.pt", checkpoint(dict(epoch=state.epoch, val_dice=val_dice)))
    write_history(job.run_dir / "history.csv", state.history)
    plot_history(state.history, job.run_dir / "curves.png")
    # last.pt goes last: once it names epoch N, everything of epoch N is on disk.
    save_checkpoint(ckpt_dir / "last.pt", checkpoint(_snapshot(loop, state, cfg)))
    budget = f"/{cfg.epochs}" if cfg.epochs else ""
    if cfg.epochs is None and cfg.time_budget is None:
        budget = f" (best {state.best_epoch}, patience {cfg.patience})"
    logger.info("epoch %d%s  loss %.4f  val Dice %.4f%s  %.1f img/s  %.0fs  ETA %s", state.epoch, budget, loss,
                val_dice, "  (best)" if improved else "", rate, state.elapsed, _eta(state, cfg))


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
