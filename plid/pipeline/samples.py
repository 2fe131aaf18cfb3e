"""Sample scans in each format predict reads, written from an 8-bit upright sagittal image: for the study's
demonstration and the tests. What comes back through :func:`plid.datamodules.io.read_scan` should be the same
picture, whatever the format stored."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plid.utils.io import atomic_write

# direction cosines (LPS) of a sagittal slice upright with anterior on the left: columns run to posterior, rows to
# inferior
SAGITTAL_ORIENTATION = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def write_dicom(image: np.ndarray, path: str | Path, spacing_mm: float = 0.5, slope: float = 2.0,
                intercept: float = -100.0) -> Path:
    """A single-frame MR DICOM file of ``image``: stored values (image - intercept) / slope, 16-bit, with the
    rescale tags, pixel spacing and a sagittal ImageOrientationPatient."""
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
    ds.Modality, ds.PatientID = "MR", "sample"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [spacing_mm, spacing_mm]
    ds.ImageOrientationPatient = list(SAGITTAL_ORIENTATION)
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = stored.tobytes()
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        ds.save_as(handle, enforce_file_format=True)
    return path


def write_volume(image: np.ndarray, path: str | Path, spacing_mm: float = 0.5, slices: int = 5,
                 stored_orientation: str = "LPS") -> Path:
    """A 3D volume (NIfTI, MHA, ... by suffix) of ``slices`` copies of ``image`` side by side, stored in
    ``stored_orientation`` (not the PIL of the contract), so that reading it back exercises the reorientation."""
    import SimpleITK as sitk

    from plid.datamodules.spider import ORIENTATION

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
