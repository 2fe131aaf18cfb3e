"""Bad input stops with one clear message naming the culprit, before training; data.on_error=skip skips it."""

import cv2
import numpy as np
import pandas as pd
import pytest

from plid.datamodules.contract import DataContractError
from plid.datamodules.segmentation import SegmentationDataModule
from plid.datamodules.synthetic import SyntheticSpec, write_dataset
from plid.errors import UserInputError


@pytest.fixture
def dataset_root(tmp_path):
    return write_dataset(tmp_path / "ds", SyntheticSpec(num_patients=12, image_size=64, seed=3))


def _setup(root, tmp_path, **kwargs):
    dm = SegmentationDataModule(root=str(root), splits_dir=str(tmp_path / "splits"), num_folds=2, image_size=64,
                                cache_dir=str(tmp_path / "cache"), **kwargs)
    dm.setup("fit")
    return dm


def _edit_csv(path, edit):
    table = pd.read_csv(path, dtype={"image": str, "patient": str})
    edit(table)
    table.to_csv(path, index=False)


def _first_image(root):
    return pd.read_csv(root / "images.csv")["image"].iloc[0]


def test_row_naming_a_missing_image(dataset_root, tmp_path):
    name = _first_image(dataset_root)
    (dataset_root / "images" / f"{name}.png").unlink()
    with pytest.raises(DataContractError, match=f"{name}.*not found.*on_error=skip"):
        _setup(dataset_root, tmp_path)


def test_corrupt_image(dataset_root, tmp_path):
    name = _first_image(dataset_root)
    path = dataset_root / "images" / f"{name}.png"
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.raises(DataContractError, match=f"{name}.png: cannot be decoded"):
        _setup(dataset_root, tmp_path, test_fraction=0.0)


def test_mask_values_outside_the_classes(dataset_root, tmp_path):
    name = _first_image(dataset_root)
    path = dataset_root / "masks" / f"{name}.png"
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    mask[mask == 3] = 100  # SPIDER's raw canal label, not remapped
    cv2.imwrite(str(path), mask)
    with pytest.raises(DataContractError, match=f"masks/{name}.png: mask values .*100.*outside 0-3"):
        _setup(dataset_root, tmp_path, test_fraction=0.0)


def test_mask_size_differs_from_image(dataset_root, tmp_path):
    name = _first_image(dataset_root)
    path = dataset_root / "masks" / f"{name}.png"
    cv2.imwrite(str(path), np.zeros((32, 64), np.uint8))
    with pytest.raises(DataContractError, match=f"{name}.png: mask is .*but its image is"):
        _setup(dataset_root, tmp_path, test_fraction=0.0)


@pytest.mark.parametrize("box,what", [((10, 10, 90, 40), "outside"), ((20, 10, 20, 40), "zero or negative size")])
def test_bad_lumbar_box(dataset_root, tmp_path, box, what):
    name = _first_image(dataset_root)

    def edit(table):
        table.loc[table["image"] == name, ["lumbar_x1", "lumbar_y1", "lumbar_x2", "lumbar_y2"]] = box

    _edit_csv(dataset_root / "images.csv", edit)
    with pytest.raises(DataContractError, match=f"images.csv row for image '{name}': lumbar box .*{what}"):
        _setup(dataset_root, tmp_path)


def test_bad_disc_box(dataset_root, tmp_path):
    def edit(table):
        table.loc[3, ["x1", "x2"]] = (50, 10)

    _edit_csv(dataset_root / "discs.csv", edit)
    with pytest.raises(DataContractError, match="discs.csv row for image .*: disc box .*zero or negative"):
        _setup(dataset_root, tmp_path)


def test_split_that_ends_up_empty(dataset_root, tmp_path):
    # masks only for the patients of one half: the validation split of some fold has no segmented image
    images = pd.read_csv(dataset_root / "images.csv", dtype={"patient": str})
    dm = SegmentationDataModule(root=str(dataset_root), splits_dir=str(tmp_path / "splits"), num_folds=2)
    val = set(dm.patient_splits()["val"])
    _edit_csv(dataset_root / "images.csv", lambda t: t.__setitem__("has_mask", (~t["patient"].isin(val)).astype(int)))
    assert images["patient"].isin(val).any()
    with pytest.raises(UserInputError, match="val split of fold 0 holds no samples"):
        _setup(dataset_root, tmp_path)


def test_skip_leaves_bad_rows_out_with_a_count(dataset_root, tmp_path, caplog):
    names = pd.read_csv(dataset_root / "images.csv")["image"].tolist()
    (dataset_root / "images" / f"{names[0]}.png").write_bytes(b"not a png")
    (dataset_root / "masks" / f"{names[1]}.png").unlink()
    dm = _setup(dataset_root, tmp_path, on_error="skip", test_fraction=0.0)
    kept = [i for ds in dm.datasets.values() for i in ds.ids]
    assert names[0] not in kept and names[1] not in kept
    assert len(kept) == len(names) - 2
    assert "1 bad rows skipped" in caplog.text and "1 images skipped" in caplog.text


def test_decoded_arrays_are_cached_and_reused(dataset_root, tmp_path):
    first = _setup(dataset_root, tmp_path)
    cached = sorted((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 3  # train, val, test
    again = _setup(dataset_root, tmp_path)
    assert np.array_equal(first.datasets["val"].images, again.datasets["val"].images)
    # a changed file invalidates its split's cache entry
    name = first.datasets["val"].ids[0]
    path = dataset_root / "images" / f"{name}.png"
    cv2.imwrite(str(path), 255 - cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
    changed = _setup(dataset_root, tmp_path)
    assert not np.array_equal(first.datasets["val"].images, changed.datasets["val"].images)
