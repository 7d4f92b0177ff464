"""predict() for volumes: each input volume → a label volume in its own format and geometry, and on
request probabilities, a DICOM Segmentation and an RT Structure Set.

Outputs per input (`medunet.io.volumes.output_name`): `<stem>.nii.gz` for `<stem>.nii.gz` (the
source header copied: same affine, qform/sform codes), `.nrrd`/`.mha` kept, `.mhd` → `.mha`, a
DICOM series folder → `<folder>.nii.gz`; class ids in the labels' own values as uint8 (uint16 above
255); `--probabilities` `<stem>_prob.<suffix>` float32 (4D for several classes); for a DICOM series
`--dicom-seg` `<stem>_seg.dcm` and `--rtstruct` `<stem>_rtstruct.dcm`, segments and ROIs named
from the classes. Nothing from the DICOM headers goes anywhere else (file names come from the
folder names the user chose).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from medunet.data.encoding import LabelEncoding
from medunet.data.volume_cache import slice_axis
from medunet.engine.predictor import Segmenter
from medunet.engine.volume_predictor import VolumePredictor
from medunet.errors import ConfigError
from medunet.io.dicom_out import write_dicom_seg, write_rtstruct
from medunet.io.images import write_image
from medunet.io.volumes import (output_name, read_volume, read_volume_source, volume_stem, write_float_volume,
                                write_label_volume)
from medunet.report.volume_slices import outlined_slices

logger = logging.getLogger(__name__)


def class_names(encoding: LabelEncoding, names: Sequence[str] | None = None) -> dict[int, str]:
    """{stored label value: name} of the foreground classes: `names` in class order (from
    `--class-names` or the run's), else "foreground" for one class and "class <value>" for several.

    Raises:
        ConfigError: a number of names that is not the number of foreground classes.
    """
    values = list(encoding.values[1:])
    if names is None:
        names = ["foreground"] if len(values) == 1 else [f"class {v}" for v in values]
    if len(names) != len(values):
        raise ConfigError(f"--class-names gives {len(names)} name(s) for {len(values)} foreground class(es) "
                          f"(label values {', '.join(map(str, values))})")
    return dict(zip(values, names))


def predict_volumes(predictor: Segmenter, entries: list[Path], stage: Path, *, probabilities: bool = False,
                    overlay: bool = False, dicom_seg: bool = False, rtstruct: bool = False,
                    series_uid: str | None = None, names: Sequence[str] | None = None,
                    progress: bool = True, on_case: Callable[[str, np.ndarray], None] | None = None) -> list[str]:
    """Predict every volume of `entries` (files or DICOM folders) into the folder `stage`.

    `on_case(stem, classes)` is called with each case's class indices `(Z, Y, X)` (the caller's flags).

    Returns:
        The label volumes' file names.

    Raises:
        ConfigError: --dicom-seg / --rtstruct for an input that is not a DICOM series, or
            --class-names that do not match the classes; before anything is predicted.
    """
    uid = {p: series_uid if p.is_dir() else None for p in entries}
    for option, asked in (("--dicom-seg", dicom_seg), ("--rtstruct", rtstruct)):
        not_dicom = [p for p in entries if asked and not p.is_dir()]
        if not_dicom:
            raise ConfigError(f"{not_dicom[0]}: {option} needs a DICOM series (a folder) as input, not a volume file")
    volumes = VolumePredictor(predictor)
    named = class_names(predictor.encoding, names or volumes.data_cfg.class_names)
    sources = [read_volume_source(p, uid[p]) for p in entries]  # headers first: the bar counts slices
    total = sum(s.geometry.shape[slice_axis(s.geometry, volumes.data_cfg)] for s in sources)
    written = []
    with tqdm(total=total, desc="predict", unit="slice", disable=not progress, leave=False) as bar:
        for path in entries:
            volume = read_volume(path, uid[path])
            result = volumes.predict(volume, probabilities=probabilities, progress=bar)
            labels = predictor.encoding.decode(result.classes)
            stem = volume_stem(path)
            write_label_volume(stage / output_name(path), labels, volume)
            if result.probs is not None:
                probs = result.probs[0] if len(result.probs) == 1 else result.probs
                write_float_volume(stage / output_name(path, "prob"), probs, volume)
            if dicom_seg:
                write_dicom_seg(stage / f"{stem}_seg.dcm", labels, volume, named)
            if rtstruct:
                write_rtstruct(stage / f"{stem}_rtstruct.dcm", labels, volume, named)
            if overlay:
                axis = slice_axis(volume.geometry, volumes.data_cfg)
                write_image(stage / f"{stem}_overlay.png", outlined_slices(volume.array, result.classes, axis))
            written.append(output_name(path))
            if on_case is not None:
                on_case(stem, result.classes)
            del volume, result, labels
    logger.info("%d label volume(s) predicted (%d slices)", len(written), total)
    return written
