"""build_loss: BCE + Dice for one sigmoid channel, CE + Dice for C softmax classes (MONAI's DiceCELoss)."""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]


def build_loss(out_channels: int) -> LossFn:
    """A loss of logits `(B, K, H, W)` (or a deep-supervision list of them, full size first) and
    class indices `(B, H, W)` int64.

    The Dice term is pooled over the batch (`batch=True`) so that crops without foreground do not
    turn it into 0/0. Auxiliary outputs at 1/2, 1/4 … are scored against the labels resized to
    them (nearest) with weights halving per level, normalised to sum to 1 (nnU-Net's scheme).
    """
    if out_channels == 1:
        dice_ce = DiceCELoss(sigmoid=True, batch=True)
        one = lambda logits, target: dice_ce(logits.float(), target[:, None].float())  # noqa: E731
    else:
        dice_ce = DiceCELoss(softmax=True, to_onehot_y=True, batch=True)
        one = lambda logits, target: dice_ce(logits.float(), target[:, None])  # noqa: E731

    def loss(logits: Tensor | list[Tensor], target: Tensor) -> Tensor:
        if isinstance(logits, Tensor):
            return one(logits, target)
        weights = [0.5 ** k for k in range(len(logits))]
        total = sum(weights)
        return sum(w / total * one(out, _resized(target, out.shape[-2:])) for w, out in zip(weights, logits))

    return loss


def _resized(target: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    return F.interpolate(target[:, None].float(), size=size, mode="nearest")[:, 0].long()
