"""The Keras tutorial's U-Net (zhixuhao/unet `model.py`) as medunet's `seed` network, weight for weight.

The tutorial's convolutions, in the order Keras creates and runs them, are: two 3×3 per level down
(conv1 … conv5, dropout after conv4 and conv5), then per level up a 2×2 conv after the upsampling
(up6 … up9), the concatenation [skip, up] and two 3×3 convs, then a 3×3 conv to 2 channels and the
1×1 output: 5 × depth + 4 kernels (24 at depth 4). Layer names vary between Keras versions and
scripts, so the kernels are matched by that order and checked by shape against the seed network
at the base width and depth the first kernel and the count give. A Keras kernel is
`(kh, kw, in, out)` and a torch one `(out, in, kh, kw)`: only the axes move, nothing is flipped
(Keras convolutions are cross-correlations like torch's).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medunet.config import ModelConfig, model_preset
from medunet.errors import DataError
from medunet.io.keras import KerasFile, KerasLayer
from medunet.models.unet import UNet

logger = logging.getLogger(__name__)

# Layer classes the tutorial's network is made of; anything else is another architecture.
TUTORIAL_CLASSES = {"InputLayer", "Conv2D", "MaxPooling2D", "Dropout", "UpSampling2D", "Concatenate"}
OUTPUT_ACTIVATIONS = {1: ("sigmoid", "linear"), 2: ("softmax", "linear")}   # by K = 1 or K > 1


@dataclass(frozen=True)
class Imported:
    """The seed network's config and weights taken from a Keras file."""

    model_config: ModelConfig
    state_dict: dict[str, torch.Tensor]


def forward_convs(model: UNet) -> list[tuple[str, nn.Conv2d]]:
    """The network's convolutions in the order the forward pass runs them (Keras's order):
    down levels, then per level up its upsampling conv and double conv, then the head."""
    blocks: list[tuple[str, nn.Module]] = [(f"down.{i}", block) for i, block in enumerate(model.down)]
    for i, (up, conv) in enumerate(zip(model.ups, model.up_convs)):
        blocks += [(f"ups.{i}", up), (f"up_convs.{i}", conv)]
    blocks.append(("head", model.head))
    return [(f"{prefix}.{name}", m) for prefix, block in blocks
            for name, m in block.named_modules() if isinstance(m, nn.Conv2d)]


def tutorial_unet(keras: KerasFile) -> Imported:
    """Map a Keras file of the tutorial's architecture onto `UNet(model_preset("seed", ...))`.

    Raises:
        DataError: one line saying what the file holds and what was expected.
    """
    weighted = [layer for layer in keras.layers if layer.weights]
    kernels = [_kernel_and_bias(keras, layer) for layer in weighted]
    cfg = _config_from_kernels(keras, [k for k, _ in kernels])
    model = UNet(cfg)
    convs = forward_convs(model)
    for n, ((kernel, bias), (name, conv), layer) in enumerate(zip(kernels, convs, weighted), start=1):
        expected = tuple(conv.weight.shape[2:]) + (conv.in_channels, conv.out_channels)
        if kernel.shape != expected:
            raise DataError(f"{keras.path}: conv kernel {n} ({layer.name}) is {_shape(kernel.shape)}; the tutorial's "
                            f"U-Net at base width {cfg.base_width}, depth {cfg.depth} has {_shape(expected)} there")
        conv.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
        conv.bias.data.copy_(torch.from_numpy(bias))
    if keras.has_architecture:
        _check_architecture(keras, cfg)
    return Imported(cfg, {k: v.detach().clone() for k, v in model.state_dict().items()})


def _kernel_and_bias(keras: KerasFile, layer: KerasLayer) -> tuple[np.ndarray, np.ndarray]:
    """A conv layer's (kernel HWIO, bias) as float32; a layer with other weights (batch norm, a
    dense layer, a conv without bias) is another architecture."""
    shapes = [w.shape for w in layer.weights]
    if layer.class_name not in (None, "Conv2D") or len(shapes) != 2 or len(shapes[0]) != 4 \
            or shapes[1] != (shapes[0][3],):
        kind = layer.class_name or "a layer"
        raise DataError(f"{keras.path}: {kind} {layer.name} holds weights of shapes "
                        f"{', '.join(_shape(s) for s in shapes)}; the tutorial's U-Net has only Conv2D layers "
                        "with a kernel and a bias")
    return layer.weights[0].astype(np.float32), layer.weights[1].astype(np.float32)


def _config_from_kernels(keras: KerasFile, kernels: list[np.ndarray]) -> ModelConfig:
    """Base width and input channels from the first kernel, depth from the count, classes from the last."""
    n = len(kernels)
    depth, rest = divmod(n - 4, 5)
    first = kernels[0].shape if kernels else ()
    if rest or not 1 <= depth <= 7 or first[:2] != (3, 3) or kernels[-1].shape[:2] != (1, 1) \
            or kernels[-1].shape[2] != 2:
        found = f"found {n} conv kernels" + (f", first {_shape(first)}, last {_shape(kernels[-1].shape)}" if n else "")
        raise DataError(f"{keras.path}: {found}; expected the tutorial's U-Net: 5 × depth + 4 conv kernels "
                        "(24 at depth 4), the first 3×3×C×W, the last 1×1×2×K")
    return model_preset("seed", base_width=int(first[3]), depth=depth, in_channels=int(first[2]),
                        out_channels=int(kernels[-1].shape[3]))


def _check_architecture(keras: KerasFile, cfg: ModelConfig) -> None:
    """What the weights cannot show: layer kinds, activations, padding, strides, pooling and
    upsampling, and the order in which each concatenation joins its inputs."""
    by_name = {layer.name: layer for layer in keras.layers}
    counts: dict[str, int] = {}
    for layer in keras.layers:
        counts[layer.class_name or "?"] = counts.get(layer.class_name or "?", 0) + 1
        if layer.class_name not in TUTORIAL_CLASSES:
            raise DataError(f"{keras.path}: a {layer.class_name} layer ({layer.name}); the tutorial's U-Net has only "
                            f"{', '.join(sorted(TUTORIAL_CLASSES))}")
    for kind in ("MaxPooling2D", "UpSampling2D", "Concatenate"):
        if counts.get(kind, 0) != cfg.depth:
            raise DataError(f"{keras.path}: {counts.get(kind, 0)} {kind} layers; the tutorial's U-Net of depth "
                            f"{cfg.depth} has {cfg.depth}")
    convs = [layer for layer in keras.layers if layer.class_name == "Conv2D"]
    for i, layer in enumerate(convs):
        _check_conv(keras, layer, last=i == len(convs) - 1, k=cfg.out_channels)
    for layer in keras.layers:
        _check_layer(keras, layer, by_name)


def _check_conv(keras: KerasFile, layer: KerasLayer, last: bool, k: int) -> None:
    c = layer.config
    allowed = OUTPUT_ACTIVATIONS[min(k, 2)] if last else ("relu",)
    problems = []
    if c.get("activation", "linear") not in allowed:
        problems.append(f"activation {c.get('activation')} (expected {' or '.join(allowed)})")
    if tuple(c.get("strides", (1, 1))) != (1, 1) or tuple(c.get("dilation_rate", (1, 1))) != (1, 1):
        problems.append(f"strides {c.get('strides')}, dilation {c.get('dilation_rate')} (expected 1, 1)")
    if c.get("padding", "same") != "same" and tuple(c.get("kernel_size", (1, 1))) != (1, 1):
        problems.append(f"padding {c.get('padding')} (expected same)")
    if c.get("data_format", "channels_last") != "channels_last":
        problems.append(f"data_format {c.get('data_format')} (expected channels_last)")
    if problems:
        raise DataError(f"{keras.path}: Conv2D {layer.name} has {'; '.join(problems)}, unlike the tutorial's U-Net")


def _check_layer(keras: KerasFile, layer: KerasLayer, by_name: dict[str, KerasLayer]) -> None:
    c = layer.config
    if layer.class_name == "MaxPooling2D" and tuple(c.get("pool_size", (2, 2))) != (2, 2):
        raise DataError(f"{keras.path}: MaxPooling2D {layer.name} pools {c.get('pool_size')}; the tutorial pools 2×2")
    if layer.class_name == "UpSampling2D" and (tuple(c.get("size", (2, 2))) != (2, 2)
                                               or c.get("interpolation", "nearest") != "nearest"):
        raise DataError(f"{keras.path}: UpSampling2D {layer.name} is {c.get('size')} {c.get('interpolation')}; "
                        "the tutorial upsamples 2×2 nearest")
    if layer.class_name == "Concatenate":
        second = by_name.get(layer.inbound[1]) if len(layer.inbound) == 2 else None
        kernel = tuple(second.config.get("kernel_size", ())) if second is not None else ()
        if second is None or second.class_name != "Conv2D" or kernel != (2, 2):
            raise DataError(f"{keras.path}: Concatenate {layer.name} joins {list(layer.inbound)}; the tutorial "
                            "joins [skip, up] (the 2×2 conv after the upsampling second)")


def _shape(shape: tuple) -> str:
    return "×".join(str(s) for s in shape) or "nothing"
