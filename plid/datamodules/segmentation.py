"""4-class segmentation data: the lumbar region (or the whole image) with its mask, resized to a square."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from plid.boxes import roi_crop
from plid.datamodules.base import SpineDataModule
from plid.datamodules.contract import LUMBAR_BOX, DataContractError, SpineDataset
from plid.datamodules.transforms import augment, paper_augmentation, to_tensor


class SegmentationDataset(Dataset):
    """Decoded, cropped and resized images and masks held in memory; augmentation runs per item.

    Decoding once is what keeps a CPU training loop fed: the whole of spider2d's segmented part is
    270 images, a few MB at 256 px.
    """

    def __init__(self, ids: list[str], images: np.ndarray, masks: np.ndarray, transform=None):
        self.ids, self.images, self.masks, self.transform = ids, images, masks, transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        image, mask = self.images[index], self.masks[index]
        if self.transform is not None:
            out = augment(self.transform, image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {"image": to_tensor(image), "target": torch.from_numpy(np.ascontiguousarray(mask)).long(),
                "id": self.ids[index]}


def load_roi(dataset: SpineDataset, row, roi: str, size: int, roi_margin: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask of one images.csv row, cropped to the ROI and resized to ``size`` x ``size``."""
    image, mask = dataset.read_image(row.image), dataset.read_mask(row.image)
    if image.shape != mask.shape:
        raise DataContractError(
            f"{dataset.mask_path(row.image)}: mask is {mask.shape[::-1]} (w, h) but its image is "
            f"{image.shape[::-1]}; masks must match their image pixel for pixel"
        )
    if roi == "none":
        return (cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA),
                cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST))
    box = [getattr(row, c) for c in LUMBAR_BOX]
    return roi_crop(image, box, roi_margin, size)[0], roi_crop(mask, box, roi_margin, size, cv2.INTER_NEAREST)[0]


class SegmentationDataModule(SpineDataModule):
    """Images with masks; ``roi='gt'`` crops the lumbar box enlarged by ``roi_margin`` (the paper's 10 %),
    ``roi='none'`` keeps the whole image."""

    def _validated(self, dataset: SpineDataset) -> SpineDataset:
        images = dataset.images[dataset.images["has_mask"] == 1]
        if images.empty:
            raise DataContractError(f"{dataset.root}: no image with has_mask=1 (series {self.hparams.series})")
        if self.hparams.roi != "none":
            missing = images[images[LUMBAR_BOX].isna().any(axis=1)]
            if not missing.empty:
                raise DataContractError(
                    f"{dataset.root / 'images.csv'}: image {missing.iloc[0]['image']} has a mask but no lumbar box; "
                    f"fill lumbar_x1..lumbar_y2 or use data.roi=none"
                )
        return SpineDataset(dataset.root, images.reset_index(drop=True), dataset.discs)

    def build_dataset(self, split: str, patients: set[str]) -> SegmentationDataset:
        h = self.hparams
        rows = [r for r in self.dataset.images.itertuples() if r.patient in patients]
        if not rows:
            empty = np.zeros((0, h.image_size, h.image_size), np.uint8)
            return SegmentationDataset([], empty, empty)
        ids, (images, masks) = self.decode_cached(
            rows, lambda r: [(r.image, *load_roi(self.dataset, r, h.roi, h.image_size, h.roi_margin))],
            key={"roi": h.roi, "margin": h.roi_margin, "size": h.image_size},
        )
        transform = paper_augmentation(**self.augmentation_kwargs()) if split == "train" and h.augment else None
        return SegmentationDataset(ids, images, masks, transform)
