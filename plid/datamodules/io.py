"""Reading new scans for inference: one 8-bit sagittal image per file, upright with anterior on the left.

What the models were trained on is the spider2d contract (``../shared/data/spider2d/README.md``): 8-bit
grayscale, upright, anterior on the left, square pixels. Every reader brings its format there:

- PNG / JPEG / BMP / TIFF (cv2): taken as they are (already 8-bit and upright); the pixel spacing is unknown.
- DICOM (pydicom): the stored values times ``RescaleSlope`` plus ``RescaleIntercept``, ``MONOCHROME1``
  inverted, the middle frame of a multi-frame file; orientation from ``ImageOrientationPatient`` (rows to
  inferior, columns to posterior), pixels made square at the finer ``PixelSpacing``, and intensities scaled
  between the 0.5 and 99.5 percentiles to 8 bits, as the SPIDER importer scales its volumes.
- NIfTI / MHA / NRRD volumes (SimpleITK): reoriented to ``PIL`` and cut at the middle sagittal slice, with the
  importer's own code (:mod:`plid.datamodules.spider`), so a volume is read exactly as training data were made.

A file that cannot be read raises :class:`ScanReadError` naming the file; the caller decides whether the rest
of a folder goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from plid.errors import UserInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")
SCAN_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES + VOLUME_SUFFIXES


class ScanReadError(UserInputError):
    """A file given to predict cannot be read as a scan; the message names it and says why."""


@dataclass
class Scan:
    """One image ready for the pipeline."""

    name: str  # the file name without its suffix(es): names the outputs
    path: Path
    image: np.ndarray  # (H, W) uint8, upright, anterior on the left, square pixels
    spacing_mm: float | None  # side of a (square) pixel in mm; None where the file does not say
    format: str  # image, dicom or volume
    slice_index: int | None = None  # the sagittal slice taken from a volume (index in the reoriented volume)


def scan_suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def scan_name(path: Path) -> str:
    suffix = scan_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def list_scans(path: str | Path) -> list[Path]:
    """The scan files of a folder (sorted, not recursive, by suffix), or the one file given."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserInputError(f"input={path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and scan_suffix(p) in SCAN_SUFFIXES)
    if not files:
        raise UserInputError(f"input={path}: no scan in the folder (suffixes read: {' '.join(SCAN_SUFFIXES)})")
    return files


def read_scan(path: str | Path) -> Scan:
    """Read any supported file as a :class:`Scan`; :class:`ScanReadError` names the file when that fails."""
    path = Path(path).expanduser()
    suffix = scan_suffix(path)
    if not path.is_file():
        raise ScanReadError(f"{path}: file not found")
    try:
        if suffix in IMAGE_SUFFIXES:
            return _read_image(path)
        if suffix in VOLUME_SUFFIXES:
            return _read_volume(path)
        return _read_dicom(path)  # .dcm, or any other suffix: DICOM files often have none
    except ScanReadError:
        raise
    except Exception as error:  # noqa: BLE001 - any decoder failure is this file's problem, reported by name
        raise ScanReadError(f"{path}: cannot be read as a scan ({type(error).__name__}: {error})") from error


def _read_image(path: Path) -> Scan:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ScanReadError(f"{path}: cannot be decoded as an image (corrupt or truncated?)")
    return Scan(scan_name(path), path, image, None, "image")


def _read_volume(path: Path) -> Scan:
    import SimpleITK as sitk

    from plid.datamodules.spider import ORIENTATION, central_slices, scale_to_uint8, square_pixels

    try:
        stored = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ScanReadError(f"{path}: cannot be read as a volume ({str(error).strip().splitlines()[-1]})") from error
    if stored.GetDimension() == 2:
        stored = sitk.JoinSeries(stored)
    if stored.GetDimension() != 3:
        raise ScanReadError(f"{path}: expected a 2D image or 3D volume, got {stored.GetDimension()}D")
    if stored.GetNumberOfComponentsPerPixel() != 1:
        raise ScanReadError(f"{path}: {stored.GetNumberOfComponentsPerPixel()} components per voxel; expected one")
    volume_image = sitk.DICOMOrient(stored, ORIENTATION)
    volume = sitk.GetArrayFromImage(volume_image)  # (left, inferior, posterior)
    k = central_slices(volume.shape[0], None, 1)[0]
    col_spacing, row_spacing, _ = volume_image.GetSpacing()
    image = square_pixels(scale_to_uint8(volume[k]), row_spacing, col_spacing, cv2.INTER_LINEAR)
    return Scan(scan_name(path), path, image, float(min(row_spacing, col_spacing)), "volume", slice_index=k)


def _read_dicom(path: Path) -> Scan:
    import pydicom

    from plid.datamodules.spider import scale_to_uint8, square_pixels

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as error:  # noqa: BLE001 - pydicom raises several types for a bad file
        raise ScanReadError(f"{path}: not a readable DICOM file ({error})") from error
    if "PixelData" not in ds:
        raise ScanReadError(f"{path}: DICOM file without pixel data")
    pixels = ds.pixel_array.astype(np.float32)
    if pixels.ndim == 3 and int(getattr(ds, "NumberOfFrames", 1)) > 1:
        pixels = pixels[pixels.shape[0] // 2]
    if pixels.ndim != 2:
        raise ScanReadError(f"{path}: pixel data of shape {pixels.shape}; expected one grayscale image")
    pixels = pixels * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    if getattr(ds, "PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        pixels = pixels.max() - pixels
    pixels = _upright(pixels, getattr(ds, "ImageOrientationPatient", None))
    spacing = getattr(ds, "PixelSpacing", None)
    row_spacing, col_spacing = (float(spacing[0]), float(spacing[1])) if spacing else (1.0, 1.0)
    if _transposed(getattr(ds, "ImageOrientationPatient", None)):
        row_spacing, col_spacing = col_spacing, row_spacing
    image = square_pixels(scale_to_uint8(pixels), row_spacing, col_spacing, cv2.INTER_LINEAR)
    return Scan(scan_name(path), path, image, float(min(row_spacing, col_spacing)) if spacing else None, "dicom")


def _transposed(orientation) -> bool:
    """Whether the stored rows run head-foot (so the image must be transposed to stand upright)."""
    if orientation is None or len(orientation) != 6:
        return False
    row = np.abs(np.asarray(orientation[:3], dtype=float))
    return bool(row[2] > row[1])


def _upright(pixels: np.ndarray, orientation) -> np.ndarray:
    """A sagittal DICOM slice turned so that columns run to posterior and rows to inferior (anterior left, head up).

    ``ImageOrientationPatient`` gives, in the patient's LPS frame, the direction of increasing column index
    (first three values) and of increasing row index (last three); posterior is +y, inferior is -z.
    Without the tag the image is taken as stored.
    """
    if orientation is None or len(orientation) != 6:
        return pixels
    along_row, along_col = np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:], dtype=float)
    if _transposed(orientation):
        pixels, along_row, along_col = pixels.T, along_col, along_row
    if along_row[1] < 0:  # columns run to anterior: flip left-right
        pixels = pixels[:, ::-1]
    if along_col[2] > 0:  # rows run to superior: flip upside down
        pixels = pixels[::-1, :]
    return np.ascontiguousarray(pixels)
