"""One optimiser step that never waits for the device: the loss and its verdict stay there.

A training step on a GPU runs ahead of the Python that queues it; reading a number back
(`float(loss)`, `if not torch.isfinite(loss)`) makes the CPU wait for the GPU every step. Here the
loss, the "was this step good" flag and the count of bad steps in a row stay tensors on the device;
the trainer reads them every few steps (`LOG_EVERY`) for the progress bar and the divergence rule.
On a CPU a read costs nothing, and the same code runs.
"""
from __future__ import annotations

import torch

MAX_BAD_STEPS = 20            # consecutive non-finite steps before training gives up


def make_optimiser(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused where torch has it for the device (CUDA; CPU from torch 2.4): one kernel for
    all parameters, and a step it can skip on the device (`apply_step`)."""
    try:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # no fused AdamW for these parameters' device in this torch
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


def train_step(net: torch.nn.Module, model: torch.nn.Module, optimiser: torch.optim.Optimizer, loss_fn,
               scaler: torch.amp.GradScaler, x: torch.Tensor, y: torch.Tensor,
               autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward through `net` (the model, or DDP around it), backward, and the update of `model`'s
    parameters where the step is good. Returns (loss, ok), 0-dim tensors on the device.

    A non-finite loss is made to poison every gradient (the loss times 1 + 0 × itself: exactly 1,
    or NaN), so that under DDP, where gradients are averaged over the ranks, every rank reaches
    the same verdict from the same numbers. With fp16 loss scaling the gradients are unscaled
    first; an overflow (the way the scaler finds its scale) is a skipped step that counts as bad,
    so gradients that stay NaN stop the run after MAX_BAD_STEPS in a row, as in fp32, instead of
    halving the scale towards zero unnoticed.
    """
    optimiser.zero_grad(set_to_none=True)
    with autocast:
        logits = net(x)
    loss = loss_fn(logits, y)
    poisoned = loss * (1.0 + 0.0 * loss.detach())
    scaler.scale(poisoned).backward()
    if scaler.is_enabled():
        scaler.unscale_(optimiser)
    ok = torch.isfinite(total_norm(model.parameters()))
    apply_step(optimiser, ok)
    if scaler.is_enabled():
        scaler.update()
    return loss.detach(), ok


def apply_step(optimiser: torch.optim.Optimizer, ok: torch.Tensor) -> None:
    """`optimiser.step()` where `ok`, else no change at all (moments and step count included).

    A fused AdamW takes the verdict as a tensor (the `found_inf` a GradScaler hands it) and skips
    on the device; an unfused one needs it on the host.
    """
    if optimiser.defaults.get("fused"):
        optimiser.found_inf = (~ok).float()
        optimiser.grad_scale = None
        optimiser.step()
        del optimiser.found_inf   # a GradScaler of a later step must not find this one's verdict
    elif bool(ok):
        optimiser.step()


def total_norm(parameters) -> torch.Tensor:
    """The 2-norm of all gradients together (what clip_grad_norm_ computes, without clipping)."""
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in parameters if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


class StepTally:
    """Losses and verdicts of an epoch's steps, added up on the device; `bad_run` (non-finite steps
    in a row) carries across epochs, since short epochs must not reset it."""

    def __init__(self, device: torch.device) -> None:
        self.bad_run = torch.zeros((), dtype=torch.int64, device=device)
        self.worst_run = torch.zeros((), dtype=torch.int64, device=device)
        self.device = device
        self.new_epoch()

    def new_epoch(self) -> None:
        self.total = torch.zeros((), device=self.device)
        self.good = torch.zeros((), dtype=torch.int64, device=self.device)
        self.steps = 0

    def add(self, loss: torch.Tensor, ok: torch.Tensor) -> None:
        self.total += torch.where(ok, loss.float(), torch.zeros_like(self.total))
        self.good += ok
        self.bad_run = (self.bad_run + 1) * (~ok)
        self.worst_run = torch.maximum(self.worst_run, self.bad_run)
        self.steps += 1

    def diverged(self) -> int:
        """The longest run of bad steps so far when it reached MAX_BAD_STEPS, else 0 (a host read)."""
        worst = int(self.worst_run)
        return worst if worst >= MAX_BAD_STEPS else 0

    def mean_loss(self) -> float:
        """The mean loss of this epoch's good steps; NaN when none was good (a host read)."""
        good = int(self.good)
        return float(self.total) / good if good else float("nan")

    def skipped(self) -> int:
        return self.steps - int(self.good)
