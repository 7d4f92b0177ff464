"""DICOM outputs for a DICOM series input: a Segmentation (DICOM-SEG, through highdicom) and an RT
Structure Set (RTSTRUCT, written with pydicom), both referencing the source series and its slices,
so a planning system or a viewer (3D Slicer, OHIF) loads them on the source images.

RTSTRUCT is written here rather than with rt-utils: rt-utils pins the full opencv-python (and a
`dataclasses` backport) and was last released in 2023; the contours come from contourpy
(matplotlib's contouring engine, already installed with it). Each class becomes one ROI; each
connected outline of a slice, one CLOSED_PLANAR contour through the midpoints between the pixels
inside and outside (marching squares at 0.5). Holes are contours of their own, to be combined
even-odd, as planning systems and rt-utils do. Filling the contours back (pixel centres inside an
odd number of them) gives the mask back.

Both objects carry the source's patient and study attributes, as DICOM requires for them to sit in
the source's study; nothing from the headers goes anywhere else.
"""
from __future__ import annotations

import datetime
import logging
from pathlib import Path

import numpy as np

from medunet.errors import ConfigError
from medunet.io.outputs import atomic_target

logger = logging.getLogger(__name__)

RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
SEG_SERIES_NUMBER, RTSTRUCT_SERIES_NUMBER = 901, 902  # apart from a scanner's own (1, 2, ...)
_STUDY_REFERENCE = "1.2.840.10008.3.1.2.3.1"  # RTReferencedStudy's SOP class, as written by RT systems
_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                  "StudyDate", "StudyTime", "StudyID", "ReferringPhysicianName", "AccessionNumber")
_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def write_dicom_seg(path: Path, labels: np.ndarray, source, class_names: dict[int, str]) -> None:
    """Write class ids as a binary DICOM Segmentation, one segment per class, atomically.

    Args:
        path: the output file (".dcm").
        labels: (Z, Y, X) uint8/uint16 class ids on the source's grid (0 background).
        source: the `Volume` or `VolumeSource` of a DICOM series.
        class_names: {class id: name} for the ids > 0; segments are numbered 1, 2, ... in id order.

    Raises:
        ConfigError: the source is not a DICOM series.
        ValueError: a shape that is not the source's, labels that are not unsigned integers, or
            ids without a name.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medunet import __version__

    source, classes = _checked(path, labels, source, class_names, "--dicom-seg")
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.uint8 if len(classes) < 256 else np.uint16)
    for number, (class_id, _) in enumerate(classes, start=1):
        if class_id < len(lut):
            lut[class_id] = number  # segment numbers must run 1..n; class ids need not
    algorithm = hd.AlgorithmIdentificationSequence(name="medunet", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    segments = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=name, segmented_property_category=codes.cid7150.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm) for number, (_, name) in enumerate(classes, start=1)]
    seg = hd.seg.Segmentation(
        source_images=_source_datasets(source), pixel_array=lut[labels],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
        series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="medunet", manufacturer_model_name="medunet",
        software_versions=__version__, device_serial_number="none", content_label="MEDUNET",
        content_description="medunet segmentation")
    with atomic_target(Path(path), durable=False) as tmp:
        seg.save_as(tmp)


def write_rtstruct(path: Path, labels: np.ndarray, source, class_names: dict[int, str]) -> None:
    """Write class ids as an RT Structure Set: one ROI per class, contours per source slice.

    Args, Raises: as `write_dicom_seg` (the option named is --rtstruct).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from medunet import __version__

    source, classes = _checked(path, labels, source, class_names, "--rtstruct")
    first = _source_datasets(source, first_only=True)[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for key in _PATIENT_STUDY:
        setattr(ds, key, first.get(key, ""))
    now = datetime.datetime.now()
    ds.SOPClassUID, ds.Modality, ds.SeriesInstanceUID = RTSTRUCT_STORAGE, "RTSTRUCT", generate_uid()
    ds.SeriesNumber, ds.InstanceNumber, ds.OperatorsName = RTSTRUCT_SERIES_NUMBER, 1, ""
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "medunet", "medunet", __version__
    ds.StructureSetLabel, ds.StructureSetName = "medunet", "medunet"
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.ReferencedFrameOfReferenceSequence = [_frame_reference(source.dicom)]
    ds.StructureSetROISequence = [_roi(number, name, source.dicom) for number, (_, name) in
                                  enumerate(classes, start=1)]
    ds.ROIContourSequence = [_roi_contours(number, labels == class_id, source)
                             for number, (class_id, _) in enumerate(classes, start=1)]
    ds.RTROIObservationsSequence = [_observation(number) for number in range(1, len(classes) + 1)]
    with atomic_target(Path(path), durable=False) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def _checked(path, labels: np.ndarray, source, class_names: dict[int, str], option: str):
    """(the VolumeSource, [(class id, name)] for ids > 0 in id order) after checking the inputs."""
    source = getattr(source, "source", source)
    if source.dicom is None:
        raise ConfigError(f"{source.path}: {option} needs a DICOM series as input, not a {source.format} file")
    if tuple(labels.shape) != tuple(source.geometry.shape):
        raise ValueError(f"{path}: labels of shape {labels.shape} for a series of {source.geometry.shape}")
    if labels.dtype.kind != "u":
        raise ValueError(f"{path}: labels must be unsigned integers, got {labels.dtype}")
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=1))  # no sort of the whole volume
    unnamed = sorted(set(present.tolist()) - set(class_names) - {0})
    if unnamed:
        raise ValueError(f"{path}: class ids {unnamed} have no name in class_names")
    return source, sorted((int(k), str(v)) for k, v in class_names.items() if int(k) > 0)


def _source_datasets(source, first_only: bool = False) -> list:
    """The source slices' headers (no pixels), in array order."""
    import pydicom

    files = source.dicom.files[:1] if first_only else source.dicom.files
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def _frame_reference(series) -> object:
    """The frame of reference → study → series → every slice, as RT systems expect."""
    from pydicom.dataset import Dataset

    images = []
    for uid in series.sop_instance_uids:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = series.sop_class_uid, uid
        images.append(item)
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID, referenced_series.ContourImageSequence = series.series_uid, images
    study = Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = _STUDY_REFERENCE, series.study_uid
    study.RTReferencedSeriesSequence = [referenced_series]
    frame = Dataset()
    frame.FrameOfReferenceUID, frame.RTReferencedStudySequence = series.frame_of_reference_uid, [study]
    return frame


def _roi(number: int, name: str, series) -> object:
    from pydicom.dataset import Dataset

    roi = Dataset()
    roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, series.frame_of_reference_uid
    roi.ROIName, roi.ROIGenerationAlgorithm = name, "AUTOMATIC"
    return roi


def _observation(number: int) -> object:
    from pydicom.dataset import Dataset

    obs = Dataset()
    obs.ObservationNumber, obs.ReferencedROINumber = number, number
    obs.RTROIInterpretedType, obs.ROIInterpreter = "ORGAN", ""
    return obs


def _roi_contours(number: int, mask: np.ndarray, source) -> object:
    """One ROI's contours: for each slice k with pixels of the class, its outlines in LPS mm."""
    from pydicom.dataset import Dataset

    to_lps = source.geometry.index_to_lps()
    series = source.dicom
    contours = []
    for k in np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1)):
        for outline in slice_outlines(mask[k]):
            index = np.column_stack([np.full(len(outline), k), outline, np.ones(len(outline))])
            points = (index @ to_lps.T)[:, :3]
            image = Dataset()
            image.ReferencedSOPClassUID = series.sop_class_uid
            image.ReferencedSOPInstanceUID = series.sop_instance_uids[k]
            contour = Dataset()
            contour.ContourImageSequence, contour.ContourGeometricType = [image], "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourData = [f"{v:.4f}" for v in points.ravel()]
            contours.append(contour)
    item = Dataset()
    item.ReferencedROINumber, item.ROIDisplayColor = number, list(_COLOURS[(number - 1) % len(_COLOURS)])
    item.ContourSequence = contours
    return item


def slice_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """The closed outlines of a 2D mask, as (N, 2) float (row, column) pixel coordinates.

    Marching squares at 0.5 on the mask padded with background, so outlines at the border close;
    the last point (a repeat of the first) and points on straight runs are dropped: the polygon is
    the same, with far fewer points. Pixel centres inside an odd number of outlines are the mask.
    """
    import contourpy

    padded = np.pad(np.asarray(mask, dtype=np.float64), 1)
    generator = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate)
    outlines = []
    for line in generator.lines(0.5):  # (N, 2) as (x = column, y = row)
        line = line[:-1] if np.array_equal(line[0], line[-1]) else line
        into, out = line - np.roll(line, 1, axis=0), np.roll(line, -1, axis=0) - line
        turn = into[:, 0] * out[:, 1] - into[:, 1] * out[:, 0]
        line = line[np.abs(turn) > 1e-9]
        if len(line) >= 3:
            outlines.append(line[:, ::-1] - 1.0)
    return outlines
