"""Mask encodings: detection rules, encode/decode, and writing masks back exactly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from medunet.data.encoding import LabelEncoding, detect_encoding, edge_counts
from medunet.errors import DataError
from medunet.io.images import LabelFile, read_label, write_image, write_mask

H, W = 64, 48
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def disc_mask(fg: int = 255, dtype=np.uint8, centre=(20, 30), radius=12) -> np.ndarray:
    """(H, W) mask: a disc of `fg` off-centre (so a transpose would move it) on 0."""
    yy, xx = np.mgrid[0:H, 0:W]
    inside = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2
    return np.where(inside, fg, 0).astype(dtype)


def label(values: np.ndarray, lossy: bool = False, palette: bool = False, name: str = "m.png") -> LabelFile:
    return LabelFile(path=Path(name), values=np.asarray(values), lossy=lossy, palette=palette)


def class_ids(values=(0, 1, 2)) -> np.ndarray:
    """(H, W) uint8 runs of 7 pixels cycling through `values`."""
    runs = (np.arange(H * W).reshape(H, W) // 7) % len(values)
    return np.asarray(values, np.uint8)[runs]


# ----------------------------------------------------------------------------------- detection

@pytest.mark.parametrize("fg", [1, 255])
def test_binary_uint8(fg):
    enc = detect_encoding([label(disc_mask(fg))])
    assert enc == LabelEncoding(values=(0, fg), mode="binary")
    assert enc.n_classes == 2


def test_binary_uint16_0_1000():
    enc = detect_encoding([label(disc_mask(1000, np.uint16))])
    assert enc.values == (0, 1000) and enc.mode == "binary"
    assert enc.decode(np.array([[0, 1]])).dtype == np.uint16


@pytest.mark.parametrize("only,values", [(0, (0, 255)), (255, (0, 255)), (1, (0, 1)), (7, (0, 7))])
def test_single_value_masks(only, values):
    enc = detect_encoding([label(np.full((H, W), only, np.uint8))])
    assert enc.mode == "binary" and enc.values == values


@pytest.mark.parametrize("values", [(0, 1, 2), (0, 127, 255), (0, 10, 20, 30, 40, 50, 200, 250),
                                    tuple(range(40))])
def test_classes(values):
    enc = detect_encoding([label(class_ids(values))])
    assert enc.mode == "classes" and enc.values == values


def test_values_pooled_over_files():
    enc = detect_encoding([label(class_ids((0, 1)), name="a.png"), label(class_ids((0, 2)), name="b.png")])
    assert enc.values == (0, 1, 2) and enc.mode == "classes"


def test_palette_indices_are_classes_however_many():
    ids = (np.arange(H * W).reshape(H, W) % 100).astype(np.uint8)  # 100 indices up to 99
    assert detect_encoding([label(ids, palette=True)]).values == tuple(range(100))
    two = detect_encoding([label(disc_mask(1), palette=True)])
    assert two.mode == "binary" and two.values == (0, 1)


def cvc_like(n_intermediate: int = 300, seed: int = 0) -> np.ndarray:
    """0/255 disc whose rim has a few hundred pixels of scattered intermediate values."""
    mask = disc_mask(255)
    rng = np.random.default_rng(seed)
    flat = mask.ravel()
    where = rng.choice(flat.size, n_intermediate, replace=False)
    flat[where] = rng.integers(1, 255, n_intermediate)
    return mask


def test_resampled_mask_is_near_binary():
    mask = cvc_like()
    assert len(np.unique(mask)) > 100
    enc = detect_encoding([label(mask)])
    assert enc.mode == "near_binary" and enc.values == (0, 255) and enc.threshold == 127.5
    np.testing.assert_array_equal(enc.encode(mask, Path("m.png")), (mask > 127.5).astype(np.uint8))


def test_lossy_file_is_near_binary_even_when_clean():
    enc = detect_encoding([label(disc_mask(255), name="a.png"), label(disc_mask(250), lossy=True)])
    assert enc.mode == "near_binary" and enc.values == (0, 255) and enc.threshold == 127.5


@pytest.mark.parametrize("hi,values,threshold", [(250, (0, 255), 125.0), (1, (0, 1), 0.5),
                                                 (0, (0, 255), 127.5)])
def test_lossy_threshold_is_half_the_largest_value(hi, values, threshold):
    enc = detect_encoding([label(disc_mask(hi), lossy=True, name="a.jpg")])
    assert (enc.mode, enc.values, enc.threshold) == ("near_binary", values, threshold)


def test_image_like_label_is_refused_naming_the_file():
    noise = np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)
    labels = [label(disc_mask(), name="good.png"), label(noise, name="photo.png")]
    with pytest.raises(DataError, match="looks like an image") as err:
        detect_encoding(labels)
    assert str(err.value).startswith("photo.png: label has 256 distinct values spread between 0 and 255")


def test_no_labels():
    with pytest.raises(DataError):
        detect_encoding([])


def test_forced_binary_thresholds_at_half_the_max():
    enc = detect_encoding([label(class_ids((0, 1, 2)))], mode="binary")
    assert (enc.mode, enc.values, enc.threshold) == ("near_binary", (0, 2), 1.0)
    assert enc.encode(np.array([[0, 1, 2]]), Path("x")).tolist() == [[0, 0, 1]]
    empty = detect_encoding([label(np.zeros((H, W), np.uint8))], mode="binary")
    assert empty.values == (0, 255) and empty.threshold == 127.5


def test_forced_classes():
    enc = detect_encoding([label(cvc_like())], mode="classes")
    assert enc.mode == "classes" and enc.values[0] == 0 and enc.values[-1] == 255
    with pytest.raises(DataError, match="256 classes"):
        detect_encoding([label(np.arange(H * W, dtype=np.uint16).reshape(H, W))], mode="classes")


def test_unknown_mode():
    with pytest.raises(ValueError):
        detect_encoding([label(disc_mask())], mode="magic")


# ------------------------------------------------------- near-binary (resampled) versus classes

def big_disc(n: int = 192, fg: int = 255, dtype=np.uint8, centre=(0.45, 0.55), radius=0.3) -> np.ndarray:
    """(n, n) 0/`fg` disc, to be downsampled."""
    yy, xx = np.mgrid[0:n, 0:n]
    inside = (yy - centre[0] * n) ** 2 + (xx - centre[1] * n) ** 2 < (radius * n) ** 2
    return np.where(inside, fg, 0).astype(dtype)


def block_mean(mask: np.ndarray, k: int) -> np.ndarray:
    """Area averaging by numpy: the mean of each k×k block, rounded, in the mask's dtype."""
    h, w = mask.shape[0] // k * k, mask.shape[1] // k * k
    blocks = mask[:h, :w].reshape(h // k, k, w // k, k).astype(np.float64)
    return np.round(blocks.mean(axis=(1, 3))).astype(mask.dtype)


def pil_resize(mask: np.ndarray, k: int, resample) -> np.ndarray:
    h, w = mask.shape
    return np.asarray(Image.fromarray(mask).resize((w // k, h // k), resample))


RESAMPLED = {
    "box 2x": lambda m: pil_resize(m, 2, Image.BOX),          # 0, 64, 128, 192, 255
    "box 3x": lambda m: pil_resize(m, 3, Image.BOX),
    "block mean 2x": lambda m: block_mean(m, 2),             # 0, 64, 128, 191, 255
    "block mean 3x": lambda m: block_mean(m, 3),
    "bilinear 2x": lambda m: pil_resize(m, 2, Image.BILINEAR),
}


@pytest.mark.parametrize("how", list(RESAMPLED))
def test_downsampled_binary_masks_are_near_binary(how):
    shrink = RESAMPLED[how]
    masks = [shrink(big_disc(centre=c, radius=r)) for c, r in [((0.45, 0.55), 0.3), ((0.3, 0.6), 0.15),
                                                                 ((0.6, 0.4), 0.22)]]
    assert all(len(np.unique(m)) > 2 for m in masks)
    enc = detect_encoding([label(m, name=f"{i}.png") for i, m in enumerate(masks)])
    assert (enc.mode, enc.values, enc.threshold) == ("near_binary", (0, 255), 127.5)
    assert "lie on edges between 0 and 255" in enc.reason and "resampled binary masks" in enc.reason
    np.testing.assert_array_equal(enc.encode(masks[0], Path("m.png")), (masks[0] > 127.5).astype(np.uint8))
    assert set(np.unique(enc.decode(enc.encode(masks[0], Path("m.png")))).tolist()) == {0, 255}


def test_area_averaged_reason_names_the_levels():
    enc = detect_encoding([label(block_mean(big_disc(), 2))])
    assert enc.reason.startswith("intermediate values 64, 128, 191 lie on edges between 0 and 255 in ")
    assert enc.describe().startswith("near-binary mask (JPEG or resampled), thresholded at 127.5: "
                                     "intermediate values 64, 128, 191")


def test_16bit_downsampled_mask_is_near_binary():
    mask = block_mean(big_disc(fg=65535, dtype=np.uint16), 2)
    assert np.unique(mask).tolist() == [0, 16384, 32768, 49151, 65535]
    enc = detect_encoding([label(mask)])
    assert (enc.mode, enc.values, enc.threshold) == ("near_binary", (0, 65535), 32767.5)
    assert enc.decode(np.array([[0, 1]], np.uint8)).tolist() == [[0, 65535]]
    assert enc.decode(np.array([[0, 1]], np.uint8)).dtype == np.uint16


def two_organs() -> np.ndarray:
    """(96, 96) 0/128/255: an organ of 128 touching an organ of 255, each a region of its own."""
    yy, xx = np.mgrid[0:96, 0:96]
    mask = np.zeros((96, 96), np.uint8)
    mask[(yy - 40) ** 2 / 20 ** 2 + (xx - 35) ** 2 / 25 ** 2 < 1] = 128
    mask[(yy - 55) ** 2 + (xx - 62) ** 2 < 18 ** 2] = 255
    return mask


def test_grey_level_organs_stay_classes():
    enc = detect_encoding([label(two_organs())])
    assert (enc.mode, enc.values) == ("classes", (0, 128, 255))
    assert enc.reason.startswith("value 128 forms regions of its own (only ")
    assert enc.describe().startswith("3 classes: 0, 128, 255: value 128 forms regions of its own")


def ring(inner: int, outer: int, n: int = 64, width: int = 1) -> np.ndarray:
    """(n, n) disc of `inner` with a `width`-pixel rim of `outer`, on 0."""
    yy, xx = np.mgrid[0:n, 0:n]
    d = np.hypot(yy - n / 2, xx - n / 2)
    return np.select([d < 20 - width, d < 20], [inner, outer], 0).astype(np.uint8)


@pytest.mark.parametrize("values", [(0, 1, 2, 3), (0, 1, 2)])
def test_class_ids_stay_classes(values):
    ids = class_ids(values) if len(values) == 4 else ring(2, 1)   # a thin ring of class 1 too
    enc = detect_encoding([label(ids)])
    assert (enc.mode, enc.values) == ("classes", values)
    assert enc.reason == "all values below 64: class ids"


def test_grey_boundary_class_of_one_level_stays_classes():
    """Cells drawn 0 / 128 outline / 255 inside: 128 lies only on edges, but it is one level."""
    enc = detect_encoding([label(ring(255, 128))])
    assert (enc.mode, enc.values) == ("classes", (0, 128, 255))
    assert "a single level: a boundary class" in enc.reason


def test_image_among_resampled_masks_is_still_refused():
    """Noise also has lower and higher neighbours; pooled, 0 and 255 still hold ~80 % of the
    pixels: the file's own share of 0 and its maximum gives it away."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    labels = [label(block_mean(big_disc(centre=c), 2), name=f"good{i}.png")
              for i, c in enumerate([(0.45, 0.55), (0.5, 0.4)])] + [label(noise, name="photo.png")]
    with pytest.raises(DataError, match="^photo.png: label has 256 distinct values"):
        detect_encoding(labels)


def test_edge_counts():
    raw = np.zeros((9, 9), np.uint8)
    raw[1, 1:5] = [64, 128, 191, 255]   # a ramp from 0 up to 255: each level between lower and higher
    raw[3, 1:8] = 9                     # a 1-pixel line of 9 on 0: lower on both sides
    raw[5:8, 1:4] = 7                   # a 3×3 region of 7: only its corners stick out diagonally
    assert edge_counts(raw) == {64: 1, 128: 1, 191: 1, 9: 7, 7: 4}
    assert edge_counts(np.array([[0, 255], [255, 0]], np.uint8)) == {}


# ------------------------------------------------------------------------------ encode / decode

def test_unknown_value_names_file_and_known_values():
    enc = LabelEncoding(values=(0, 1, 2), mode="classes")
    raw = class_ids((0, 1, 2))
    raw[0, 0] = 7
    with pytest.raises(DataError) as err:
        enc.encode(raw, Path("data/label/03.png"))
    assert str(err.value) == "data/label/03.png: label value 7 is not one the model knows (0, 1, 2)"


def test_near_binary_never_raises():
    enc = LabelEncoding(values=(0, 255), mode="near_binary", threshold=127.5)
    raw = np.arange(256, dtype=np.uint8).reshape(16, 16)
    index = enc.encode(raw, Path("x"))
    assert index.dtype == np.uint8 and index.sum() == 128
    assert enc.decode(index).max() == 255


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.integers(0, 65535), min_size=2, max_size=12, unique=True),
       seed=st.integers(0, 2**16))
def test_decode_encode_is_identity(values, seed):
    values = tuple(sorted(values))
    mode = "binary" if len(values) == 2 else "classes"
    enc = LabelEncoding(values=values, mode=mode)
    index = np.random.default_rng(seed).integers(0, len(values), (9, 7)).astype(np.uint8)
    raw = enc.decode(index)
    assert raw.dtype == (np.uint8 if values[-1] <= 255 else np.uint16)
    np.testing.assert_array_equal(enc.encode(raw, Path("x")), index)


def test_decode_refuses_bad_indices():
    with pytest.raises(ValueError):
        LabelEncoding(values=(0, 255), mode="binary").decode(np.array([[0, 2]]))


@pytest.mark.parametrize("kwargs", [
    dict(values=(255, 0), mode="binary"), dict(values=(0,), mode="classes"),
    dict(values=(0, 1, 2), mode="binary"), dict(values=(0, 1), mode="fuzzy"),
    dict(values=(0, 255), mode="near_binary"), dict(values=(0, 1), mode="binary", threshold=0.5),
])
def test_invalid_encodings(kwargs):
    with pytest.raises(ValueError):
        LabelEncoding(**kwargs)


@pytest.mark.parametrize("enc,text", [
    (LabelEncoding((0, 255), "binary"), "binary mask 0/255"),
    (LabelEncoding((0, 255), "near_binary", 127.5),
     "near-binary mask (JPEG or resampled), thresholded at 127.5"),
    (LabelEncoding((0, 1, 2), "classes"), "3 classes: 0, 1, 2"),
])
def test_describe_and_dict_round_trip(enc, text):
    assert enc.describe() == text
    assert LabelEncoding.from_dict(json.loads(json.dumps(enc.to_dict()))) == enc


def test_reason_is_not_compared_and_old_dicts_load():
    enc = detect_encoding([label(block_mean(big_disc(), 2))])
    assert enc.reason and enc == LabelEncoding((0, 255), "near_binary", 127.5)
    d = json.loads(json.dumps(enc.to_dict()))
    assert d["reason"] == enc.reason and d["palette"] is None
    assert LabelEncoding.from_dict(d).reason == enc.reason
    old = {"values": [0, 1, 2], "mode": "classes", "threshold": None}   # before palette and reason
    back = LabelEncoding.from_dict(old)
    assert (back.values, back.palette, back.reason) == ((0, 1, 2), None, "")


PALETTE = tuple([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)


def test_palette_round_trips_and_is_checked():
    enc = LabelEncoding((0, 1, 3), "classes", palette=PALETTE)
    back = LabelEncoding.from_dict(json.loads(json.dumps(enc.to_dict())))
    assert back == enc and back.palette == PALETTE
    assert back != LabelEncoding((0, 1, 3), "classes")       # the colours are part of the encoding
    with pytest.raises(ValueError, match="768"):
        LabelEncoding((0, 1), "binary", palette=PALETTE[:9])
    with pytest.raises(ValueError, match="0..255"):
        LabelEncoding((0, 300), "binary", palette=PALETTE)


def test_palette_labels_carry_the_first_files_palette():
    other = tuple(reversed(PALETTE))
    files = [LabelFile(Path("a.png"), class_ids((0, 1, 3)), False, True, PALETTE),
             LabelFile(Path("b.png"), class_ids((0, 1)), False, True, other)]
    enc = detect_encoding(files)
    assert (enc.mode, enc.values, enc.palette) == ("classes", (0, 1, 3), PALETTE)
    assert detect_encoding(files, mode="binary").palette == PALETTE
    grey = detect_encoding([label(class_ids((0, 1, 3)))])
    assert grey.palette is None


def test_empty_palette_masks_write_index_1_as_foreground():
    """All-background palette masks: foreground is index 1, not 255 (usually black in a palette)."""
    empty = LabelFile(Path("a.png"), np.zeros((H, W), np.uint8), False, True, PALETTE)
    enc = detect_encoding([empty])
    assert (enc.mode, enc.values, enc.palette) == ("binary", (0, 1), PALETTE)


# ------------------------------------------------------------------ files: detect, write back exactly

def _write_palette_png(path: Path, index: np.ndarray) -> None:
    im = Image.fromarray(index, "P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    im.save(path)


LOSSLESS = [
    ("m.png", disc_mask(1), "binary", (0, 1)),
    ("m.png", disc_mask(255), "binary", (0, 255)),
    ("m.gif", disc_mask(255), "binary", (0, 255)),
    ("m.tif", disc_mask(1000, np.uint16), "binary", (0, 1000)),
    ("m.tif", class_ids((0, 1, 2)), "classes", (0, 1, 2)),
    ("m.png", class_ids((0, 127, 255)), "classes", (0, 127, 255)),
    ("p.png", class_ids((0, 1, 2)), "classes", (0, 1, 2)),   # palette PNG
]


@pytest.mark.parametrize("name,mask,mode,values", LOSSLESS)
def test_lossless_masks_detected_and_written_back_exactly(tmp_path, name, mask, mode, values):
    path = tmp_path / name
    if name.startswith("p"):
        _write_palette_png(path, mask)
    else:
        write_mask(path, mask)
    lab = read_label(path)
    assert lab.palette == name.startswith("p")
    enc = detect_encoding([lab])
    assert (enc.mode, enc.values) == (mode, values)
    index = enc.encode(lab.values, path)
    assert index.dtype == np.uint8 and index.max() == len(values) - 1
    out = tmp_path / f"out{path.suffix}"
    write_mask(out, enc.decode(index), palette=enc.palette)
    back = read_label(out)
    np.testing.assert_array_equal(back.values, mask)
    assert back.palette == lab.palette and back.colours == lab.colours


def test_jpeg_binary_mask_is_near_binary_and_thresholded(tmp_path):
    mask = disc_mask(255)
    write_image(tmp_path / "m.jpg", mask)
    lab = read_label(tmp_path / "m.jpg")
    assert lab.lossy and len(np.unique(lab.values)) > 2   # JPEG made noise at the edge
    enc = detect_encoding([lab])
    assert enc.mode == "near_binary" and enc.values == (0, 255)
    assert enc.threshold == lab.values.max() / 2
    index = enc.encode(lab.values, lab.path)
    wrong = (index != (mask > 0)).mean()
    assert wrong < 0.005
    write_mask(tmp_path / "out.png", enc.decode(index))
    assert set(np.unique(read_label(tmp_path / "out.png").values).tolist()) == {0, 255}


def test_cvc_like_tiff_mask(tmp_path):
    mask = cvc_like()
    tifffile.imwrite(tmp_path / "m.tif", mask)
    enc = detect_encoding([read_label(tmp_path / "m.tif")])
    assert enc.mode == "near_binary" and enc.threshold == 127.5


# -------------------------------------------------------------------------------------- real data

@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")
def test_cvc_clinicdb_labels_are_near_binary():
    paths = sorted((SHARED_DATA / "cvc-clinicdb" / "train" / "label").glob("*.tif"))
    enc = detect_encoding(read_label(p) for p in paths)
    assert enc.mode == "near_binary" and enc.values == (0, 255) and enc.threshold == 127.5


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")
def test_drive_labels_are_binary_0_255():
    paths = sorted((SHARED_DATA / "drive-retina" / "train" / "label").glob("*.gif"))[:3]
    enc = detect_encoding(read_label(p) for p in paths)
    assert (enc.mode, enc.values) == ("binary", (0, 255))
