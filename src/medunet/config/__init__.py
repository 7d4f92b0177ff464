"""Frozen configuration dataclasses, passed explicitly; each round-trips through JSON.

`core` holds data, model, train and predict settings; `augment` holds the augmentation settings.
"""
from medunet.config.augment import AUGMENT_PRESETS, MIRROR_AXES, AugmentConfig, augment_preset, mirrored_views
from medunet.config.core import (
    MODEL_PRESETS,
    DataConfig,
    ModelConfig,
    PredictConfig,
    TrainConfig,
    from_dict,
    model_preset,
    replace,
    to_dict,
)

__all__ = [
    "AUGMENT_PRESETS", "MIRROR_AXES", "AugmentConfig", "augment_preset", "mirrored_views", "MODEL_PRESETS",
    "DataConfig", "ModelConfig", "PredictConfig", "TrainConfig", "from_dict", "model_preset", "replace", "to_dict",
]
