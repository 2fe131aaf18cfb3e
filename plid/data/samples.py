"""Sample scans in each format predict reads, written from an 8-bit upright sagittal image: for the study's
demonstration and the tests. What comes back through :func:`plid.data.scans.read_scan` should be the same
picture, whatever the format stored."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plid.utils.io import atomic_write

# direction cosines (LPS) of a sagittal slice upright with anterior on the left: columns run to posterior, rows to
# inferior
SAGITTAL_ORIENTATION = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def _mr_slice(image: np.ndarray, spacing_mm: float, orientation, slope: float, intercept: float):
    """One MR image slice as a pydicom dataset: stored values (image - intercept) / slope, 16-bit, with the
    rescale tags, pixel spacing and ``orientation`` (ImageOrientationPatient); identity tags are the caller's."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    stored = np.rint((image.astype(np.float64) - intercept) / slope).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [spacing_mm, spacing_mm]
    ds.ImageOrientationPatient = list(orientation)
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = stored.tobytes()
    return ds


def write_dicom(image: np.ndarray, path: str | Path, spacing_mm: float = 0.5, slope: float = 2.0,
                intercept: float = -100.0) -> Path:
    """A single-frame MR DICOM file of ``image``: stored values (image - intercept) / slope, 16-bit, with the
    rescale tags, pixel spacing and a sagittal ImageOrientationPatient."""
    from pydicom.uid import generate_uid

    ds = _mr_slice(image, spacing_mm, SAGITTAL_ORIENTATION, slope, intercept)
    ds.Modality, ds.PatientID = "MR", "sample"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        ds.save_as(handle, enforce_file_format=True)
    return path


def write_volume(image: np.ndarray, path: str | Path, spacing_mm: float = 0.5, slices: int = 5,
                 stored_orientation: str = "LPS") -> Path:
    """A 3D volume (NIfTI, MHA, ... by suffix) of ``slices`` copies of ``image`` side by side, stored in
    ``stored_orientation`` (not the PIL of the contract), so that reading it back exercises the reorientation."""
    import SimpleITK as sitk

    from plid.data.sagittal import ORIENTATION

    volume = sitk.GetImageFromArray(np.repeat(image[None], slices, axis=0))  # (left, inferior, posterior)
    volume.SetSpacing((spacing_mm, spacing_mm, 3.0))
    # index axes of PIL: columns to posterior (+y), rows to inferior (-z), slices to the left (+x); the matrix's
    # columns are those axes
    volume.SetDirection((0, 0, 1, 1, 0, 0, 0, -1, 0))
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(volume.GetDirection()) == ORIENTATION
    stored = sitk.DICOMOrient(volume, stored_orientation)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(stored, str(path))
    return path


# direction cosines (LPS) of the planes a series can be written in: (columns run along, rows run along)
PLANES = {
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),  # upright, anterior on the left
    "sagittal_anterior": ((0.0, -1.0, 0.0), (0.0, 0.0, -1.0)),  # upright, columns running anterior
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
}


def write_dicom_series(slices: np.ndarray, folder: str | Path, plane: str = "sagittal", reverse: bool = False,
                       names: list[str] | None = None, spacing_mm: float = 0.5, slice_mm: float = 3.0,
                       patient: str = "sample", series_number: int = 1, description: str = "T2 SAG",
                       study_uid: str | None = None, modality: str = "MR", slope: float = 2.0,
                       intercept: float = -100.0, origin_mm: tuple[float, float, float] = (-12.0, -80.0, 100.0),
                       ) -> list[Path]:
    """One MR series of ``slices`` ((n, H, W) 8-bit upright sagittal images, index growing to the patient's
    left), one file per slice, as a scanner would store it.

    ``plane`` sets ``ImageOrientationPatient``: ``sagittal`` stores each image as given, ``sagittal_anterior``
    stores it mirrored with columns running anterior (the same picture once read back), ``axial`` and
    ``coronal`` label the same pixels as another plane. ``reverse`` numbers the instances from the patient's left
    instead of the right. ``names``: the file names, relative to ``folder`` (sub-folders allowed; default
    ``IM0001``... in instance order, no suffix). Returns the paths in instance order.
    """
    from pydicom.uid import generate_uid

    row_dir, col_dir = (np.asarray(v) for v in PLANES[plane])
    normal = np.cross(row_dir, col_dir)
    if plane.startswith("sagittal"):
        normal = np.array([1.0, 0.0, 0.0])  # slices follow the patient's left, whatever the in-plane directions
    slices = np.asarray(slices)
    count, rows, cols = slices.shape
    study_uid, series_uid, frame_uid = study_uid or generate_uid(), generate_uid(), generate_uid()
    folder = Path(folder)
    order = list(range(count))[::-1] if reverse else list(range(count))  # slice index of instance 1, 2...
    names = names or [f"IM{k + 1:04d}" for k in range(count)]
    paths = []
    for instance, k in enumerate(order, start=1):
        image = slices[k]
        first = np.asarray(origin_mm, float) + normal * slice_mm * k
        if plane == "sagittal_anterior":
            image = image[:, ::-1]
            first = first + np.array([0.0, 1.0, 0.0]) * spacing_mm * (cols - 1)  # its first pixel is the posterior one
        ds = _mr_slice(image, spacing_mm, [*row_dir.tolist(), *col_dir.tolist()], slope, intercept)
        ds.Modality, ds.PatientID, ds.PatientName = modality, patient, patient
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDescription, ds.StudyDate = "LUMBAR SPINE", "20240101"
        ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = series_number, description, instance
        ds.SliceThickness, ds.SpacingBetweenSlices = slice_mm, slice_mm
        ds.ImagePositionPatient = [round(float(v), 4) for v in first]
        path = folder / names[instance - 1]
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as handle:
            ds.save_as(handle, enforce_file_format=True)
        paths.append(path)
    return paths
