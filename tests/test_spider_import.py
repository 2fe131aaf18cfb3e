"""The SPIDER importer on tiny synthetic .mha volumes written in SPIDER's conventions."""

from __future__ import annotations

import hydra
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import run_module

from plid.data.spider import SpiderImportError, import_spider, remap_labels
from plid.datamodules.contract import DISC_COLUMNS, IMAGE_COLUMNS, load_dataset

# canonical volumes are indexed (left-right slice, row from the top, column from anterior): the layout the
# importer must recover whatever the file's orientation
SLICES, ROWS, COLS = 7, 48, 32
GRADING_HEADER = ["Patient", "IVD label", "Modic", "UP endplate", "LOW endplate", "Spondylolisthesis",
                  "Disc herniation", "Disc narrowing", "Disc bulging", "Pfirrman grade"]


def canonical_labels() -> np.ndarray:
    """A lumbar column in SPIDER labels: partial vertebra 103 cut by the top edge, discs 203/202/201 below
    vertebrae 3/2/1, the canal behind; the canal lies in slices 3-5 (so the centre is slice 4) and disc 202
    is missing from slice 5 (so a flipped slice order would show)."""
    labels = np.zeros((SLICES, ROWS, COLS), np.int16)
    body = np.s_[1:6, :, 4:16]
    for (top, bottom), value in [((0, 8), 103), ((8, 11), 203), ((11, 20), 2), ((20, 23), 202), ((23, 32), 1),
                                 ((32, 35), 201)]:
        labels[body][:, top:bottom] = value
    labels[5, 20:23, 4:16] = 2  # no disc 202 in slice 5: vertebra bone there instead
    labels[3:6, 0:40, 18:24] = 100
    return labels


def canonical_image() -> np.ndarray:
    """Intensities that rise downwards and to the right (posterior), so orientation errors show."""
    rows, cols = np.mgrid[0:ROWS, 0:COLS]
    return np.broadcast_to(1000 + 10 * rows + cols, (SLICES, ROWS, COLS)).astype(np.int16).copy()


def to_lps(volume: np.ndarray, spacing=(3.0, 0.5, 0.5)) -> sitk.Image:
    """Stored as most SPIDER series: index axes point left, posterior, superior (numpy: S, P, L)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.transpose(1, 2, 0)[::-1]))
    image.SetSpacing(spacing)  # (left, posterior, superior)
    return image


def to_pir(volume: np.ndarray, spacing=(0.5, 1.0, 3.0)) -> sitk.Image:
    """Stored as SPIDER's SPACE series: index axes point posterior, inferior, right (numpy: R, I, P)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume[::-1]))
    image.SetDirection((0, 0, -1, 1, 0, 0, 0, -1, 0))
    image.SetSpacing(spacing)  # (posterior, inferior, right): rows twice as coarse as columns
    return image


def write_spider(root, series_per_patient: dict[str, list[tuple[str, str]]], gradings: list[list]) -> None:
    """A SPIDER-like folder; ``series_per_patient``: patient -> [(series, orientation)]."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    labels, image = canonical_labels(), canonical_image()
    rows = []
    for patient, series in series_per_patient.items():
        for name, orientation in series:
            stem = f"{patient}_{name}"
            convert = to_lps if orientation == "LPS" else to_pir
            sitk.WriteImage(convert(image), str(root / "images" / f"{stem}.mha"))
            sitk.WriteImage(convert(labels), str(root / "masks" / f"{stem}.mha"))
            rows.append({"new_file_name": stem, "num_vertebrae": 3, "subset": "validation" if patient == "9"
                         else "training"})
    pd.DataFrame(rows).to_csv(root / "overview.csv", index=False)
    pd.DataFrame(gradings, columns=GRADING_HEADER).to_csv(root / "radiological_gradings.csv", index=False)


GRADINGS = [
    [1, 1, 2, 1, 0, 0, 1, 1, 1, 4],  # disc 201 of patient 1: herniated
    [1, 2, 0, 0, 0, 0, 0, 0, 1, 2],
    [1, 0, 0, 0, 0, 0, 0, 0, 0, 1],  # IVD label 0: invalid row, ignored; disc 203 has no row
    [3, 1, 0, 0, 0, 0, 0, 0, 0, 2],
]
PATIENTS = {"1": [("t1", "LPS"), ("t2", "LPS")], "2": [("t2_SPACE", "PIR")], "3": [("t2", "LPS")],
            "4": [("t2", "LPS")], "9": [("t2", "LPS")]}


@pytest.fixture(scope="module")
def spider(tmp_path_factory):
    root = tmp_path_factory.mktemp("SPIDER")
    write_spider(root, PATIENTS, GRADINGS)
    return root


@pytest.fixture(scope="module")
def imported(spider, tmp_path_factory):
    return import_spider(spider, tmp_path_factory.mktemp("out") / "spider2d", slices=3)


def test_remap_labels_to_the_four_classes():
    labels = np.array([0, 1, 7, 100, 101, 125, 201, 209])
    assert remap_labels(labels).tolist() == [0, 1, 1, 3, 1, 1, 2, 2]
    with pytest.raises(SpiderImportError, match=r"\[200, 300\]"):
        remap_labels(np.array([0, 200, 300]), "m.mha")


def test_tables_follow_the_contract_and_subset(imported):
    images = pd.read_csv(imported / "images.csv", dtype={"patient": str})
    discs = pd.read_csv(imported / "discs.csv", dtype={"patient": str})
    assert list(images.columns) == IMAGE_COLUMNS and list(discs.columns) == DISC_COLUMNS
    assert set(images["patient"]) == {"1", "2", "3", "4"}  # patient 9 is SPIDER validation
    assert images.groupby(["patient", "series"]).size().tolist() == [3, 3, 3, 3, 3]
    assert (images["has_mask"] == 1).all()
    assert set(pd.read_csv(imported / "overview.csv")["new_file_name"]) == {"1_t1", "1_t2", "2_t2_SPACE",
                                                                            "3_t2", "4_t2"}
    assert set(pd.read_csv(imported / "radiological_gradings.csv")["Patient"]) == {1, 3}
    dataset = load_dataset(imported)
    for name in images["image"]:
        assert dataset.read_image(name).shape == dataset.read_mask(name).shape


@pytest.mark.parametrize(("stem", "slice_names", "row_scale"), [
    ("1_t2", [3, 4, 5], 1),  # LPS: the file counts slices to the left, as the canonical volume does
    ("2_t2_SPACE", [3, 2, 1], 2),  # PIR: counts to the right; rows (1.0 mm) resampled to the 0.5 mm columns
])
def test_slices_are_upright_anterior_left_with_remapped_masks(imported, stem, slice_names, row_scale):
    dataset = load_dataset(imported)
    labels = canonical_labels()
    for canonical_slice, stored_slice in zip([3, 4, 5], slice_names):
        name = f"{stem}_s{stored_slice:03d}"
        expected = np.repeat(remap_labels(labels[canonical_slice]), row_scale, axis=0)
        np.testing.assert_array_equal(dataset.read_mask(name), expected)
        image = dataset.read_image(name).astype(int)
        assert image.shape == (ROWS * row_scale, COLS)
        assert image[-1, 0] > image[0, 0] and image[0, -1] > image[0, 0]  # brighter downwards and posteriorly
    row = dataset.images.set_index("image").loc[f"{stem}_s{slice_names[1]:03d}"]
    assert row["slice"] == slice_names[1]
    assert [row[c] for c in ("lumbar_x1", "lumbar_y1", "lumbar_x2", "lumbar_y2")] == [4, 0, 24, 40 * row_scale]


def test_discs_get_boxes_levels_and_gradings_from_the_labels(imported):
    dataset = load_dataset(imported)
    discs = dataset.discs.set_index(["image", "ivd_label"])
    centre = discs.loc["1_t2_s004"]
    assert sorted(centre.index) == [1, 2, 3]
    assert centre.loc[1, ["x1", "y1", "x2", "y2"]].tolist() == [4, 32, 16, 35]
    assert centre.loc[1, ["modic", "up_endplate", "disc_herniation", "disc_bulging", "pfirrman_grade"]].tolist() \
        == [2, 1, 1, 1, 4]
    assert centre.loc[2, "disc_herniation"] == 0 and centre.loc[2, "pfirrman_grade"] == 2
    assert centre.loc[3].drop(["patient", "x1", "y1", "x2", "y2"]).isna().all()  # no grading row for disc 203
    assert sorted(discs.loc["1_t2_s005"].index) == [1, 3]  # disc 202 is not in that slice
    assert discs.loc["2_t2_SPACE_s003"].loc[2, ["y1", "y2"]].tolist() == [40, 46]  # rows doubled
    assert discs.loc["2_t2_SPACE_s003"]["disc_herniation"].isna().all()  # patient 2 has no gradings


def test_options_series_subset_and_refusals(spider, tmp_path):
    out = import_spider(spider, tmp_path / "space", series=["t2_SPACE"], slices=1, subset="all")
    images = pd.read_csv(out / "images.csv")
    assert images["image"].tolist() == ["2_t2_SPACE_s002"]  # the slice through the canal's centre
    out = import_spider(spider, tmp_path / "val", series=["t2"], slices=20, subset="validation")
    images = pd.read_csv(out / "images.csv")
    assert set(images["patient"]) == {9} and len(images) == 5  # every slice that shows a label
    with pytest.raises(SpiderImportError, match="not empty"):
        import_spider(spider, out)
    with pytest.raises(SpiderImportError, match="t3"):
        import_spider(spider, tmp_path / "x", series=["t3"])
    with pytest.raises(SpiderImportError, match="inside the SPIDER folder"):
        import_spider(spider, spider / "out")


def test_series_without_mask_and_gradings_with_gaps(tmp_path):
    root = tmp_path / "SPIDER"
    write_spider(root, {"7": [("t2", "LPS")]}, [[7, 1, 0, 0, 0, 0, 1, 0, 1, None]])  # Pfirrman grade missing
    out = import_spider(root, tmp_path / "with_mask", slices=1)
    disc = pd.read_csv(out / "discs.csv").set_index("ivd_label").loc[1]
    assert disc["disc_herniation"] == 1 and pd.isna(disc["pfirrman_grade"])
    (root / "masks" / "7_t2.mha").unlink()
    out = import_spider(root, tmp_path / "no_mask", slices=3)
    images = pd.read_csv(out / "images.csv")
    assert images["image"].tolist() == ["7_t2_s002", "7_t2_s003", "7_t2_s004"]  # the middle of the volume
    assert (images["has_mask"] == 0).all() and images["lumbar_x1"].isna().all()
    assert pd.read_csv(out / "discs.csv").empty and not list((out / "masks").iterdir())


def test_import_loads_in_the_segmentation_datamodule(compose, imported, tmp_path):
    cfg = compose("data=spider2d_seg", f"data.root={imported}", "data.image_size=32", "data.batch_size=2",
                  "data.num_folds=2", "data.test_fraction=0.25", f"data.splits_dir={tmp_path}/splits")
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    assert sum(len(ds) for ds in dm.datasets.values()) == 15
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 1, 32, 32)
    assert set(batch["target"].unique().tolist()) <= {0, 1, 2, 3}


@pytest.mark.slow
def test_command_line_import(spider, tmp_path):
    out = tmp_path / "cli"
    result = run_module("plid.data.spider", f"root={spider}", f"out={out}", "slices=2", "debug=smoke", "workers=2",
                        f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 0, result.stderr
    assert set(pd.read_csv(out / "images.csv")["image"]) == {"1_t1_s004", "1_t1_s005", "1_t2_s004", "1_t2_s005"}
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()
    result = run_module("plid.data.spider", f"root={spider}", f"out={out}", f"hydra.run.dir={tmp_path}/run2")
    assert result.returncode != 0 and "not empty" in result.stderr and "Traceback" not in result.stderr


def test_import_loads_in_the_classification_datamodule(compose, imported, tmp_path):
    # only patients 1 and 3 carry gradings: a split of one's own puts one graded patient on each side
    splits = tmp_path / "splits.json"
    splits.write_text('{"test": [], "folds": [{"train": ["1", "2"], "val": ["3", "4"]}]}')
    cfg = compose("model=cls_resnet50", "data=spider2d_cls", f"data.root={imported}", "data.image_size=32",
                  f"data.splits_file={splits}", "data.target=disc_bulging")
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    samples = [(case_id, int(t)) for ds in dm.datasets.values() for case_id, t in zip(ds.ids, ds.targets)]
    assert samples and all(":" in case_id for case_id, _ in samples)  # <image>:<ivd_label>
    graded = pd.read_csv(imported / "discs.csv").dropna(subset=["disc_bulging"])
    assert len(samples) == len(graded)


@pytest.mark.parametrize("stage", ["lumbar", "ivd"])
def test_import_loads_in_the_detection_datamodule(compose, imported, tmp_path, stage):
    cfg = compose("data=spider2d_det", f"data.root={imported}", f"stage={stage}", "data.num_folds=2",
                  "data.test_fraction=0.25", f"data.splits_dir={tmp_path}/splits", config_name="detect")
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    data_yaml = dm.export(tmp_path / f"yolo_{stage}")
    labels = list((data_yaml.parent).rglob("labels/**/*.txt"))
    assert data_yaml.is_file() and labels and sum(dm.samples.values()) == len(labels)
    assert all(line.startswith("0 ") for path in labels for line in path.read_text().splitlines())
