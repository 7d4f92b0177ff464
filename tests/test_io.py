"""Reading and writing images and masks: formats, bit depths, orientation, errors."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from medunet.errors import DataError
from medunet.io import images
from medunet.io.images import (IMAGE_SUFFIXES, mask_suffix, read_image, read_label, write_image,
                               write_mask)

H, W = 64, 48  # never square, so a transpose cannot pass
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pattern(dtype=np.uint8, rgb: bool = False) -> np.ndarray:
    """(H, W) or (H, W, 3) asymmetric pattern with a bright marker near the top right corner."""
    top = {np.uint8: 200, np.uint16: 60000, np.int16: 3000, np.int32: 100000, np.float32: 1.0}[dtype]
    a = (np.arange(H * W).reshape(H, W) % 97).astype(np.float64) / 97 * top / 2
    a[2:6, W - 8:W - 3] = top
    a = a.astype(dtype)
    if rgb:
        a = np.stack([a, a // 2 if dtype != np.float32 else a / 2, a[::-1]], axis=-1)
    return a


def assert_marker(array: np.ndarray) -> None:
    """The bright marker is at rows 2-5, columns W-8..W-4, whatever the layout."""
    assert array.shape[:2] == (H, W)
    grey = array if array.ndim == 2 else array[..., 0]
    assert grey[3, W - 5] == grey.max()
    assert grey[H - 4, 5] != grey.max()


def no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------------- round trips

ROUND_TRIPS = [
    (".tif", np.uint8, False), (".tif", np.uint16, False), (".tif", np.float32, False),
    (".tif", np.int16, False), (".tif", np.int32, False), (".tif", np.uint8, True),
    (".tif", np.uint16, True), (".tiff", np.float32, True),
    (".png", np.uint8, False), (".png", np.uint16, False), (".png", np.uint8, True),
    (".bmp", np.uint8, False), (".bmp", np.uint8, True), (".gif", np.uint8, False),
]


@pytest.mark.parametrize("suffix,dtype,rgb", ROUND_TRIPS)
def test_write_read_image_exact(tmp_path, suffix, dtype, rgb):
    array = pattern(dtype, rgb)
    path = tmp_path / f"img{suffix}"
    write_image(path, array)
    back = read_image(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert_marker(back)
    no_leftovers(tmp_path)


@pytest.mark.parametrize("rgb", [False, True])
def test_jpeg_image_is_close(tmp_path, rgb):
    yy, xx = np.mgrid[0:H, 0:W]
    array = (yy * 2 + xx).astype(np.uint8)  # smooth: JPEG keeps it within a few levels
    array[2:10, W - 10:W - 2] = 255
    if rgb:
        array = np.dstack([array, array, array // 2])
    write_image(tmp_path / "a.jpg", array)
    back = read_image(tmp_path / "a.jpg")
    assert back.shape == array.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - array).mean() < 4
    grey = back if back.ndim == 2 else back[..., 0]
    assert grey[5, W - 6] > 230 and grey[H - 6, 5] < 150  # marker stays top right


def test_rgba_png_becomes_rgb(tmp_path):
    rgba = np.dstack([pattern(rgb=True), np.full((H, W), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    back = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(back, rgba[..., :3])


def test_rgba_tiff_becomes_rgb(tmp_path):
    rgba = np.dstack([pattern(rgb=True), np.full((H, W), 7, np.uint8)])
    tifffile.imwrite(tmp_path / "a.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), rgba[..., :3])


def test_grey_alpha_png_becomes_grey(tmp_path):
    la = np.dstack([pattern(), np.full((H, W), 9, np.uint8)])
    Image.fromarray(la, "LA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), la[..., 0])


def palette_image() -> Image.Image:
    index = np.zeros((H, W), np.uint8)
    index[2:6, W - 8:W - 3] = 1
    index[H // 2:, :10] = 2
    im = Image.fromarray(index, "P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    return im


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_image_is_rgb_and_label_is_indices(tmp_path, suffix):
    path = tmp_path / f"p{suffix}"
    palette_image().save(path)
    rgb = read_image(path)
    assert rgb.shape == (H, W, 3)
    assert tuple(rgb[3, W - 5]) == (255, 0, 0) and tuple(rgb[H - 1, 0]) == (0, 0, 255)
    label = read_label(path)
    assert label.palette and not label.lossy
    np.testing.assert_array_equal(label.values, np.asarray(palette_image()))
    assert label.colours == (0, 0, 0, 255, 0, 0, 0, 0, 255) + (0,) * 759   # padded to 256 entries


def test_palette_tiff(tmp_path):
    index = np.asarray(palette_image())
    cmap = np.zeros((3, 256), np.uint16)
    cmap[0, 1] = 65535
    cmap[2, 2] = 65535
    tifffile.imwrite(tmp_path / "p.tif", index, photometric="palette", colormap=cmap)
    rgb = read_image(tmp_path / "p.tif")
    assert rgb.dtype == np.uint8 and tuple(rgb[3, W - 5]) == (255, 0, 0)
    label = read_label(tmp_path / "p.tif")
    assert label.palette
    np.testing.assert_array_equal(label.values, index)
    assert label.colours[:9] == (0, 0, 0, 255, 0, 0, 0, 0, 255) and len(label.colours) == 768


def test_grey_label_has_no_colours(tmp_path):
    write_mask(tmp_path / "m.png", np.zeros((H, W), np.uint8))
    assert read_label(tmp_path / "m.png").colours is None


def test_one_bit_png_is_0_255(tmp_path):
    bits = pattern() > 150
    Image.fromarray(bits).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    back = read_image(tmp_path / "b.png")
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, bits.astype(np.uint8) * 255)
    np.testing.assert_array_equal(read_label(tmp_path / "b.png").values, back)


def test_one_bit_tiff_is_0_255(tmp_path):
    bits = pattern() > 150
    tifffile.imwrite(tmp_path / "b.tif", bits)
    np.testing.assert_array_equal(read_image(tmp_path / "b.tif"), bits.astype(np.uint8) * 255)


def test_planar_tiff_moves_channels_last(tmp_path):
    rgb = pattern(rgb=True)
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(rgb, -1, 0), photometric="rgb",
                     planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "p.tif"), rgb)


def test_three_samples_tagged_minisblack(tmp_path):
    """Like cvc-clinicdb: Pillow refuses these; tifffile reads them."""
    rgb = pattern(rgb=True)
    tifffile.imwrite(tmp_path / "m.tif", rgb, photometric="minisblack", planarconfig="contig")
    np.testing.assert_array_equal(read_image(tmp_path / "m.tif"), rgb)


def test_tiff_pages_of_different_shapes_take_the_first(tmp_path):
    path = tmp_path / "pyramid.tif"
    tifffile.imwrite(path, pattern())
    tifffile.imwrite(path, pattern()[::2, ::2], append=True)
    np.testing.assert_array_equal(read_image(path), pattern())


def test_png_named_tif_falls_back_to_pillow(tmp_path):
    Image.fromarray(pattern()).save(tmp_path / "x.tif", format="PNG")
    np.testing.assert_array_equal(read_image(tmp_path / "x.tif"), pattern())


def test_tiff_named_png_falls_back_to_tifffile(tmp_path):
    rgb = pattern(rgb=True)
    tifffile.imwrite(tmp_path / "x.png", rgb, photometric="minisblack", planarconfig="contig")
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), rgb)


def test_uppercase_suffix(tmp_path):
    write_image(tmp_path / "A.TIF", pattern())
    np.testing.assert_array_equal(read_image(tmp_path / "A.TIF"), pattern())


# ----------------------------------------------------------------------------------------- errors

def _zero_bytes(p: Path) -> None:
    p.write_bytes(b"")


def _random_bytes(p: Path) -> None:
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())


def _truncated_png(p: Path) -> None:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _truncated_tiff(p: Path) -> None:
    tifffile.imwrite(p, np.random.default_rng(1).integers(0, 256, (H, W), dtype=np.uint8),
                     compression="zlib")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _truncated_raw_tiff(p: Path) -> None:
    tifffile.imwrite(p, np.random.default_rng(1).integers(0, 256, (H, W), dtype=np.uint8))
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _zero_size(p: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tifffile warns that such a file is nonconformant
        tifffile.imwrite(p, np.zeros((0, W), np.uint8))


def _text(p: Path) -> None:
    p.write_text("this is not an image\n" * 20)


def _nan_tiff(p: Path) -> None:
    a = pattern(np.float32)
    a[10, 10] = np.nan
    tifffile.imwrite(p, a)


def _inf_tiff(p: Path) -> None:
    a = pattern(np.float32)
    a[10, 10] = np.inf
    tifffile.imwrite(p, a)


def _stack(p: Path) -> None:
    tifffile.imwrite(p, np.zeros((5, H, W), np.uint8))


def _complex(p: Path) -> None:
    tifffile.imwrite(p, np.zeros((H, W), np.complex64))


BROKEN = [("empty.png", _zero_bytes), ("random.png", _random_bytes), ("cut.png", _truncated_png),
          ("cut.tif", _truncated_tiff), ("cut_raw.tif", _truncated_raw_tiff), ("zero.tif", _zero_size),
          ("text.tif", _text), ("text.jpg", _text),
          ("nan.tif", _nan_tiff), ("inf.tif", _inf_tiff), ("stack.tif", _stack),
          ("complex.tif", _complex)]


@pytest.mark.parametrize("reader", [read_image, read_label])
@pytest.mark.parametrize("name,make", BROKEN)
def test_broken_files_raise_data_error_naming_the_path(tmp_path, reader, name, make):
    path = tmp_path / name
    make(path)
    with pytest.raises(DataError) as err:
        reader(path)
    assert str(err.value).startswith(f"{path}: ")


@pytest.mark.parametrize("reader", [read_image, read_label])
def test_missing_file_and_folder(tmp_path, reader):
    with pytest.raises(DataError, match="no such file") as err:
        reader(tmp_path / "gone.png")
    assert str(err.value).startswith(str(tmp_path / "gone.png"))
    with pytest.raises(DataError, match="not a file"):
        reader(tmp_path)


def test_stack_message_says_3d(tmp_path):
    _stack(tmp_path / "s.tif")
    with pytest.raises(DataError, match="3D stack"):
        read_image(tmp_path / "s.tif")


# ------------------------------------------------------------------------------------------ labels

def test_colour_label_with_equal_channels_is_grey(tmp_path):
    mask = (pattern() > 150).astype(np.uint8) * 255
    Image.fromarray(np.dstack([mask] * 3), "RGB").save(tmp_path / "m.png")
    label = read_label(tmp_path / "m.png")
    assert label.values.shape == (H, W) and not label.palette
    np.testing.assert_array_equal(label.values, mask)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_label_with_different_channels_is_refused(tmp_path, mode):
    rgb = pattern(rgb=True)
    im = Image.fromarray(rgb, "RGB").convert(mode)
    im.save(tmp_path / "m.png")
    with pytest.raises(DataError, match="different R, G, B") as err:
        read_label(tmp_path / "m.png")
    assert str(err.value).startswith(str(tmp_path / "m.png"))


def test_float_label_with_integer_values_is_cast(tmp_path):
    ids = (pattern() % 3).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", ids)
    label = read_label(tmp_path / "f.tif")
    assert label.values.dtype.kind in "iu"
    np.testing.assert_array_equal(label.values, ids.astype(int))


def test_float_label_with_fractions_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", pattern(np.float32))
    with pytest.raises(DataError, match="non-integer") as err:
        read_label(tmp_path / "f.tif")
    assert str(err.value).startswith(str(tmp_path / "f.tif"))


def test_jpeg_label_is_lossy(tmp_path):
    write_image(tmp_path / "m.jpg", (pattern() > 150).astype(np.uint8) * 255)
    label = read_label(tmp_path / "m.jpg")
    assert label.lossy and not label.palette and label.values.shape == (H, W)


# ----------------------------------------------------------------------------------------- masks

@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".png", ".bmp", ".gif"])
@pytest.mark.parametrize("values", [(0, 1), (0, 255), (0, 1, 2), (0, 127, 255)])
def test_write_mask_round_trip(tmp_path, suffix, values):
    mask = np.asarray(values, np.uint8)[pattern() % len(values)]
    mask[2:6, W - 8:W - 3] = values[-1]
    path = tmp_path / f"m{suffix}"
    write_mask(path, mask)
    label = read_label(path)
    assert label.values.dtype == np.uint8
    np.testing.assert_array_equal(label.values, mask)
    no_leftovers(tmp_path)


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_write_mask_uint16(tmp_path, suffix):
    mask = np.where(pattern() > 150, 1000, 0).astype(np.uint16)
    write_mask(tmp_path / f"m{suffix}", mask)
    back = read_label(tmp_path / f"m{suffix}").values
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, mask)


MASK_PALETTE = tuple([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [17, 34, 51] * 252)


@pytest.mark.parametrize("suffix", [".png", ".gif", ".bmp", ".tif"])
def test_write_mask_with_palette_keeps_colours_and_indices(tmp_path, suffix):
    mask = (pattern() % 4).astype(np.uint8)
    mask[0, 0] = 200                                   # an index beyond the drawn colours too
    path = tmp_path / f"m{suffix}"
    write_mask(path, mask, palette=MASK_PALETTE)
    label = read_label(path)
    assert label.palette and label.colours == MASK_PALETTE
    np.testing.assert_array_equal(label.values, mask)
    rgb = read_image(path)
    assert tuple(rgb[mask == 1][0]) == (255, 0, 0) and tuple(rgb[0, 0]) == (17, 34, 51)
    if suffix != ".tif":
        with Image.open(path) as im:
            assert im.mode == "P" and tuple(im.getpalette()) == MASK_PALETTE
    no_leftovers(tmp_path)


@pytest.mark.parametrize("mask,palette", [
    (np.zeros((H, W), np.uint16), MASK_PALETTE), (np.zeros((H, W), np.uint8), MASK_PALETTE[:30]),
    (np.zeros((H, W), np.uint8), (256,) * 768),
])
def test_write_mask_refuses_bad_palettes(tmp_path, mask, palette):
    with pytest.raises(ValueError, match="palette"):
        write_mask(tmp_path / "m.png", mask, palette=palette)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name,mask", [
    ("m.jpg", np.zeros((H, W), np.uint8)), ("m.JPEG", np.zeros((H, W), np.uint8)),
    ("m.png", np.zeros((H, W), np.float32)), ("m.png", np.zeros((H, W, 3), np.uint8)),
    ("m.gif", np.zeros((H, W), np.uint16)), ("m.bmp", np.zeros((H, W), np.uint16)),
    ("m.xyz", np.zeros((H, W), np.uint8)),
])
def test_write_mask_refuses(tmp_path, name, mask):
    with pytest.raises(ValueError):
        write_mask(tmp_path / name, mask)
    assert not list(tmp_path.iterdir())


def test_write_mask_copies_tiff_resolution(tmp_path):
    source = tmp_path / "scan.tif"
    tifffile.imwrite(source, pattern(np.uint16), resolution=(250.0, 125.0), resolutionunit="CENTIMETER")
    write_mask(tmp_path / "mask.tif", np.zeros((H, W), np.uint8), like=source)
    with tifffile.TiffFile(tmp_path / "mask.tif") as tif:
        tags = tif.pages.first.tags
        assert tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        x, y = tags["XResolution"].value, tags["YResolution"].value
    assert x[0] / x[1] == pytest.approx(250.0) and y[0] / y[1] == pytest.approx(125.0)


def test_write_mask_like_without_resolution(tmp_path):
    source = tmp_path / "a.png"
    write_image(source, pattern())
    write_mask(tmp_path / "m.tif", np.zeros((H, W), np.uint8), like=source)
    assert read_label(tmp_path / "m.tif").values.shape == (H, W)


def test_write_replaces_atomically_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "m.tif"
    write_mask(path, np.zeros((H, W), np.uint8))
    write_mask(path, np.ones((H, W), np.uint8))
    assert read_label(path).values.max() == 1

    def broken_writer(file, *args, **kwargs):
        Path(file).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(images.tifffile, "imwrite", broken_writer)
    with pytest.raises(OSError):
        write_mask(path, np.full((H, W), 2, np.uint8))
    assert read_label(path).values.max() == 1
    no_leftovers(tmp_path)


@pytest.mark.parametrize("name,array", [
    ("a.png", np.zeros((H, W), np.float32)), ("a.jpg", np.zeros((H, W), np.uint16)),
    ("a.png", np.zeros((H, W, 3), np.uint16)), ("a.tif", np.zeros((H, W, 4), np.uint8)),
    ("a.tif", np.zeros((H, W), np.float64)),
])
def test_write_image_refuses(tmp_path, name, array):
    with pytest.raises(ValueError):
        write_image(tmp_path / name, array)


@pytest.mark.parametrize("source,suffix", [
    ("a.tif", ".tif"), ("a.TIFF", ".TIFF"), ("a.png", ".png"), ("a.jpg", ".png"),
    ("a.JPEG", ".png"), ("a.gif", ".gif"), ("a.bmp", ".bmp"), ("a.webp", ".png"),
])
def test_mask_suffix(source, suffix):
    assert mask_suffix(Path(source)) == suffix


def test_image_suffixes_are_lower_case():
    assert all(s == s.lower() and s.startswith(".") for s in IMAGE_SUFFIXES)
    assert {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".gif"} == set(IMAGE_SUFFIXES)


# -------------------------------------------------------------------------------------- real data

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")


@needs_data
def test_cvc_clinicdb_image_and_label():
    folder = SHARED_DATA / "cvc-clinicdb" / "train"
    image = read_image(next((folder / "image").glob("*.tif")))
    assert image.shape == (288, 384, 3) and image.dtype == np.uint8
    label = read_label(next((folder / "label").glob("*.tif")))
    assert label.values.shape == (288, 384) and label.values.dtype == np.uint8


@needs_data
def test_drive_tif_gif_pair():
    folder = SHARED_DATA / "drive-retina" / "train"
    image_path = sorted((folder / "image").glob("*.tif"))[0]
    image = read_image(image_path)
    label = read_label(folder / "label" / f"{image_path.stem}.gif")
    assert image.shape == (584, 565, 3) and image.dtype == np.uint8
    assert label.values.shape == (584, 565)
    assert set(np.unique(label.values).tolist()) <= {0, 255}
