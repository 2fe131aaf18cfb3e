"""Reading new scans for inference: images, volumes and DICOM series, brought to the training contract.

What the models were trained on is the spider2d contract (``../shared/data/spider2d/README.md``): 8-bit
grayscale, upright, anterior on the left, square pixels, intensities scaled per volume. Each case found by
:func:`plid.data.dicom.discover` is read here as a :class:`Case`:

- PNG / JPEG / BMP / TIFF (cv2): one image, upright as it is; 8-bit images as they are, 16-bit and float ones
  windowed to 8 bits as volumes are (a warning says so, and where an image has few grey levels); a side above
  :data:`MAX_IMAGE_SIDE` downscaled with a warning; pixel spacing unknown.
- NIfTI / MHA / NRRD volumes (SimpleITK) and DICOM series (SimpleITK's ``ImageSeriesReader`` on the files in
  the order :mod:`plid.data.dicom` checked; GDCM applies rescale slope and intercept and inverts
  ``MONOCHROME1``): a :class:`Volume` reoriented to ``PIL`` with ``DICOMOrient`` (slice index growing to the
  patient's left, each slice upright with anterior on the left), intensities scaled between the volume's 0.5 and 99.5
  percentiles to 8 bits and each slice resampled to square pixels, with the SPIDER importer's own code
  (:mod:`plid.data.sagittal`), so a scan is read exactly as training data were made. The volume as read
  (``Volume.stored``) keeps the input's geometry, which masks are written back in.

The plane of a volume file comes from its direction matrix: the slice axis is the one with the coarsest
spacing (a 2D acquisition's slice thickness), or the third index axis where spacing is near isotropic; the
volume is sagittal when that axis runs mostly along x. DICOM series are checked from their headers before
reading. A series or volume in another plane raises :class:`CaseSkipped`; a file that cannot be read raises
:class:`ScanReadError` naming it. One unreadable slice of a series is named, and the series read without it
where the rest stays evenly spaced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from plid.data.dicom import (
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    VOLUME_SUFFIXES,
    CaseSource,
    collect,
    plane_of,
    recheck,
    scan_suffix,
)
from plid.data.sagittal import ORIENTATION, scale_to_uint8, square_pixels
from plid.errors import UserInputError

SCAN_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES + VOLUME_SUFFIXES
ISOTROPIC = 1.1  # a slice axis coarser than the other two by less than this factor is not told apart by spacing
MAX_IMAGE_SIDE = 2048  # pixels; a 2D image above it is downscaled, a volume above it refused
FEW_GREY_LEVELS = 32  # an image with fewer distinct values is warned about


class ScanReadError(UserInputError):
    """A file given to predict cannot be read as a scan; the message names it and says why."""


class CaseSkipped(UserInputError):
    """A case that is read but not analysed (a plane the models do not read, slices that disagree): why."""


@dataclass
class Scan:
    """One image ready for the pipeline."""

    name: str  # the file name without its suffix(es): names the outputs
    path: Path
    image: np.ndarray  # (H, W) uint8, upright, anterior on the left, square pixels
    spacing_mm: float | None  # side of a (square) pixel in mm; None where the file does not say
    format: str  # image, dicom or volume
    slice_index: int | None = None  # the sagittal slice taken from a volume (index in the reoriented volume)


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


@dataclass
class Volume:
    """A 3D scan as read and as the models see it."""

    stored: Any  # SimpleITK image as read: the input's geometry (size, spacing, origin, direction)
    oriented: Any  # the same reoriented to PIL (axis 0 of ``scaled`` = its third index axis)
    scaled: np.ndarray  # (slices, rows, columns) uint8, windowed over the whole volume, not yet square pixels
    row_spacing: float
    col_spacing: float

    @property
    def num_slices(self) -> int:
        return int(self.scaled.shape[0])

    @property
    def spacing_mm(self) -> float:
        return float(min(self.row_spacing, self.col_spacing))

    def image(self, k: int) -> np.ndarray:
        """Slice ``k`` (counting to the patient's left) upright, anterior on the left, square pixels."""
        return square_pixels(self.scaled[k], self.row_spacing, self.col_spacing, cv2.INTER_LINEAR)

    def patient_point(self, k: int, x: float, y: float) -> list[float]:
        """A point of :meth:`image` ``k`` (pixel-edge coordinates, as boxes are) in patient coordinates (LPS, mm)."""
        rows, cols = self.scaled.shape[1:]
        target = min(self.row_spacing, self.col_spacing)
        height = max(1, round(rows * self.row_spacing / target))
        width = max(1, round(cols * self.col_spacing / target))
        # square_pixels' resize maps edges to edges; index i is the centre of pixel i, hence the half pixel
        index = (x * cols / width - 0.5, y * rows / height - 0.5, float(k))
        return [round(v, 2) for v in self.oriented.TransformContinuousIndexToPhysicalPoint(index)]

    def slice_offset(self, k: int) -> float:
        """Where slice ``k`` lies along the slice normal (mm), to find the DICOM instance it came from."""
        normal = np.asarray(self.oriented.GetDirection(), float).reshape(3, 3)[:, 2]
        return float(np.dot(self.oriented.TransformIndexToPhysicalPoint((0, 0, int(k))), normal))

    def label_map(self, masks: dict[int, np.ndarray]):
        """A uint8 SimpleITK label map in the stored geometry: ``masks[k]`` (class masks of :meth:`image` ``k``)
        in their slices, 0 elsewhere."""
        import SimpleITK as sitk

        labels = np.zeros(self.scaled.shape, np.uint8)
        rows, cols = self.scaled.shape[1:]
        for k, mask in masks.items():
            labels[k] = mask if mask.shape == (rows, cols) else cv2.resize(mask, (cols, rows),
                                                                           interpolation=cv2.INTER_NEAREST)
        oriented = sitk.GetImageFromArray(labels)
        oriented.CopyInformation(self.oriented)
        code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(self.stored.GetDirection())
        stored = sitk.DICOMOrient(oriented, code)
        stored.CopyInformation(self.stored)  # the same grid by construction: exact geometry, no rounding
        return stored


@dataclass
class Case:
    """One case read: a 2D image, or a volume whose slices are analysed."""

    source: CaseSource
    image: np.ndarray | None = None  # 2D inputs: (H, W) uint8
    volume: Volume | None = None
    spacing_mm: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def format(self) -> str:
        return self.source.kind

    def scan(self, k: int | None = None) -> Scan:
        """The image given to the pipeline: the 2D image, or slice ``k`` of the volume."""
        if self.volume is None:
            return Scan(self.name, self.source.path, self.image, self.spacing_mm, self.format)
        return Scan(self.name, self.source.path, self.volume.image(k), self.volume.spacing_mm, self.format,
                    slice_index=int(k))


def read_case(source: CaseSource) -> Case:
    """Read a :class:`CaseSource`; :class:`ScanReadError` names the file when that fails, :class:`CaseSkipped`
    says why a case is not analysed. Files of a DICOM series left out are added to ``source.errors``."""
    path = source.path
    try:
        return READERS[source.kind](source)
    except (ScanReadError, CaseSkipped):
        raise
    except Exception as error:  # noqa: BLE001 - any decoder failure is this file's problem, reported by name
        raise ScanReadError(f"{path}: cannot be read as a scan ({type(error).__name__}: {error})") from error


def read_scan(path: str | Path) -> Scan:
    """One file as a :class:`Scan` (a volume's or series' middle slice); :class:`ScanReadError` names the file
    when it cannot be read or is not a sagittal scan."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ScanReadError(f"{path}: file not found")
    found = collect([path])
    if found.errors:
        raise ScanReadError(found.errors[0]["error"])
    if found.skipped:
        raise ScanReadError(f"{path}: {found.skipped[0].reason}")
    if not found.cases:
        raise ScanReadError(f"{path}: not an image (a DICOM object without pixels?)")
    try:
        case = read_case(found.cases[0])
    except CaseSkipped as error:
        raise ScanReadError(f"{path}: {error}") from error
    return case.scan(None if case.volume is None else case.volume.num_slices // 2)


def _read_image(source: CaseSource) -> Case:
    """An image at its own bit depth: 8-bit images as they are (the contract's), 16-bit PNG or TIFF and float
    TIFF windowed between their 0.5 and 99.5 percentiles as volumes are (cv2's default read would keep the top
    8 bits only, so a 12-bit slice saved as 16 bits would come out nearly black); colour images as grey."""
    image = cv2.imread(str(source.path), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if image is None:
        raise ScanReadError(f"{source.path}: cannot be decoded as an image (corrupt or truncated?)")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    if image.dtype != np.uint8:
        source.warnings.append(f"{image.dtype} image: windowed to 8 bits between its 0.5 and 99.5 percentiles, "
                               "as volumes are")
        image = scale_to_uint8(image)
    levels = len(np.unique(image))
    if levels < FEW_GREY_LEVELS:
        source.warnings.append(f"only {levels} grey levels: a low-contrast or wrongly scaled image (the models "
                               "were trained on slices windowed over 0-255)")
    return Case(source, image=_capped(image, source))


def _capped(image: np.ndarray, source: CaseSource, spacing_mm: float | None = None):
    """``image`` with its longer side at most :data:`MAX_IMAGE_SIDE`, downscaled with a warning above it (the
    models read a few hundred pixels; a huge image only costs minutes and a huge overlay)."""
    side = max(image.shape)
    if side <= MAX_IMAGE_SIDE:
        return image
    factor = MAX_IMAGE_SIDE / side
    source.warnings.append(f"image side {side} px above {MAX_IMAGE_SIDE}: downscaled by {factor:.3f}")
    size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _check_mhd_data_file(header: Path) -> None:
    """A MetaImage header (.mhd, or .mha) may name any file as its data (``ElementDataFile``, or after ``LIST`` one
    file per line): only files beside it are read, so a header cannot turn another file of the machine into pixels
    of an overlay. A .mha's pixels after ``LOCAL`` are its own."""
    with open(header, "rb") as handle:
        text = handle.read(1 << 16).decode("latin-1")  # the header is text at the start; pixels may follow
    lines = text.splitlines()
    for k, line in enumerate(lines):
        key, _, value = line.partition("=")
        if key.strip() != "ElementDataFile":
            continue
        value = value.strip()
        if value.upper() == "LOCAL":
            return
        names = [n.strip() for n in lines[k + 1:] if n.strip()] if value.upper().startswith("LIST") else [value]
        for name in names:
            data = (header.parent / name).resolve()
            if Path(name).is_absolute() or "%" in name or data.parent != header.parent.resolve():
                raise ScanReadError(f"{header}: ElementDataFile names {name}, not a file beside the header; refused "
                                    "(a MetaImage header reads its data from its own folder only)")
        return


def _volume(source: CaseSource, stored) -> Case:
    import SimpleITK as sitk

    if max(stored.GetSize()) > MAX_IMAGE_SIDE:
        raise ScanReadError(f"{source.path}: volume of {stored.GetSize()} voxels, a side above {MAX_IMAGE_SIDE}; "
                            "refused (resample it first)")

    oriented = sitk.DICOMOrient(stored, ORIENTATION)
    array = sitk.GetArrayFromImage(oriented)  # (left, inferior, posterior); GDCM has inverted MONOCHROME1
    col_spacing, row_spacing, _ = oriented.GetSpacing()
    volume = Volume(stored, oriented, scale_to_uint8(array), float(row_spacing), float(col_spacing))
    return Case(source, volume=volume, spacing_mm=volume.spacing_mm, info=source.info)


def volume_plane(image) -> str:
    """sagittal, coronal or axial: where the slice axis of a volume runs (see the module docstring)."""
    spacing = np.asarray(image.GetSpacing(), float)
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)  # columns: the index axes in LPS
    coarsest = int(np.argmax(spacing))
    others = np.delete(spacing, coarsest)
    axis = coarsest if spacing[coarsest] > ISOTROPIC * others.max() else 2
    return plane_of(direction[:, axis])


def _read_volume_file(source: CaseSource) -> Case:
    import SimpleITK as sitk

    path = source.path
    if scan_suffix(path) in (".mhd", ".mha"):
        _check_mhd_data_file(path)
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
    plane = volume_plane(stored)
    source.info.setdefault("plane", plane)
    if plane != "sagittal":
        raise CaseSkipped(f"{plane} volume, not analysed (the models read sagittal slices)")
    return _volume(source, stored)


# direction of a lone DICOM slice without ImageOrientationPatient, taken as stored (upright, anterior left)
_AS_STORED = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


def _read_series(source: CaseSource) -> Case:
    import pydicom
    import SimpleITK as sitk

    first = pydicom.dcmread(str(source.files[0]), stop_before_pixels=True, force=True)
    source.info["plane"] = "sagittal"
    if int(first.get("NumberOfFrames", 1) or 1) > 1:  # one enhanced multi-frame file: a volume of its own
        stored = sitk.ReadImage(str(source.files[0]))
        plane = volume_plane(stored)
        source.info["plane"] = plane
        if plane != "sagittal":
            raise CaseSkipped(f"{plane} series, not analysed (the models read sagittal slices)")
        return _volume(source, stored)
    files = list(source.files)
    try:
        stored = _read_files(files)
    except RuntimeError:
        bad = [f for f in files if not _readable(f)]
        if not bad:
            raise
        for f in bad:
            source.errors.append({"file": str(f), "error": f"{f}: slice of {source.name} cannot be read "
                                                         "(truncated or corrupt?); the series is read without it"})
        files = [f for f in files if f not in bad]
        reason = recheck(files) if files else "no readable slice"
        if reason:
            raise CaseSkipped(f"{reason}, once the unreadable file(s) {', '.join(f.name for f in bad)} are left out") from None
        source.files = files
        stored = _read_files(files)
    source.info["slices"] = len(files)
    if stored.GetDimension() == 2:
        stored = sitk.JoinSeries(stored)
    if first.get("ImageOrientationPatient") is None:
        stored.SetDirection(_AS_STORED)
    return _volume(source, stored)


# each kind of case and its reader: a new input format is a reader here and its suffixes in
# plid.data.dicom.FILE_KINDS
READERS: dict[str, Callable[[CaseSource], Case]] = {"image": _read_image, "volume": _read_volume_file,
                                                   "dicom": _read_series}


def _read_files(files: list[Path]):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])  # already ordered along the slice normal
    return reader.Execute()


def _readable(path: Path) -> bool:
    import SimpleITK as sitk

    try:
        sitk.ReadImage(str(path))
        return True
    except RuntimeError:
        return False
