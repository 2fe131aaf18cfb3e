"""Detected crops: a dataset's tables with the boxes two trained detectors find, written as a new dataset folder,
so that segmenters and classifiers train and test on what the pipeline would crop.

    python -m plid.crop lumbar_run=<detect run> ivd_run=<detect run> out=data/detected     # synthetic phantoms
    python -m plid.crop data=spider2d_seg lumbar_run=... ivd_run=... out=/data/spider2d_detected
    python -m plid.train data.root=/data/spider2d_detected data.synthetic=null           # data.roi=gt reads them

The :class:`~plid.models.detection.RoiCropper` runs once over every image of ``data.root`` (after the
``data.on_error`` checks), with the crop margin the disc detector was trained with (its run's
``data.roi_margin``, as ``plid.export`` reads it). ``out`` is a complete folder in the data contract
(``../shared/data/spider2d/README.md``):

- ``images.csv``: the source rows with the detected lumbar box, *before* the ``roi_margin`` enlargement, which the
  DataModule applies as it does to any lumbar box. Images where stage 1 finds no lumbar region are left out and
  counted: the pipeline would have no crop of them either.
- ``discs.csv``: each detected disc is matched to a ground-truth disc of its image (Hungarian matching on IoU, at
  least ``min_iou``) and takes that disc's level and gradings; a detection with no match keeps empty labels (a
  valid box without gradings, as the contract allows); ground-truth discs no detection matched are dropped and
  counted (``gt_discs_missed``, over the images that kept a lumbar region).
- ``images/``, ``masks/``: copies of the kept images' files. Copies, not links: the folder stands on its own (it
  still loads after the source moves or goes, and travels as one folder), and nothing written into it can reach
  the source through a shared inode or a link.
- ``splits.json``: the source's splits (the file training on the source uses, made from the same ``data.*`` split
  settings if it does not exist yet), less the patients left out. The detectors were trained on those splits, so
  a model trained on the crops keeps their test patients unseen and has the folds it would have on the source.
- ``counts.json`` (images, no_lumbar_region, gt_discs_missed, unmatched_detections, duplicate_detections), ``source_README.md`` (the
  source's README, which carries its licence), and ``crop.json``: the source folder, each detector's weights and
  SHA-1, and the settings. ``crop.json`` marks a crop folder, which a later run may replace; any other non-empty
  ``out`` is refused.
"""

from __future__ import annotations

from plid.cli import answer_help

answer_help(__name__, "crop")  # --help answered here, before the heavy imports below

import hashlib
import logging
import shutil
import time
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from scipy.optimize import linear_sum_assignment

from plid.boxes import box_iou_matrix
from plid.datamodules.base import SpineDataModule
from plid.datamodules.contract import DISC_BOX, LUMBAR_BOX, SpineDataset
from plid.errors import UserInputError
from plid.inference.model_dir import detector_margin, detector_weights
from plid.models.detection import NoLumbarRegionFound, RoiCropper
from plid.utils.hydra import run_task
from plid.utils.io import atomic_dir, atomic_write, write_json

log = logging.getLogger(__name__)
PROVENANCE = "crop.json"
# the data.* keys that name the source folder and how its patients are split
SOURCE_KEYS = ("root", "synthetic", "splits_dir", "splits_file", "num_folds", "test_fraction", "split_seed",
               "on_error", "unsplit_patients")


def crop(cfg: DictConfig) -> Path:
    """Write the detected-crops folder ``cfg.out`` (see the module docstring); returns its path."""
    weights = {stage: detector_weights(cfg[f"{stage}_run"]) for stage in ("lumbar", "ivd")}
    data = OmegaConf.to_container(cfg.data, resolve=True)
    source = SpineDataModule(**{key: data[key] for key in SOURCE_KEYS if key in data})
    dataset = source.dataset
    source.patient_splits()  # the source's splits file, made now if training on the source has not made it yet
    out = claim_crop_dir(cfg.out, dataset.root)
    margin, margin_source = detector_margin(cfg.ivd_run)
    cropper = RoiCropper.from_weights(weights["lumbar"], weights["ivd"], conf=float(cfg.conf), margin=margin,
                                      device=str(cfg.device), iou=float(cfg.iou),
                                      config_dir=Path(cfg.paths.output_dir) / "ultralytics")
    start = time.perf_counter()
    images, discs, counts = detected_tables(dataset, cropper, float(cfg.min_iou))
    log.info("Detected boxes of %d images in %.1f s: %s", counts["images"], time.perf_counter() - start, counts)
    if counts["no_lumbar_region"]:
        log.warning("no lumbar region found in %d of %d images; they are left out",
                    counts["no_lumbar_region"], counts["images"])
    with atomic_dir(out, PROVENANCE) as tmp:
        copy_files(SpineDataset(dataset.root, images, discs), tmp)
        with atomic_write(tmp / "images.csv") as f:
            images.to_csv(f, index=False)
        with atomic_write(tmp / "discs.csv") as f:
            discs.to_csv(f, index=False)
        write_json(tmp / "splits.json", kept_splits(source.splits, set(images["patient"])))
        write_json(tmp / "counts.json", counts)
        if (dataset.root / "README.md").is_file():
            shutil.copy2(dataset.root / "README.md", tmp / "source_README.md")
        write_json(tmp / PROVENANCE, {
            "source": str(dataset.root), "splits": str(source.splits_path()),
            "detectors": {stage: {"weights": str(path), "sha1": file_sha1(path)} for stage, path in weights.items()},
            "conf": float(cfg.conf), "iou": float(cfg.iou), "margin": margin, "margin_source": margin_source,
            "min_iou": float(cfg.min_iou),
        })
    log.info("Detected crops written to %s", out)
    print(f"crops: {out}")
    return out


def claim_crop_dir(out: str | Path, source: Path) -> Path:
    """``out`` as the folder to write: new, empty, or an earlier crop output (then replaced). Anything else is
    refused, so that no data is lost."""
    out = Path(out).expanduser().resolve()
    if out == source:
        raise UserInputError(f"out={out} is the source dataset itself; choose another folder")
    if out.exists() and not out.is_dir():
        raise UserInputError(f"out={out} is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / PROVENANCE).is_file():
        raise UserInputError(f"out={out} is not empty and is not an earlier `python -m plid.crop` output (it has no "
                             f"{PROVENANCE}); choose a new or empty folder: nothing in it is replaced")
    return out


def detected_tables(dataset: SpineDataset, cropper: RoiCropper, min_iou: float
                    ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """``dataset``'s images.csv and discs.csv with the boxes ``cropper`` finds and the labels of the ground-truth
    discs they match, and the counts of what was left out (see the module docstring)."""
    gt_discs = dataset.discs.groupby("image")
    image_rows, disc_rows = [], []
    counts = {"images": len(dataset.images), "no_lumbar_region": 0, "gt_discs_missed": 0, "unmatched_detections": 0,
              "duplicate_detections": 0}
    for row in dataset.images.to_dict("records"):
        try:
            result = cropper(dataset.read_image(row["image"]))
        except NoLumbarRegionFound:
            counts["no_lumbar_region"] += 1
            continue
        image_rows.append({**row, **dict(zip(LUMBAR_BOX, pixel_box(result.lumbar_box)))})
        truth = gt_discs.get_group(row["image"]) if row["image"] in gt_discs.groups else dataset.discs.iloc[:0]
        found = np.array([d.box for d in result.discs]).reshape(-1, 4)
        pairs = match_boxes(found, truth[DISC_BOX].to_numpy(dtype=float), min_iou)
        counts["gt_discs_missed"] += len(truth) - len(pairs)
        counts["unmatched_detections"] += len(found) - len(pairs)
        written = set()
        for i, box in enumerate(found):
            pixels = tuple(pixel_box(box))
            if pixels in written:  # two detections that round to one box (clipped to the crop) are one disc
                counts["duplicate_detections"] += 1
                continue
            written.add(pixels)
            labels = truth.iloc[pairs[i]].to_dict() if i in pairs else {"image": row["image"], "patient": row["patient"]}
            disc_rows.append({**labels, **dict(zip(DISC_BOX, pixels))})
    columns = [*dataset.images.columns, *(c for c in LUMBAR_BOX if c not in dataset.images.columns)]
    images = pd.DataFrame(image_rows, columns=columns)
    discs = pd.DataFrame(disc_rows, columns=dataset.discs.columns)
    return images, discs, counts


def match_boxes(found: np.ndarray, truth: np.ndarray, min_iou: float) -> dict[int, int]:
    """One-to-one matching of ``found`` to ``truth`` boxes maximising IoU: {found index: truth index}."""
    if len(found) == 0 or len(truth) == 0:
        return {}
    iou = box_iou_matrix(found, truth)
    rows, cols = linear_sum_assignment(-iou)
    return {int(r): int(c) for r, c in zip(rows, cols) if iou[r, c] >= min_iou}


def pixel_box(box) -> list[int]:
    """A float box as the contract's integer pixel box (outwards, so nothing detected is cut)."""
    x1, y1, x2, y2 = box
    return [int(np.floor(x1)), int(np.floor(y1)), int(np.ceil(x2)), int(np.ceil(y2))]


def kept_splits(splits: dict, patients: set[str]) -> dict:
    """``splits`` without the patients that are not in ``patients``."""
    return {**splits, "test": [p for p in splits["test"] if p in patients],
            "folds": [{part: [p for p in fold[part] if p in patients] for part in ("train", "val")}
                      for fold in splits["folds"]]}


def copy_files(dataset: SpineDataset, out: Path) -> None:
    """Copy the image (and mask, where has_mask=1) of every images.csv row of ``dataset`` into ``out``."""
    (out / "images").mkdir()
    (out / "masks").mkdir()
    for row in dataset.images.itertuples():
        shutil.copy2(dataset.image_path(row.image), out / "images" / f"{row.image}.png")
        if row.has_mask == 1:
            shutil.copy2(dataset.mask_path(row.image), out / "masks" / f"{row.image}.png")


def file_sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


@hydra.main(version_base="1.3", config_path="conf", config_name="crop")
def main(cfg: DictConfig) -> None:
    run_task(crop, cfg)


if __name__ == "__main__":
    main()
