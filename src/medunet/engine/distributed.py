"""The process group of a `torchrun` job: who this process is, and the few collectives training needs.

torchrun (torch.distributed.run) starts one process per GPU (or per CPU worker) on every node and
tells each its place through the environment: RANK (0..WORLD_SIZE-1 over all nodes), WORLD_SIZE,
LOCAL_RANK (its GPU on this node) and LOCAL_WORLD_SIZE. Outside torchrun there is one process,
`World()`, and every helper here is a plain pass-through, so the single-process path runs the same
code.

The rules the trainer keeps with these helpers:

- rank 0 alone writes files (run folder, checkpoints, history, curves, tuning);
- every decision that depends on the clock or on a timing probe (the plan, `--precision auto`, the
  time budget, the learning rate under it) is taken on rank 0 and broadcast, at epoch boundaries
  only: never once per step;
- validation is sharded: rank r scores images r, r + N, r + 2N, ... (no padding, so no image is
  scored twice), and the per-image scores are gathered, so every rank computes the same mean.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A collective waits this long for the other ranks (a rank building the disk cache, rank 0 tuning).
TIMEOUT = datetime.timedelta(minutes=60)


@dataclass(frozen=True)
class World:
    """This process's place in the job: `rank` of `size` over all nodes, `local_rank` of
    `local_size` on this node (its GPU index)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, n: int) -> list[int]:
        """This rank's share of `n` items: r, r + N, r + 2N, ... Disjoint, together all of them once
        (no padding: a rank may hold one item fewer)."""
        return list(range(self.rank, n, self.size))

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank (any picklable object)."""
        if not self.distributed:
            return value
        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of `value` over the ranks (NaN where a rank has NaN)."""
        if not self.distributed:
            return value
        return float(sum(self.gather(float(value))) / self.size)

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 and give every rank its result; an exception it raises is raised on
        every rank, so all of them stop with the same message instead of waiting at the next
        collective for a rank that has gone."""
        result: tuple[str, Any] = ("ok", None)
        if self.main:
            try:
                result = ("ok", fn())
            except Exception as exc:  # handed to every rank, raised there
                result = ("error", exc)
        kind, value = self.broadcast(result)
        if kind == "error":
            raise value
        return value

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (batch-norm statistics) into `module` on every rank, so that the copies
        every rank validates with are the same network."""
        if not self.distributed:
            return
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)

    def describe(self) -> str:
        return f"rank {self.rank} of {self.size} (local {self.local_rank} of {self.local_size})"


SINGLE = World()


def from_env(env: dict[str, str] | None = None) -> World:
    """The World torchrun describes in the environment; `World()` outside torchrun."""
    env = os.environ if env is None else env
    size = int(env.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    local_size = int(env.get("LOCAL_WORLD_SIZE", str(size)))
    return World(int(env["RANK"]), size, int(env.get("LOCAL_RANK", "0")), local_size)


def backend(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def session(device_name: str = "auto") -> Iterator[World]:
    """The World of this process, with the process group up for the block when torchrun started
    several. A group the caller set up already is used and left alone; one made here is taken
    down at the end. On CUDA each process takes the GPU of its local rank."""
    world = from_env()
    if not world.distributed or dist.is_initialized():
        yield world
        return
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(world.local_rank)
    kind = "nccl" if cuda else "gloo"
    dist.init_process_group(kind, timeout=TIMEOUT)
    logger.debug("process group up: %s, %s", world.describe(), kind)
    try:
        yield world
    finally:
        dist.destroy_process_group()


def device_for(world: World, device: torch.device) -> torch.device:
    """The device of this rank: its own GPU on CUDA (cuda:LOCAL_RANK), else `device`."""
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s random streams (crops, augmentation, dropout): `seed` itself on
    rank 0, so a single-process run is seeded as before; distinct, reproducible seeds elsewhere."""
    return seed if rank == 0 else int.from_bytes(hashlib.sha256(f"{seed}/{rank}".encode()).digest()[:7], "big")


def wrap(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """The module a training step runs: `model` itself in one process, else DistributedDataParallel
    around it (gradients averaged over the ranks in backward). On CUDA batch norm becomes
    SyncBatchNorm first (statistics over the global batch); gloo on CPU has no SyncBatchNorm, so
    there each rank normalises its own share and DDP hands rank 0's running statistics to all
    ranks before every forward. `model` keeps its parameters: checkpoints and the Predictor take
    it, unwrapped (no `module.` prefixes)."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        assert converted is model  # the U-Net's top module is no batch norm: converted in place
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)


def digest(module: torch.nn.Module) -> str:
    """A short hash of a module's parameters and buffers: equal on every rank when the ranks hold
    the same network."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def interleave(parts: Sequence[Sequence[T]]) -> list[T]:
    """The items of `World.shard` parts, back in their original order: part r holds items r, r+N, ..."""
    out: list[T] = []
    for i in range(max((len(p) for p in parts), default=0)):
        out.extend(p[i] for p in parts if i < len(p))
    return out
