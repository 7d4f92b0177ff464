"""Joint image/label augmentation of a whole batch on its device, each sample with its own draws.

All geometric transforms of a sample (flips, 90° turns, rotation, shear, zoom, shift, elastic
deformation) become one sampling grid, so the image is interpolated once. Samples whose draws
move nothing are not resampled and come through bit-identical; samples with only flips and 90°
turns are resampled with nearest-neighbour, which is an exact permutation of pixels.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from medunet.config.augment import AugmentConfig

logger = logging.getLogger(__name__)

_PADDING = {"nearest": "border", "reflect": "reflection", "constant": "zeros"}

# One uniform number per sample for each name, drawn in a single call so the stream never depends
# on which transforms fire: "<name>_p" decides whether it fires, the others set its parameters.
_DRAWS = (
    "rotate_p", "rotate", "shift_p", "shift_x", "shift_y", "shear_p", "shear",
    "zoom_p", "zoom", "zoom_x", "zoom_y", "hflip_p", "vflip_p", "rot90_p", "rot90", "elastic_p",
    "brightness_p", "brightness", "contrast_p", "contrast", "gamma_p", "gamma",
    "noise_p", "noise", "blur_p", "blur",
)

# k × 90° turns of (x, y) pixel coordinates, exact (no cos(pi / 2) round-off).
_ROT90 = torch.tensor([[[1, 0], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [0, -1]], [[0, 1], [-1, 0]]],
                      dtype=torch.float32)


@torch.no_grad()
def augment_batch(image: Tensor, label: Tensor, cfg: AugmentConfig,
                  generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Augment a batch, drawing every random number from `generator`.

    Args:
        image: (B, C, H, W) floating point, intensity-normalised.
        label: (B, H, W) int64 class indices.
        cfg: probabilities and ranges.
        generator: on the batch's device or on the CPU; the same seed on the same device gives
            the same batch.

    Returns:
        (image, label): the input shapes, dtypes and device. The inputs are never written to;
        when nothing fires they are returned as they are. Labels only take values present in
        the input (plus 0 with fill "constant").
    """
    if image.ndim != 4 or label.shape != (image.shape[0], *image.shape[2:]):
        raise ValueError(f"augment_batch needs image (B, C, H, W) and label (B, H, W), "
                         f"got {tuple(image.shape)} and {tuple(label.shape)}")
    batch = image.shape[0]
    u = _uniform(generator, (batch, len(_DRAWS)), image.device)
    draw = dict(zip(_DRAWS, u.unbind(1)))
    ctrl = None
    if cfg.elastic_p > 0:
        ctrl = _normal(generator, (batch, 2, cfg.elastic_grid, cfg.elastic_grid), image.device)
    moved_image, label = _apply_geometry(image, label, cfg, draw, ctrl)
    owned = moved_image is not image
    return _apply_intensity(moved_image, owned, cfg, draw, generator), label


def _uniform(generator: torch.Generator, shape: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _normal(generator: torch.Generator, shape: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def _fires(draw: dict[str, Tensor], cfg: AugmentConfig, name: str) -> Tensor:
    """(B,) bool: which samples get transform `name`."""
    return draw[f"{name}_p"] < getattr(cfg, f"{name}_p")


def _symmetric(u: Tensor, half_width: float, fires: Tensor, identity: float = 0.0) -> Tensor:
    """Map uniform [0, 1) draws to [identity - half_width, identity + half_width); identity where not firing."""
    return torch.where(fires, identity + (2.0 * u - 1.0) * half_width, torch.full_like(u, identity))


def _mat2(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    """(B, 2, 2) matrices [[a, b], [c, d]] from (B,) entries."""
    return torch.stack([torch.stack([a, b], -1), torch.stack([c, d], -1)], -2)


def _affine(cfg: AugmentConfig, draw: dict[str, Tensor], height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample affine maps from output to input coordinates, as affine_grid wants them.

    Returns:
        theta: (B, 2, 3) in normalised coordinates; continuous: (B,) bool, the samples that need
        interpolation; moved: (B,) bool, the samples whose grid is not the identity.
    """
    rot, shift, shear, zoom = (_fires(draw, cfg, n) for n in ("rotate", "shift", "shear", "zoom"))
    hflip, vflip, rot90 = (_fires(draw, cfg, n) for n in ("hflip", "vflip", "rot90"))
    one, zero = torch.ones_like(draw["rotate"]), torch.zeros_like(draw["rotate"])

    angle = torch.deg2rad(_symmetric(draw["rotate"], cfg.rotate_deg, rot))
    shear_angle = torch.deg2rad(_symmetric(draw["shear"], cfg.shear, shear))
    scale = _symmetric(draw["zoom"], cfg.zoom, zoom, 1.0)
    scale_x = scale * _symmetric(draw["zoom_x"], cfg.zoom_aniso, zoom, 1.0)
    scale_y = scale * _symmetric(draw["zoom_y"], cfg.zoom_aniso, zoom, 1.0)
    # Non-square images can only turn by 180° and keep their shape.
    k = (draw["rot90"] * 4).long().clamp(max=3) if height == width else (draw["rot90"] < 0.5).long() * 2
    k = torch.where(rot90, k, torch.zeros_like(k))

    # Composed in pixel units centred on the image, so angles stay angles on non-square images.
    flip = torch.diag_embed(torch.stack([torch.where(hflip, -one, one), torch.where(vflip, -one, one)], -1))
    linear = (flip @ _ROT90.to(k.device)[k]
              @ _mat2(angle.cos(), -angle.sin(), angle.sin(), angle.cos())
              @ _mat2(one, -shear_angle.sin(), zero, shear_angle.cos())
              @ torch.diag_embed(torch.stack([scale_x, scale_y], -1)))
    half = torch.tensor([width / 2.0, height / 2.0], device=linear.device)
    linear = linear * half[None, None, :] / half[None, :, None]
    # A shift of a fraction f of the side is 2 f in normalised coordinates.
    offset = 2.0 * torch.stack([_symmetric(draw["shift_x"], cfg.shift, shift),
                                _symmetric(draw["shift_y"], cfg.shift, shift)], -1)
    theta = torch.cat([linear, offset[..., None]], -1)

    continuous = rot | shift | shear | zoom | _fires(draw, cfg, "elastic")
    return theta, continuous, continuous | hflip | vflip | (k != 0)


def _grid(theta: Tensor, height: int, width: int) -> Tensor:
    """(N, H, W, 2) sampling grid of `theta` (N, 2, 3), as F.affine_grid(align_corners=False) gives it.

    Built by broadcasting one row and one column per sample: affine_grid's batched matrix
    product is several times slower on the CPU.
    """
    xs = (torch.arange(width, device=theta.device, dtype=theta.dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, device=theta.device, dtype=theta.dtype) * 2 + 1) / height - 1
    grid = theta.new_empty(theta.shape[0], height, width, 2)
    for axis in range(2):
        row = theta[:, axis, 0, None, None] * xs[None, None, :] + theta[:, axis, 2, None, None]
        torch.add(row, theta[:, axis, 1, None, None] * ys[None, :, None], out=grid[..., axis])
    return grid


def _cubic_weights(points: int, size: int, device: torch.device) -> Tensor:
    """(size, points): bicubic interpolation (align_corners=True) from `points` control points."""
    eye = torch.eye(points, device=device).view(points, 1, points, 1)
    return F.interpolate(eye, size=(size, 1), mode="bicubic", align_corners=True).view(points, size).T


def _elastic(ctrl: Tensor, alpha: float, height: int, width: int) -> Tensor:
    """(N, H, W, 2) smooth displacements in normalised units from (N, 2, g, g) standard normals.

    Bicubic upsampling is separable, so it is two small matrix products per sample.
    """
    points = ctrl.shape[-1]
    rows, cols = _cubic_weights(points, height, ctrl.device), _cubic_weights(points, width, ctrl.device)
    field = rows @ (ctrl * alpha) @ cols.T
    pixels_to_normalised = torch.tensor([2.0 / width, 2.0 / height], device=ctrl.device)
    return field.permute(0, 2, 3, 1) * pixels_to_normalised


def _take(x: Tensor, idx: Tensor) -> Tensor:
    return x if idx.numel() == x.shape[0] else x.index_select(0, idx)


def _put(x: Tensor, idx: Tensor, values: Tensor) -> Tensor:
    return values if idx.numel() == x.shape[0] else x.index_copy_(0, idx, values)


def _apply_geometry(image: Tensor, label: Tensor, cfg: AugmentConfig, draw: dict[str, Tensor],
                    ctrl: Tensor | None) -> tuple[Tensor, Tensor]:
    """Resample the samples that move: bilinear where needed, else nearest (an exact permutation).

    Returns new tensors where any sample moved; unmoved samples are the input's values.
    """
    height, width = image.shape[-2:]
    theta, continuous, moved = _affine(cfg, draw, height, width)
    bent = _fires(draw, cfg, "elastic") & (cfg.elastic_alpha > 0)
    padding = _PADDING[cfg.fill]
    # Nearest on an identity grid is exact, so unmoved samples may ride along with the flipped
    # ones: that spares indexing a subset when the whole batch only flips.
    discrete = ~continuous if bool((moved & ~continuous).any()) else torch.zeros_like(moved)
    cloned = False
    for mode, chosen in (("bilinear", continuous), ("nearest", discrete)):
        idx = chosen.nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        if not cloned and idx.numel() < image.shape[0]:
            image, label, cloned = image.clone(), label.clone(), True
        grid = _grid(_take(theta, idx), height, width)
        if ctrl is not None and bool(bent[idx].any()):
            warp = bent[idx].nonzero().squeeze(1)
            grid.index_add_(0, warp, _elastic(ctrl[idx[warp]], cfg.elastic_alpha, height, width))
        channels = _take(image, idx).float()
        if mode == "nearest":  # the label rides along as one more channel
            channels = torch.cat([channels, _take(label, idx)[:, None].float()], 1)
        out = F.grid_sample(channels, grid, mode=mode, padding_mode=padding, align_corners=False)
        if mode == "bilinear":
            label_out = F.grid_sample(_take(label, idx)[:, None].float(), grid, mode="nearest",
                                      padding_mode=padding, align_corners=False)[:, 0]
        else:
            out, label_out = out[:, :-1], out[:, -1]
        image = _put(image, idx, out.to(image.dtype))
        label = _put(label, idx, label_out.to(label.dtype))
    return image, label


def _apply_intensity(image: Tensor, owned: bool, cfg: AugmentConfig, draw: dict[str, Tensor],
                     generator: torch.Generator) -> Tensor:
    """Brightness and contrast, gamma, blur, then noise (so blur does not smooth it).

    `owned`: whether `image` may be written in place (it is not the caller's tensor).
    """
    image, owned = _brightness_contrast(image, owned, cfg, draw)
    for name, step in (("gamma", _gamma), ("blur", _blur), ("noise", _noise)):
        idx = _fires(draw, cfg, name).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        values = step(_take(image, idx), draw[name][idx], cfg, generator)
        if not owned and idx.numel() < image.shape[0]:
            image = image.clone()
        image, owned = _put(image, idx, values), True
    return image


def _brightness_contrast(image: Tensor, owned: bool, cfg: AugmentConfig,
                         draw: dict[str, Tensor]) -> tuple[Tensor, bool]:
    """x ↦ mean + (x - mean) × factor + offset as one pass over the batch; x × 1 + 0 is exactly x."""
    brighten, contrast = _fires(draw, cfg, "brightness"), _fires(draw, cfg, "contrast")
    if not bool((brighten | contrast).any()):
        return image, owned
    factor = _symmetric(draw["contrast"], cfg.contrast, contrast, 1.0)
    offset = _symmetric(draw["brightness"], cfg.brightness, brighten)
    if bool(contrast.any()):
        offset = offset + image.mean(dim=(1, 2, 3)).float() * (1.0 - factor)
    return torch.addcmul(_per_sample(offset).to(image.dtype), image, _per_sample(factor).to(image.dtype)), True


def _per_sample(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def _gamma(x: Tensor, u: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    log_gamma = (2.0 * u - 1.0) * math.log1p(cfg.gamma)
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    span = (x.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-6)
    unit = ((x - low) / span).clamp(0.0, 1.0)
    return unit.pow(_per_sample(log_gamma.exp()).to(x.dtype)) * span + low


def _noise(x: Tensor, u: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    noise = _normal(generator, tuple(x.shape), x.device).to(x.dtype)
    return x + noise * _per_sample(u * cfg.noise_std).to(x.dtype)


def _blur(x: Tensor, u: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """Separable Gaussian blur, one sigma per sample, as a grouped convolution over N × C."""
    low, high = cfg.blur_sigma
    if high == 0:
        return x
    n, channels, height, width = x.shape
    radius = max(1, math.ceil(3.0 * high))
    sigma = (low + u * (high - low)).clamp_min(1e-3)
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(channels, 0).to(x.dtype)
    pad = "reflect" if radius < min(height, width) else "replicate"
    flat = x.reshape(1, n * channels, height, width)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode=pad), kernel[:, None, None, :], groups=n * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode=pad), kernel[:, None, :, None], groups=n * channels)
    return flat.view(n, channels, height, width)
