"""Batches for the training step, cut while the device computes the previous one.

`DeviceFeeder` (CUDA, when the training cache of 2D images fits a share of the free GPU memory)
uploads the cache once and cuts the crops on the device into two reused batch tensors: the host
only draws where the crops come from (`CropSampler.windows`), and nothing crosses PCIe per step.
`ThreadFeeder` runs the sampler (crops cut from the RAM or disk cache) on a background thread,
`DEPTH` batches ahead; on CUDA it hands them over in pinned memory, so the copy to the device is
asynchronous and labels cross as bytes. `InlineFeeder` cuts each batch when it is asked for: on a
CPU the step itself uses every core, and a second thread only competes with it.

Both produce exactly the batches of the epoch asked for (`start(steps)`), in order, from the
sampler's one random stream: after the epoch's last batch the stream stands at the epoch boundary,
which is what a checkpoint records, so a resumed run draws the crops an uninterrupted one would.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Protocol

import numpy as np
import torch

from medunet.data.cache import array_nbytes
from medunet.data.sampler import cut_crops

logger = logging.getLogger(__name__)

DEPTH = 3                # batches made ahead by the background thread
GPU_CACHE_SHARE = 0.25   # the training cache goes to the GPU when it takes at most this share of its free memory


class Sampler(Protocol):
    def batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]: ...


class Feeder(Protocol):
    """Batches `(images (B, C, S, S) float32, labels (B, S, S) int64)` on the training device."""

    def start(self, steps: int) -> None: ...

    def next(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def close(self) -> None: ...


def build_feeder(sampler: Sampler, batch: int, device: torch.device) -> Feeder:
    """The cache on the GPU when it fits there; else a background thread in front of a GPU;
    batches cut in line on a CPU."""
    if device.type != "cuda":
        return InlineFeeder(sampler, batch, device)
    if hasattr(sampler, "windows"):
        need = cache_bytes(sampler.cache)
        free, _ = torch.cuda.mem_get_info(device)
        if need <= GPU_CACHE_SHARE * free:
            logger.info("training cache on the GPU (%.0f MB of %.0f MB free)", need / 2**20, free / 2**20)
            return DeviceFeeder(sampler, batch, device)
        logger.info("training cache stays on the host (%.0f MB; %.0f MB free on the GPU): batches cut in a "
                    "background thread, copied from pinned memory", need / 2**20, free / 2**20)
    return ThreadFeeder(sampler, batch, device)


def cache_bytes(cache) -> int:
    """Bytes of a 2D cache's images and labels (a disk cache's files are not read)."""
    return array_nbytes(cache.images) + array_nbytes(cache.labels)


class InlineFeeder:
    def __init__(self, sampler: Sampler, batch: int, device: torch.device) -> None:
        self.sampler, self.batch, self.device = sampler, batch, device

    def start(self, steps: int) -> None:
        pass

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.sampler.batch(self.batch)
        return torch.from_numpy(images).to(self.device), torch.from_numpy(labels).to(self.device)

    def close(self) -> None:
        pass


class ThreadFeeder:
    """Batches cut on the host by a background thread, `DEPTH` ahead of the step."""

    def __init__(self, sampler: Sampler, batch: int, device: torch.device) -> None:
        self.sampler, self.batch, self.device = sampler, batch, device
        self.pin = device.type == "cuda"
        self._queue: queue.Queue = queue.Queue(maxsize=DEPTH)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, steps: int) -> None:
        self.close()
        self._stop.clear()
        self._thread = threading.Thread(target=self._produce, args=(steps,), name="medunet-batches", daemon=True)
        self._thread.start()

    def _produce(self, steps: int) -> None:
        try:
            for _ in range(steps):
                images, labels = self.sampler.batch(self.batch)
                x, y = torch.from_numpy(images), torch.from_numpy(labels)
                if self.pin:   # class indices fit a byte: an eighth of the copy; made int64 on the device
                    x, y = x.pin_memory(), torch.from_numpy(labels.astype(np.uint8)).pin_memory()
                if not self._put((x, y)):
                    return
        except BaseException as exc:  # raised in the training thread at its next batch
            self._put(exc)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        x, y = item
        if self.device.type == "cpu":
            return x, y
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True).long()

    def close(self) -> None:
        """Stop making batches (an interrupted epoch) and wait for the thread."""
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()
        self._thread = None
        while not self._queue.empty():
            self._queue.get_nowait()


class DeviceFeeder:
    """The training cache on the device; crops cut there into two batch tensors that are reused."""

    def __init__(self, sampler, batch: int, device: torch.device) -> None:
        self.sampler = sampler
        cache = sampler.cache
        self.images = [torch.from_numpy(np.ascontiguousarray(im)).to(device) for im in cache.images]
        self.labels = [torch.from_numpy(np.ascontiguousarray(lab)).to(device) for lab in cache.labels]
        s, channels = sampler.size, self.images[0].shape[0]
        self.x = torch.zeros(batch, channels, s, s, device=device)
        self.y = torch.zeros(batch, s, s, dtype=torch.int64, device=device)

    def start(self, steps: int) -> None:
        pass

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        # The step that read the previous batch was queued before these writes on the same stream,
        # so reusing the tensors is safe without waiting for it.
        self.x.zero_()
        self.y.zero_()
        cut_crops(self.sampler.windows(self.x.shape[0]), self.images, self.labels, self.x, self.y)
        return self.x, self.y

    def close(self) -> None:
        pass
