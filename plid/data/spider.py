"""Import the original SPIDER download (3D ``.mha`` volumes) into the spider2d data contract.

    python -m plid.data.spider root=/data/SPIDER out=/data/spider2d_full
    python -m plid.data.spider root=... out=... series=[t2_SPACE] slices=15 subset=all
    python -m plid.data.spider root=... out=... debug=smoke          # one patient

Options are in plid/conf/spider_import.yaml.

SPIDER (van der Graaf et al., *Lumbar spine segmentation in MR images: a dataset and a public benchmark*,
Sci Data 11, 264 (2024), CC BY 4.0) ships ``images/<patient>_<series>.mha``, ``masks/<same>.mha``,
``overview.csv`` (one row per series: ``new_file_name`` is the file stem, ``subset`` is training or
validation) and ``radiological_gradings.csv`` (one row per patient and disc). This module turns it into the
folder that ``plid.datamodules.contract`` reads (``../shared/data/spider2d/README.md``):

- Each volume is reoriented to ``PIL`` (index axes point posterior, inferior, left) with
  ``SimpleITK.DICOMOrient``, whatever its stored orientation (most series LPS, the SPACE series PIR), so a
  sagittal slice is upright with anterior on the left.
- The ``slices`` central sagittal slices are kept, centred on the spinal canal (label 100) or, without it,
  on the labelled voxels; slices that show no label at all are left out.
- Slices are resampled to square pixels (the finer in-plane spacing; linear for images, nearest for masks),
  and intensities are scaled per series between its 0.5 and 99.5 percentiles to 8 bits.
- Masks map SPIDER's labels to the contract's classes: vertebrae 1-99 and partially visible vertebrae
  101-199 -> 1 vertebra (partial ones are bone in the image too: calling them background would teach a
  segmenter to miss bone at the edges of the field of view), discs 201-299 -> 2, canal 100 -> 3.
- Each disc label present in a slice gives a disc box; ``ivd_label`` = label - 200 (1 is the lowest disc),
  with the gradings of that patient's disc where ``radiological_gradings.csv`` has a valid row for it.
"""

from __future__ import annotations

from plid.cli import answer_help

answer_help(__name__, "spider_import")  # --help answered here, before the heavy imports below

import contextlib
import logging
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import hydra
import numpy as np
import pandas as pd
import SimpleITK as sitk
from omegaconf import DictConfig, OmegaConf

from plid.boxes import mask_box
from plid.data.sagittal import ORIENTATION, PERCENTILES, scale_to_uint8, slice_window, square_pixels
from plid.datamodules.contract import DISC_COLUMNS, IMAGE_COLUMNS
from plid.errors import UserInputError
from plid.labels import ALL_GRADINGS
from plid.utils.hydra import run_task
from plid.utils.io import atomic_dir, atomic_write, write_json

log = logging.getLogger(__name__)

SERIES = ("t1", "t2", "t2_SPACE")
SUBSETS = ("training", "validation", "all")
CANAL_LABEL = 100
# contract column <- radiological_gradings.csv column
GRADING_SOURCE = {
    "modic": "Modic", "up_endplate": "UP endplate", "low_endplate": "LOW endplate",
    "spondylolisthesis": "Spondylolisthesis", "disc_herniation": "Disc herniation",
    "disc_narrowing": "Disc narrowing", "disc_bulging": "Disc bulging", "pfirrman_grade": "Pfirrman grade",
}


class SpiderImportError(UserInputError):
    """The SPIDER folder or the import options are not usable; the message names the file or option."""


def remap_labels(labels: np.ndarray, source: str = "mask") -> np.ndarray:
    """SPIDER mask values to the contract's classes: 0 background, 1 vertebra, 2 disc, 3 canal."""
    labels = np.asarray(labels)
    unknown = (labels < 0) | (labels == 200) | (labels > 299)
    if unknown.any():
        raise SpiderImportError(
            f"{source}: mask values {np.unique(labels[unknown]).tolist()[:10]} are not SPIDER labels "
            f"(0, vertebrae 1-99, canal 100, partial vertebrae 101-199, discs 201-299)"
        )
    out = np.zeros(labels.shape, np.uint8)
    out[(labels >= 1) & (labels < CANAL_LABEL)] = 1
    out[(labels > CANAL_LABEL) & (labels < 200)] = 1
    out[labels > 200] = 2
    out[labels == CANAL_LABEL] = 3
    return out


def central_slices(num: int, labels: np.ndarray | None, count: int) -> list[int]:
    """``count`` neighbouring indices of ``num`` slices (axis 0 of ``labels``), centred on the canal, else on
    any label, else on the middle of the volume."""
    centre = None
    if labels is not None:
        for region in (labels == CANAL_LABEL, labels > 0):
            per_slice = region.sum(axis=(1, 2))
            if per_slice.any():
                centre = float(np.average(np.arange(num), weights=per_slice))
                break
    return slice_window(num, count, centre)


@dataclass
class SagittalSlice:
    index: int  # slice index along the left-right axis of the file as stored
    image: np.ndarray  # (H, W) uint8, upright, anterior on the left, square pixels
    labels: np.ndarray | None  # (H, W) SPIDER label values, same grid


def read_volume(path: Path) -> sitk.Image:
    """A 3D volume as stored, or a clear error naming the file."""
    if not path.is_file():
        raise SpiderImportError(f"{path}: file not found (listed in overview.csv)")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise SpiderImportError(f"{path}: cannot be read as an image ({str(error).strip().splitlines()[-1]})") from error
    if image.GetDimension() != 3:
        raise SpiderImportError(f"{path}: expected a 3D volume, got {image.GetDimension()}D")
    return image


def stored_slice_index(stored: sitk.Image, k: int) -> int:
    """The file's own left-right slice index of slice ``k`` of the reoriented volume (which counts to the left)."""
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(stored.GetDirection())
    axis = next(i for i, letter in enumerate(orientation) if letter in "LR")
    return stored.GetSize()[axis] - 1 - k if orientation[axis] == "R" else k


def sagittal_slices(image_path: Path, mask_path: Path | None, count: int) -> list[SagittalSlice]:
    """The ``count`` central sagittal slices of one series, with their SPIDER labels where a mask exists."""
    stored = read_volume(image_path)
    image = sitk.DICOMOrient(stored, ORIENTATION)
    volume = sitk.GetArrayFromImage(image)  # (left, inferior, posterior)
    labels = None
    if mask_path is not None:
        mask = sitk.DICOMOrient(read_volume(mask_path), ORIENTATION)
        if mask.GetSize() != image.GetSize():
            raise SpiderImportError(
                f"{mask_path}: mask size {mask.GetSize()} differs from its image {image_path} {image.GetSize()}"
            )
        labels = sitk.GetArrayFromImage(mask).astype(np.int32)
        remap_labels(labels, str(mask_path))  # fails early on values that are not SPIDER labels
    scaled = scale_to_uint8(volume)
    col_spacing, row_spacing, _ = image.GetSpacing()
    slices = []
    for k in central_slices(volume.shape[0], labels, count):
        slice_labels = None
        if labels is not None:
            if not labels[k].any():
                log.info("%s: slice %d shows no label, left out", image_path.name, stored_slice_index(stored, k))
                continue
            slice_labels = square_pixels(labels[k].astype(np.uint16), row_spacing, col_spacing, cv2.INTER_NEAREST)
        slice_image = square_pixels(scaled[k], row_spacing, col_spacing, cv2.INTER_LINEAR)
        slices.append(SagittalSlice(stored_slice_index(stored, k), slice_image, slice_labels))
    return sorted(slices, key=lambda piece: piece.index)


def read_gradings(path: Path) -> dict[tuple[str, int], dict[str, int]]:
    """``(patient, ivd_label) -> {contract grading column: value}`` from the valid rows (``IVD label`` >= 1)."""
    if not path.is_file():
        log.warning("%s not found: discs get boxes and levels but no gradings", path)
        return {}
    table = pd.read_csv(path, dtype={"Patient": str})
    missing = [c for c in ("Patient", "IVD label", *GRADING_SOURCE.values()) if c not in table.columns]
    if missing:
        raise SpiderImportError(f"{path}: missing columns {missing}")
    table = table[table["IVD label"] >= 1].drop_duplicates(["Patient", "IVD label"])
    gradings = {}
    for _, row in table.iterrows():
        gradings[(row["Patient"], int(row["IVD label"]))] = {
            column: row[source] for column, source in GRADING_SOURCE.items()
        }
    return gradings


def slice_rows(name: str, patient: str, series: str, piece: SagittalSlice,
               gradings: dict[tuple[str, int], dict[str, int]]) -> tuple[list, list[list]]:
    """The images.csv row and the discs.csv rows of one slice."""
    height, width = piece.image.shape
    if piece.labels is None:
        return [name, patient, series, piece.index, height, width, 0, None, None, None, None], []
    discs = []
    for label in np.unique(piece.labels[piece.labels > 200]):
        level = int(label) - 200
        grading = gradings.get((patient, level), {})
        discs.append([name, patient, level, *mask_box(piece.labels == label),
                      *(grading.get(c) for c in ALL_GRADINGS)])
    return [name, patient, series, piece.index, height, width, 1, *mask_box(piece.labels > 0)], discs


def read_overview(root: Path, series: list[str], subset: str) -> pd.DataFrame:
    """Rows of overview.csv to import, with ``patient`` and ``series`` parsed from ``new_file_name``."""
    path = root / "overview.csv"
    if not path.is_file():
        raise SpiderImportError(
            f"{path} not found: root={root} must be the SPIDER download (images/, masks/, overview.csv, "
            f"radiological_gradings.csv)"
        )
    overview = _read_verbatim(path)
    for column in ("new_file_name", "subset"):
        if column not in overview.columns:
            raise SpiderImportError(f"{path}: missing column {column!r}")
    parts = overview["new_file_name"].str.split("_", n=1, expand=True)
    overview["patient"], overview["series"] = parts[0], parts[1]
    keep = overview["series"].isin(series)
    if subset != "all":
        keep &= overview["subset"] == subset
    return overview[keep]


def _read_verbatim(path: Path) -> pd.DataFrame:
    """A CSV with every cell kept as written, so the copies in ``out`` keep SPIDER's values exactly."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _import_series(job: tuple) -> tuple[list[list], list[list]]:
    """Write the slices of one series into ``tmp``; returns their images.csv and discs.csv rows."""
    root, tmp, stem, mask_path, patient, series, slices, gradings = job
    image_rows, disc_rows = [], []
    for piece in sagittal_slices(root / "images" / f"{stem}.mha", mask_path, slices):
        name = f"{stem}_s{piece.index:03d}"
        _write_png(tmp / "images" / f"{name}.png", piece.image)
        if piece.labels is not None:
            _write_png(tmp / "masks" / f"{name}.png", remap_labels(piece.labels, str(mask_path)))
        image_row, discs = slice_rows(name, patient, series, piece, gradings)
        image_rows.append(image_row)
        disc_rows.extend(discs)
    return image_rows, disc_rows


def _numeric_first(value: str):
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def import_spider(root: str | Path, out: str | Path, series: list[str] | tuple[str, ...] = SERIES,
                  slices: int = 9, subset: str = "training", max_patients: int | None = None,
                  overwrite: bool = False, workers: int = 1) -> Path:
    """Convert the SPIDER download in ``root`` into a spider2d-layout folder ``out``, atomically.

    Args:
        series: series types to keep (``t1``, ``t2``, ``t2_SPACE``).
        slices: central sagittal slices per series.
        subset: SPIDER's ``training`` or ``validation`` patients, or ``all``.
        max_patients: import only the first patients (by id), e.g. 1 for a smoke run.
        overwrite: replace ``out`` if it exists.
        workers: series converted in parallel processes.
    """
    root, out = Path(root).expanduser().resolve(), Path(out).expanduser().resolve()
    series = list(series)
    if not root.is_dir():
        raise SpiderImportError(f"root={root} does not exist: point it at the SPIDER download")
    if unknown := sorted(set(series) - set(SERIES)):
        raise SpiderImportError(f"series={series}: {unknown} not among SPIDER's series {list(SERIES)}")
    if subset not in SUBSETS:
        raise SpiderImportError(f"subset={subset!r} is not one of {list(SUBSETS)}")
    if not (isinstance(slices, int) and slices >= 1):
        raise SpiderImportError(f"slices={slices!r}: give a positive number of central sagittal slices per series")
    if out == root or root in out.parents:
        raise SpiderImportError(f"out={out} lies inside the SPIDER folder {root}: write the import elsewhere")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SpiderImportError(f"out={out} exists and is not empty: pick a new folder or pass overwrite=true")

    overview = read_overview(root, series, subset)
    patients = sorted(overview["patient"].unique(), key=_numeric_first)
    if max_patients is not None:
        patients = patients[:max_patients]
        overview = overview[overview["patient"].isin(patients)]
    if overview.empty:
        raise SpiderImportError(f"{root / 'overview.csv'}: no series of {series} in subset {subset!r}")
    overview = overview.assign(_order=overview["patient"].map(patients.index),
                               _series=overview["series"].map(SERIES.index))
    overview = overview.sort_values(["_order", "_series"]).drop(columns=["_order", "_series"])
    gradings = read_gradings(root / "radiological_gradings.csv")

    with atomic_dir(out, "spider_import.json") as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        image_rows, disc_rows = [], []
        jobs = []
        for row in overview.itertuples(index=False):
            mask_path = root / "masks" / f"{row.new_file_name}.mha"
            if not mask_path.is_file():
                log.warning("%s not found: %s is imported without mask, boxes or levels", mask_path, row.new_file_name)
                mask_path = None
            jobs.append((root, tmp, row.new_file_name, mask_path, row.patient, row.series, slices, gradings))
        with contextlib.ExitStack() as stack:
            if workers > 1:
                pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=get_context("spawn")))
                results = pool.map(_import_series, jobs)
            else:
                results = map(_import_series, jobs)
            for number, (job, (rows, discs)) in enumerate(zip(jobs, results), start=1):
                image_rows.extend(rows)
                disc_rows.extend(discs)
                log.info("[%d/%d] %s: %d slices", number, len(jobs), job[2], len(rows))

        images = pd.DataFrame(image_rows, columns=IMAGE_COLUMNS)
        discs = pd.DataFrame(disc_rows, columns=DISC_COLUMNS)
        integer_columns = ["slice", "height", "width", "has_mask", "lumbar_x1", "lumbar_y1", "lumbar_x2", "lumbar_y2"]
        images = images.astype(dict.fromkeys(integer_columns, "Int64"))
        discs = discs.astype(dict.fromkeys(["ivd_label", "x1", "y1", "x2", "y2", *ALL_GRADINGS], "Int64"))
        _write_csv(tmp / "images.csv", images)
        _write_csv(tmp / "discs.csv", discs)
        _write_csv(tmp / "overview.csv", overview.drop(columns=["patient", "series"]))
        if (root / "radiological_gradings.csv").is_file():
            table = _read_verbatim(root / "radiological_gradings.csv")
            _write_csv(tmp / "radiological_gradings.csv", table[table["Patient"].isin(patients)])
        write_json(tmp / "spider_import.json", {
            "source": str(root), "series": series, "slices": slices, "subset": subset,
            "max_patients": max_patients, "orientation": ORIENTATION, "percentiles": list(PERCENTILES),
            "patients": len(patients), "images": len(images), "discs": len(discs),
        })
    log.info("Imported %d patients, %d images, %d disc boxes into %s", len(patients), len(images), len(discs), out)
    return out


def _write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        raise OSError(f"{path}: could not be written")


def _write_csv(path: Path, table: pd.DataFrame) -> None:
    with atomic_write(path) as handle:
        table.to_csv(handle, index=False)


@hydra.main(version_base="1.3", config_path="../conf", config_name="spider_import")
def main(cfg: DictConfig) -> None:
    missing = [key for key in ("root", "out") if OmegaConf.is_missing(cfg, key)]
    if missing:
        sys.exit(f"error: give {' and '.join(f'{k}=<folder>' for k in missing)} "
                 f"(root: the SPIDER download with images/, masks/, overview.csv; out: a new folder)")
    out = run_task(lambda c: import_spider(root=c.root, out=c.out, series=list(c.series), slices=c.slices,
                                           subset=c.subset, max_patients=c.max_patients, overwrite=c.overwrite,
                                           workers=c.workers), cfg)
    print(out)


if __name__ == "__main__":
    main()
