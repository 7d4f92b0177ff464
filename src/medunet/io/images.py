"""Read and write 2D images and masks, keeping their bit depth.

TIFF goes through tifffile first (it reads TIFFs Pillow cannot, such as 3-sample TIFFs tagged
MinIsBlack), every other format through Pillow, and each falls back to the other. Whatever goes
wrong while reading (missing, empty, corrupt, truncated, unsupported shape, NaN) becomes a
`DataError` whose message starts with the path, so the CLI can print one line.

Arrays at this boundary:
    image: (H, W) grey or (H, W, 3) RGB; uint8, uint16, float32, or int16/int32 (CT-like TIFF).
    label: (H, W) integer array of the values stored in the file (palette indices for palette files).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from PIL import TiffImagePlugin  # noqa: F401  (registered up front: else the first TIFF Pillow opens loads every plugin)

from medunet.errors import DataError
from medunet.io.outputs import atomic_target

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".gif")
TIFF_SUFFIXES = (".tif", ".tiff")
JPEG_SUFFIXES = (".jpg", ".jpeg")
_PIL_FORMATS = {".png": "PNG", ".bmp": "BMP", ".gif": "GIF", ".jpg": "JPEG", ".jpeg": "JPEG"}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders

# Whole-slide and stitched medical images exceed Pillow's default bomb limit (~89 Mpx); 2**31 pixels
# still stops a hostile file from claiming terabytes. Only ever raised, never lowered.
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < 2**31:
    Image.MAX_IMAGE_PIXELS = 2**31


@dataclass(frozen=True)
class LabelFile:
    """A label file's stored values, before any meaning is given to them.

    Attributes:
        path: the file read.
        values: (H, W) integer array of the raw stored values (palette indices for palette files).
        lossy: the file is JPEG, so values near 0 and 255 are noise around the drawn ones.
        palette: the values are palette indices (palette PNG, GIF or TIFF).
        colours: for palette files, the palette as 768 values R0, G0, B0, R1, ... (8-bit, padded
            with zeros to 256 entries); None otherwise, or for TIFF palettes of more than 256 entries.
    """

    path: Path
    values: np.ndarray
    lossy: bool
    palette: bool
    colours: tuple[int, ...] | None = None


@dataclass(frozen=True)
class _Raw:
    """What a reader got from a file: the array and how it was stored."""

    array: np.ndarray
    lossy: bool = False
    palette: bool = False
    colours: tuple[int, ...] | None = None


# ----------------------------------------------------------------------------------------- reading

def read_image(path: Path) -> np.ndarray:
    """Read a 2D image, keeping its bit depth.

    Args:
        path: a TIFF, PNG, JPEG, BMP or GIF file.

    Returns:
        (H, W) grey or (H, W, 3) RGB array: uint8, uint16, float32 (float files), or int16/int32
        (signed TIFF, e.g. CT in HU). Alpha is dropped, palette images become RGB (grey when the
        palette used is grey), 1-bit becomes uint8 0/255.

    Raises:
        DataError: the file is missing, unreadable, not 2D, empty, or holds NaN/Inf.
    """
    path = Path(path)
    raw = _read_raw(path, palette_indices=False)
    array = _drop_alpha(_channel_last(raw.array, path), path)
    return check_values(normalise_dtype(array, path), path)


def read_label(path: Path) -> LabelFile:
    """Read a mask's stored values without interpreting them.

    Args:
        path: a TIFF, PNG, JPEG, BMP or GIF mask.

    Returns:
        LabelFile whose `values` is an (H, W) integer array: palette indices for palette files,
        the grey level otherwise (1-bit masks give 0/255, like `read_image`).

    Raises:
        DataError: as `read_image`; also a colour label whose R, G, B differ, or a float label
            with non-integer values.
    """
    path = Path(path)
    raw = _read_raw(path, palette_indices=True)
    array = _drop_alpha(_channel_last(raw.array, path), path)
    if array.ndim == 3:
        if not (np.array_equal(array[..., 0], array[..., 1])
                and np.array_equal(array[..., 0], array[..., 2])):
            raise DataError(f"{path}: colour label with different R, G, B values; "
                            "save class ids or a grey mask")
        array = array[..., 0]
    array = integer_labels(check_values(normalise_dtype(array, path), path), path)
    return LabelFile(path=path, values=np.ascontiguousarray(array), lossy=raw.lossy, palette=raw.palette,
                     colours=raw.colours if raw.palette else None)


def image_size(path: Path) -> tuple[int, int, int]:
    """(H, W, channels) of a 2D image from its header, without decoding the pixels (for estimating
    a dataset's decoded size); channels 3 for colour (alpha not counted), else 1. A header the
    quick look cannot make sense of is answered by reading the image."""
    path = Path(path)
    try:  # Pillow parses TIFF headers too, and more lightly than tifffile (no reference cycles)
        with Image.open(path) as im:
            (w, h), c = im.size, len(im.getbands())
    except Exception:  # what Pillow cannot open (float or planar TIFF, ...): the full reader knows it
        shape = read_image(path).shape
        h, w, c = shape[0], shape[1], shape[2] if len(shape) == 3 else 1
    return int(h), int(w), 3 if c >= 3 else 1


def integer_labels(array: np.ndarray, path: Path) -> np.ndarray:
    """A label array of any shape as integers: floats holding whole numbers (labels saved as float32)
    become uint8, uint16 or int32; integer arrays pass unchanged.

    Raises:
        DataError: non-integer float values, or values beyond 32-bit integers.
    """
    if array.dtype.kind != "f":
        return array
    if not np.array_equal(array, np.round(array)):
        raise DataError(f"{path}: float label with non-integer values; save class ids or a mask")
    lo, hi = float(array.min()), float(array.max())
    if lo < -2**31 or hi >= 2**31:  # checked before the cast, which would wrap silently
        raise DataError(f"{path}: label values between {lo:g} and {hi:g} do not fit 32-bit integers")
    return _smallest_int(array, path)


def _read_raw(path: Path, *, palette_indices: bool) -> _Raw:
    """Read a file with the reader its suffix suggests, then the other one."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: cannot read image (empty file, 0 bytes)")
    readers = [("tifffile", _read_tiff), ("Pillow", _read_pil)]
    # The bytes decide, not the suffix: Pillow reads a 16-bit RGB TIFF named .png as 8-bit.
    if path.suffix.lower() not in TIFF_SUFFIXES and not is_tiff(path):
        readers.reverse()
    failures = []
    for name, reader in readers:
        try:
            raw = reader(path, palette_indices)
        except DataError:
            raise
        except Exception as exc:  # readers raise many types on bad bytes; the user needs one
            failures.append(f"{name}: {_short(exc)}".replace(f" '{path}'", ""))
            continue
        if raw.array.size == 0:
            raise DataError(f"{path}: image has no pixels (shape {raw.array.shape})")
        return raw
    raise DataError(f"{path}: cannot read image ({'; '.join(failures)})")


def is_tiff(path: Path) -> bool:
    """Whether the file starts like a TIFF (classic or BigTIFF), whatever its suffix."""
    try:
        with open(path, "rb") as f:
            return f.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = text[:120]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_tiff(path: Path, palette_indices: bool) -> _Raw:
    """Read the first series of a TIFF; a stack of several 2D slices is refused."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        order = _yx_order(series.shape, series.axes)
        if order is None:
            raise DataError(f"{path}: unsupported image shape {tuple(series.shape)} "
                            f"(axes {series.axes}): a 3D stack? medunet reads 2D images, "
                            "one file per slice")
        array = series.asarray().reshape(order[0]).transpose(order[1])
        page = series.keyframe
        lossy = page.compression in (tifffile.COMPRESSION.JPEG, tifffile.COMPRESSION.OJPEG)
        palette = page.photometric == tifffile.PHOTOMETRIC.PALETTE and array.ndim == 2
        if palette and not palette_indices:
            array = _apply_colormap(array, page.colormap)
        colours = _tiff_colours(page.colormap) if palette and palette_indices else None
    return _Raw(array, lossy=lossy, palette=palette and palette_indices, colours=colours)


def _yx_order(shape: tuple[int, ...], axes: str) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """How to bring a TIFF series to (H, W) or (H, W, C): (squeezed shape, transpose order).

    Length-1 axes other than Y and X are dropped (ImageJ's T, Z, C, a single sample), so a
    1-pixel-high RGB image stays (1, W, 3). One more axis is kept as channels, moved last: samples
    (S) of 2 to 4 (grey+alpha, RGB, RGBA) or 3 to 4 planes of another kind (planar RGB). Anything
    else is a stack: None.
    """
    if len(axes) != len(shape) or "Y" not in axes or "X" not in axes:
        axes = "Q" * (len(shape) - 2) + "YX" if len(shape) >= 2 else ""
        if len(shape) == 3 and shape[-1] in (2, 3, 4) and shape[0] not in (3, 4):
            axes = "YXS"  # a contiguous colour image without axis names
    if len(shape) < 2:
        return None
    kept = [(a, n) for a, n in zip(axes, shape) if n != 1 or a in "YX"]
    other = [(i, a, n) for i, (a, n) in enumerate(kept) if a not in "YX"]
    if len(other) > 1 or (other and other[0][2] not in ((2, 3, 4) if other[0][1] == "S" else (3, 4))):
        return None
    names = [a for a, _ in kept]
    order = [names.index("Y"), names.index("X")] + [i for i, _, _ in other]
    return tuple(n for _, n in kept), tuple(order)


def _apply_colormap(index: np.ndarray, colormap: np.ndarray | None) -> np.ndarray:
    """(H, W) palette indices and a (3, N) TIFF colormap → (H, W, 3) RGB, uint8 for 16-bit maps."""
    if colormap is None:
        return index
    rgb = np.moveaxis(colormap[:, index], 0, -1)
    if colormap.dtype == np.uint16:
        rgb = (rgb // 257).astype(np.uint8) if rgb.max() > 255 else rgb.astype(np.uint8)
    return _grey_if_equal(rgb)


def _tiff_colours(colormap: np.ndarray | None) -> tuple[int, ...] | None:
    """A (3, N) TIFF colormap → 768 8-bit values R0, G0, B0, ...; None beyond 256 entries."""
    if colormap is None or colormap.shape[-1] > 256:
        return None
    rgb = np.asarray(colormap)
    if rgb.dtype == np.uint16 and rgb.max() > 255:
        rgb = rgb // 257
    return _padded_palette(rgb.T.ravel().tolist())


def _padded_palette(values: list[int]) -> tuple[int, ...]:
    """RGB palette values → exactly 768 (256 entries), padded with black."""
    values = [int(v) for v in values[:768]]
    return tuple(values + [0] * (768 - len(values)))


def _grey_if_equal(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) from a palette → (H, W) when the palette used is grey (a grey GIF is a grey image)."""
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])
    return rgb


def _read_pil(path: Path, palette_indices: bool) -> _Raw:
    """Read the first frame with Pillow; `.load()` inside the `with` so truncation raises here."""
    with Image.open(path) as im:
        rawmode = str(im.tile[0].args) if im.tile else ""
        im.load()
        lossy = im.format in ("JPEG", "MPO")
        mode = im.mode
        if mode == "1":
            return _Raw(np.asarray(im, dtype=bool).astype(np.uint8) * 255, lossy)
        if mode in ("P", "PA"):
            if palette_indices:
                colours = _padded_palette(im.getpalette("RGB") or [])
                return _Raw(np.asarray(im.getchannel(0)), lossy, palette=True, colours=colours)
            return _Raw(_grey_if_equal(np.asarray(im.convert("RGB"))), lossy)
        if mode in ("L", "LA", "La"):
            return _Raw(np.asarray(im.getchannel(0)), lossy)
        if mode == "RGB":
            if im.format == "PNG" and ";16" in rawmode:
                logger.warning("%s: 16-bit colour PNG read as 8-bit (Pillow keeps the high byte); "
                               "save 16-bit colour as TIFF to keep every bit", path)
            return _Raw(np.asarray(im), lossy)
        if mode.startswith("I") or mode == "F":
            array = np.asarray(im)
            array = array.astype(array.dtype.newbyteorder("="))
            if mode == "I" and im.format == "PNG":  # PNG is at most 16-bit unsigned
                array = array.astype(np.uint16)
            return _Raw(array, lossy)
        # RGBA, RGBa, RGBX, CMYK, YCbCr, LAB, HSV: Pillow knows how to make RGB of them.
        return _Raw(np.asarray(im.convert("RGB")), lossy)


def _channel_last(array: np.ndarray, path: Path) -> np.ndarray:
    """(H, W), (H, W, C) or planar (C, H, W) with C in 3, 4 → (H, W) or (H, W, C)."""
    if array.ndim == 3 and array.shape[-1] not in (2, 3, 4) and array.shape[0] in (3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (2, 3, 4)):
        return array
    raise DataError(f"{path}: unsupported image shape {array.shape}; medunet reads 2D grey or RGB images")


def _drop_alpha(array: np.ndarray, path: Path) -> np.ndarray:
    """Grey+alpha → grey, RGBA → RGB: masks and intensities never live in the alpha channel."""
    if array.ndim == 3 and array.shape[-1] == 2:
        return array[..., 0]
    if array.ndim == 3 and array.shape[-1] == 4:
        return array[..., :3]
    return array


def normalise_dtype(array: np.ndarray, path: Path) -> np.ndarray:
    """Bring any stored dtype to uint8, uint16, int16, int32 or float32."""
    kind, size = array.dtype.kind, array.dtype.itemsize
    if kind == "b":
        return array.astype(np.uint8) * 255
    if kind == "f":
        if size > 4 and array.size and np.isfinite(array).all() \
                and np.abs(array).max() > np.finfo(np.float32).max:
            raise DataError(f"{path}: pixel values up to {np.abs(array).max():g} exceed 32-bit float")
        return array.astype(np.float32, copy=False)  # a float32 volume is not copied
    if (kind, size) in (("u", 1), ("u", 2), ("i", 2), ("i", 4)):
        return array.astype(array.dtype.newbyteorder("="), copy=False)
    if kind == "i" and size == 1:
        return array.astype(np.int16)
    if kind in "iu":
        return _smallest_int(array, path)
    raise DataError(f"{path}: unsupported pixel type {array.dtype}")


def _smallest_int(array: np.ndarray, path: Path) -> np.ndarray:
    """Integers → uint8, uint16 or int32, whichever holds them; DataError beyond int32."""
    lo, hi = int(array.min()), int(array.max())
    for dtype in (np.uint8, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return array.astype(dtype)
    raise DataError(f"{path}: pixel values between {lo} and {hi} do not fit 32-bit integers")


def check_values(array: np.ndarray, path: Path) -> np.ndarray:
    if array.size == 0:
        raise DataError(f"{path}: image has no pixels (shape {array.shape})")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DataError(f"{path}: image holds NaN or infinite values")
    return array


# ----------------------------------------------------------------------------------------- writing

def mask_suffix(source: Path) -> str:
    """The suffix for a predicted mask of `source`: its own, but PNG for JPEG (masks must be lossless).

    Unreadable suffixes also give ".png". GIF stays ".gif" (lossless, 8-bit).
    """
    suffix = Path(source).suffix
    if suffix.lower() in JPEG_SUFFIXES or suffix.lower() not in IMAGE_SUFFIXES:
        return ".png"
    return suffix


def write_mask(path: Path, mask: np.ndarray, *, like: Path | None = None,
               palette: tuple[int, ...] | None = None) -> None:
    """Write an (H, W) uint8/uint16 mask atomically, in the format of `path`'s suffix.

    Args:
        path: output file; .tif/.tiff (zlib), .png, .bmp or .gif. Not JPEG.
        mask: (H, W) uint8 or uint16 values as they should be stored (0/255, class ids...).
        like: the source image; when it is a TIFF its resolution tags are copied, so the mask
            keeps the image's pixel spacing.
        palette: 768 RGB values (`LabelEncoding.palette`): the mask is written as a palette image
            (mode "P", or a TIFF colormap) whose indices are the mask's values, unchanged.

    Raises:
        ValueError: JPEG suffix, unknown suffix, wrong shape or dtype, uint16 to BMP/GIF, uint16
            with a palette, or a palette that is not 768 values in 0..255.
    """
    path = Path(path)
    mask = np.asarray(mask)
    suffix = path.suffix.lower()
    if suffix in JPEG_SUFFIXES:
        raise ValueError(f"{path}: masks cannot be JPEG (lossy); use .png")
    if mask.ndim != 2 or mask.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: a mask must be (H, W) uint8 or uint16, got {mask.shape} {mask.dtype}")
    if palette is not None:
        _check_palette(palette, mask, path)
    resolution = _tiff_resolution(Path(like)) if like is not None and suffix in TIFF_SUFFIXES else {}
    _write(path, mask, resolution, palette)


def _check_palette(palette: tuple[int, ...], mask: np.ndarray, path: Path) -> None:
    """A palette holds 256 RGB entries of 0..255, and only 8-bit masks index it."""
    if len(palette) != 768 or min(palette) < 0 or max(palette) > 255:
        raise ValueError(f"{path}: a palette is 768 values in 0..255, got {len(palette)} values")
    if mask.dtype != np.uint8:
        raise ValueError(f"{path}: a palette mask must be uint8 indices, got {mask.dtype}")


def write_image(path: Path, array: np.ndarray) -> None:
    """Write an image atomically, in the format of `path`'s suffix.

    Args:
        path: output file; .tif/.tiff, .png, .jpg/.jpeg (quality 95), .bmp or .gif.
        array: (H, W) or (H, W, 3); uint8 anywhere, uint16 grey to TIFF or PNG, uint16 RGB,
            int16, int32 and float32 to TIFF only.

    Raises:
        ValueError: unknown suffix, wrong shape, or a dtype the format cannot hold.
    """
    path = Path(path)
    array = np.asarray(array)
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        raise ValueError(f"{path}: an image must be (H, W) or (H, W, 3), got {array.shape}")
    if array.dtype not in (np.uint8, np.uint16, np.int16, np.int32, np.float32):
        raise ValueError(f"{path}: cannot write pixel type {array.dtype}")
    _write(path, array, {})


def _write(path: Path, array: np.ndarray, resolution: dict,
           palette: tuple[int, ...] | None = None) -> None:
    """Check that the suffix's format holds `array`, then write it through a temporary file.

    With a palette, `array` is (H, W) uint8 indices, written as a palette image.
    """
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        _write_tiff(path, array, resolution, palette)
        return
    fmt = _PIL_FORMATS.get(suffix)
    if fmt is None:
        raise ValueError(f"{path}: unknown image suffix {path.suffix!r} "
                         f"(use one of {', '.join(IMAGE_SUFFIXES)})")
    grey16 = array.dtype == np.uint16 and array.ndim == 2 and fmt == "PNG"
    if array.dtype != np.uint8 and not grey16:
        raise ValueError(f"{path}: {fmt} cannot hold {array.dtype} "
                         f"{'RGB' if array.ndim == 3 else 'grey'} pixels; use .tif")
    options = {"JPEG": {"quality": 95},
               # Pillow's palette optimisation renumbers a grey GIF (0/255 → indices 0/1); the full
               # identity palette makes it read back as the grey values written.
               "GIF": {"optimize": False}}.get(fmt, {})
    im = Image.fromarray(np.ascontiguousarray(array))
    if palette is not None:
        im.putpalette(list(palette))  # an "L" image becomes "P", its values the indices
    with atomic_target(path, durable=False) as tmp:   # image outputs go into staged folders
        im.save(tmp, format=fmt, **options)


def _write_tiff(path: Path, array: np.ndarray, resolution: dict, palette: tuple[int, ...] | None) -> None:
    """zlib TIFF: RGB, grey, or (H, W) uint8 indices with a colormap when a palette is given."""
    options = {"photometric": "rgb" if array.ndim == 3 else "minisblack"}
    if palette is not None:
        # TIFF colormaps are 16-bit: ×257 maps 255 to 65535 exactly, and readers divide back.
        colormap = np.asarray(palette, np.uint16).reshape(256, 3).T * np.uint16(257)
        options = {"photometric": "palette", "colormap": colormap}
    with atomic_target(path, durable=False) as tmp:
        tifffile.imwrite(tmp, array, compression="zlib", **options, **resolution)


def _tiff_resolution(like: Path) -> dict:
    """tifffile.imwrite keyword arguments that copy `like`'s resolution tags; {} if it has none."""
    if like.suffix.lower() not in TIFF_SUFFIXES:
        return {}
    try:
        with tifffile.TiffFile(like) as tif:
            tags = tif.pages.first.tags
            x, y = tags.get("XResolution"), tags.get("YResolution")
            unit = tags.get("ResolutionUnit")
            if x is None or y is None:
                return {}
            out = {"resolution": (tuple(x.value), tuple(y.value))}
            out["resolutionunit"] = int(unit.value) if unit is not None else 2  # TIFF default: inch
            return out
    except Exception as exc:  # the mask is still worth writing without the spacing
        logger.warning("%s: cannot copy resolution tags (%s)", like, _short(exc))
        return {}
