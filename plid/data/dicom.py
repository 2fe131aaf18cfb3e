"""Finding the cases of an input: files, series folders and whole studies, as hospitals store them.

A study arrives as folders of DICOM files, one file per slice, often without a suffix, several series side by
side. :func:`discover` walks the input recursively (``os.walk``: GDCM looks in one folder only) and returns
one :class:`CaseSource` per case:

- a PNG / JPEG / BMP / TIFF file, or a NIfTI / MHA / NRRD volume: one case each, named by the file stem;
- DICOM files, recognised by content (the ``DICM`` mark of a Part 10 file; a ``.dcm`` file without it is
  tried too), grouped by ``SeriesInstanceUID`` across sub-folders and ordered by position along the slice
  normal (``ImagePositionPatient`` projected on the cross product of the row and column cosines), never by file
  name. Each series is one case, named ``<patient>_s<series number>_<series description>`` (a series of a
  single file: by the file's stem, as images are).

``DICOMDIR`` and non-image objects (structured reports, presentation states: no ``Rows``) are left out. A
series is checked from its headers before any pixel is read: its plane (sagittal when the slice normal's
largest component is along x; axial and coronal series are skipped, never given to a model), the same
orientation, pixel spacing and size in every slice, and evenly spaced slices; a series that fails is a
:class:`Skipped` entry with its reason. A file whose header cannot be read is an error naming it; the series
goes on without it.

Series are grouped and ordered here from pydicom's headers rather than with GDCM's
``GetGDCMSeriesIDs``/``GetGDCMSeriesFileNames``: those look in one folder only and silently drop a file they
cannot read (a truncated slice vanishes, leaving a gap no one is told of); the pixels are then read by
SimpleITK's ``ImageSeriesReader`` in this order (:mod:`plid.data.scans`), which gives the geometry.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plid.errors import UserInputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")
# a single file read as one case, by suffix: its kind names its reader in plid.data.scans.READERS (DICOM files are
# grouped into series first, whatever their suffix)
FILE_KINDS = {**dict.fromkeys(IMAGE_SUFFIXES, "image"), **dict.fromkeys(VOLUME_SUFFIXES, "volume")}
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
PLANES = ("sagittal", "coronal", "axial")  # the plane whose normal is along x, y, z (LPS)
TOLERANCE_MM = 0.01  # positions and spacings that differ by less are the same


def scan_suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def plane_of(normal) -> str:
    """sagittal, coronal or axial: the patient axis (x, y, z) the slice normal mostly follows."""
    return PLANES[int(np.argmax(np.abs(np.asarray(normal, float))))]


def slice_normal(orientation) -> np.ndarray:
    """The cross product of the row and column cosines of ``ImageOrientationPatient``."""
    values = np.asarray(orientation, float)
    return np.cross(values[:3], values[3:])


@dataclass
class CaseSource:
    """One case found in the input, not read yet."""

    name: str
    kind: str  # image, volume or dicom
    path: Path  # the file, or the folder holding the series' files
    files: list[Path] = field(default_factory=list)  # dicom: the slices ordered along the slice normal
    info: dict[str, Any] = field(default_factory=dict)  # study and series, from the headers
    warnings: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)  # files of this series left out, and why
    # dicom: per file of ``files``, its SOP instance UID and ImagePositionPatient (the input's identity)
    instances: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Skipped:
    """A series (or file) found and not analysed, with the reason, for report.json and the HTML page."""

    name: str
    path: Path
    reason: str
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"series": self.name, "file": str(self.path), "reason": self.reason, **self.info}


@dataclass
class Found:
    cases: list[CaseSource]
    skipped: list[Skipped]
    errors: list[dict[str, str]]  # {"file", "error"}


def discover(source: str | Path) -> Found:
    """Every case under ``source`` (a file, a series folder or a study folder, searched recursively)."""
    source = Path(source).expanduser()
    if source.is_file():
        paths = [source]
    elif source.is_dir():
        paths, visited = [], set()
        # symlinked series folders are followed (a study linked together from an archive); a link back up the
        # tree is walked once
        top = Path(os.path.realpath(source))
        for folder, subfolders, names in os.walk(source, followlinks=True):
            real = os.path.realpath(folder)
            # a link to the input itself or above it would walk another patient's folders
            if real in visited or (Path(real) in top.parents) or (real == str(top) and Path(folder) != source):
                subfolders.clear()
                continue
            visited.add(real)
            subfolders.sort()
            paths.extend(Path(folder) / name for name in sorted(names) if not name.startswith("."))
    else:
        raise UserInputError(f"input={source}: no such file or folder")
    found = collect(paths, given=[source] if source.is_file() else [])
    if not found.cases and not found.skipped and not found.errors:
        raise UserInputError(f"input={source}: no scan found (images {' '.join(IMAGE_SUFFIXES)}, volumes "
                             f"{' '.join(VOLUME_SUFFIXES)}, DICOM files with or without a suffix, in any sub-folder)")
    return found


def collect(paths: list[Path], given: list[Path] | None = None) -> Found:
    """The cases of ``paths``: images and volumes one each, DICOM files grouped into series. A file of
    ``given`` (or with a DICOM suffix) that is not DICOM is an error; other files without a known suffix and
    without the DICOM mark are not scans and are passed over."""
    given = set(given if given is not None else paths)
    cases, errors, headers = [], [], []
    for path in paths:
        suffix = scan_suffix(path)
        if suffix in FILE_KINDS:
            cases.append(CaseSource(_stem(path), FILE_KINDS[suffix], path))
        elif suffix in DICOM_SUFFIXES or path in given or path.name.upper() == "DICOMDIR" or _has_dicom_mark(path):
            try:
                header = _read_header(path)
            except Exception as error:  # noqa: BLE001 - pydicom raises several types for a bad file
                errors.append({"file": str(path), "error": f"{path}: not a readable DICOM file ({error})"})
                continue
            if header is not None:
                headers.append((path, header))
    dicom_cases, skipped = _series(headers)
    index = {path: k for k, path in enumerate(paths)}
    cases = sorted(cases + dicom_cases, key=lambda c: min(index.get(p, len(paths)) for p in (c.files or [c.path])))
    _unique_names(cases)
    return Found(cases, skipped, errors)


def _stem(path: Path) -> str:
    suffix = scan_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def _has_dicom_mark(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _read_header(path: Path):
    """The header of an image object, or None for a DICOMDIR and non-image objects (logged)."""
    import pydicom

    marked = _has_dicom_mark(path)
    ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=not marked)
    if not marked and "SOPClassUID" not in ds and "Rows" not in ds:
        raise ValueError("no DICOM header")
    sop_class = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if path.name.upper() == "DICOMDIR" or sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        log.info("%s: a DICOMDIR, left out (the series are found by walking the folders)", path)
        return None
    if "Rows" not in ds or "Columns" not in ds:
        log.info("%s: not an image (SOP class %s, modality %s), left out", path, sop_class, ds.get("Modality"))
        return None
    return ds


def _text(value: Any) -> str:
    return str(value).strip() if value is not None else ""


def _info(ds) -> dict[str, Any]:
    return {
        "patient": _text(ds.get("PatientID")) or None,
        "study": {"uid": _text(ds.get("StudyInstanceUID")) or None, "description": _text(ds.get("StudyDescription")),
                  "date": _text(ds.get("StudyDate"))},
        "series_number": int(ds.SeriesNumber) if ds.get("SeriesNumber") not in (None, "") else None,
        "series_description": _text(ds.get("SeriesDescription")),
        "series_uid": _text(ds.get("SeriesInstanceUID")) or None,
        "modality": _text(ds.get("Modality")) or None,
    }


def _position(ds) -> list[float] | None:
    value = ds.get("ImagePositionPatient")
    try:
        return [float(v) for v in value] if value is not None and len(value) == 3 else None
    except (TypeError, ValueError):
        return None


def _series_name(info: dict[str, Any]) -> str:
    parts = [info["patient"] or "patient", f"s{info['series_number']}" if info["series_number"] is not None else "",
             info["series_description"]]
    name = "_".join(p for p in parts if p)
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_.") or "series"


def _unique_names(cases: list[CaseSource]) -> None:
    """A name met again becomes its file name (a.png and a.dcm side by side), else gets a number."""
    seen: set[str] = set()
    for case in cases:
        if case.name in seen and case.path.is_file():
            case.name = case.path.name
        base, count = case.name, 1
        while case.name in seen:
            count += 1
            case.name = f"{base}_{count}"
        seen.add(case.name)


def _series(headers: list[tuple[Path, Any]]) -> tuple[list[CaseSource], list[Skipped]]:
    groups: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    for path, ds in headers:
        groups[_text(ds.get("SeriesInstanceUID")) or f"no-uid:{path}"].append((path, ds))
    cases, skipped = [], []
    for members in groups.values():
        info = _info(members[0][1])
        name = _series_name(info)
        folder = Path(os.path.commonpath([str(p.parent) for p, _ in members]))
        info["files"] = len(members)
        reason, ordered = _check(members)
        if reason:
            skipped.append(Skipped(name, folder, reason, info))
            log.warning("%s (%s): %s", name, folder, reason)
            continue
        if len(ordered) == 1:  # a lone file (one slice, or a multi-frame file) is named by its file, as images
            case = CaseSource(_stem(ordered[0]), "dicom", ordered[0], ordered, info)
        else:
            case = CaseSource(name, "dicom", folder, ordered, info)
        headers_of = dict(members)
        case.instances = [{"uid": _text(headers_of[p].get("SOPInstanceUID")) or None,
                           "position": _position(headers_of[p])} for p in ordered]
        if info["modality"] != "MR":
            case.warnings.append(f"{info['modality'] or 'unknown'} modality: the models were trained on MR "
                                 "(sagittal T1/T2); read its results with care")
        cases.append(case)
    return cases, skipped


def _check(members: list[tuple[Path, Any]]) -> tuple[str | None, list[Path]]:
    """Why a series cannot be analysed (None when it can), and its files ordered along the slice normal."""
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for _, ds in members):
        if len(members) == 1:
            return None, [members[0][0]]  # an enhanced multi-frame file: read whole, its plane checked then
        return "several multi-frame files in one series (not supported: give each file alone)", []
    orientations = [ds.get("ImageOrientationPatient") for _, ds in members]
    if any(o is None or len(o) != 6 for o in orientations):
        if len(members) == 1:  # a lone slice without geometry (secondary capture): taken as stored
            return None, [members[0][0]]
        return "slices without ImageOrientationPatient", []
    orientations = np.asarray(orientations, float)
    if np.abs(orientations - orientations[0]).max() > 1e-3:
        return "slices disagree in orientation (ImageOrientationPatient)", []
    normal = slice_normal(orientations[0])
    plane = plane_of(normal)
    if plane != "sagittal":
        return f"{plane} series, not analysed (the models read sagittal slices)", []
    spacings = [tuple(float(v) for v in ds.get("PixelSpacing", (1.0, 1.0))) for _, ds in members]
    if np.abs(np.asarray(spacings) - np.asarray(spacings[0])).max() > 1e-4:
        return "slices disagree in pixel spacing", []
    if len({(int(ds.Rows), int(ds.Columns)) for _, ds in members}) > 1:
        return "slices disagree in size (rows, columns)", []
    if any(ds.get("ImagePositionPatient") is None for _, ds in members):
        if len(members) == 1:
            return None, [members[0][0]]
        return "slices without ImagePositionPatient", []
    positions = np.asarray([ds.ImagePositionPatient for _, ds in members], float) @ normal
    order = np.argsort(positions, kind="stable")
    if len(members) > 1:
        gaps = np.diff(positions[order])
        if gaps.min() < TOLERANCE_MM:
            return "several slices at one position (repeated acquisitions or echoes in one series)", []
        if gaps.max() - gaps.min() > max(TOLERANCE_MM, 0.01 * float(np.median(gaps))):
            return (f"slices disagree in spacing (gaps between {gaps.min():.2f} and {gaps.max():.2f} mm: "
                    "missing slices?)"), []
    return None, [members[k][0] for k in order]


def recheck(files: list[Path]) -> str | None:
    """:func:`_check` again on the files left once unreadable ones are dropped (headers read again)."""
    import pydicom

    return _check([(p, pydicom.dcmread(str(p), stop_before_pixels=True, force=True)) for p in files])[0]
