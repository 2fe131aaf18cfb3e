"""Disc classification data: each labelled disc box (enlarged by ``roi_margin``) cropped and resized to a
square, with a 0/1 grading of discs.csv as its target; or, with ``roi='none'``, whole images labelled
positive when any of their labelled discs is (the paper's no-ROI ablation).

Case ids are ``<image>:<ivd_label>`` for disc crops and ``<image>`` for whole images.

With ``targets`` (a list of gradings) the module serves a multi-task classifier instead: each disc's target is a
vector of class indices, one per grading (:mod:`plid.labels`), ``-1`` where discs.csv leaves that grading
empty; a disc is kept when it carries at least one of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from plid.boxes import crop, enlarge_box, squared
from plid.datamodules.base import SpineDataModule
from plid.datamodules.contract import DISC_BOX, DataContractError, SpineDataset
from plid.datamodules.transforms import augment, paper_augmentation, to_tensor
from plid.errors import UserInputError
from plid.labels import MISSING, gradings

log = logging.getLogger(__name__)
# discs.csv columns that identify a box rather than grade it
_NOT_TARGETS = {"image", "patient", "ivd_label", *DISC_BOX}


class ClassificationDataset(Dataset):
    """Decoded, cropped and resized images and their 0/1 targets held in memory; augmentation runs per item."""

    def __init__(self, ids: list[str], images: np.ndarray, targets: np.ndarray, transform=None,
                 features: np.ndarray | None = None):
        self.ids, self.images, self.targets, self.transform = ids, images, targets, transform
        self.features = features  # (N, F) measurements of each disc from its image's mask, or None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        image = self.images[index]
        if self.transform is not None:
            image = augment(self.transform, image=image)["image"]
        target = self.targets[index]
        target = torch.tensor(int(target)) if np.ndim(target) == 0 else torch.as_tensor(target, dtype=torch.long)
        item = {"image": to_tensor(image), "target": target, "id": self.ids[index]}
        if self.features is not None:
            item["features"] = torch.as_tensor(self.features[index], dtype=torch.float32)
        return item

    def class_counts(self, column: int | None = None, num_classes: int = 2) -> np.ndarray:
        """Samples of class 0 and class 1; with ``column``, of each class of that grading (missing ones left out)."""
        targets = np.asarray(self.targets, dtype=np.int64)
        if column is not None:
            targets = targets[:, column]
            targets = targets[targets != MISSING]
        return np.bincount(targets, minlength=num_classes)


def binary_columns(discs: pd.DataFrame) -> list[str]:
    """Grading columns of discs.csv whose filled values are all 0 or 1 (the usable ``data.target`` values)."""
    columns = []
    for column in discs.columns:
        if column in _NOT_TARGETS:
            continue
        values = pd.to_numeric(discs[column], errors="coerce")
        filled = discs[column].notna()
        if filled.any() and values[filled].isin([0, 1]).all():
            columns.append(column)
    return columns


def class_weights_from_counts(counts) -> list[float]:
    """``n / (2 n_c)`` per class: each class then carries half of the loss (the paper's 0.702 / 1.73)."""
    counts = np.asarray(counts, dtype=np.float64)
    if (counts == 0).any():
        raise UserInputError(f"cannot weigh classes: the training split holds {counts.astype(int).tolist()} samples "
                             f"per class; give model.class_weights=[w0,w1] or null")
    return (counts.sum() / (len(counts) * counts)).tolist()


# data.disc_crop: ``box`` the disc box itself, stretched to the square input (the paper's); ``square`` the box grown
# along its shorter side about the disc's centre, so the adjacent endplates and the canal behind the disc are in view
# and the disc keeps its shape (Modic and endplate changes lie in the bone; Pfirrmann reads the disc against CSF)
DISC_CROPS = ("box", "square")


def disc_region(image: np.ndarray, box, roi_margin: float, disc_crop: str = "box") -> np.ndarray:
    """The part of ``image`` inside a disc box (made square with ``disc_crop='square'``) enlarged by ``roi_margin``
    about its centre, clipped at the edge."""
    if disc_crop not in DISC_CROPS:
        raise UserInputError(f"disc_crop={disc_crop!r} must be one of {list(DISC_CROPS)}")
    region = squared(box) if disc_crop == "square" else box
    return crop(image, enlarge_box(region, roi_margin, *image.shape[:2]))


def load_disc_crop(image: np.ndarray, box, size: int, roi_margin: float, disc_crop: str = "box") -> np.ndarray:
    """:func:`disc_region` resized to ``size`` x ``size``."""
    return cv2.resize(disc_region(image, box, roi_margin, disc_crop), (size, size), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class _ImageDiscs:
    """One image and its labelled disc rows: the unit decoded (and cached) together."""

    image: str
    discs: tuple


class ClassificationDataModule(SpineDataModule):
    """Discs (``roi='gt'``) or whole images (``roi='none'``) with a 0/1 target from discs.csv.

    Args:
        target: a 0/1 grading column of discs.csv (``disc_herniation``, ``disc_bulging``, ...). Discs where it
            is empty (SPIDER fills gradings only where the levels could be matched) are left out and counted.
        disc_crop: ``box`` or ``square``, the region cropped about each disc (:data:`DISC_CROPS`).
        **kwargs: see :class:`SpineDataModule`; ``image_size`` is the side of the square crop.
    """

    def __init__(self, *args, target: str = "disc_herniation", targets: list[str] | None = None,
                 measurements: bool = False, disc_crop: str = "box", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(logger=False)
        self.gradings = gradings(targets) if targets is not None else None
        if measurements and self.gradings is None:
            raise UserInputError("data.measurements=true feeds a multi-task classifier (model=grade_*, data.targets)")

    def _validated(self, dataset: SpineDataset) -> SpineDataset:
        if self.gradings is not None:
            return self._validated_gradings(dataset)
        target, discs = self.hparams.target, dataset.discs
        valid = binary_columns(discs)
        if target not in valid:
            what = "is not a column of" if target not in discs.columns else "is not a 0/1 column of"
            raise UserInputError(f"data.target={target!r} {what} {dataset.root / 'discs.csv'}; valid: {valid}")
        labelled = discs[discs[target].notna()]
        log.info("data.target=%s: %d of %d disc boxes carry it (%d positive); %d without it are left out",
                 target, len(labelled), len(discs), int(labelled[target].sum()), len(discs) - len(labelled))
        if labelled.empty:
            raise DataContractError(f"{dataset.root / 'discs.csv'}: no disc carries {target} "
                                    f"(series {self.hparams.series})")
        return self._check_labelled(dataset, labelled, target)

    def _check_labelled(self, dataset: SpineDataset, labelled, target: str) -> SpineDataset:
        if self.hparams.roi != "none" and labelled["ivd_label"].isna().any():
            row = labelled[labelled["ivd_label"].isna()].iloc[0]
            raise DataContractError(f"{dataset.root / 'discs.csv'}: a disc of image {row['image']} has {target} but "
                                    f"no ivd_label, which names the disc in case ids; fill it")
        duplicated = labelled[labelled.duplicated(["image", "ivd_label"])]
        if self.hparams.roi != "none" and not duplicated.empty:
            row = duplicated.iloc[0]
            raise DataContractError(f"{dataset.root / 'discs.csv'}: image {row['image']} has two discs with "
                                    f"ivd_label {row['ivd_label']}; a level names one disc")
        images = dataset.images[dataset.images["image"].isin(labelled["image"])]
        return SpineDataset(dataset.root, images.reset_index(drop=True), labelled.reset_index(drop=True))

    def _validated_gradings(self, dataset: SpineDataset) -> SpineDataset:
        """The discs carrying at least one of ``targets``; every value checked against its grading's classes."""
        discs, csv = dataset.discs, dataset.root / "discs.csv"
        if self.hparams.roi == "none":
            raise UserInputError("data.targets (a multi-task classifier) grades disc crops: give data.roi=gt, "
                                 "not none")
        missing = [g.name for g in self.gradings if g.name not in discs.columns]
        if missing:
            raise UserInputError(f"data.targets: {missing} are not columns of {csv}")
        for g in self.gradings:
            for row, value in discs[g.name].items():
                try:
                    g.index(value)
                except (TypeError, ValueError) as error:
                    raise DataContractError(f"{csv}: image {discs.at[row, 'image']}: {error}") from None
        names = [g.name for g in self.gradings]
        labelled = discs[discs[names].notna().any(axis=1)]
        for g in self.gradings:
            log.info("data.targets: %s on %d of %d disc boxes", g.name, int(discs[g.name].notna().sum()), len(discs))
        log.info("%d disc boxes carry at least one grading; %d without any are left out", len(labelled),
                 len(discs) - len(labelled))
        if labelled.empty:
            raise DataContractError(f"{csv}: no disc carries any of {names} (series {self.hparams.series})")
        return self._check_labelled(dataset, labelled, "gradings")

    def build_dataset(self, split: str, patients: set[str]) -> ClassificationDataset:
        h = self.hparams
        discs = self.dataset.discs[self.dataset.discs["patient"].isin(patients)]
        rows = [_ImageDiscs(image, tuple(group.itertuples(index=False))) for image, group in discs.groupby("image")]
        if rows:
            ids, arrays = self.decode_cached(
                rows, self._image_samples,
                key={"target": h.target, "targets": h.get("targets"), "roi": h.roi, "margin": h.roi_margin,
                     "disc_crop": h.disc_crop, "size": h.image_size, "measurements": bool(h.get("measurements"))})
            images, targets = arrays[:2]
            features = arrays[2] if h.get("measurements") else None
        else:
            from plid.measurements import FEATURES

            shape = (0,) if self.gradings is None else (0, len(self.gradings))
            ids, images, targets = [], np.zeros((0, h.image_size, h.image_size), np.uint8), np.zeros(shape, np.int64)
            features = np.zeros((0, len(FEATURES)), np.float32) if h.get("measurements") else None
        transform = paper_augmentation(**self.augmentation_kwargs()) if split == "train" and h.augment else None
        data = ClassificationDataset(ids, images, targets, transform, features)
        if features is not None:
            log.info("%s split: %d of %d discs measured from a mask", split, int(features[:, -1].sum()), len(features))
        if self.gradings is not None:
            for k, g in enumerate(self.gradings):
                log.info("%s split: %s per class %s", split, g.name, data.class_counts(k, g.num_classes).tolist())
            return data
        negatives, positives = data.class_counts()
        log.info("%s split: %d positive and %d negative for %s", split, positives, negatives, h.target)
        if len(data) and min(positives, negatives) == 0:
            log.warning("the %s split holds one class only: its AUCs are undefined (NaN)%s", split,
                        "; checkpoints and early stopping cannot follow val/auc" if split == "val" else "")
        return data

    def _image_samples(self, row: _ImageDiscs) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(case id, resized array, target) for the labelled discs of one image, or for the image itself."""
        h, target = self.hparams, self.hparams.target
        image = self.dataset.read_image(row.image)
        if h.roi == "none":
            whole = cv2.resize(image, (h.image_size, h.image_size), interpolation=cv2.INTER_AREA)
            return [(row.image, whole, np.int64(max(getattr(d, target) for d in row.discs)))]
        samples = [(f"{row.image}:{_level(d.ivd_label)}",
                    load_disc_crop(image, [getattr(d, c) for c in DISC_BOX], h.image_size, h.roi_margin, h.disc_crop),
                    self._target_of(d))
                   for d in row.discs]
        if not h.get("measurements"):
            return samples
        from plid.measurements import measure_discs, measurement_features

        has_mask = self.dataset.images.set_index("image").get("has_mask", {}).get(row.image, 0) == 1
        mask = self.dataset.read_mask(row.image) if has_mask else None
        measured = measure_discs(mask, [[getattr(d, c) for c in DISC_BOX] for d in row.discs], image)
        return [(*sample, measurement_features(m)) for sample, m in zip(samples, measured)]

    def _target_of(self, disc) -> np.ndarray:
        if self.gradings is None:
            return np.int64(getattr(disc, self.hparams.target))
        return np.array([g.index(getattr(disc, g.name)) for g in self.gradings], np.int64)

    def check_validation_classes(self) -> None:
        """Refuse a validation split that holds one class only, before any training: its ROC AUC (the default
        monitor, ``val/auc``) and PR AUC are undefined (NaN) and no decision threshold can be chosen on it, so
        checkpointing and early stopping would follow nothing and end training after the first epoch."""
        self.setup("fit")
        if self.gradings is not None:  # a multi-task classifier: a one-class grading scores NaN, the others count
            return
        negatives, positives = self.datasets["val"].class_counts()
        if min(negatives, positives) == 0:
            raise UserInputError(
                f"the val split of fold {self.hparams.fold} holds one class only: {negatives} negative and {positives} "
                f"positive for {self.hparams.target} (splits file {self.splits_path()}); its AUC, the monitored "
                f"metric, is undefined and no decision threshold can be chosen on it. Choose another fold "
                f"(data.fold), other splits (data.num_folds, data.split_seed, data.splits_file) or another data.target")

    def class_weights(self) -> list[float]:
        """Loss weights of class 0 and 1 from the training split: ``n / (2 n_c)``."""
        self.setup("fit")
        return class_weights_from_counts(self.datasets["train"].class_counts())

    def class_names(self) -> list[str]:
        return [f"no {self.hparams.target}", self.hparams.target]

    def grading_class_counts(self) -> dict[str, list[int]]:
        """Training discs per class of each grading of ``targets`` (discs missing it left out)."""
        self.setup("fit")
        return {g.name: self.datasets["train"].class_counts(k, g.num_classes).tolist()
                for k, g in enumerate(self.gradings or [])}


def _level(ivd_label) -> str:
    """``ivd_label`` as written in case ids: ``3``, not ``3.0`` (pandas reads the column as float)."""
    return str(int(ivd_label)) if float(ivd_label).is_integer() else str(ivd_label)
