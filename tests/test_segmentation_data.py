import hydra
import pytest
import torch
from conftest import SPIDER2D, requires_spider2d


def _batches(dm, split):
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    return next(iter(loader))


def test_synthetic_datamodule_batches(compose):
    cfg = compose("data.image_size=96", "data.batch_size=4")
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    for split in ("train", "val", "test"):
        batch = _batches(dm, split)
        assert batch["image"].shape == (4, 1, 96, 96) and batch["image"].dtype == torch.float32
        assert batch["target"].shape == (4, 96, 96) and batch["target"].dtype == torch.long
        assert 0 <= batch["target"].min() and batch["target"].max() <= 3
        assert len(batch["id"]) == 4
    patients = dm.patient_splits()
    assert not set(patients["train"]) & (set(patients["val"]) | set(patients["test"]))
    assert dm.splits_path().is_file()


def test_roi_none_keeps_more_background_than_roi_gt(compose):
    fractions = {}
    for roi in ("gt", "none"):
        cfg = compose(f"data.roi={roi}", "data.image_size=64", "data.augment=false")
        dm = hydra.utils.instantiate(cfg.data, _convert_="all")
        dm.setup("fit")
        fractions[roi] = (dm.datasets["val"].masks == 0).mean()
    assert fractions["none"] > fractions["gt"] + 0.2


def test_missing_root_is_a_clear_error(compose, tmp_path):
    from plid.datamodules.contract import DataContractError

    cfg = compose("data=spider2d_seg", f"data.root={tmp_path}/nowhere")
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    with pytest.raises(DataContractError, match="nowhere.*does not exist"):
        dm.prepare_data()


@requires_spider2d
def test_spider2d_datamodule_yields_real_batches(compose):
    cfg = compose("data=spider2d_seg", "data.image_size=128", "data.batch_size=4", "data.augment=false")
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    assert dm.dataset.root == SPIDER2D
    sizes = {split: len(ds) for split, ds in dm.datasets.items()}
    assert sum(sizes.values()) == 270 and all(n > 0 for n in sizes.values())
    parts = {k: set(v) for k, v in dm.patient_splits().items()}
    assert not (parts["train"] & parts["val"]) and not (parts["train"] & parts["test"])
    for split in ("train", "val", "test"):
        ids = dm.datasets[split].ids
        patients = set(dm.dataset.images.set_index("image").loc[ids, "patient"])
        assert patients <= parts[split]
    batch = _batches(dm, "val")
    assert batch["image"].shape == (4, 1, 128, 128)
    assert set(torch.unique(batch["target"]).tolist()) == {0, 1, 2, 3}
    # the lumbar crop is mostly spine: the labelled classes cover a good part of it
    assert (batch["target"] > 0).float().mean() > 0.2


@requires_spider2d
def test_splits_cover_every_patient_of_the_folder_whatever_the_task_keeps(compose):
    cfg = compose("data=spider2d_seg", "data.image_size=64")
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    parts = dm.patient_splits()
    all_patients = set(dm._all_data.patients())
    assert len(all_patients) == 179 and set().union(*map(set, parts.values())) == all_patients
    masked = set(dm.dataset.patients())  # the 30 patients with masks
    assert len(masked) == 30 and all(masked & set(parts[s]) for s in ("train", "val", "test"))
