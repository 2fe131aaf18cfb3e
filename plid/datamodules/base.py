"""What every task's DataModule shares: the dataset folder (real or generated), patient-grouped splits,
loaders."""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from plid.datamodules import splits as splits_lib
from plid.datamodules.contract import DataContractError, SpineDataset, drop_problems, find_problems, load_dataset
from plid.datamodules.synthetic import SyntheticSpec, ensure_dataset
from plid.errors import UserInputError
from plid.utils.io import atomic_write

log = logging.getLogger(__name__)
STAGES = ("train", "val", "test")
ROI_MODES = ("gt", "none")


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
            ``roi_margin``, the paper's 10 %), ``none`` the whole image. Boxes found by trained detectors are
            a dataset of their own (``python -m plid.crop``), read with ``gt``.
        series: keep only these series (``t1``, ``t2``, ``t2_SPACE``); None keeps all.
        on_error: ``raise`` stops at the first bad row with a message naming it (before training starts);
            ``skip`` leaves bad rows out with a warning and a count.
        unsplit_patients: patients of the dataset that an existing splits file puts in no split (added after it
            was written): ``raise`` (default) refuses with their ids; ``warn`` leaves them out with a warning.
        cache_dir: where decoded, cropped and resized arrays are kept between runs (None: no disk cache).
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
        on_error: str = "raise",
        cache_dir: str | None = None,
        unsplit_patients: str = "raise",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise UserInputError(f"data.on_error={on_error!r} must be 'raise' or 'skip'")
        if roi == "detected":
            raise UserInputError(
                "data.roi=detected is now a step of its own: write the detected crops once with `python -m plid.crop "
                "lumbar_run=<detect run> ivd_run=<detect run> out=<folder>`, then train on them with "
                "data.root=<folder> data.synthetic=null data.roi=gt")
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
            dataset = self._all_data = self._checked(load_dataset(root), find_problems)
            if self.hparams.series:
                keep = dataset.images["series"].isin(list(self.hparams.series))
                dataset = SpineDataset(dataset.root, dataset.images[keep].reset_index(drop=True),
                                       dataset.discs[dataset.discs["image"].isin(dataset.images.loc[keep, "image"])])
            self._dataset = self._validated(dataset)
        return self._dataset

    def _checked(self, dataset: SpineDataset, check) -> SpineDataset:
        """``dataset`` after ``check(dataset) -> problems``: an error, or the bad rows dropped (on_error=skip)."""
        problems = check(dataset)
        if not problems:
            return dataset
        if self.hparams.on_error == "raise":
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise DataContractError(
                f"{dataset.root}: {problems[0]}{more}. Fix the row, or pass data.on_error=skip to leave bad rows out."
            )
        for problem in problems:
            log.warning("skipping %s", problem)
        log.warning("%d bad rows skipped (data.on_error=skip)", len(problems))
        return drop_problems(dataset, problems)

    def decode_cached(self, rows: list, decode, key: dict) -> tuple[list[str], list[np.ndarray]]:
        """Decode images into stacked sample arrays, kept in ``cache_dir`` between runs.

        ``rows`` are objects with an ``image`` attribute; ``decode(row)`` returns that image's samples as a
        list of ``(case_id, array, array, ...)``. The cache entry is keyed by ``key``, the rows themselves and
        their files' sizes and times, so the first run decodes (and so validates) every image and later runs
        load one file. Returns the case ids and one stacked array per position of the sample tuples.
        """
        stats = [(repr(r), *_stat(self.dataset.image_path(r.image)), *_stat(self.dataset.mask_path(r.image)))
                 for r in rows]
        digest = hashlib.sha1(json.dumps([type(self).__name__, str(self.dataset.root), key, stats,
                                          self.hparams.on_error], default=str).encode()).hexdigest()[:16]
        path = Path(self.hparams.cache_dir).expanduser() / f"{digest}.npz" if self.hparams.cache_dir else None
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as data:
                return list(data["ids"]), [data[f"a{k}"] for k in range(len(data.files) - 1)]
        samples = [sample for per_row in self.decode_rows(rows, decode) for sample in per_row]
        if not samples:
            raise DataContractError(f"{self.dataset.root}: no usable sample among {len(rows)} images")
        ids = [sample[0] for sample in samples]
        arrays = [np.stack(parts) for parts in list(zip(*samples))[1:]]
        if path is not None:
            with atomic_write(path, "wb") as handle:
                np.savez(handle, ids=np.array(ids, dtype=str), **{f"a{k}": a for k, a in enumerate(arrays)})
        return ids, arrays

    def decode_rows(self, rows: list, decode) -> list:
        """``decode(row)`` for every row, in threads (cv2 decodes outside the GIL), leaving out the rows that
        fail with a data error when on_error=skip (with a warning and a count)."""

        def attempt(row):
            try:
                return decode(row)
            except DataContractError as error:
                if self.hparams.on_error == "raise":
                    raise DataContractError(
                        f"{error}. Fix the file, or pass data.on_error=skip to leave it out.") from None
                log.warning("skipping image %s: %s", row.image, error)
                return None

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(attempt, rows))
        kept = [out for out in results if out is not None]
        if len(kept) < len(rows):
            log.warning("%d images skipped for decoding errors (data.on_error=skip)", len(rows) - len(kept))
        return kept

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
                self.splits_path(), patient_strata(self._all_data), h.num_folds, h.test_fraction, h.split_seed,
                unsplit=h.unsplit_patients,
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


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except FileNotFoundError:
        return -1, -1


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
