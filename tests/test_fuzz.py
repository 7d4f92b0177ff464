"""Fuzzing the readers, the encoding detection, pairing and the doctor with hypothesis.

The property everywhere: no exception but `DataError`, whose message names the file; a file that
reads at all reads correctly (shape and values round-trip); `diagnose` never raises and names
every bad file.
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from medunet.data.doctor import diagnose, format_report
from medunet.data.encoding import detect_encoding
from medunet.data.pairs import find_pairs, list_images, natural_key
from medunet.errors import DataError
from medunet.io.images import IMAGE_SUFFIXES, LabelFile, read_image, read_label

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FORMATS = {"PNG": ".png", "TIFF": ".tif", "JPEG": ".jpg", "GIF": ".gif", "BMP": ".bmp"}
MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM"]
NAMES = ["Bild ä 01", "画像", "scan 2 (copy)", "ÉCHO-ß", "1²3", "١٢", "a.b.c", "-lead", "0"]


def encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "TIFF":
        tifffile.imwrite(buf, array, photometric="rgb" if array.ndim == 3 else "minisblack")
    else:
        Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def read_or_data_error(reader, path: Path):
    """reader(path); None for a DataError, which must name the file. Anything else fails the test."""
    try:
        return reader(path)
    except DataError as exc:
        assert str(path) in str(exc), f"DataError does not name the file: {exc}"
        return None


def values_of(result) -> np.ndarray:
    return result.values if isinstance(result, LabelFile) else result


def fresh_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="medunet-fuzz-")


@st.composite
def images(draw, formats=tuple(FORMATS)) -> tuple[np.ndarray, str]:
    """A small image and a format that holds it exactly (JPEG: approximately)."""
    fmt = draw(st.sampled_from(formats))
    rgb = fmt != "GIF" and draw(st.booleans())
    dtype = np.uint8
    if fmt == "TIFF":
        dtype = draw(st.sampled_from([np.uint8, np.uint16, np.int16, np.float32]))
    elif fmt == "PNG" and not rgb:
        dtype = draw(st.sampled_from([np.uint8, np.uint16]))
    h, w = draw(st.sampled_from([(1, 1), (1, 10000), (10000, 1), (3, 5), (2, 7), (17, 4)])
                | st.tuples(st.integers(1, 40), st.integers(1, 40)))
    shape = (h, w, 3) if rgb else (h, w)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        array = rng.normal(0, 1000, shape).astype(np.float32)
    else:
        info = np.iinfo(dtype)
        array = rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)
    return array, fmt


# ------------------------------------------------------------------------------------- readers

@FUZZ
@given(head=st.sampled_from(MAGIC), body=st.binary(max_size=600),
       suffix=st.sampled_from(IMAGE_SUFFIXES), name=st.sampled_from(NAMES))
def test_random_bytes_give_data_error_or_an_image(head, body, suffix, name):
    with fresh_dir() as d:
        path = Path(d) / f"{name}{suffix}"
        path.write_bytes(head + body)
        for reader in (read_image, read_label):
            result = read_or_data_error(reader, path)
            if result is not None:
                array = values_of(result)
                assert array.ndim in (2, 3) and array.size > 0


@FUZZ
@given(image=images(), cut=st.floats(0, 1, exclude_max=True), name=st.sampled_from(NAMES))
def test_truncated_files_give_data_error_or_the_right_shape(image, cut, name):
    array, fmt = image
    data = encode(array, fmt)
    with fresh_dir() as d:
        path = Path(d) / f"{name}{FORMATS[fmt]}"
        path.write_bytes(data[: int(cut * len(data))])
        result = read_or_data_error(read_image, path)
        if result is not None:  # Pillow may decode a file whose tail (e.g. JPEG's end marker) is cut
            assert result.shape[:2] == array.shape[:2]


@FUZZ
@given(image=images(formats=("PNG", "TIFF", "GIF", "BMP")), suffix=st.sampled_from(IMAGE_SUFFIXES),
       name=st.sampled_from(NAMES))
def test_lossless_files_round_trip_whatever_their_suffix(image, suffix, name):
    """A PNG named .tif, a TIFF named .jpg, 1×10000 and 10000×1, 16-bit and float32: exact."""
    array, fmt = image
    with fresh_dir() as d:
        path = Path(d) / f"{name}{suffix}"
        path.write_bytes(encode(array, fmt))
        back = read_image(path)
        assert back.shape == array.shape and back.dtype == array.dtype
        assert np.array_equal(back, array)
        if array.ndim == 2 and array.dtype != np.float32:
            label = read_label(path)  # palette files (GIF) give palette indices, by design
            assert label.values.shape == array.shape
            assert label.palette or np.array_equal(label.values, array)


@FUZZ
@given(image=images(formats=("JPEG",)))
def test_jpeg_reads_with_its_shape_and_is_marked_lossy(image):
    array, _ = image
    with fresh_dir() as d:
        path = Path(d) / "x.jpeg"
        path.write_bytes(encode(array, "JPEG"))
        back = read_image(path)
        assert back.shape == array.shape and back.dtype == np.uint8
        if array.ndim == 2:
            assert read_label(path).lossy


@FUZZ
@given(h=st.integers(1, 30), w=st.integers(1, 30), bad=st.sampled_from([np.nan, np.inf, -np.inf]),
       where=st.floats(0, 1, exclude_max=True), rgb=st.booleans())
def test_nan_and_inf_in_float_tiffs_are_refused(h, w, bad, where, rgb):
    shape = (h, w, 3) if rgb else (h, w)
    array = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    with fresh_dir() as d:
        path = Path(d) / "float ä.tif"
        photometric = "rgb" if rgb else "minisblack"
        tifffile.imwrite(path, array, photometric=photometric)
        assert np.array_equal(read_image(path), array)
        array.flat[int(where * array.size)] = bad
        tifffile.imwrite(path, array, photometric=photometric)
        for reader in (read_image, read_label):
            with pytest.raises(DataError) as exc:
                reader(path)
            assert str(path) in str(exc.value)
            assert "NaN or infinite" in str(exc.value) or reader is read_label  # or "colour label"


def test_empty_file_of_every_suffix(tmp_path):
    for suffix in IMAGE_SUFFIXES:
        path = tmp_path / f"leer ä{suffix}"
        path.write_bytes(b"")
        for reader in (read_image, read_label):
            with pytest.raises(DataError, match="0 bytes") as exc:
                reader(path)
            assert str(path) in str(exc.value)


# Crashes and wrong reads the fuzzing found, kept as plain regression tests.

@pytest.mark.parametrize("shape", [(1, 50, 3), (1, 1, 3), (9, 1, 3)])
def test_one_pixel_high_or_wide_rgb_tiff(tmp_path, shape):
    array = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    tifffile.imwrite(tmp_path / "a.tif", array, photometric="rgb")
    assert np.array_equal(read_image(tmp_path / "a.tif"), array)  # was (50, 3): the Y axis squeezed


@pytest.mark.parametrize("width", [2, 3, 4, 5])
def test_planar_rgb_tiff_of_any_width(tmp_path, width):
    array = np.arange(10 * width * 3, dtype=np.uint8).reshape(10, width, 3)
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(array, -1, 0), photometric="rgb",
                     planarconfig="separate")
    assert np.array_equal(read_image(tmp_path / "p.tif"), array)  # was (3, 10, w) or (3, 10)


def test_tiff_named_png_keeps_16_bit_colour(tmp_path):
    array = (np.arange(60, dtype=np.uint16).reshape(4, 5, 3) * 1000)
    (tmp_path / "a.png").write_bytes(encode(array, "TIFF"))
    assert np.array_equal(read_image(tmp_path / "a.png"), array)  # Pillow first gave 8-bit


def test_grey_gif_reads_grey(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    (tmp_path / "a.gif").write_bytes(encode(array, "GIF"))
    assert np.array_equal(read_image(tmp_path / "a.gif"), array)  # was (3, 4, 3)


def test_natural_key_with_non_ascii_digits():
    names = ["1²3.png", "١٢.png", "2.png", "10.png"]
    assert sorted(names, key=natural_key)[:2] == ["1²3.png", "2.png"]  # "²" made int() raise


def test_float_values_beyond_range_name_the_file(tmp_path):
    big = np.zeros((3, 4), np.float64)
    big[1, 1] = 1e300
    tifffile.imwrite(tmp_path / "big.tif", big)
    with pytest.raises(DataError, match="exceed 32-bit float"):
        read_image(tmp_path / "big.tif")
    ids = np.zeros((3, 4), np.float32)
    ids[0, 0] = 1e20
    tifffile.imwrite(tmp_path / "ids.tif", ids)
    with pytest.raises(DataError, match="do not fit 32-bit integers"):
        read_label(tmp_path / "ids.tif")


# ------------------------------------------------------------------------------------ encoding

@st.composite
def label_files(draw) -> LabelFile:
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.int32]))
    info = np.iinfo(dtype)
    pool = draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=1, max_size=12)
                | st.sampled_from([[0, 255], [0, 1], [0], [255], [0, 127, 255], list(range(40))]))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    values = np.random.default_rng(seed).choice(np.asarray(pool, dtype=dtype), (h, w))
    return LabelFile(path=Path("mask ä.png"), values=values, lossy=draw(st.booleans()),
                     palette=draw(st.booleans()))


@settings(max_examples=60, deadline=None)
@given(labels=st.lists(label_files(), min_size=1, max_size=4),
       mode=st.sampled_from(["auto", "binary", "classes"]))
def test_detect_encoding_is_data_error_or_an_encoding_that_encodes(labels, mode):
    try:
        enc = detect_encoding(labels, mode)
    except DataError as exc:
        assert "mask ä.png" in str(exc) or "no label files" in str(exc)
        return
    for label in labels:
        index = enc.encode(label.values, label.path)  # pooled encodings know every value
        assert index.shape == label.values.shape and index.max() < enc.n_classes
        if enc.mode != "near_binary":
            assert np.array_equal(enc.decode(index), label.values)


# --------------------------------------------------------------------------------- pairs, doctor

@FUZZ
@given(names=st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc"),
                                            blacklist_characters="/\\\x00"), min_size=1, max_size=12),
                      min_size=1, max_size=6, unique_by=lambda s: s.lower()))
def test_pairs_with_any_names(names):
    names = [n for n in names if not n.startswith(".") and n.strip(" ") == n and n not in (".", "..")]
    if not names:
        return
    sorted(names, key=natural_key)
    with fresh_dir() as d:
        root = Path(d)
        (root / "image").mkdir()
        (root / "label").mkdir()
        for i, name in enumerate(names):
            array = np.full((4, 5), i, np.uint8)
            try:
                (root / "image" / f"{name}.png").write_bytes(encode(array, "PNG"))
            except OSError:  # a name the file system refuses (too long in bytes)
                return
            (root / "label" / f"{name}.tif").write_bytes(encode(array * 255 // max(i, 1), "TIFF"))
        assert len(list_images(root / "image")) == len(names)
        pairs = find_pairs(root)
        assert sorted(p.stem for p in pairs) == sorted(names)
        report = diagnose(root)
        assert report.ok, format_report(report)


BAD_KINDS = ["empty", "random", "truncated", "png_as_tif", "nan", "mismatch", "rgb_label", "thin", "good"]


@settings(max_examples=30, deadline=None)
@given(kinds=st.lists(st.sampled_from(BAD_KINDS), min_size=1, max_size=6), seed=st.integers(0, 2**16))
def test_diagnose_never_raises_and_names_every_bad_file(kinds, seed):
    rng = np.random.default_rng(seed)
    with fresh_dir() as d:
        root = Path(d) / "data"
        (root / "train/image").mkdir(parents=True)
        (root / "train/label").mkdir(parents=True)
        bad = set()
        for i, kind in enumerate(kinds):
            name = f"{NAMES[i % len(NAMES)]} {i}"
            bad |= _write_case(root / "train", name, kind, rng)
        report = diagnose(root)
        text = format_report(report)
        named = {f.path for f in report.errors}
        assert bad <= named, (bad - named, text)
        assert text.endswith(f"{len(report.errors)} error{'s' * (len(report.errors) != 1)}, "
                             f"{len(report.warnings)} warning{'s' * (len(report.warnings) != 1)}")
        assert diagnose(root, quick=True).errors or not bad


def _write_case(split: Path, name: str, kind: str, rng: np.random.Generator) -> set[str]:
    """Write one image/label pair of the given kind; return the paths (relative) that must be named."""
    h, w = int(rng.integers(2, 30)), int(rng.integers(2, 30))
    image = rng.integers(0, 256, (h, w), dtype=np.uint8)
    mask = (rng.random((h, w)) > 0.5).astype(np.uint8) * 255
    img, lab = split / "image" / f"{name}.png", split / "label" / f"{name}.png"
    img.write_bytes(encode(image, "PNG"))
    lab.write_bytes(encode(mask, "PNG"))
    rel = f"train/image/{name}.png"
    if kind == "empty":
        img.write_bytes(b"")
    elif kind == "random":
        img.write_bytes(rng.bytes(int(rng.integers(1, 300))))
    elif kind == "truncated":
        data = encode(image, "PNG")
        img.write_bytes(data[: int(rng.integers(1, len(data) - 24))])  # into the pixel data
    elif kind == "png_as_tif":
        img.unlink()
        (split / "image" / f"{name}.tif").write_bytes(encode(image, "PNG"))
        return set()  # reads fine
    elif kind == "nan":
        img.unlink()
        array = image.astype(np.float32)
        array[0, 0] = np.nan
        tifffile.imwrite(split / "image" / f"{name}.tif", array)
        rel = f"train/image/{name}.tif"
    elif kind == "mismatch":
        lab.write_bytes(encode(mask[:, :-1], "PNG"))
        rel = f"train/label/{name}.png"
    elif kind == "rgb_label":
        lab.write_bytes(encode(np.stack([mask, mask // 2, mask], -1), "PNG"))
        rel = f"train/label/{name}.png"
    elif kind == "thin":
        img.write_bytes(encode(np.zeros((1, 10000), np.uint8), "PNG"))
        lab.write_bytes(encode(np.zeros((1, 10000), np.uint8), "PNG"))
        return set()
    else:
        return set()
    return {rel}
