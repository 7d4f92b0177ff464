"""Pairing images with labels by stem, dataset splits, split.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from medunet.data.pairs import (Pair, dataset_splits, find_pairs, list_images, looks_grouped, read_split,
                                split_train_val, write_split)
from medunet.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def touch(folder: Path, *names: str) -> None:
    """Empty files are enough: pairing never opens them."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def make_split(root: Path, images: list[str], labels: list[str]) -> Path:
    touch(root / "image", *images)
    touch(root / "label", *labels)
    return root


# ---------------------------------------------------------------------------------- list_images

def test_list_images_natural_order_and_filters(tmp_path):
    touch(tmp_path, "10.png", "2.png", "1.TIF", "img_3.jpeg", "img_20.bmp", "b.gif", "a.tiff",
          ".hidden.png", "._2.png", "notes.txt", "mask.npy", "x.jpg")
    (tmp_path / "sub.png").mkdir()
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["1.TIF", "2.png", "10.png", "a.tiff", "b.gif", "img_3.jpeg", "img_20.bmp", "x.jpg"]


def test_list_images_errors(tmp_path):
    with pytest.raises(DataError, match="no such folder") as err:
        list_images(tmp_path / "nope")
    assert str(err.value).startswith(str(tmp_path / "nope"))
    touch(tmp_path, "a.txt")
    with pytest.raises(DataError, match=r"no images \(.tif, .tiff, .png"):
        list_images(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        list_images(tmp_path / "a.txt")


# ----------------------------------------------------------------------------------- find_pairs

def test_pairs_by_stem_with_different_extensions(tmp_path):
    split = make_split(tmp_path, ["21.tif", "3.tif", "100.tif"], ["3.gif", "100.png", "21.gif"])
    pairs = find_pairs(split)
    assert [p.stem for p in pairs] == ["3", "21", "100"]
    assert pairs[0] == Pair("3", split / "image" / "3.tif", split / "label" / "3.gif")


def test_orphans_on_both_sides_listed_by_name(tmp_path):
    split = make_split(tmp_path, ["1.png", "2.png", "5.png"], ["1.png", "3.png", "4.tif"])
    with pytest.raises(DataError) as err:
        find_pairs(split)
    message = str(err.value)
    assert message.startswith(f"{split}: ")
    assert "2.png, 5.png" in message and "3.png, 4.tif" in message
    assert "without a label" in message and "without an image" in message


def test_many_orphans_are_cut_short(tmp_path):
    split = make_split(tmp_path, [f"{i}.png" for i in range(25)], ["0.png"])
    with pytest.raises(DataError, match="24 image.*and 14 more") as err:
        find_pairs(split)
    assert "23.png" not in str(err.value)


@pytest.mark.parametrize("side", ["image", "label"])
def test_duplicate_stems(tmp_path, side):
    split = make_split(tmp_path, ["01.png"], ["01.png"])
    touch(split / side, "01.tif")
    with pytest.raises(DataError) as err:
        find_pairs(split)
    assert str(err.value) == f"{split}: {side}/01.png and {side}/01.tif share the stem 01"


def test_missing_folders(tmp_path):
    touch(tmp_path / "image", "1.png")
    with pytest.raises(DataError, match="no label/ folder") as err:
        find_pairs(tmp_path)
    assert str(err.value).startswith(str(tmp_path))
    assert [p.label for p in find_pairs(tmp_path, labels=False)] == [None]
    with pytest.raises(DataError, match="no image/ folder"):
        find_pairs(tmp_path / "nowhere", labels=False)


def test_empty_label_folder(tmp_path):
    split = make_split(tmp_path, ["1.png"], [])
    with pytest.raises(DataError, match="no images"):
        find_pairs(split)


# ------------------------------------------------------------------------------------- splits

def test_dataset_splits(tmp_path):
    make_split(tmp_path / "train", ["1.png", "2.png"], ["1.png", "2.png"])
    assert list(dataset_splits(tmp_path)) == ["train"]
    make_split(tmp_path / "test", ["9.png"], ["9.png"])
    make_split(tmp_path / "validation", ["5.png"], ["5.png"])
    splits = dataset_splits(tmp_path)
    assert list(splits) == ["train", "validation", "test"]
    assert splits["test"][0].stem == "9"


def test_dataset_splits_errors(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        dataset_splits(tmp_path / "nope")
    with pytest.raises(DataError) as err:
        dataset_splits(tmp_path)
    assert str(err.value) == f"{tmp_path}: no train/ folder (expected train/image and train/label)"
    make_split(tmp_path / "train", ["1.png"], ["1.png"])
    make_split(tmp_path / "validation", ["1.png"], ["2.png"])
    with pytest.raises(DataError, match="validation"):
        dataset_splits(tmp_path)


def pairs_of(n: int) -> list[Pair]:
    return [Pair(str(i), Path(f"d/image/{i}.png"), Path(f"d/label/{i}.png")) for i in range(n)]


@pytest.mark.parametrize("n,fraction,n_val", [(2, 0.1, 1), (10, 0.1, 1), (10, 0.25, 2), (100, 0.2, 20),
                                              (3, 0.9, 2)])
def test_split_train_val_sizes(n, fraction, n_val):
    train, val = split_train_val(pairs_of(n), fraction, seed=0)
    assert len(val) == n_val and len(train) == n - n_val
    assert sorted(train + val, key=lambda p: int(p.stem)) == pairs_of(n)


def test_split_train_val_reproducible():
    pairs = pairs_of(50)
    assert split_train_val(pairs, 0.2, seed=3) == split_train_val(pairs, 0.2, seed=3)
    assert split_train_val(pairs, 0.2, seed=3)[1] != split_train_val(pairs, 0.2, seed=4)[1]


@pytest.mark.parametrize("n", [0, 1])
def test_split_train_val_needs_two(n):
    with pytest.raises(DataError, match="at least 2"):
        split_train_val(pairs_of(n), 0.1, seed=0)


def test_split_json_round_trip(tmp_path):
    train, val = split_train_val(pairs_of(10), 0.2, seed=1)
    splits = {"train": train, "validation": val,
              "test": [Pair("t", Path("x/image/t.tif"), None)]}
    path = tmp_path / "split.json"
    write_split(path, splits)
    assert read_split(path) == splits
    assert [p.name for p in tmp_path.iterdir()] == ["split.json"]   # no temporary file left


def test_read_split_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_split(tmp_path / "split.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError) as err:
        read_split(tmp_path / "bad.json")
    assert str(err.value).startswith(f"{tmp_path / 'bad.json'}: not a split file")
    (tmp_path / "bad2.json").write_text('{"train": [{"image": "a.png"}]}')
    with pytest.raises(DataError):
        read_split(tmp_path / "bad2.json")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")
def test_drive_pairs_tif_with_gif():
    splits = dataset_splits(SHARED_DATA / "drive-retina")
    assert set(splits) == {"train", "test"}
    pair = splits["train"][0]
    assert pair.image.suffix == ".tif" and pair.label.suffix == ".gif" and pair.image.stem == pair.label.stem
    assert len(splits["train"]) == 20 and len(splits["test"]) == 20


def grouped_pairs() -> list[Pair]:
    """Five slices of each of eight patients, named like an export of a scanner's slices."""
    return [Pair(f"pat{p:02d}_slice{s:03d}", Path(f"d/image/pat{p:02d}_slice{s:03d}.png"),
                 Path(f"d/label/pat{p:02d}_slice{s:03d}.png")) for p in range(8) for s in range(5)]


@pytest.mark.parametrize("pattern", [r"^pat\d+", r"pat(\d+)_"])
def test_group_by_keeps_each_patient_on_one_side(pattern):
    train, val = split_train_val(grouped_pairs(), 0.25, seed=0, group_by=pattern)
    patients = lambda pairs: {p.stem[:5] for p in pairs}  # noqa: E731
    assert len(patients(val)) == 2 and not patients(train) & patients(val)
    assert len(train) + len(val) == 40
    # per file, the same seed scatters patients over both sides: what --group-by prevents
    train, val = split_train_val(grouped_pairs(), 0.25, seed=0)
    assert patients(train) & patients(val)


def test_group_by_errors_name_the_file():
    with pytest.raises(DataError, match=r"pat00_slice000\.png.*does not match"):
        split_train_val(grouped_pairs(), 0.25, seed=0, group_by=r"^case\d+")
    with pytest.raises(DataError, match="1 group"):
        split_train_val(grouped_pairs(), 0.25, seed=0, group_by=r"^pat")


def test_split_json_records_groups(tmp_path):
    train, val = split_train_val(grouped_pairs(), 0.25, seed=0, group_by=r"pat(\d+)")
    write_split(tmp_path / "split.json", {"train": train, "validation": val}, group_by=r"pat(\d+)")
    doc = json.loads((tmp_path / "split.json").read_text())
    assert {item["group"] for item in doc["validation"]} == {p.stem[3:5] for p in val}
    assert read_split(tmp_path / "split.json") == {"train": train, "validation": val}


def test_grouped_stems_are_recognised():
    assert looks_grouped([p.stem for p in grouped_pairs()]) == [f"pat{p:02d}" for p in range(8)]
    assert looks_grouped([f"case_{i:04d}" for i in range(50)]) == []        # one counter: no groups
    assert looks_grouped([str(i) for i in range(30)]) == []
    assert looks_grouped([f"{k} ({i})" for k in ("benign", "malignant", "normal") for i in range(20)]) == []
