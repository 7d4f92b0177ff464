"""DICOM series: ordering by geometry, series choice, and refusals that name what is wrong and
nothing of the patient."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medunet.errors import DataError
from medunet.io.volumes import read_volume, read_volume_source, write_label_volume
from volumes import SECRETS, oblique_geometry, phantom, write_dicom_series


def assert_no_secrets(text: str) -> None:
    leaked = [v for v in SECRETS.values() if v.lower() in text.lower() or v.split("^")[-1] in text]
    assert not leaked, f"{leaked} in {text!r}"


@pytest.fixture
def series(tmp_path: Path) -> dict:
    image, labels = phantom()
    geometry = oblique_geometry()
    info = write_dicom_series(tmp_path / "ct", image, geometry)
    return {**info, "image": image, "labels": labels, "geometry": geometry, "folder": tmp_path / "ct"}


def test_shuffled_files_are_ordered_by_geometry(series: dict, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    volume = read_volume(series["folder"])
    np.testing.assert_array_equal(volume.array, series["image"])
    assert list(volume.source.dicom.files) == series["files"]  # geometry order, not names or numbers
    assert sorted(volume.source.dicom.files) != series["files"]
    assert list(volume.source.dicom.sop_instance_uids) == series["sop_uids"]
    assert volume.source.dicom.series_uid == series["series_uid"]
    # GDCM orders the same series the same way and places it at the same spot.
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series["folder"]))
    assert [Path(n) for n in names] == series["files"]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    itk = reader.Execute()
    np.testing.assert_allclose(volume.geometry.spacing, itk.GetSpacing()[::-1], rtol=1e-6)
    np.testing.assert_allclose(volume.geometry.origin, itk.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(volume.geometry.direction, itk.GetDirection(), atol=1e-6)
    assert_no_secrets(caplog.text + repr(volume) + repr(volume.source))


def test_other_files_in_the_folder_are_ignored(series: dict) -> None:
    (series["folder"] / "README.txt").write_text("notes")
    (series["folder"] / ".DS_Store").write_bytes(b"\0" * 200)
    assert read_volume(series["folder"]).array.shape == (12, 20, 24)


def test_a_second_series_is_chosen_by_uid_and_refused_without(series: dict) -> None:
    other_image, _ = phantom((5, 16, 18), seed=3)  # another grid size in the same folder
    other = write_dicom_series(series["folder"], other_image, oblique_geometry((5, 16, 18)), seed=1,
                               study_uid=series["study_uid"], prefix="b")
    with pytest.raises(DataError) as err:
        read_volume(series["folder"])
    message = str(err.value)
    assert message.startswith(f"{series['folder']}: 2 DICOM series in one folder")
    assert f"{series['series_uid']} (12 slices)" in message and f"{other['series_uid']} (5 slices)" in message
    assert "--series-uid UID" in message
    assert_no_secrets(message)
    np.testing.assert_array_equal(read_volume(series["folder"], series_uid=series["series_uid"]).array,
                                  series["image"])
    np.testing.assert_array_equal(read_volume(series["folder"], series_uid=other["series_uid"]).array, other_image)
    with pytest.raises(DataError, match="no series with SeriesInstanceUID 1.2.3"):
        read_volume(series["folder"], series_uid="1.2.3")


def test_a_missing_slice_is_refused(tmp_path: Path) -> None:
    image, _ = phantom()
    offsets = [3.0 * k for k in range(13) if k != 5]  # slice 5 of 13 lost
    write_dicom_series(tmp_path / "gap", image, oblique_geometry(), offsets=offsets)
    with pytest.raises(DataError) as err:
        read_volume_source(tmp_path / "gap")
    assert str(err.value) == (f"{tmp_path / 'gap'}: slice positions step 3 mm except 6 mm between slices "
                              "5 and 6 (missing slices?); medunet needs evenly spaced slices")


def test_uneven_spacing_is_refused(tmp_path: Path) -> None:
    image, _ = phantom()
    offsets = [2.5 * k for k in range(12)]
    offsets[8:] = [o + 0.7 for o in offsets[8:]]
    write_dicom_series(tmp_path / "uneven", image, oblique_geometry(), offsets=offsets)
    with pytest.raises(DataError, match=r"step 2.5 mm except 3.2 mm between slices 8 and 9 \(uneven spacing\)"):
        read_volume(tmp_path / "uneven")


def test_thin_slices_with_gaps_take_the_spacing_of_their_positions(tmp_path: Path) -> None:
    """MR: 5 mm slices 6.5 mm apart are a regular stack, 6.5 mm apart (not SliceThickness)."""
    image, _ = phantom()
    write_dicom_series(tmp_path / "mr", image, oblique_geometry(),
                       offsets=[6.5 * k for k in range(12)], thickness=5.0)
    volume = read_volume(tmp_path / "mr")
    np.testing.assert_allclose(volume.geometry.spacing, (6.5, 0.9, 0.7), rtol=1e-6)
    np.testing.assert_array_equal(volume.array, image)


def test_mixed_grids_in_one_series_are_refused(series: dict, tmp_path: Path) -> None:
    odd = pydicom.dcmread(series["files"][4])
    odd.Rows, odd.Columns = 10, 12
    odd.PixelData = np.zeros((10, 12), "<u2").tobytes()
    odd.save_as(series["files"][4])
    with pytest.raises(DataError, match=r"slices of different sizes: 11 of 20 rows × 24 columns .*"
                                        r"1 of 10 rows × 12 columns \(e.g. " + series["files"][4].name):
        read_volume(series["folder"])
    odd.Rows, odd.Columns = 20, 24
    odd.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    odd.save_as(series["files"][4])
    with pytest.raises(DataError, match="slices of different orientations"):
        read_volume(series["folder"])


def test_two_slices_at_one_position_are_refused(tmp_path: Path) -> None:
    image, _ = phantom()
    write_dicom_series(tmp_path / "echo", image, oblique_geometry(), offsets=[3.0 * (k // 2) for k in range(12)])
    with pytest.raises(DataError, match="share a position"):
        read_volume(tmp_path / "echo")


def test_no_secrets_in_any_refusal(series: dict, tmp_path: Path) -> None:
    messages = []
    image, _ = phantom()
    write_dicom_series(tmp_path / "gap", image, oblique_geometry(), offsets=[3.0 * k for k in range(13) if k != 5])
    write_dicom_series(tmp_path / "two", image, oblique_geometry())
    write_dicom_series(tmp_path / "two", image, oblique_geometry(), prefix="x", seed=4)
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "gap", tmp_path / "two", tmp_path / "empty"):
        with pytest.raises(DataError) as err:
            read_volume(folder)
        messages.append(str(err.value))
    assert all("\n" not in m for m in messages)
    assert_no_secrets(" ".join(messages))


def test_dicom_source_labels_as_nifti_keep_the_series_geometry(series: dict, tmp_path: Path) -> None:
    source = read_volume_source(series["folder"])
    write_label_volume(tmp_path / "ct.nii.gz", series["labels"], source)
    itk = sitk.ReadImage(str(tmp_path / "ct.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(itk), series["labels"])
    np.testing.assert_allclose(itk.GetOrigin(), source.geometry.origin, atol=1e-4)
    np.testing.assert_allclose(itk.GetDirection(), source.geometry.direction, atol=1e-5)
    np.testing.assert_allclose(itk.GetSpacing()[::-1], source.geometry.spacing, rtol=1e-5)


def test_a_rescale_that_varies_between_slices_gives_floats(series: dict) -> None:
    """PET and some MR store each slice with its own slope: no slice may be cut to integers."""
    for k, slope in ((0, 1.0), (5, 0.25)):
        ds = pydicom.dcmread(series["files"][k])
        ds.RescaleSlope = f"{slope:g}"
        ds.PixelData = np.round((series["image"][k] + 1024.5) / slope).astype("<u2").tobytes()
        ds.save_as(series["files"][k])
    volume = read_volume(series["folder"])
    assert volume.array.dtype == np.float32
    np.testing.assert_allclose(volume.array[5], series["image"][5] + 0.5)  # 0.25 steps kept
    np.testing.assert_array_equal(volume.array[1], series["image"][1])


def test_a_single_slice_takes_its_thickness(tmp_path: Path) -> None:
    image, _ = phantom()
    write_dicom_series(tmp_path / "one", image[:1], oblique_geometry(), thickness=4.0)
    volume = read_volume(tmp_path / "one")
    assert volume.array.shape == (1, 20, 24)
    np.testing.assert_allclose(volume.geometry.spacing, (4.0, 0.9, 0.7))
