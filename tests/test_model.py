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
