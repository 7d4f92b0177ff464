"""Pair images with labels by file stem; dataset splits and the split.json of a run.

A dataset folder holds `train/` (required), and optionally `validation/` and `test/`, each with
`image/` and `label/` folders whose files share stems: `image/01.tif` goes with `label/01.gif`.
Entries may be volumes instead: `.nii`, `.nii.gz`, `.nrrd`, `.mha`/`.mhd` files, and in `image/`
folders holding a DICOM series, whose label is a volume file with the folder's name
(`image/case07/` goes with `label/case07.nii.gz`). A dataset is all 2D images or all volumes.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medunet.errors import DataError
from medunet.io.images import IMAGE_SUFFIXES
from medunet.io.outputs import write_text
from medunet.io.volumes import VOLUME_SUFFIXES, is_dicom_series_folder, is_volume_file, volume_stem

SPLITS = ("train", "validation", "test")
MAX_LISTED = 10  # names shown in one error message before "and N more"


@dataclass(frozen=True)
class Pair:
    """One image and its label (None when labels are not needed, e.g. prediction)."""

    stem: str
    image: Path
    label: Path | None


def natural_key(name: str) -> list:
    """Sort key that puts "2.png" before "10.png" and ignores case."""
    # re.split with a group alternates text and digit runs, so ints only meet ints when compared.
    # Odd positions are the digit runs; str.isdigit() would also take "²", which int() refuses.
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(re.split(r"(\d+)", name))]


def is_image_file(path: Path) -> bool:
    """A 2D image file by its suffix (case-insensitive), hidden files excluded."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def is_volume_entry(path: Path) -> bool:
    """A volume file, or a folder holding DICOM files (one series, or several to choose from)."""
    return is_volume_file(path) or (not path.name.startswith(".") and is_dicom_series_folder(path))


def entry_stem(path: Path) -> str:
    """What an entry pairs by: "01.png" → "01", "c1.nii.gz" → "c1", a DICOM folder → its name."""
    return volume_stem(path) if is_volume_entry(path) else path.stem


def list_images(folder: Path) -> list[Path]:
    """Readable entries directly in `folder`, in natural order (2 before 10): 2D image files,
    volume files and DICOM series folders.

    Suffixes are matched case-insensitively (.TIF counts); hidden files, other sub-folders and other
    suffixes are ignored.

    Raises:
        DataError: the folder does not exist, is not a folder, or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    files = [p for p in folder.iterdir() if is_image_file(p) or is_volume_entry(p)]
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES + VOLUME_SUFFIXES)} "
                        "or DICOM series folders)")
    return sorted(files, key=lambda p: (natural_key(p.name), p.name))


def group_by_stem(folder: Path) -> dict[str, list[Path]]:
    """Images of `folder` grouped by stem, in natural order; a stem with several files is a clash
    for the caller to refuse (pairing) or report (the doctor)."""
    found: dict[str, list[Path]] = {}
    for path in list_images(folder):
        found.setdefault(entry_stem(path), []).append(path)
    return found


def is_volume_dataset(pairs: Sequence[Pair]) -> bool:
    """Whether the pairs are volumes (`check_one_kind` has made sure they are all one kind)."""
    return bool(pairs) and is_volume_entry(pairs[0].image)


def check_one_kind(where: Path, entries: Sequence[Path]) -> None:
    """DataError naming one of each when `entries` mix 2D images and volumes.

    A 2D network trains on the slices of volumes, but slices and whole 2D images in one dataset
    would be normalised, split and scored as different things (per image vs per case).
    """
    volumes = [p for p in entries if is_volume_entry(p)]
    flat = [p for p in entries if not is_volume_entry(p)]
    if volumes and flat:
        raise DataError(f"{where}: volumes and 2D images in one dataset ({len(volumes)} volume(s), e.g. "
                        f"{_short(volumes[0], where)}; {len(flat)} 2D image(s), e.g. {_short(flat[0], where)}); "
                        "medunet trains on one kind: slice the volumes or stack the images")


def _short(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def images_by_stem(folder: Path) -> dict[str, Path]:
    """Images of `folder` keyed by stem; DataError when two files share a stem."""
    found = group_by_stem(folder)
    clashes = [" and ".join(f"{folder.name}/{p.name}" for p in paths) + f" share the stem {stem}"
               for stem, paths in found.items() if len(paths) > 1]
    if clashes:
        raise DataError(f"{folder.parent}: {_listing(clashes, sep='; ')}")
    return {stem: paths[0] for stem, paths in found.items()}


def _listing(names: Sequence[str], sep: str = ", ") -> str:
    """At most MAX_LISTED names, then "and N more"."""
    shown = sep.join(names[:MAX_LISTED])
    extra = len(names) - MAX_LISTED
    return f"{shown}{sep}and {extra} more" if extra > 0 else shown


def find_pairs(split_dir: Path, labels: bool = True) -> list[Pair]:
    """Pair `split_dir/image/*` with `split_dir/label/*` by stem; extensions may differ.

    Args:
        split_dir: a folder holding `image/` and, when `labels`, `label/`.
        labels: False to list images only (every Pair's label is None).

    Returns:
        One Pair per image, in natural order of the image names.

    Raises:
        DataError: a missing folder, two files with one stem, or images without labels /
            labels without images (all listed by name in one message).
    """
    split_dir = Path(split_dir)
    for sub in ("image", "label") if labels else ("image",):
        if not (split_dir / sub).is_dir():
            raise DataError(f"{split_dir}: no {sub}/ folder (expected {split_dir / 'image'} "
                            f"and {split_dir / 'label'})")
    images = images_by_stem(split_dir / "image")
    if not labels:
        check_one_kind(split_dir, list(images.values()))
        return [Pair(stem, path, None) for stem, path in images.items()]
    masks = images_by_stem(split_dir / "label")
    check_one_kind(split_dir, list(images.values()) + list(masks.values()))
    _check_orphans(split_dir, images, masks)
    return [Pair(stem, path, masks[stem]) for stem, path in images.items()]


def _check_orphans(split_dir: Path, images: dict[str, Path], masks: dict[str, Path]) -> None:
    """One DataError listing images without a label and labels without an image."""
    lonely_images = [p.name for stem, p in images.items() if stem not in masks]
    lonely_labels = [p.name for stem, p in masks.items() if stem not in images]
    problems = []
    if lonely_images:
        problems.append(f"{len(lonely_images)} image(s) without a label in image/: "
                        f"{_listing(lonely_images)}")
    if lonely_labels:
        problems.append(f"{len(lonely_labels)} label(s) without an image in label/: "
                        f"{_listing(lonely_labels)}")
    if problems:
        raise DataError(f"{split_dir}: {'; '.join(problems)} (files pair by name without suffix)")


def dataset_splits(data_dir: Path) -> dict[str, list[Pair]]:
    """The labelled splits of a dataset folder.

    Returns:
        {"train": [...]} plus "validation" and "test" when those folders exist.

    Raises:
        DataError: no `data_dir`, no `train/`, or any split whose pairs are inconsistent.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such folder")
    if not (data_dir / "train").is_dir():
        raise DataError(f"{data_dir}: no train/ folder (expected train/image and train/label)")
    splits = {name: find_pairs(data_dir / name) for name in SPLITS if (data_dir / name).is_dir()}
    check_one_kind(data_dir, [p.image for pairs in splits.values() for p in pairs])
    return splits


def split_train_val(pairs: Sequence[Pair], fraction: float, seed: int,
                    group_by: str | None = None) -> tuple[list[Pair], list[Pair]]:
    """Hold out a seeded random share of `pairs` (or of their groups) for validation.

    Args:
        pairs: at least two pairs (two groups with `group_by`).
        fraction: share for validation, in (0, 1); rounded, but at least 1 and at most n - 1 pairs
            or groups.
        seed: the same seed and pairs always give the same split.
        group_by: a regex naming each stem's group (`group_of`); whole groups go to one side.

    Returns:
        (train, validation), each in the order of `pairs`.

    Raises:
        DataError: fewer than two pairs or groups, or a stem the regex does not match.
    """
    groups = [group_of(p, group_by) if group_by else p.stem for p in pairs]
    names = list(dict.fromkeys(groups))
    n = len(names)
    if n < 2:
        where = f"{pairs[0].image.parent.parent}: " if pairs else ""
        what = f"{n} group(s) by --group-by {group_by!r}" if group_by else f"{n} image/label pair(s)"
        raise DataError(f"{where}{what}; at least 2 are needed to hold out a validation "
                        f"{'group' if group_by else 'image'} (or add a validation/ folder)")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    n_val = min(max(1, round(n * fraction)), n - 1)
    chosen = {names[i] for i in np.random.default_rng(seed).permutation(n)[:n_val].tolist()}
    train = [p for p, g in zip(pairs, groups) if g not in chosen]
    val = [p for p, g in zip(pairs, groups) if g in chosen]
    return train, val


def split_folds(pairs: Sequence[Pair], folds: int, seed: int, group_by: str | None = None) -> list[int]:
    """The fold (0..folds-1) of each pair for cross-validation: whole groups (`group_by`, else each
    case alone) dealt to the folds in a seeded random order, largest groups first, so the folds
    come out as even as the groups allow.

    Raises:
        DataError: two cases of one name (train/ and validation/ are pooled, and each case's
            out-of-fold file is named after it), fewer groups than folds, or a stem the regex does
            not match.
    """
    first: dict[str, Path] = {}
    for p in pairs:
        if p.stem in first:
            raise DataError(f"{p.image}: the same name as {first[p.stem]}; cross-validation pools the splits "
                            "and names each case's out-of-fold file after it: rename one")
        first[p.stem] = p.image
    groups = [group_of(p, group_by) if group_by else p.stem for p in pairs]
    names = list(dict.fromkeys(groups))
    if len(names) < folds:
        where = f"{pairs[0].image.parent.parent}: " if pairs else ""
        what = f"{len(names)} group(s) by --group-by {group_by!r}" if group_by else f"{len(names)} case(s)"
        raise DataError(f"{where}{what} for {folds} folds; each fold needs at least one")
    sizes = {name: groups.count(name) for name in names}
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    order.sort(key=lambda name: -sizes[name])    # stable: the shuffle breaks ties between equal sizes
    load = [0] * folds
    fold_of_group = {}
    for name in order:
        k = min(range(folds), key=lambda f: (load[f], f))
        fold_of_group[name] = k
        load[k] += sizes[name]
    return [fold_of_group[g] for g in groups]


def group_of(pair: Pair, pattern: str) -> str:
    """The group of a pair: the first capturing group of `pattern`'s first match in the stem, or
    the whole match when the pattern has no group (e.g. `^[^_]+` or `patient(\\d+)`)."""
    match = re.search(pattern, pair.stem)
    if match is None:
        raise DataError(f"{pair.image}: --group-by {pattern!r} does not match the stem {pair.stem!r}")
    return match.group(1) if match.re.groups else match.group(0)


def stem_prefix(stem: str) -> str:
    """A stem without its trailing counter: "p01_s003" → "p01", "case_0001" → "case", "12" → ""."""
    return re.sub(r"[\W_]*[A-Za-z]*\d+[\W_]*$", "", stem)


def looks_grouped(stems: Sequence[str]) -> list[str]:
    """Prefixes shared by several stems when the stems look like slices or frames of a few sources
    (at least 4 prefixes, typically 2 or more stems each), else []: a split per file would then put
    one source on both sides."""
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem_prefix(stem)] = counts.get(stem_prefix(stem), 0) + 1
    if len(counts) < 4 or float(np.median(list(counts.values()))) < 2:
        return []
    return sorted(counts, key=natural_key)


def write_split(path: Path, splits: dict[str, list[Pair]], group_by: str | None = None) -> None:
    """Write splits as JSON ({split: [{"stem", "image", "label"(, "group")}]}, paths as strings),
    atomically; with `group_by` each entry names its group."""
    doc = {name: [{"stem": p.stem, "image": str(p.image), "label": None if p.label is None else str(p.label),
                   **({"group": _group_or_none(p, group_by)} if group_by else {})} for p in pairs]
           for name, pairs in splits.items()}
    write_text(Path(path), json.dumps(doc, indent=1) + "\n")


def _group_or_none(pair: Pair, pattern: str) -> str | None:
    """Like group_of, for the record: a test file outside the naming scheme gets no group."""
    try:
        return group_of(pair, pattern)
    except DataError:
        return None


def read_split(path: Path) -> dict[str, list[Pair]]:
    """Read a file written by `write_split`.

    Raises:
        DataError: the file is missing or not a split file.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return {str(name): [Pair(stem=str(item["stem"]), image=Path(item["image"]),
                                 label=None if item.get("label") is None else Path(item["label"]))
                            for item in items]
                for name, items in doc.items()}
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not a split file ({type(exc).__name__}: {exc})") from exc
