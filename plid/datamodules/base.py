"""What every task's DataModule shares: the dataset folder (real or generated), patient-grouped splits,
loaders."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from plid.datamodules import splits as splits_lib
from plid.datamodules.contract import SpineDataset, load_dataset
from plid.datamodules.synthetic import SyntheticSpec, ensure_dataset
from plid.errors import UserInputError

log = logging.getLogger(__name__)
STAGES = ("train", "val", "test")
ROI_MODES = ("gt", "none", "detected")


class SpineDataModule(L.LightningDataModule):
    """Base DataModule over a dataset in the spider2d layout.

    Args:
        root: the dataset folder; with ``synthetic`` set, the cache folder the synthetic dataset is
            generated into (once per spec, in a sub-folder named after it).
        synthetic: a :class:`SyntheticSpec` as a dict, or None for data on disk.
        splits_dir: where generated splits files are kept (one per dataset and split setting). A
            ``splits.json`` inside ``root`` wins over it, and so does an explicit ``splits_file``.
        fold / num_folds / test_fraction / split_seed: which grouped fold to train on; see
            :mod:`plid.datamodules.splits`.
        image_size: side of the square network input, in pixels.
        roi: where the region of interest comes from: ``gt`` the boxes of the tables (enlarged by
            ``roi_margin``, the paper's 10 %), ``none`` the whole image, ``detected`` boxes found by trained
            detectors.
        series: keep only these series (``t1``, ``t2``, ``t2_SPACE``); None keeps all.
        detector: for ``roi='detected'``: ``lumbar`` and ``ivd`` weights (local ``.pt``), ``conf``, ``device``
            and ``cache_dir``; see :mod:`plid.datamodules.detected`.
    """

    def __init__(
        self,
        root: str,
        synthetic: dict | None = None,
        splits_dir: str | None = None,
        splits_file: str | None = None,
        fold: int = 0,
        num_folds: int = 6,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        image_size: int = 256,
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        augment: bool = True,
        augmentation: dict | None = None,
        roi: str = "gt",
        roi_margin: float = 0.1,
        series: list[str] | None = None,
        detector: dict | None = None,
    ) -> None:
        if roi not in ROI_MODES:
            raise UserInputError(f"data.roi={roi!r} is not one of {ROI_MODES}")
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.datasets: dict[str, Dataset] = {}
        self._all_data: SpineDataset | None = None  # every row of the folder: splits are made over these
        self._dataset: SpineDataset | None = None
        self.splits: dict | None = None

    @property
    def image_size(self) -> int:
        return self.hparams.image_size

    @property
    def dataset(self) -> SpineDataset:
        """The dataset tables, generating the synthetic dataset first where that is the source."""
        if self._dataset is None:
            root = Path(self.hparams.root).expanduser()
            if self.hparams.synthetic is not None:
                root = ensure_dataset(root, SyntheticSpec(**self.hparams.synthetic))
            dataset = self._all_data = load_dataset(root)
            if self.hparams.series:
                keep = dataset.images["series"].isin(list(self.hparams.series))
                dataset = SpineDataset(dataset.root, dataset.images[keep].reset_index(drop=True),
                                       dataset.discs[dataset.discs["image"].isin(dataset.images.loc[keep, "image"])])
            if self.hparams.roi == "detected":
                from plid.datamodules.detected import detected_dataset

                dataset = detected_dataset(dataset, margin=self.hparams.roi_margin, **(self.hparams.detector or {}))
            self._dataset = self._validated(dataset)
        return self._dataset

    def _validated(self, dataset: SpineDataset) -> SpineDataset:
        """Hook for subclasses to check and filter the rows they need."""
        return dataset

    def prepare_data(self) -> None:
        self.dataset  # noqa: B018 - generates the synthetic data once, in the main process

    def splits_path(self) -> Path:
        dataset = self.dataset
        if self.hparams.splits_file:
            return Path(self.hparams.splits_file).expanduser()
        if (dataset.root / "splits.json").is_file():
            return dataset.root / "splits.json"
        h = self.hparams
        key = hashlib.sha1(str(dataset.root.resolve()).encode()).hexdigest()[:8]
        name = f"{dataset.root.name}-{key}_k{h.num_folds}_test{h.test_fraction:g}_seed{h.split_seed}.json"
        return Path(h.splits_dir or dataset.root).expanduser() / name

    def patient_splits(self) -> dict[str, list[str]]:
        """Patients of train, val and test for ``fold``.

        Splits are made over every patient of the folder, whatever rows this task keeps, so that all tasks
        on one dataset share one splits file.
        """
        if self.splits is None:
            self.dataset  # noqa: B018 - loads the folder
            h = self.hparams
            self.splits = splits_lib.resolve_splits(
                self.splits_path(), patient_strata(self._all_data), h.num_folds, h.test_fraction, h.split_seed
            )
        return splits_lib.fold_patients(self.splits, self.hparams.fold)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for split, patients in self.patient_splits().items():
            self.datasets[split] = self.build_dataset(split, set(patients))
            log.info("%s split: %d patients, %d samples", split, len(patients), len(self.datasets[split]))
            if len(self.datasets[split]) == 0 and split != "test":
                raise UserInputError(
                    f"the {split} split of fold {self.hparams.fold} holds no samples "
                    f"(splits file {self.splits_path()}); the dataset may be too small for "
                    f"{self.hparams.num_folds} folds"
                )

    def build_dataset(self, split: str, patients: set[str]) -> Dataset:
        raise NotImplementedError

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        h = self.hparams
        return DataLoader(
            self.datasets[split],
            batch_size=h.batch_size,
            shuffle=shuffle,
            num_workers=h.num_workers,
            pin_memory=h.pin_memory,
            persistent_workers=h.num_workers > 0,
            drop_last=shuffle and len(self.datasets[split]) > h.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if len(self.datasets["test"]) == 0:
            raise UserInputError(f"the test split is empty (splits file {self.splits_path()}); it names no test patients")
        return self._loader("test", shuffle=False)

    def augmentation_kwargs(self) -> dict[str, Any]:
        return dict(self.hparams.augmentation or {})


def patient_strata(dataset: SpineDataset) -> dict[str, str]:
    """A stratum per patient: whether any image has a mask, and whether any disc is herniated.

    Stratifying on both spreads the (few) segmented and herniated patients over test and every fold, so
    all tasks can share one splits file.
    """
    has_mask = dataset.images.groupby("patient")["has_mask"].max().astype(int)
    herniated = set()
    if "disc_herniation" in dataset.discs.columns:
        herniated = set(dataset.discs.loc[dataset.discs["disc_herniation"] == 1, "patient"])
    return {p: f"mask{has_mask[p]}-hern{int(p in herniated)}" for p in has_mask.index}
