"""build_loss: BCE + Dice for one sigmoid channel, CE + Dice for C softmax classes (MONAI's DiceCELoss)."""
from __future__ import annotations

from typing import Callable

from monai.losses import DiceCELoss
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]


def build_loss(out_channels: int) -> LossFn:
    """A loss of logits `(B, K, H, W)` and class indices `(B, H, W)` int64.

    The Dice term is pooled over the batch (`batch=True`) so that crops without foreground do not
    turn it into 0/0.
    """
    if out_channels == 1:
        dice_ce = DiceCELoss(sigmoid=True, batch=True)
        return lambda logits, target: dice_ce(logits.float(), target[:, None].float())
    dice_ce = DiceCELoss(softmax=True, to_onehot_y=True, batch=True)
    return lambda logits, target: dice_ce(logits.float(), target[:, None])
