"""evaluate() for volumes: per case and per class 3D Dice, IoU, precision, recall, HD95 and ASSD
in millimetres from the voxel spacing; one metrics row per case. No slice-wise numbers."""
from __future__ import annotations

from pathlib import Path

from medunet.data.pairs import Pair
from medunet.data.volume_cache import read_volume_split
from medunet.engine.predictor import Segmenter
from medunet.engine.volume_predictor import VolumePredictor
from medunet.io.volumes import output_name, write_label_volume
from medunet.metrics import class_counts, image_metrics
from medunet.surface import surface_metrics

VOLUME_SUMMARY = {
    "unit": "case",
    "metrics": "3D, per case: each row of metrics.csv is one volume (Dice, IoU, precision, recall over "
               "its voxels; HD95 and ASSD in mm from its voxel spacing); means are over cases. No "
               "slice-wise number is reported",
    "surface_empty_rule": "for a class whose truth and prediction are both empty in a case, HD95 and ASSD "
                          "are undefined (NaN) and left out of that case's mean over classes; when exactly "
                          "one of them is empty, both are set to the volume's diagonal in mm, the worst case",
}


def score_volumes(predictor: Segmenter, pairs: list[Pair], masks: Path) -> tuple[list[dict], list]:
    """Per-case metric rows and class counts of volume pairs (one case in memory at a time);
    each predicted label volume written to `masks` like its source."""
    n_classes = predictor.encoding.n_classes
    volumes = VolumePredictor(predictor)
    rows, all_counts = [], []
    for pair in pairs:
        raw = read_volume_split([pair])  # the image and its label, on one grid (checked)
        volume = raw.images[0]
        truth = predictor.encoding.encode(raw.labels[0].values, raw.labels[0].path)
        pred = volumes.predict(volume).classes
        rows.append({"stem": pair.stem, **image_metrics(truth, pred, n_classes),
                     **surface_metrics(truth, pred, n_classes, volume.geometry.spacing)})
        all_counts.append(class_counts(truth, pred, n_classes))
        write_label_volume(masks / output_name(pair.image), predictor.encoding.decode(pred), volume)
        del raw, volume, truth, pred
    return rows, all_counts
