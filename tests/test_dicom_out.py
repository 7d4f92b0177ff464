"""DICOM-SEG and RTSTRUCT outputs reference the source series and decode back to the labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medunet.errors import ConfigError
from medunet.io.dicom_out import slice_outlines, write_dicom_seg, write_rtstruct
from medunet.io.volumes import read_volume_source
from volumes import dice, oblique_geometry, phantom, rtstruct_labels, write_dicom_series, write_nifti_file

CLASSES = {1: "body", 2: "lesion"}


@pytest.fixture
def series(tmp_path: Path) -> dict:
    image, labels = phantom()
    info = write_dicom_series(tmp_path / "ct", image, oblique_geometry())
    return {**info, "labels": labels, "folder": tmp_path / "ct"}


def test_dicom_seg_decodes_to_the_labels(series: dict, tmp_path: Path) -> None:
    import highdicom as hd

    source = read_volume_source(series["folder"])
    labels = series["labels"].copy()
    labels[labels == 2] = 3  # class ids need not be consecutive: {1, 3} become segments 1, 2
    names = {1: "body", 3: "lesion", 4: "never predicted"}
    write_dicom_seg(tmp_path / "seg.dcm", labels, source, names)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert [s.segment_label for s in seg.SegmentSequence] == ["body", "lesion", "never predicted"]
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "medunet"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series["series_uid"]
    assert seg.StudyInstanceUID == series["study_uid"] and seg.FrameOfReferenceUID == series["frame_uid"]
    numbers = seg.get_pixels_by_source_instance(source_sop_instance_uids=series["sop_uids"],
                                                combine_segments=True)
    decoded = np.array([0, 1, 3, 4])[numbers]
    np.testing.assert_array_equal(decoded, labels)  # Dice 1.0 for every class


def test_rtstruct_contours_fill_back_to_the_labels(series: dict, tmp_path: Path) -> None:
    source = read_volume_source(series["folder"])
    labels = series["labels"].copy()
    labels[6, 8:11, 10:13] = 0  # a hole in the body, and an island inside it
    labels[6, 9, 11] = 1
    write_rtstruct(tmp_path / "rt.dcm", labels, source, CLASSES)
    ds = pydicom.dcmread(tmp_path / "rt.dcm")
    assert ds.Modality == "RTSTRUCT" and [r.ROIName for r in ds.StructureSetROISequence] == ["body", "lesion"]
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == series["frame_uid"]
    referenced = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == series["series_uid"]
    assert [c.ReferencedSOPInstanceUID for c in referenced.ContourImageSequence] == series["sop_uids"]
    back = rtstruct_labels(tmp_path / "rt.dcm", source.geometry, series["sop_uids"], CLASSES)
    for class_id in CLASSES:  # the bar: Dice ≥ 0.98; marching squares at 0.5 gives them back exactly
        assert dice(back == class_id, labels == class_id) >= 0.98
    np.testing.assert_array_equal(back, labels)


def test_outlines_of_awkward_masks_fill_back_exactly() -> None:
    from matplotlib.path import Path as Polygon

    mask = np.zeros((9, 10), bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours (a marching-squares saddle), at the border
    mask[3:8, 3:9] = True
    mask[5, 5:7] = False  # a hole
    mask[8, 9] = True
    rows, cols = np.mgrid[:9, :10]
    centres = np.column_stack([cols.ravel(), rows.ravel()])
    inside = np.zeros(mask.shape, bool)
    for outline in slice_outlines(mask):
        inside ^= Polygon(outline[:, ::-1]).contains_points(centres).reshape(mask.shape)
    np.testing.assert_array_equal(inside, mask)


def test_dicom_outputs_need_a_dicom_source(tmp_path: Path) -> None:
    image, labels = phantom()
    source = read_volume_source(write_nifti_file(tmp_path / "ct.nii.gz", image, oblique_geometry()))
    for writer, option in ((write_dicom_seg, "--dicom-seg"), (write_rtstruct, "--rtstruct")):
        with pytest.raises(ConfigError, match=f"ct.nii.gz: {option} needs a DICOM series"):
            writer(tmp_path / "out.dcm", labels, source, CLASSES)


def test_unnamed_classes_are_refused(series: dict, tmp_path: Path) -> None:
    source = read_volume_source(series["folder"])
    with pytest.raises(ValueError, match=r"class ids \[2\] have no name"):
        write_rtstruct(tmp_path / "rt.dcm", series["labels"], source, {1: "body"})


def test_outputs_written_into_the_series_folder_are_skipped_when_reading(series: dict) -> None:
    from medunet.io.volumes import read_volume

    source = read_volume_source(series["folder"])
    write_dicom_seg(series["folder"] / "seg.dcm", series["labels"], source, CLASSES)
    write_rtstruct(series["folder"] / "rt.dcm", series["labels"], source, CLASSES)
    again = read_volume(series["folder"])  # SEG is multi-frame, RTSTRUCT has no image plane
    assert again.source.dicom.files == source.dicom.files


def test_labels_must_be_unsigned_class_ids(series: dict, tmp_path: Path) -> None:
    source = read_volume_source(series["folder"])
    with pytest.raises(ValueError, match="unsigned integers"):
        write_dicom_seg(tmp_path / "seg.dcm", series["labels"] > 0, source, CLASSES)
