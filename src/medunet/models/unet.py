"""UNet(ModelConfig): the Keras tutorial's U-Net and its normalised, narrower variants.

Shapes: input `(B, in_channels, H, W)` float; output `(B, out_channels, H, W)` logits (the
sigmoid or softmax is applied by the loss and the Predictor). Any H, W works: the input is padded
to a multiple of 2**depth by edge replication and the output cropped back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medunet.config import ModelConfig


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(width)
    if kind == "instance":
        return nn.InstanceNorm2d(width, affine=True)
    return nn.Identity()


class DoubleConv(nn.Sequential):
    """Two 3×3 convolutions, each followed by the optional norm and ReLU."""

    def __init__(self, cin: int, cout: int, norm: str, dropout: float = 0.0) -> None:
        bias = norm == "none"  # a norm layer's shift makes the conv bias redundant
        layers: list[nn.Module] = []
        for c in (cin, cout):
            layers += [nn.Conv2d(c, cout, 3, padding=1, bias=bias), _norm(norm, cout), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout) if norm != "none" else nn.Dropout(dropout))
        super().__init__(*layers)


class Up(nn.Module):
    """Upsample 2×, then (Keras tutorial style) a 2×2 conv + ReLU with Keras "same" padding."""

    def __init__(self, cin: int, cout: int, mode: str, norm: str) -> None:
        super().__init__()
        self.mode = mode
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
            self.conv = None
        else:
            self.up = None
            # Keras pads a 2×2 "same" conv with the extra row and column at the bottom/right.
            self.conv = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(cin, cout, 2, bias=norm == "none"),
                                      _norm(norm, cout), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        if self.up is not None:
            return self.up(x)
        x = F.interpolate(x, scale_factor=2.0, mode=self.mode,
                          **({} if self.mode == "nearest" else {"align_corners": False}))
        return self.conv(x)


class UNet(nn.Module):
    """A U-Net built from a ModelConfig; `UNet(model_preset("seed"))` is the tutorial's network."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [cfg.base_width * 2**i for i in range(cfg.depth + 1)]
        first_dropout_level = cfg.depth + 1 - cfg.dropout_levels
        self.down = nn.ModuleList()
        cin = cfg.in_channels
        for level, w in enumerate(widths):
            drop = cfg.dropout if level >= first_dropout_level else 0.0
            self.down.append(DoubleConv(cin, w, cfg.norm, drop))
            cin = w
        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for level in reversed(range(cfg.depth)):
            self.ups.append(Up(widths[level + 1], widths[level], cfg.upsample, cfg.norm))
            self.up_convs.append(DoubleConv(2 * widths[level], widths[level], cfg.norm))
        if cfg.head == "seed":
            self.head = nn.Sequential(nn.Conv2d(widths[0], 2, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(2, cfg.out_channels, 1))
        else:
            self.head = nn.Conv2d(widths[0], cfg.out_channels, 1)
        # Deep supervision: a 1×1 head on the decoder levels at 1/2 and 1/4 of the resolution,
        # trained on the labels at that size; used in training only (eval and exports return the
        # full-resolution logits alone).
        levels = min(2, cfg.depth - 1) if cfg.deep_supervision else 0
        self.aux_heads = nn.ModuleList(nn.Conv2d(widths[k], cfg.out_channels, 1) for k in range(1, levels + 1))

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """Logits `(B, K, H, W)`; in training with deep supervision, a list: those first, then
        the auxiliary logits at 1/2 and 1/4 of the (padded) size."""
        h, w = x.shape[-2:]
        m = self.cfg.multiple
        # Padded even by zero rows: a branch on the size would be frozen into an exported graph at
        # the size it was traced with (ONNX, TorchScript), and odd sizes would then fail there.
        # With zeros (the mean of a normalised input): an image smaller than its training crop
        # sits on a zero canvas in training (data.sampler), so prediction sees the border it learnt.
        x = F.pad(x, (0, (-w) % m, 0, (-h) % m))
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        decoded = []
        for up, conv in zip(self.ups, self.up_convs):
            x = conv(torch.cat([skips.pop(), up(x)], dim=1))
            decoded.append(x)
        logits = self.head(x)[..., :h, :w]
        if not (self.training and len(self.aux_heads)):
            return logits
        # decoded[-1] is full resolution, decoded[-1 - k] is 1/2**k
        aux = [head(decoded[-1 - k])[..., :-(-h // 2**k), :-(-w // 2**k)] for k, head in enumerate(self.aux_heads, 1)]
        return [logits, *aux]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
