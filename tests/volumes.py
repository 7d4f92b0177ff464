"""Builders of small test volumes in every format medunet reads, written with the libraries
directly (nibabel, SimpleITK, pydicom), not with medunet's writers, so reading is tested against an
independent writer. All patient data here is synthetic; SECRETS are the identifiers that tests grep
outputs and messages for.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medunet.io.volume_geometry import VolumeGeometry

SHAPE = (12, 20, 24)  # (Z, Y, X)
SECRETS = {"PatientName": "Test^Secret", "PatientID": "ID-SECRET-123", "PatientBirthDate": "19010203",
           "StudyDate": "20990405", "SeriesDate": "20990405", "ContentDate": "20990406",
           "AccessionNumber": "ACC-SECRET-9", "InstitutionName": "Secret Hospital"}
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """(3, 3) rotation about `axis` (Rodrigues)."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.radians(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def oblique_geometry(shape: tuple[int, int, int] = SHAPE, mirrored: bool = False) -> VolumeGeometry:
    """Oblique, anisotropic (0.7 × 0.9 × 3.0 mm for x, y, z), not RAS: i runs roughly anterior→
    posterior, j inferior→superior, k right→left (a sagittal-like stack), tilted by 12°. Right-handed
    (as a DICOM stack must be) unless `mirrored` (a det −1 frame, as FSL's radiological NIfTI)."""
    permutation = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)  # LPS columns of i, j, k
    direction = rotation((1, 2, 3), 12) @ permutation
    if mirrored:
        direction[:, 0] *= -1
    return VolumeGeometry(shape=shape, spacing=(3.0, 0.9, 0.7), origin=(-31.5, 12.25, -80.0),
                          direction=tuple(direction.ravel()))


def phantom(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like (Z, Y, X) int16 image (background -1000 HU, not 0) and uint8 labels 0, 1, 2: an
    ellipsoid (1) holding a smaller ball (2), off centre so that any flip of an axis shows."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = ((x - 0.15) / 0.7) ** 2 + ((y + 0.1) / 0.6) ** 2 + ((z - 0.2) / 0.8) ** 2 < 1
    ball = (x - 0.3) ** 2 + (y + 0.2) ** 2 + (z - 0.3) ** 2 < 0.3 ** 2
    labels = body.astype(np.uint8) + (ball & body).astype(np.uint8)
    noise = np.random.default_rng(seed).normal(0, 20, shape)
    image = np.where(labels == 2, 300, np.where(labels == 1, 40, -1000)) + noise
    return np.clip(image, -1024, 3071).astype(np.int16), labels  # what 12-bit CT stores


def write_nifti_file(path: Path, array: np.ndarray, geometry: VolumeGeometry, *, qform_code: int = 1,
                     sform_code: int = 2, dtype=None) -> Path:
    """A NIfTI of a (Z, Y, X) or (Z, Y, X, T) array with nibabel, both transforms set to the geometry."""
    import nibabel as nib

    data = np.asarray(array).transpose(2, 1, 0, *range(3, np.ndim(array)))  # → (X, Y, Z[, T])
    image = nib.Nifti1Image(data.astype(dtype or data.dtype), geometry.nifti_affine())
    image.header.set_qform(geometry.nifti_affine(), code=qform_code)
    image.header.set_sform(geometry.nifti_affine(), code=sform_code)
    nib.save(image, str(path))
    return Path(path)


def write_itk_file(path: Path, array: np.ndarray, geometry: VolumeGeometry) -> Path:
    """A NRRD/MetaImage of a (Z, Y, X) array with SimpleITK."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(geometry.spacing[::-1])
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    sitk.WriteImage(image, str(path), useCompression=True)
    return Path(path)


def write_dicom_series(folder: Path, hu: np.ndarray, geometry: VolumeGeometry, *, seed: int = 0,
                       series_uid: str | None = None, study_uid: str | None = None,
                       frame_uid: str | None = None, offsets: list[float] | None = None,
                       thickness: float | None = None, prefix: str = "im", modality: str = "CT") -> dict:
    """A synthetic CT series of a (Z, Y, X) HU volume, one file per slice, into `folder`.

    File names and InstanceNumbers are shuffled (neither follows the geometry), pixels stored as
    uint16 with RescaleIntercept -1024, patient data from SECRETS.

    Args:
        offsets: slice positions along the normal in mm (default k × spacing): gaps and missing
            slices are made by giving others. `hu` must have one slice per offset.
        thickness: SliceThickness (default the spacing), to tell it apart from the step.
        modality: "CT" (CT Image Storage) or "MR" (MR Image Storage).

    Returns:
        {"series_uid", "study_uid", "frame_uid", "files" (in geometry order), "sop_uids"}.
    """
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    uids = {"series_uid": series_uid or generate_uid(), "study_uid": study_uid or generate_uid(),
            "frame_uid": frame_uid or generate_uid()}
    n = hu.shape[0]
    offsets = offsets if offsets is not None else [k * geometry.spacing[0] for k in range(n)]
    rng = np.random.default_rng(seed)
    names, numbers = rng.permutation(n), rng.permutation(n) + 1
    files, sops = [], []
    for k in range(n):
        sop = generate_uid()
        path = folder / f"{prefix}{names[k]:04d}{'.dcm' if k % 3 else ''}"  # some without a suffix
        _write_slice(path, hu[k], geometry, offsets[k], thickness, int(numbers[k]), sop, uids, modality)
        files.append(path)
        sops.append(sop)
    return {**uids, "files": files, "sop_uids": sops}


def _write_slice(path: Path, hu: np.ndarray, geometry: VolumeGeometry, offset: float,
                 thickness: float | None, number: int, sop: str, uids: dict, modality: str = "CT") -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    d = geometry.direction_matrix
    position = np.asarray(geometry.origin) + offset * d[:, 2]
    meta = FileMetaDataset()
    storage = MR_IMAGE_STORAGE if modality == "MR" else CT_IMAGE_STORAGE
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = storage, sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    for key, value in SECRETS.items():
        setattr(ds, key, value)
    ds.PatientSex, ds.StudyTime, ds.StudyID, ds.ReferringPhysicianName = "O", "101112", "1", ""
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = storage, sop, modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study_uid"], uids["series_uid"]
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = uids["frame_uid"], ""
    ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 7, number, "synthetic"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*d[:, 0], *d[:, 1])]
    ds.PixelSpacing = [f"{geometry.spacing[1]:g}", f"{geometry.spacing[2]:g}"]  # rows (y), columns (x)
    ds.SliceThickness = f"{thickness if thickness is not None else geometry.spacing[0]:g}"
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", "-1024", "HU"
    ds.PixelData = (hu.astype(np.int32) + 1024).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def rtstruct_labels(path: Path, geometry: VolumeGeometry, sop_uids: list[str],
                    class_names: dict[int, str]) -> np.ndarray:
    """Fill an RTSTRUCT's contours back into a (Z, Y, X) label volume on the source grid: each
    contour's points go back to index space, and pixel centres inside an odd number of a slice's
    contours of one ROI get its class (even-odd, so holes stay holes)."""
    import pydicom
    from matplotlib.path import Path as Polygon

    ds = pydicom.dcmread(path)
    ids = {roi.ROINumber: {v: k for k, v in class_names.items()}[roi.ROIName]
           for roi in ds.StructureSetROISequence}
    slice_of = {uid: k for k, uid in enumerate(sop_uids)}
    from_lps = np.linalg.inv(geometry.index_to_lps())
    rows, cols = np.mgrid[: geometry.shape[1], : geometry.shape[2]]
    centres = np.column_stack([cols.ravel(), rows.ravel()]).astype(float)
    labels = np.zeros(geometry.shape, np.uint8)
    for roi in ds.ROIContourSequence:
        inside = np.zeros(geometry.shape, bool)
        for contour in getattr(roi, "ContourSequence", []):
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            index = (np.column_stack([points, np.ones(len(points))]) @ from_lps.T)[:, :3]
            k = slice_of[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            assert np.allclose(index[:, 0], k, atol=1e-3), "a contour off its slice's plane"
            polygon = Polygon(index[:, [2, 1]], closed=False)
            inside[k] ^= polygon.contains_points(centres).reshape(geometry.shape[1:])
        labels[inside] = ids[roi.ReferencedROINumber]
    return labels


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total
