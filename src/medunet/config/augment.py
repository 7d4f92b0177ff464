"""Augmentation settings: a probability and a range for each transform, and named presets.

`medunet.transforms.augment.augment_batch` applies them to a whole batch on its device. Every
transform fires per sample with its own probability; the defaults switch everything off.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from medunet.errors import ConfigError

FILLS = ("nearest", "reflect", "constant")


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (`*_p`, in [0, 1]) and ranges of each batch augmentation.

    Geometry (image and label together, one resampling):
        rotate_deg: rotation angle drawn uniformly in ±rotate_deg degrees.
        shift: translation drawn uniformly in ±shift × side, independently per axis.
        shear: shear angle drawn uniformly in ±shear degrees (Keras' matrix [[1, -sin s], [0, cos s]]).
        zoom: isotropic sampling scale in [1 - zoom, 1 + zoom] (above 1 zooms out, as in Keras).
        zoom_aniso: an extra scale per axis in [1 - zoom_aniso, 1 + zoom_aniso]; fires with zoom_p.
        hflip_p, vflip_p: mirror left-right, top-bottom.
        rot90_p: rotate by k × 90°, k uniform in {0, 1, 2, 3}; only k in {0, 2} when H != W.
        elastic_alpha: standard deviation in pixels of the random displacements drawn on an
            elastic_grid × elastic_grid lattice, upsampled bicubically (the U-Net paper's deformation).
        fill: what is seen outside the image: nearest (edge pixels) | reflect | constant (image 0,
            label 0 = background).
    Intensity (image only; the image is z-scored, so ranges are in standard deviations):
        brightness: added offset uniform in ±brightness.
        contrast: factor in [1 - contrast, 1 + contrast] around each sample's mean.
        gamma: exponent log-uniform in [1 / (1 + gamma), 1 + gamma], on the sample's min–max range.
        noise_std: Gaussian noise with sigma uniform in [0, noise_std].
        blur_sigma: Gaussian blur with sigma uniform in [low, high] pixels.
    """

    rotate_p: float = 0.0
    rotate_deg: float = 0.0
    shift_p: float = 0.0
    shift: float = 0.0
    shear_p: float = 0.0
    shear: float = 0.0
    zoom_p: float = 0.0
    zoom: float = 0.0
    zoom_aniso: float = 0.0
    hflip_p: float = 0.0
    vflip_p: float = 0.0
    rot90_p: float = 0.0
    elastic_p: float = 0.0
    elastic_alpha: float = 0.0
    elastic_grid: int = 4
    brightness_p: float = 0.0
    brightness: float = 0.0
    contrast_p: float = 0.0
    contrast: float = 0.0
    gamma_p: float = 0.0
    gamma: float = 0.0
    noise_p: float = 0.0
    noise_std: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.0, 0.0)
    fill: str = "nearest"

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name.endswith("_p"):
                value = getattr(self, f.name)
                _check(0.0 <= value <= 1.0, f"augment {f.name} must be a probability in [0, 1], got {value}")
        _check(0.0 <= self.rotate_deg <= 180.0, f"augment rotate_deg must be in [0, 180], got {self.rotate_deg}")
        _check(0.0 <= self.shift < 1.0, f"augment shift must be a fraction in [0, 1), got {self.shift}")
        _check(0.0 <= self.shear < 90.0, f"augment shear must be in [0, 90) degrees, got {self.shear}")
        _check(0.0 <= self.zoom < 1.0, f"augment zoom must be in [0, 1), got {self.zoom}")
        _check(0.0 <= self.zoom_aniso < 1.0, f"augment zoom_aniso must be in [0, 1), got {self.zoom_aniso}")
        _check(self.elastic_alpha >= 0.0, f"augment elastic_alpha must be >= 0 pixels, got {self.elastic_alpha}")
        _check(isinstance(self.elastic_grid, int) and 2 <= self.elastic_grid <= 32,
               f"augment elastic_grid must be an integer in [2, 32], got {self.elastic_grid!r}")
        for name in ("brightness", "gamma", "noise_std"):
            value = getattr(self, name)
            _check(value >= 0.0, f"augment {name} must be >= 0, got {value}")
        _check(0.0 <= self.contrast < 1.0, f"augment contrast must be in [0, 1), got {self.contrast}")
        low, high = self.blur_sigma
        _check(0.0 <= low <= high <= 10.0,
               f"augment blur_sigma must be (low, high) with 0 <= low <= high <= 10, got {self.blur_sigma}")
        _check(self.fill in FILLS, f"augment fill must be one of {', '.join(FILLS)}, got {self.fill!r}")


AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "flips": dict(hflip_p=0.5, vflip_p=0.5),
    # The Keras U-Net tutorial's ImageDataGenerator(rotation_range=0.2, width_shift_range=0.05,
    # height_shift_range=0.05, shear_range=0.05, zoom_range=0.05, horizontal_flip=True,
    # fill_mode="nearest"). Keras applies each on every sample (flip half the time). Its
    # rotation_range is in degrees, so ±0.2° (next to nothing); recent Keras versions also read
    # shear_range in degrees (older ones in radians); a float zoom_range draws the x and y scales
    # independently, hence zoom_aniso rather than zoom.
    "seed": dict(rotate_p=1.0, rotate_deg=0.2, shift_p=1.0, shift=0.05, shear_p=1.0, shear=0.05,
                 zoom_p=1.0, zoom_aniso=0.05, hflip_p=0.5, fill="nearest"),
    "default": dict(hflip_p=0.5, vflip_p=0.5, rot90_p=0.5,
                    rotate_p=0.3, rotate_deg=15.0, zoom_p=0.3, zoom=0.15, zoom_aniso=0.05,
                    shift_p=0.3, shift=0.05, elastic_p=0.2, elastic_alpha=6.0, elastic_grid=5,
                    brightness_p=0.3, brightness=0.1, contrast_p=0.3, contrast=0.25,
                    gamma_p=0.3, gamma=0.3, noise_p=0.15, noise_std=0.1,
                    blur_p=0.1, blur_sigma=(0.5, 1.0), fill="reflect"),
}
# For data whose orientation is fixed (volumes: the header says where anterior and left lie), the
# default without mirrors and 90° turns: prediction never meets a mirrored or turned slice, and on the
# hippocampus (whose two labels are its anterior and posterior parts) they cost 0.016 (BENCHMARKS.md).
AUGMENT_PRESETS["upright"] = {name: value for name, value in AUGMENT_PRESETS["default"].items()
                              if name not in ("hflip_p", "vflip_p", "rot90_p")}


# The mirror views by name, as the image axes they flip (width is the last axis).
MIRROR_AXES = {"horizontal": (-1,), "vertical": (-2,), "both": (-2, -1)}


def mirrored_views(cfg: AugmentConfig) -> list[str]:
    """The mirror images training shows the network: "horizontal", "vertical", "both" (a flip of
    each axis, or a 180° turn). Test-time augmentation averages over these alone: a network that
    never saw an image mirrored may read a mirrored one as other anatomy (anterior for posterior)."""
    views = []
    if cfg.hflip_p > 0:
        views.append("horizontal")
    if cfg.vflip_p > 0:
        views.append("vertical")
    if (cfg.hflip_p > 0 and cfg.vflip_p > 0) or cfg.rot90_p > 0:
        views.append("both")
    return views


def augment_preset(name: str) -> AugmentConfig:
    """The AugmentConfig of a preset in AUGMENT_PRESETS; ConfigError names the choices."""
    if name not in AUGMENT_PRESETS:
        raise ConfigError(f"--augment must be one of {', '.join(AUGMENT_PRESETS)}, got {name!r}")
    return AugmentConfig(**AUGMENT_PRESETS[name])


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
