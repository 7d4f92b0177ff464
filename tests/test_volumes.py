"""Volume files: one axis order and geometry whatever the format, exact round trips, clear refusals."""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared_dataset
from medunet.errors import DataError
from medunet.io.volume_geometry import GeometryTolerance, VolumeGeometry, check_pair
from medunet.io.volumes import (is_dicom_series_folder, is_volume_file, output_name, read_label_volume,
                                read_volume, read_volume_source, volume_stem, write_float_volume,
                                write_label_volume)
from volumes import oblique_geometry, phantom, write_dicom_series, write_itk_file, write_nifti_file


def assert_same_geometry(a: VolumeGeometry, b: VolumeGeometry) -> None:
    assert tuple(a.shape) == tuple(b.shape)
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-5)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-5)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-5)


@pytest.fixture
def ct(tmp_path: Path) -> dict:
    """One oblique, anisotropic, non-RAS CT volume written as NIfTI (qform 1, sform 2), NRRD, MHA,
    MHD and a shuffled DICOM series."""
    geometry = oblique_geometry()
    image, labels = phantom()
    paths = {"nifti": write_nifti_file(tmp_path / "ct.nii.gz", image, geometry),
             "nrrd": write_itk_file(tmp_path / "ct.nrrd", image, geometry),
             "mha": write_itk_file(tmp_path / "ct.mha", image, geometry),
             "mhd": write_itk_file(tmp_path / "ct.mhd", image, geometry)}
    write_dicom_series(tmp_path / "ct_dicom", image, geometry)
    paths["dicom"] = tmp_path / "ct_dicom"
    return {"geometry": geometry, "image": image, "labels": labels, "paths": paths}


@pytest.mark.parametrize("fmt", ["nifti", "nrrd", "mha", "mhd", "dicom"])
def test_every_format_gives_the_same_array_and_geometry(ct: dict, fmt: str) -> None:
    volume = read_volume(ct["paths"][fmt])
    assert volume.array.shape == (12, 20, 24)  # (Z, Y, X)
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, ct["image"])
    assert_same_geometry(volume.geometry, ct["geometry"])
    assert read_volume_source(ct["paths"][fmt]).geometry == volume.geometry  # headers alone agree


def test_nibabel_path_agrees_with_simpleitk_on_the_same_nifti(ct: dict) -> None:
    """The trap of nnU-Net #1951: nibabel's (x, y, z) and SimpleITK's (z, y, x) must meet exactly."""
    ours = read_volume(ct["paths"]["nifti"])
    theirs = sitk.ReadImage(str(ct["paths"]["nifti"]))
    np.testing.assert_array_equal(ours.array, sitk.GetArrayFromImage(theirs))
    np.testing.assert_allclose(ours.geometry.spacing, theirs.GetSpacing()[::-1], rtol=1e-6)
    np.testing.assert_allclose(ours.geometry.origin, theirs.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(ours.geometry.direction, theirs.GetDirection(), atol=1e-6)
    # A voxel index maps to the same physical point through both.
    to_lps = ours.geometry.index_to_lps()
    for zyx in [(0, 0, 0), (11, 19, 23), (3, 7, 5)]:
        point = to_lps @ np.array([*zyx, 1.0])
        np.testing.assert_allclose(point[:3], theirs.TransformIndexToPhysicalPoint(zyx[::-1]), atol=1e-5)


def test_geometry_helpers() -> None:
    geometry = oblique_geometry()
    assert geometry.through_plane_axis == 0  # 3.0 mm between slices
    assert VolumeGeometry((4, 5, 6), (1.0, 1.0, 2.5), (0, 0, 0), tuple(np.eye(3).ravel())).through_plane_axis == 2
    np.testing.assert_allclose(geometry.axis_vectors[0], geometry.direction_matrix[:, 2])  # Z = k
    back = VolumeGeometry.from_nifti_affine(geometry.nifti_affine(), geometry.shape[::-1])
    assert_same_geometry(back, geometry)
    assert nib.aff2axcodes(geometry.nifti_affine()) != ("R", "A", "S")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_mirrored_frame_round_trips(tmp_path: Path, suffix: str) -> None:
    """A det −1 frame (FSL's radiological NIfTI) is kept as it is, not flipped to a right-handed one."""
    geometry = oblique_geometry(mirrored=True)
    image, labels = phantom()
    writer = write_nifti_file if suffix == ".nii.gz" else write_itk_file
    volume = read_volume(writer(tmp_path / f"m{suffix}", image, geometry))
    np.testing.assert_array_equal(volume.array, image)
    assert_same_geometry(volume.geometry, geometry)
    write_label_volume(tmp_path / f"out{suffix}", labels, volume)
    back = read_label_volume(tmp_path / f"out{suffix}")
    np.testing.assert_array_equal(back.array, labels)
    assert_same_geometry(back.geometry, geometry)


@pytest.mark.parametrize("name", ["out.nii.gz", "out.nii"])
def test_nifti_labels_keep_the_affine_and_codes(ct: dict, tmp_path: Path, name: str) -> None:
    source = read_volume(ct["paths"]["nifti"])
    write_label_volume(tmp_path / name, ct["labels"], source)
    written, original = nib.load(tmp_path / name), nib.load(ct["paths"]["nifti"])
    np.testing.assert_allclose(written.affine, original.affine, atol=1e-5)
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (1, 2)
    np.testing.assert_allclose(written.header.get_qform(), original.header.get_qform(), atol=1e-5)
    assert written.get_data_dtype() == np.uint8
    assert written.shape == original.shape
    back = read_label_volume(tmp_path / name)
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, ct["labels"])
    # SimpleITK reads the ids exactly too (no scaling left over from the image header).
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name))), ct["labels"])


def test_many_classes_are_stored_as_uint16(ct: dict, tmp_path: Path) -> None:
    labels = ct["labels"].astype(np.uint16) * 150  # ids 0, 150, 300
    for name in ("big.nii.gz", "big.nrrd"):
        write_label_volume(tmp_path / name, labels, read_volume_source(ct["paths"]["nifti"]))
        back = read_label_volume(tmp_path / name)
        assert back.array.dtype == np.uint16
        np.testing.assert_array_equal(back.array, labels)
    with pytest.raises(ValueError, match="0..65535"):
        write_label_volume(tmp_path / "neg.nii.gz", labels.astype(np.int32) - 1, read_volume_source(ct["paths"]["nifti"]))


@pytest.mark.parametrize("fmt", ["nrrd", "mha", "mhd", "dicom"])
def test_labels_keep_the_geometry_of_every_source(ct: dict, tmp_path: Path, fmt: str) -> None:
    source = read_volume_source(ct["paths"][fmt])
    name = output_name(ct["paths"][fmt])
    assert name == {"nrrd": "ct.nrrd", "mha": "ct.mha", "mhd": "ct.mha", "dicom": "ct_dicom.nii.gz"}[fmt]
    write_label_volume(tmp_path / name, ct["labels"], source)
    back = read_label_volume(tmp_path / name)
    np.testing.assert_array_equal(back.array, ct["labels"])
    assert back.array.dtype == np.uint8
    assert_same_geometry(back.geometry, source.geometry)
    # What ITK (and so 3D Slicer) sees: the label lies on the source grid.
    itk = sitk.ReadImage(str(tmp_path / name))
    np.testing.assert_allclose(itk.GetOrigin(), ct["geometry"].origin, atol=1e-4)
    np.testing.assert_allclose(itk.GetDirection(), ct["geometry"].direction, atol=1e-5)
    if fmt == "dicom":
        header = nib.load(tmp_path / name).header
        assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 1)


def test_probabilities_are_float32_with_classes_as_fourth_axis(ct: dict, tmp_path: Path) -> None:
    source = read_volume_source(ct["paths"]["nifti"])
    probs = np.random.default_rng(0).random((3, *ct["image"].shape))
    write_float_volume(tmp_path / "p.nii.gz", probs, source)
    image = nib.load(tmp_path / "p.nii.gz")
    assert image.shape == (24, 20, 12, 3) and image.get_data_dtype() == np.float32
    np.testing.assert_allclose(image.affine, nib.load(ct["paths"]["nifti"]).affine, atol=1e-5)
    np.testing.assert_allclose(np.asarray(image.dataobj).T, probs.astype(np.float32))
    write_float_volume(tmp_path / "p.nrrd", probs, source)
    vector = sitk.ReadImage(str(tmp_path / "p.nrrd"))
    assert vector.GetNumberOfComponentsPerPixel() == 3
    np.testing.assert_allclose(np.moveaxis(sitk.GetArrayFromImage(vector), -1, 0), probs.astype(np.float32))
    write_float_volume(tmp_path / "one.nii.gz", probs[1], source)
    assert read_volume(tmp_path / "one.nii.gz").array.dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        write_float_volume(tmp_path / "bad.nii.gz", probs[:, :3], source)


def test_4d_volumes_are_refused_with_their_shape(tmp_path: Path) -> None:
    geometry = oblique_geometry()
    image, _ = phantom()
    four = np.stack([image, image, image], axis=-1)  # (Z, Y, X, T)
    path = write_nifti_file(tmp_path / "fmri.nii.gz", four, geometry)
    with pytest.raises(DataError, match=r"fmri\.nii\.gz: 4D volume \(shape 24×20×12×3\)"):
        read_volume(path)
    single = write_nifti_file(tmp_path / "one.nii.gz", four[..., :1], geometry)  # a 4th axis of 1 is fine
    np.testing.assert_array_equal(read_volume(single).array, image)
    vector = sitk.GetImageFromArray(np.stack([image, image], axis=-1), isVector=True)
    sitk.WriteImage(vector, str(tmp_path / "vec.mha"))
    with pytest.raises(DataError, match="2 components per voxel"):
        read_volume(tmp_path / "vec.mha")
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(image)] * 2), str(tmp_path / "t.nrrd"))
    with pytest.raises(DataError, match=r"t\.nrrd: 4D volume"):
        read_volume(tmp_path / "t.nrrd")


def test_float_multiclass_labels_and_non_zero_background(tmp_path: Path) -> None:
    """A brain-tumour-like case: float32 image with background 17.5, float32 labels 0/1/2/4."""
    geometry = VolumeGeometry((10, 16, 16), (1.0, 1.0, 1.0), (0.0, -239.0, 0.0),
                              tuple(np.diag([-1.0, -1.0, 1.0]).ravel()))  # a BraTS-like LPI flip
    labels = np.zeros(geometry.shape, np.float32)
    labels[2:8, 3:12, 4:10], labels[4:6, 5:9, 5:8], labels[5, 6, 6] = 1, 2, 4
    image = (17.5 + 100 * labels).astype(np.float32)
    write_nifti_file(tmp_path / "img.nii.gz", image, geometry)
    write_nifti_file(tmp_path / "seg.nii.gz", labels, geometry)
    volume, label = read_volume(tmp_path / "img.nii.gz"), read_label_volume(tmp_path / "seg.nii.gz")
    assert volume.array.dtype == np.float32 and float(volume.array.min()) == 17.5
    assert label.array.dtype == np.uint8 and set(np.unique(label.array).tolist()) == {0, 1, 2, 4}
    assert check_pair(volume.geometry, label.geometry, "seg.nii.gz") == []
    write_nifti_file(tmp_path / "soft.nii.gz", labels * 0.5, geometry)
    with pytest.raises(DataError, match=r"soft\.nii\.gz: float label with non-integer values"):
        read_label_volume(tmp_path / "soft.nii.gz")


def test_integer_scaling_gives_integer_hu(tmp_path: Path) -> None:
    """CT NIfTI stored as uint16 with scl_inter -1024 reads as int16 HU, not float."""
    geometry = oblique_geometry()
    image, _ = phantom()
    stored = nib.Nifti1Image((image.astype(np.int32) + 1024).astype(np.uint16).T, geometry.nifti_affine())
    stored.header.set_slope_inter(1, -1024)
    nib.save(stored, str(tmp_path / "hu.nii.gz"))
    volume = read_volume(tmp_path / "hu.nii.gz")
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, image)


def test_unreadable_inputs_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^.*nope\.nii\.gz: no such file$"):
        read_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not a volume at all")
    with pytest.raises(DataError, match=r"junk\.nii\.gz: cannot read NIfTI"):
        read_volume(tmp_path / "junk.nii.gz")
    (tmp_path / "junk.mha").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"junk\.mha: cannot read the volume") as err:
        read_volume(tmp_path / "junk.mha")
    assert "\n" not in str(err.value)
    (tmp_path / "scan.vtk").write_bytes(b"x")
    with pytest.raises(DataError, match=r"scan\.vtk: not a volume file"):
        read_volume(tmp_path / "scan.vtk")


def test_names(ct: dict, tmp_path: Path) -> None:
    paths = ct["paths"]
    assert [volume_stem(paths[k]) for k in ("nifti", "nrrd", "mhd", "dicom")] == ["ct", "ct", "ct", "ct_dicom"]
    assert volume_stem(Path("Case_001.NII.GZ")) == "Case_001"
    assert output_name(paths["nifti"]) == "ct.nii.gz"
    assert output_name(paths["nifti"], kind="prob") == "ct_prob.nii.gz"
    assert output_name(paths["dicom"], kind="prob") == "ct_dicom_prob.nii.gz"
    assert all(is_volume_file(paths[k]) for k in ("nifti", "nrrd", "mha", "mhd"))
    assert not is_volume_file(paths["dicom"]) and not is_volume_file(tmp_path / "ct.raw")
    assert is_dicom_series_folder(paths["dicom"]) and not is_dicom_series_folder(tmp_path)
    with pytest.raises(ValueError):
        write_label_volume(tmp_path / "x.png", ct["labels"], read_volume_source(paths["nrrd"]))


def test_check_pair_names_each_difference() -> None:
    image = oblique_geometry()
    assert check_pair(image, image, "l.nii") == []
    # float32 header rounding is no difference
    rounded = VolumeGeometry(image.shape, tuple(np.float32(image.spacing).tolist()),
                             tuple(np.float32(image.origin).tolist()), tuple(np.float32(image.direction).tolist()))
    assert check_pair(image, rounded, "l.nii") == []
    other = VolumeGeometry((12, 20, 25), (2.5, 0.9, 0.7), (-31.5, 12.25, -79.0),
                           oblique_geometry(mirrored=True).direction)
    found = check_pair(image, other, "label/l.nii")
    assert len(found) == 4 and all(m.startswith("label/l.nii: ") for m in found)
    assert "shape 12×20×25 (z, y, x), image 12×20×24" in found[0]
    assert "spacing 2.5×0.9×0.7 mm (z, y, x), image 3×0.9×0.7 mm" in found[1]
    assert "origin" in found[2] and "1 mm apart" in found[2]
    assert "direction" in found[3]
    assert check_pair(image, other, "l", GeometryTolerance(spacing=0.3, origin=2.0, direction=2.0))[1:] == []


def test_memory_of_a_large_volume_read_and_write(tmp_path: Path) -> None:
    """Reading holds the voxels once (nibabel alone peaks near 3×); writing copies nothing whole."""
    geometry = VolumeGeometry((60, 256, 256), (2.5, 0.8, 0.8), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    image = np.zeros(geometry.shape, np.int16)
    image[10:50, 20:200, 30:220] = 1200
    write_nifti_file(tmp_path / "big.nii.gz", image, geometry)  # gzip: not memory-mapped
    nbytes = image.nbytes
    del image
    tracemalloc.start()
    try:
        volume = read_volume(tmp_path / "big.nii.gz")
        read_peak = tracemalloc.get_traced_memory()[1]
        labels = (volume.array > 0).astype(np.uint8)
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        write_label_volume(tmp_path / "big_mask.nii.gz", labels, volume)
        write_extra = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert volume.array.dtype == np.int16
    assert read_peak < 1.6 * nbytes, read_peak / nbytes  # the volume and decompression chunks
    assert write_extra < 0.5 * labels.nbytes, write_extra / labels.nbytes  # no copy of the labels
    np.testing.assert_array_equal(read_label_volume(tmp_path / "big_mask.nii.gz").array, labels)


def test_msd_hippocampus_volumes_read_with_their_spacing() -> None:
    root = shared_dataset("msd-hippocampus") / "train"
    for stem in ("hippocampus_001", "hippocampus_003", "hippocampus_243"):
        image = read_volume(root / "image" / f"{stem}.nii.gz")
        label = read_label_volume(root / "label" / f"{stem}.nii.gz")
        np.testing.assert_allclose(image.geometry.spacing, (1.0, 1.0, 1.0))
        assert image.array.shape == image.geometry.shape == label.array.shape
        assert image.array.shape == nib.load(root / "image" / f"{stem}.nii.gz").shape[::-1]
        assert label.array.dtype == np.uint8  # 003 and 243 are stored as float32
        assert set(np.unique(label.array).tolist()) == {0, 1, 2}
        assert check_pair(image.geometry, label.geometry, label.path) == []
