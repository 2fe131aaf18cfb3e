"""Export of a dataset in the spider2d layout to ultralytics' detection layout, per detection stage.

Stage ``lumbar``: the whole image with its lumbar box (one class; where an image has no mask, the box is derived
from its disc boxes, :func:`plid.datamodules.contract.derived_lumbar_box`, so that every series type trains it). Stage ``ivd``: the lumbar crop (the box
enlarged by ``roi_margin``, the paper's 10 %, clipped to the image) with the disc boxes moved into crop
coordinates: one class, ``disc``, or with ``disc_classes=level`` one class per level (``L5/S1`` = ``ivd_label`` 1,
``L4/L5``, ... as :data:`plid.labels.LEVEL_NAMES`), on the images whose every disc box has a level (SPIDER fills
``ivd_label`` for all boxes of an image or for none; the others are left out and counted). Splits are the patient-grouped splits every task shares (the base
DataModule's), so a detector never sees the test patients of a classifier or segmenter.

    <out>/images/{train,val,test}/<image>.png
    <out>/labels/{train,val,test}/<image>.txt     class cx cy w h, normalised
    <out>/data.yaml                               absolute paths, class names
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from plid.boxes import clip_box, crop, enlarge_box, shift_box, to_yolo
from plid.datamodules.base import SpineDataModule
from plid.datamodules.contract import DISC_BOX, LUMBAR_BOX, DataContractError, SpineDataset, with_lumbar_boxes
from plid.errors import UserInputError
from plid.labels import LEVEL_NAMES
from plid.utils.io import atomic_write

log = logging.getLogger(__name__)
DETECTION_STAGES = {"lumbar": "lumbar", "ivd": "disc"}  # stage -> its one class name
DISC_CLASSES = ("disc", "level")  # the ivd stage: one class, or one class per level (LEVEL_NAMES)


class DetectionDataModule(SpineDataModule):
    """The images one detection stage trains on, split by patient, exported for ultralytics.

    Args (beyond :class:`SpineDataModule`'s):
        stage: ``lumbar`` (whole image, lumbar box) or ``ivd`` (lumbar crop, disc boxes).
        max_images_per_split: keep at most this many images per split (first ones, for smoke runs).
        disc_classes: ``disc`` (one class) or ``level`` (ivd stage: one class per level, from ``ivd_label``; the
            disc detector then names levels itself, ``levels=detector`` in :mod:`plid.inference.levels`).

    Images without the boxes a stage needs are left out and counted in :attr:`left_out`. ``image_size``,
    ``batch_size`` and ``num_workers`` are the detector's ``imgsz``, ``batch`` and ``workers``.
    """

    def __init__(self, *args, stage: str = "lumbar", max_images_per_split: int | None = None,
                 disc_classes: str = "disc", **kwargs) -> None:
        if stage not in DETECTION_STAGES:
            raise UserInputError(f"stage={stage!r} is not one of {tuple(DETECTION_STAGES)}")
        if disc_classes not in DISC_CLASSES:
            raise UserInputError(f"disc_classes={disc_classes!r} is not one of {DISC_CLASSES}")
        super().__init__(*args, **kwargs)
        self.left_out: dict[str, int] = {}

    def _validated(self, dataset: SpineDataset) -> SpineDataset:
        # every image with disc boxes gets a lumbar box (derived from its discs where no mask gives one), so every
        # series type trains both stages
        dataset = with_lumbar_boxes(dataset)
        images = dataset.images
        has_lumbar = images[LUMBAR_BOX].notna().all(axis=1)
        has_discs = images["image"].isin(dataset.discs["image"])
        keep = has_lumbar if self.hparams.stage == "lumbar" else has_lumbar & has_discs
        self.left_out = {"no_lumbar_box": int((~has_lumbar).sum()),
                         "lumbar_box_from_discs": int((images["lumbar_box_source"] == "discs").sum())}
        if self.hparams.stage == "ivd":
            self.left_out["no_disc_boxes"] = int((has_lumbar & ~has_discs).sum())
            if self.by_level:
                levels = dataset.discs["ivd_label"] if "ivd_label" in dataset.discs.columns else None
                unlevelled = set() if levels is None else set(dataset.discs.loc[levels.isna(), "image"])
                if levels is None or levels.dropna().gt(len(LEVEL_NAMES)).any():
                    raise DataContractError(f"{dataset.root}: disc_classes=level needs discs.csv's ivd_label, "
                                            f"1 to {len(LEVEL_NAMES)}")
                has_levels = has_discs & ~images["image"].isin(unlevelled)
                self.left_out["no_levels"] = int((keep & ~has_levels).sum())
                keep = keep & has_levels
        log.info("Stage %s: %d of %d images have the boxes it needs; left out: %s",
                 self.hparams.stage, int(keep.sum()), len(images), self.left_out)
        if not keep.any():
            raise DataContractError(f"{dataset.root}: no image has the boxes stage {self.hparams.stage} needs "
                                    f"(lumbar box{' and disc boxes' if self.hparams.stage == 'ivd' else ''})")
        images = images[keep].reset_index(drop=True)
        return SpineDataset(dataset.root, images, dataset.discs[dataset.discs["image"].isin(images["image"])])

    def build_dataset(self, split: str, patients: set[str]) -> pd.DataFrame:
        rows = self.dataset.images[self.dataset.images["patient"].isin(patients)]
        if self.hparams.max_images_per_split is not None:
            rows = rows.head(self.hparams.max_images_per_split)
        return rows.reset_index(drop=True)

    def export(self, out: str | Path) -> Path:
        """Write the stage's images and labels under ``out``; returns the path of its ``data.yaml``."""
        self.prepare_data()
        self.setup()
        out = Path(out).expanduser().resolve()
        if out.exists():
            shutil.rmtree(out)
        discs = self.dataset.discs.groupby("image")
        for split, rows in self.datasets.items():
            (out / "images" / split).mkdir(parents=True)
            (out / "labels" / split).mkdir(parents=True)
            for row in rows.itertuples():
                image, boxes, levels = stage_sample(self.dataset, row, discs, self.hparams.stage,
                                                    self.hparams.roi_margin)
                if self.hparams.stage == "lumbar":  # the image as it is: a link saves the copy
                    (out / "images" / split / f"{row.image}.png").symlink_to(self.dataset.image_path(row.image))
                else:
                    cv2.imwrite(str(out / "images" / split / f"{row.image}.png"), image)
                classes = levels - 1 if self.by_level else np.zeros(len(boxes), dtype=np.int64)
                write_labels(out / "labels" / split / f"{row.image}.txt", boxes, classes, *image.shape[:2])
        names = list(LEVEL_NAMES) if self.by_level else [DETECTION_STAGES[self.hparams.stage]]
        return write_data_yaml(out, names, splits=list(self.datasets))

    @property
    def by_level(self) -> bool:
        return self.hparams.stage == "ivd" and self.hparams.disc_classes == "level"

    @property
    def samples(self) -> dict[str, int]:
        return {split: len(rows) for split, rows in self.datasets.items()}


def stage_sample(dataset: SpineDataset, row, discs, stage: str,
                 roi_margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image a stage sees for one images.csv row, its pixel boxes in that image's coordinates and each box's
    ``ivd_label`` (-1 where it has none; the lumbar box: -1)."""
    image = dataset.read_image(row.image)
    lumbar = [getattr(row, c) for c in LUMBAR_BOX]
    if stage == "lumbar":
        return image, np.asarray([clip_box(lumbar, *image.shape)]), np.full(1, -1)
    x1, y1, x2, y2 = enlarge_box(lumbar, roi_margin, *image.shape)
    region = crop(image, (x1, y1, x2, y2))
    rows = discs.get_group(row.image)
    labels = rows["ivd_label"].fillna(-1).to_numpy(dtype=np.int64) if "ivd_label" in rows else np.full(len(rows), -1)
    boxes = [clip_box(shift_box(b, -x1, -y1), *region.shape) for b in rows[DISC_BOX].to_numpy()]
    inside = [k for k, b in enumerate(boxes) if b[2] > b[0] and b[3] > b[1]]  # a disc wholly outside is dropped
    return region, np.asarray([boxes[k] for k in inside]).reshape(-1, 4), labels[inside]


def write_labels(path: Path, boxes: np.ndarray, classes: np.ndarray, height: int, width: int) -> None:
    """One ultralytics label file: ``class cx cy w h`` per box, normalised to the image."""
    with atomic_write(path) as f:
        for class_id, (cx, cy, w, h) in zip(classes, to_yolo(boxes, height, width)):
            f.write(f"{int(class_id)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")


def write_data_yaml(out: Path, class_names: list[str], splits: list[str]) -> Path:
    """ultralytics' dataset file, with absolute paths so it works from any working directory."""
    import yaml

    spec = {"path": str(out), "names": dict(enumerate(class_names))}
    spec.update({split: str(out / "images" / split) for split in splits})
    with atomic_write(out / "data.yaml") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    return out / "data.yaml"
