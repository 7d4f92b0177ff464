"""The dataset doctor: each data trap becomes a finding that names the file; fix writes a clean copy."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import disc_pair, shared_dataset, write_split
from medunet.api.doctor import doctor
from medunet.data.doctor import ENCODING_CHECKS, Report, diagnose, fix, format_report
from medunet.data.encoding import detect_encoding
from medunet.errors import DataError
from medunet.io.images import read_image, read_label


def found(report: Report, level: str, check: str | None = None) -> list:
    return [f for f in report.findings if f.level == level and (check is None or f.check == check)]


def messages(report: Report, level: str) -> str:
    return "\n".join(f"{f.path}: {f.message}" for f in report.findings if f.level == level)


def tree_digest(root: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def save(path: Path, array: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path, **kw)
    return path


# ----------------------------------------------------------------------------------- clean data

def test_clean_dataset_has_no_errors_or_warnings(disc_data):
    report = diagnose(disc_data)
    assert report.ok and not report.warnings, messages(report, "warning") + messages(report, "error")
    assert list(report.splits) == ["train", "validation", "test"]
    assert report.splits["train"].n_pairs == report.splits["train"].n_readable == 8
    assert report.encoding == "binary masks 0/255"
    assert report.label_values == [0, 255]
    assert set(report.splits["train"].class_share) == {"0", "255"}
    assert "grey uint8" in report.splits["train"].images
    text = format_report(report)
    assert text.splitlines()[-1] == "0 errors, 0 warnings"
    assert "train: 8 pairs" in text


def test_api_doctor_missing_folder_raises(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        doctor(tmp_path / "nope")
    report = diagnose(tmp_path / "nope")  # the doctor itself never raises
    assert not report.ok


# ------------------------------------------------------------------------------ layout, pairing

def test_orphans_duplicate_stems_and_naming_hint(tmp_path):
    data = tmp_path / "data"
    write_split(data / "train", 4, [(32, 40)], seed=0)
    (data / "train/label/000.png").rename(data / "train/label/000_mask.png")
    save(data / "train/image/001.tif", np.zeros((32, 40), np.uint8))  # 001.png and 001.tif
    report = diagnose(data)
    orphans = {f.path: f.message for f in found(report, "error", "orphan")}
    assert set(orphans) == {"train/image/000.png", "train/label/000_mask.png"}
    assert "'_mask'" in orphans["train/image/000.png"]
    dup = found(report, "error", "duplicate_stem")
    assert dup and "001.png and 001.tif" in dup[0].message
    assert report.splits["train"].n_pairs == 2


def test_layout_problems_are_named(tmp_path):
    data = tmp_path / "data"
    write_split(data / "val", 2, [(16, 16)], seed=0)
    (data / "test" / "image").mkdir(parents=True)
    (data / "test" / "masks").mkdir()
    (data / "test" / "image" / "scan.dcm").write_bytes(b"DICM")
    report = diagnose(data)
    text = messages(report, "error") + messages(report, "warning")
    assert "no train/ folder" in text
    assert "val/: not a split medunet reads (train, validation, test): rename it to validation/" in text
    assert "rename masks/ to label/" in text
    assert "put each series in a folder of its own" in text


def test_single_split_folder(tmp_path):
    split = write_split(tmp_path / "cases", 3, [(20, 24)], seed=0)
    report = diagnose(split)
    assert report.layout == "single" and list(report.splits) == ["cases"]
    assert report.ok and report.splits["cases"].n_readable == 3


# ----------------------------------------------------------------------- readability and sizes

def test_unreadable_files_are_named_with_the_reason(disc_data):
    (disc_data / "train/image/001.png").write_bytes(b"")
    good = (disc_data / "train/label/002.png").read_bytes()
    (disc_data / "train/label/002.png").write_bytes(good[: len(good) // 2])
    report = diagnose(disc_data)
    bad = {f.path: f.message for f in found(report, "error", "unreadable")}
    assert set(bad) == {"train/image/001.png", "train/label/002.png"}
    assert "0 bytes" in bad["train/image/001.png"]
    assert str(disc_data) not in bad["train/label/002.png"]  # the path is in Finding.path, once
    assert report.splits["train"].n_readable == 6


def test_size_mismatch_and_transposed_label(disc_data):
    image = read_image(disc_data / "train/image/001.png")
    assert image.shape == (48, 80)
    save(disc_data / "train/label/001.png", np.zeros(image.shape[::-1], np.uint8))
    save(disc_data / "train/label/000.png", np.zeros((10, 10), np.uint8))
    for quick in (False, True):
        report = diagnose(disc_data, quick=quick)
        sizes = {f.path: f.message for f in found(report, "error", "size")}
        assert set(sizes) == {"train/label/000.png", "train/label/001.png"}
        assert "rotated or transposed" in sizes["train/label/001.png"]
        assert "label is 10×10 (W×H)" in sizes["train/label/000.png"]
    assert "train/label/000.png: label is" in report.first_error()
    assert report.first_error().startswith(str(disc_data))


# ------------------------------------------------------------------------------------------ masks

def test_jpeg_mask_is_described_in_words(disc_data):
    mask = read_label(disc_data / "train/label/003.png").values
    (disc_data / "train/label/003.png").unlink()
    save(disc_data / "train/label/003.jpg", mask, quality=75)
    report = diagnose(disc_data)
    jpeg = found(report, "warning", "jpeg_mask")
    assert [f.path for f in jpeg] == ["train/label/003.jpg"]
    assert "distinct values around 0 and 255: a JPEG-compressed binary mask" in jpeg[0].message
    assert report.ok
    assert "JPEG-compressed" in report.splits["train"].masks


def test_mask_that_looks_like_an_image_is_an_error(disc_data):
    rng = np.random.default_rng(0)
    image = read_image(disc_data / "train/image/004.png")
    save(disc_data / "train/label/004.png", rng.integers(0, 256, image.shape, dtype=np.uint8))
    save(disc_data / "train/label/005.png", read_image(disc_data / "train/image/005.png"))
    report = diagnose(disc_data, quick=True)
    errors = {f.path: (f.check, f.message) for f in report.errors}
    assert errors["train/label/004.png"][0] == "image_like"
    assert "looks like an image, not a mask" in errors["train/label/004.png"][1]
    assert errors["train/label/005.png"][0] == "label_is_image"
    assert report.encoding == "binary masks 0/255"  # the other masks still tell the encoding
    assert "005.png: label holds" in report.first_error() and "(and 1 more error:" in report.first_error()
    only = report.first_error(ignore=ENCODING_CHECKS)  # what --label-mode binary still refuses
    assert "005.png" in only and "more error" not in only


def test_mixed_binary_conventions_and_unrepresentable_test_values(disc_data):
    for stem in ("000", "001"):
        path = disc_data / f"train/label/{stem}.png"
        save(path, (read_label(path).values > 0).astype(np.uint8))
    path = disc_data / "test/label/000.png"
    save(path, (read_label(path).values > 0).astype(np.uint8) * 2)
    report = diagnose(disc_data)
    mixed = found(report, "warning", "mixed_binary")
    assert mixed and "2 are 0/1" in mixed[0].message and "3 classes (0, 1, 255)" in mixed[0].message
    bad = found(report, "error", "unrepresentable")
    assert [f.path for f in bad] == ["test/label/000.png"]
    assert found(report, "warning", "conventions")


def test_empty_masks_and_class_balance(disc_data):
    for stem in ("000", "001"):
        path = disc_data / f"validation/label/{stem}.png"
        save(path, np.zeros(read_label(path).values.shape, np.uint8))
    report = diagnose(disc_data)
    empty = found(report, "info", "empty")
    assert empty and empty[0].split == "validation" and "2 of 3 masks are empty" in empty[0].message
    assert report.splits["validation"].n_empty == 2
    share = report.splits["train"].class_share
    assert abs(sum(share.values()) - 1) < 1e-9 and 0 < share["255"] < 0.5
    assert not found(diagnose(disc_data, quick=True), "info", "balance")


def write_shrunk_split(root: Path, n: int, seed: int) -> None:
    """`n` disc pairs drawn at 128×128 and shrunk 2× with area averaging (Pillow BOX), as many
    public datasets are: the masks hold 0, 64, 128, 192 and 255."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, mask = disc_pair(rng, 128, 128)
        for kind, array in (("image", image), ("label", mask)):
            save(root / kind / f"{i:03d}.png", np.asarray(Image.fromarray(array).resize((64, 64), Image.BOX)))


def test_area_averaged_masks_are_read_as_binary_and_the_report_says_why(tmp_path):
    data = tmp_path / "data"
    write_shrunk_split(data / "train", 6, seed=1)
    write_shrunk_split(data / "validation", 2, seed=2)
    report = diagnose(data)
    assert report.ok and report.label_values == [0, 255]
    assert report.encoding.startswith("near-binary masks (resized or smoothed; 5 distinct values around 0 "
                                      "and 255), read as 0/255 thresholded at 127.5: intermediate values "
                                      "64, 128, 192 lie on edges between 0 and 255 in ")
    assert report.encoding.endswith("of their pixels — resampled binary masks")
    assert set(report.splits["train"].class_share) == {"background", "foreground"}
    assert "masks for training: near-binary masks" in format_report(report)
    fix(data, tmp_path / "clean")
    for p in (tmp_path / "clean/train/label").iterdir():
        assert set(np.unique(read_label(p).values).tolist()) <= {0, 255}


def test_grey_level_organ_masks_stay_classes_and_the_report_says_why(disc_data):
    for path in sorted((disc_data / "train/label").iterdir()):
        mask = read_label(path).values.copy()
        mask[: mask.shape[0] // 4, : mask.shape[1] // 2] = 128    # a second organ, a region of its own
        save(path, mask)
    report = diagnose(disc_data, quick=True)
    assert report.encoding.startswith("3 classes: 0, 128, 255: value 128 forms regions of its own (only ")
    assert report.splits["train"].masks == report.encoding


# ----------------------------------------------------------------------------------------- images

def test_rgb_mixed_with_grey_is_named(disc_data):
    grey = read_image(disc_data / "train/image/002.png")
    rgb = np.stack([grey, grey // 2, 255 - grey], axis=-1)
    save(disc_data / "train/image/002.png", rgb)
    save(disc_data / "train/image/003.png", np.stack([grey] * 3, axis=-1))
    report = diagnose(disc_data)
    channels = found(report, "warning", "channels")
    assert channels and "train/image/002.png" in channels[0].message
    assert "003.png" not in channels[0].message  # R=G=B is grey
    assert "1 RGB uint8 64×64: 002.png" in report.splits["train"].images
    assert found(report, "info", "grey_rgb")


def test_duplicates_within_and_across_splits(disc_data):
    src = disc_data / "train/image/000.png"
    (disc_data / "test/image/001.png").write_bytes(src.read_bytes())
    (disc_data / "test/label/001.png").write_bytes((disc_data / "train/label/000.png").read_bytes())
    (disc_data / "train/image/002.png").write_bytes(src.read_bytes())
    (disc_data / "train/label/002.png").write_bytes((disc_data / "train/label/000.png").read_bytes())
    report = diagnose(disc_data)
    dup = found(report, "warning", "duplicate")
    assert len(dup) == 1
    assert "in train and test" in dup[0].message and "leakage" in dup[0].message
    assert "test/image/001.png" in dup[0].message and "train/image/002.png" in dup[0].message


def test_outliers_in_intensity_and_size(tmp_path):
    data = tmp_path / "data"
    write_split(data / "train", 12, [(64, 64)], seed=4)
    save(data / "train/image/005.png", np.full((64, 64), 250, np.uint8))
    image, mask = disc_pair(np.random.default_rng(9), 512, 512)
    save(data / "train/image/007.png", image)
    save(data / "train/label/007.png", mask)
    report = diagnose(data)
    outliers = {f.path: f.message for f in found(report, "warning", "outlier")}
    assert "mean intensity 250" in outliers["train/image/005.png"]
    assert "size 512×512" in outliers["train/image/007.png"]
    assert len(outliers) == 2


# ----------------------------------------------------------------------------------------- report

def test_format_report_cuts_long_lists(tmp_path):
    data = tmp_path / "data"
    write_split(data / "train", 14, [(16, 16)], seed=0)
    for p in list((data / "train/label").iterdir()):
        p.rename(p.with_name(f"x{p.name}"))
    report = diagnose(data)
    text = format_report(report)
    assert len(report.errors) == 28
    assert "... and 18 more orphan finding(s) in train" in text
    assert text.endswith("28 errors, 0 warnings")


# -------------------------------------------------------------------------------------------- fix

def test_fix_writes_a_clean_copy_and_leaves_the_original(disc_data, tmp_path):
    mask = read_label(disc_data / "train/label/003.png").values
    (disc_data / "train/label/003.png").unlink()
    save(disc_data / "train/label/003.jpg", mask, quality=70)           # JPEG mask
    (disc_data / "train/label/004.png").unlink()                         # orphan image
    (disc_data / "train/image/005.png").write_bytes(b"not an image")     # unreadable
    grey = read_image(disc_data / "train/image/006.png")
    (disc_data / "train/image/006.png").unlink()
    save(disc_data / "train/image/006.jpg", np.stack([grey] * 3, -1))   # JPEG, grey saved as RGB
    save(disc_data / "validation/image/000.tif", read_image(disc_data / "validation/image/000.png"))
    (disc_data / "validation/image/000.png").unlink()
    before = tree_digest(disc_data)
    out = tmp_path / "clean"
    report = fix(disc_data, out)
    assert tree_digest(disc_data) == before
    assert report.ok, messages(report, "error")
    left = {Path(f.path).relative_to(disc_data).as_posix() for f in found(report, "warning", "left_out")}
    assert left == {"train/image/004.png", "train/image/005.png", "train/label/005.png"}
    names = sorted(p.name for p in (out / "train/image").iterdir())
    assert names == ["000.png", "001.png", "002.png", "003.png", "006.png", "007.png"]
    assert sorted(p.name for p in (out / "train/label").iterdir()) == names
    assert read_image(out / "train/image/006.png").ndim == 2
    assert (out / "validation/image/000.tif").read_bytes() == (disc_data / "validation/image/000.tif").read_bytes()
    fixed = read_label(out / "train/label/003.png").values
    assert set(np.unique(fixed).tolist()) <= {0, 255}
    assert np.mean(fixed != mask) < 0.02
    labels = [read_label(p) for p in (out / "train/label").iterdir()]
    assert detect_encoding(labels).describe() == "binary mask 0/255"
    assert not found(report, "warning", "jpeg_mask")


def test_fix_maps_classes_to_ids_and_binarises_mixed_masks(tmp_path):
    data = tmp_path / "data"
    write_split(data / "train", 3, [(20, 20)], seed=0)
    for i, p in enumerate(sorted((data / "train/label").iterdir())):
        v = read_label(p).values
        save(p, np.where(v > 0, [10, 20, 30][i], np.where(np.arange(20) < 3, 40, 0)).astype(np.uint8))
    report = fix(data, tmp_path / "out")
    values = set()
    for p in (tmp_path / "out/train/label").iterdir():
        values |= set(np.unique(read_label(p).values).tolist())
    assert values == {0, 1, 2, 3, 4}
    assert report.encoding == "5 classes: 0, 1, 2, 3, 4: all values below 64: class ids"
    data2 = tmp_path / "data2"
    write_split(data2 / "train", 3, [(20, 20)], seed=0)
    first = sorted((data2 / "train/label").iterdir())[0]
    save(first, (read_label(first).values > 0).astype(np.uint8))
    report = fix(data2, tmp_path / "out2")
    assert report.encoding == "binary masks 0/255"


def test_fix_that_fails_half_way_leaves_no_copy(disc_data, tmp_path, monkeypatch):
    from medunet.data.doctor import cleaning as doctor_module

    written = []

    def full_disk_after_two(path, mask):
        if len(written) == 2:
            raise OSError(28, "No space left on device", str(path))
        written.append(path)

    monkeypatch.setattr(doctor_module, "write_mask", full_disk_after_two)
    with pytest.raises(OSError):
        fix(disc_data, tmp_path / "clean")
    assert not (tmp_path / "clean").exists()
    assert [p.name for p in tmp_path.iterdir()] == [disc_data.name]  # no staging folder left either


def test_fix_refuses_unsafe_targets(disc_data, tmp_path):
    with pytest.raises(DataError, match="outside the dataset"):
        fix(disc_data, disc_data / "clean")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        doctor(disc_data, fix_out=busy)
    with pytest.raises(DataError, match="no such folder"):
        fix(tmp_path / "missing", tmp_path / "o")


# --------------------------------------------------------------------------------------- real data

def test_real_cvc_clinicdb_masks_are_near_binary():
    report = diagnose(shared_dataset("cvc-clinicdb"), quick=True)
    assert report.ok
    assert report.encoding.startswith("near-binary masks (resized or smoothed")
    # 19: two masks with only five scattered edge values (126.tif, 266.tif) once read as 7 classes
    assert len(found(report, "warning", "near_binary")) == 19
    assert "99.9% of the pixels are 0 or 255" in report.encoding


def test_real_msd_hippocampus_volumes_are_read():
    report = diagnose(shared_dataset("msd-hippocampus"))
    assert report.ok and report.splits["train"].n_readable == 260
    assert report.encoding.startswith("3 classes: 0, 1, 2")
    assert "maximum 112 to 1.704e+06" in messages(report, "warning")  # normalise per volume


def test_binary_01_mask_among_jpeg_masks_reads_empty_and_fix_repairs_it(disc_data, tmp_path):
    mask = read_label(disc_data / "train/label/000.png").values
    (disc_data / "train/label/000.png").unlink()
    save(disc_data / "train/label/000.jpg", mask, quality=70)
    save(disc_data / "train/label/001.png", (read_label(disc_data / "train/label/001.png").values > 0)
         .astype(np.uint8))
    report = diagnose(disc_data, quick=True)
    bad = found(report, "error", "unrepresentable")
    assert [f.path for f in bad] == ["train/label/001.png"] and "reads as empty" in bad[0].message
    clean = fix(disc_data, tmp_path / "clean")
    assert clean.ok, messages(clean, "error")
    fixed = read_label(tmp_path / "clean/train/label/001.png").values
    assert set(np.unique(fixed).tolist()) == {0, 255}


def test_training_decodes_each_file_once_and_leaves_test_alone(disc_data, tmp_path, monkeypatch):
    from collections import Counter

    from medunet.api.train import train
    from medunet.config import TrainConfig
    from medunet.data import cache as cache_module
    from medunet.data.doctor import scan as doctor_module

    reads = Counter()
    for module in (cache_module, doctor_module):
        for name in ("read_image", "read_label"):
            real = getattr(module, name)

            def counting(path, *args, _real=real, **kwargs):
                reads[Path(path).resolve()] += 1
                return _real(path, *args, **kwargs)
            monkeypatch.setattr(module, name, counting)
    cfg = TrainConfig(epochs=1, batch=4, samples_per_epoch=4, device="cpu", preset="small")
    from medunet.config import DataConfig
    train(disc_data, tmp_path / "run", data_cfg=DataConfig(size=32), cfg=cfg, progress=False)
    expected = {p.resolve() for split in ("train", "validation") for p in (disc_data / split).rglob("*.png")}
    assert set(reads) == expected
    assert set(reads.values()) == {1}


def test_slices_of_a_few_patients_without_validation_folder_are_flagged(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for p in range(5):
        for s in range(3):
            image, mask = disc_pair(rng, 32, 32)
            save(data / "train" / "image" / f"pat{p}_slice{s}.png", image)
            save(data / "train" / "label" / f"pat{p}_slice{s}.png", mask)
    report = diagnose(data)
    assert len(found(report, "warning", "grouping")) == 1
    assert "--group-by" in messages(report, "warning") and "pat0, pat1" in messages(report, "warning")
    write_split(data / "validation", 2, [(32, 32)], seed=1)      # a validation folder decides itself
    assert not found(diagnose(data), "warning", "grouping")
