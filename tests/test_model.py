"""UNet presets: output shapes on odd sizes, the seed's exact parameter count, Keras-style layers."""
from __future__ import annotations

import pytest
import torch

from medunet.config import ModelConfig, model_preset
from medunet.models.unet import UNet, count_parameters


def test_seed_has_the_tutorials_parameter_count() -> None:
    assert count_parameters(UNet(model_preset("seed"))) == 31_031_685


@pytest.mark.parametrize("preset", ["seed", "standard", "small"])
@pytest.mark.parametrize("hw", [(37, 53), (64, 64), (17, 90)])
def test_presets_keep_odd_sizes(preset: str, hw: tuple[int, int]) -> None:
    width = 4 if preset != "small" else 16  # narrow copies keep the seed/standard layouts but run fast
    cfg = model_preset(preset, base_width=width, in_channels=3, out_channels=4)
    model = UNet(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *hw))
    assert out.shape == (2, 4, *hw)


def test_config_values_change_the_network() -> None:
    base = ModelConfig(base_width=8, depth=3, norm="batch", upsample="transpose", head="plain", dropout=0.0)
    model = UNet(base)
    assert len(model.down) == 4
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    seed = UNet(model_preset("seed"))
    assert sum(isinstance(m, torch.nn.Dropout) for m in seed.modules()) == 2
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in seed.modules())


def test_keras_same_padding_of_the_2x2_up_conv_is_bottom_right() -> None:
    up = UNet(ModelConfig(base_width=2, depth=1)).ups[0]
    pad = up.conv[0]
    assert isinstance(pad, torch.nn.ZeroPad2d) and tuple(pad.padding) == (0, 1, 0, 1)


def test_unknown_preset_is_a_config_error() -> None:
    from medunet.errors import ConfigError

    with pytest.raises(ConfigError, match="--preset"):
        model_preset("huge")


def test_deep_supervision_adds_heads_used_in_training_only() -> None:
    """Training returns the full-size logits and auxiliary ones at 1/2 and 1/4 of the (padded)
    size; eval, validation and exports see the full-size logits alone, and the loss takes both."""
    from medunet.losses import build_loss

    torch.manual_seed(0)
    model = UNet(model_preset("tiny", deep_supervision=True)).train()
    outs = model(torch.randn(2, 1, 61, 77))
    assert [tuple(o.shape) for o in outs] == [(2, 1, 61, 77), (2, 1, 31, 39), (2, 1, 16, 20)]
    target = (torch.rand(2, 61, 77) > 0.5).long()
    loss = build_loss(1)(outs, target)
    loss.backward()
    assert model.aux_heads[1].weight.grad is not None and torch.isfinite(loss)
    assert build_loss(1)(outs[0], target) != loss                # the auxiliary terms count
    model.eval()
    assert tuple(model(torch.randn(2, 1, 61, 77)).shape) == (2, 1, 61, 77)
    plain = UNet(model_preset("tiny"))
    assert len(plain.aux_heads) == 0 and sum(p.numel() for p in model.parameters()) > sum(
        p.numel() for p in plain.parameters())


def test_an_odd_size_is_padded_with_zeros_as_a_small_image_sits_in_its_training_crop() -> None:
    # The sampler puts an image smaller than the crop on a zero canvas; padding the same way at
    # prediction keeps the border the network learnt (replicated edges cost 0.02 Dice on hippocampus).
    torch.manual_seed(0)
    model = UNet(model_preset("tiny")).eval()
    x = torch.randn(1, 1, 35, 50)
    canvas = torch.zeros(1, 1, 48, 64)
    canvas[..., :35, :50] = x
    with torch.no_grad():
        assert torch.allclose(model(x), model(canvas)[..., :35, :50], atol=1e-5)
