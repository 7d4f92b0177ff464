"""A background writer: checkpoints, history and curves are written while training goes on.

A checkpoint of the 31 M network with AdamW's moments is about 370 MB and written durably (fsync),
twice per validation with best.pt; on a GPU that is seconds the device would otherwise wait. What
is written must not change while it is written, so the caller hands over copies on the host
(`to_host`); one job runs at a time, in order, and `submit` waits for the previous one, so at most
one copy is held and `last.pt` still goes last.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch


def to_host(value: Any) -> Any:
    """`value` with every tensor in it (nested dicts, lists, tuples) copied to the CPU: a snapshot
    that later optimiser steps cannot change."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: to_host(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_host(v) for v in value)
    return value


class Writer:
    """Runs one job at a time on a background thread; an error surfaces at the next `submit` or `wait`."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(job,), name="medunet-writer", daemon=True)
        self._thread.start()

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # re-raised in the training thread
            self._error = exc

    def wait(self) -> None:
        """Until the job in hand is on disk; raises what it raised."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
