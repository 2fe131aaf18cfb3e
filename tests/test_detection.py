"""Two-stage detection: YOLO label export, ROI cropping, offline training of both stages."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import SPIDER2D, requires_spider2d, run_module

from plid.boxes import enlarge_box, from_yolo, to_yolo
from plid.datamodules.contract import DISC_BOX, LUMBAR_BOX
from plid.datamodules.yolo import write_labels
from plid.errors import UserInputError
from plid.models.detection import NMS_IOU, NoLumbarRegionFound, RoiCropper, YoloDetector


def read_labels(path) -> np.ndarray:
    rows = np.loadtxt(path, ndmin=2)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:]


def test_pixel_boxes_round_trip_through_yolo_label_files(tmp_path):
    rng = np.random.default_rng(0)
    height, width = 317, 451
    x1, y1 = rng.integers(0, 300, 20), rng.integers(0, 200, 20)
    boxes = np.stack([x1, y1, x1 + rng.integers(1, 150, 20), y1 + rng.integers(1, 117, 20)], axis=1)
    write_labels(tmp_path / "a.txt", boxes, np.zeros(len(boxes)), height, width)
    labels = read_labels(tmp_path / "a.txt")
    assert ((labels >= 0) & (labels <= 1)).all()
    np.testing.assert_allclose(from_yolo(labels, height, width), boxes, atol=1.0)
    np.testing.assert_allclose(to_yolo([[0, 0, width, height]], height, width), [[0.5, 0.5, 1, 1]])


def test_enlarge_box_grows_ten_percent_about_the_centre_and_clips_to_the_image():
    assert enlarge_box((100, 100, 200, 300), 0.1, 400, 400) == (95, 90, 205, 310)
    assert enlarge_box((0, 5, 50, 400), 0.1, 400, 300) == (0, 0, 53, 400)  # clipped left, top and bottom
    assert enlarge_box((290, 390, 300, 400), 0.1, 400, 300) == (289, 389, 300, 400)  # clipped right, bottom


@pytest.fixture
def detect_cfg(compose):
    """Compose ``plid/conf/detect.yaml`` as a run would, outputs in ``tmp_path``."""
    return lambda *overrides: compose(*overrides, config_name="detect")


@pytest.mark.parametrize("stage", ["lumbar", "ivd"])
def test_export_labels_give_back_the_table_boxes_in_the_stage_image(detect_cfg, stage, tmp_path):
    import hydra

    cfg = detect_cfg(f"stage={stage}", "debug=smoke")
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    data_yaml = dm.export(tmp_path / "export")
    spec = yaml.safe_load(data_yaml.read_text())
    assert spec["names"] == {0: "lumbar" if stage == "lumbar" else "disc"}
    row = dm.datasets["train"].iloc[0]
    image = dm.dataset.read_image(row["image"])
    lumbar = row[LUMBAR_BOX].to_numpy(dtype=float)
    if stage == "lumbar":
        expected, size = lumbar[None], image.shape
    else:
        x1, y1, x2, y2 = enlarge_box(lumbar, 0.1, *image.shape)
        expected = dm.dataset.discs.loc[dm.dataset.discs["image"] == row["image"], DISC_BOX].to_numpy(float)
        expected = np.clip(expected - [x1, y1, x1, y1], 0, [x2 - x1, y2 - y1] * 2)
        size = (y2 - y1, x2 - x1)
    assert (tmp_path / "export" / "images" / "train" / f"{row['image']}.png").is_file()
    labels = read_labels(tmp_path / "export" / "labels" / "train" / f"{row['image']}.txt")
    found = from_yolo(labels, *size)
    np.testing.assert_allclose(found[np.lexsort(found.T[::-1])], expected[np.lexsort(expected.T[::-1])], atol=1.0)


def test_level_classes_of_the_disc_stage_are_each_box_ivd_label(detect_cfg, tmp_path):
    """disc_classes=level: class k is level k + 1 (L5/S1 = 0), named as LEVEL_NAMES, box for box."""
    import hydra

    from plid.labels import LEVEL_NAMES

    cfg = detect_cfg("stage=ivd", "debug=smoke", "data.disc_classes=level")
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    spec = yaml.safe_load(dm.export(tmp_path / "export").read_text())
    assert spec["names"] == dict(enumerate(LEVEL_NAMES))
    row = dm.datasets["train"].iloc[0]
    image = dm.dataset.read_image(row["image"])
    x1, y1, x2, y2 = enlarge_box(row[LUMBAR_BOX].to_numpy(dtype=float), 0.1, *image.shape)
    discs = dm.dataset.discs[dm.dataset.discs["image"] == row["image"]]
    rows = np.loadtxt(tmp_path / "export" / "labels" / "train" / f"{row['image']}.txt", ndmin=2)
    found = from_yolo(rows[:, 1:], y2 - y1, x2 - x1) + [x1, y1, x1, y1]
    for (cls, box) in zip(rows[:, 0], found):  # each label's class is the ivd_label of the table box it came from
        nearest = np.abs(discs[DISC_BOX].to_numpy(float) - box).sum(axis=1).argmin()
        assert cls == discs["ivd_label"].iloc[nearest] - 1
    assert len(set(rows[:, 0])) == len(rows) > 1  # one box per level


def test_unknown_disc_classes_are_refused_by_name():
    from plid.datamodules.yolo import DetectionDataModule

    with pytest.raises(UserInputError, match="disc_classes='levels'"):
        DetectionDataModule(root="unused", stage="ivd", disc_classes="levels")


@requires_spider2d
def test_level_classes_on_real_slices_leave_out_exactly_the_images_without_levels():
    from plid.datamodules.yolo import DetectionDataModule

    discs = pd.read_csv(SPIDER2D / "discs.csv")
    unlevelled = set(discs.loc[discs["ivd_label"].isna(), "image"])
    assert unlevelled and not unlevelled & set(discs.loc[discs["ivd_label"].notna(), "image"])  # all or none
    dm = DetectionDataModule(root=str(SPIDER2D), stage="ivd", disc_classes="level")
    dm.prepare_data()
    dm.setup()
    assert dm.left_out["no_levels"] == len(unlevelled)
    kept = set(dm.dataset.images["image"])
    assert kept == set(discs["image"]) - unlevelled


def fake_detector(boxes, scores=None):
    def detect(image):
        b = np.asarray(boxes, dtype=float).reshape(-1, 4)
        return b, np.asarray(scores if scores is not None else np.ones(len(b)), dtype=float)

    return detect


def test_roi_cropper_returns_discs_bottom_up_in_image_coordinates():
    image = np.arange(200 * 100, dtype=np.uint32).reshape(200, 100).astype(np.uint8)
    lumbar = [[0, 0, 10, 10], [20, 40, 80, 180]]  # the second, more confident box is the lumbar region
    region = enlarge_box(lumbar[1], 0.1, 200, 100)
    discs = [[10, 30, 40, 40], [12, 120, 45, 132], [11, 70, 44, 84]]  # crop coordinates, not in order
    cropper = RoiCropper(fake_detector(lumbar, [0.3, 0.9]), fake_detector(discs, [0.8, 0.7, 0.6]))
    result = cropper(image)
    assert result.lumbar_box == (20, 40, 80, 180) and result.lumbar_crop_box == region
    assert result.lumbar_image.shape == (region[3] - region[1], region[2] - region[0])
    assert [d.level for d in result.discs] == [1, 2, 3]
    centres = [(d.box[1] + d.box[3]) / 2 for d in result.discs]
    assert centres == sorted(centres, reverse=True)  # image y grows downwards: level 1 is the lowest
    assert result.discs[0].box == (12 + region[0], 120 + region[1], 45 + region[0], 132 + region[1])
    for disc in result.discs:
        assert disc.crop_box == enlarge_box(disc.box, 0.1, 200, 100)
        np.testing.assert_array_equal(disc.image, image[disc.crop_box[1]:disc.crop_box[3], disc.crop_box[0]:disc.crop_box[2]])


def test_roi_cropper_says_so_when_stage_one_finds_nothing():
    cropper = RoiCropper(fake_detector([]), fake_detector([[0, 0, 5, 5]]))
    with pytest.raises(NoLumbarRegionFound, match="no lumbar region found"):
        cropper(np.zeros((64, 64), np.uint8))


@pytest.mark.parametrize("stage", ["lumbar", "ivd"])
def test_one_epoch_of_each_stage_trains_and_tests_offline(detect_cfg, stage, tmp_path, no_network):
    from plid.detect import detect

    cfg = detect_cfg(f"stage={stage}", "debug=smoke")
    metrics, objects = detect(cfg)
    assert no_network == []
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task"] == f"detection_{stage}" and summary["epochs"] == 1 and summary["imgsz"] == 64
    assert set(summary["test"]) == {"map50", "map50_95", "precision", "recall"}
    assert all(0 <= v <= 1 for v in summary["test"].values())
    assert (tmp_path / "run" / "yolo" / "weights" / "best.pt").is_file()
    logged = pd.read_csv(tmp_path / "run" / "csv" / "metrics.csv")  # the Lightning-side logger
    assert {"val/map50", "test/map50", "train/box_loss"} <= set(logged.columns)
    assert metrics["test/map50_95"] == summary["test"]["map50_95"]


def test_detect_refuses_a_weights_name_it_would_have_to_download(detect_cfg, no_network):
    from plid.detect import detect

    cfg = detect_cfg("debug=smoke", "detector.weights=yolov8n.pt")
    with pytest.raises(UserInputError, match="local .pt"):
        detect(cfg)
    assert no_network == []


def test_roi_cropper_runs_on_trained_weights_offline(detect_cfg, tmp_path, no_network):
    """The cropper on real (one-epoch, 64 px) YOLO weights: a low threshold so that the untrained models answer."""
    import hydra

    from plid.detect import detect

    weights = {}
    for stage in ("lumbar", "ivd"):
        # the ivd detector starts from the lumbar one: a local .pt as starting point, offline
        start = [f"detector.weights={weights['lumbar']}"] if stage == "ivd" else []
        cfg = detect_cfg(f"stage={stage}", "debug=smoke", f"paths.output_dir={tmp_path}/{stage}", "test=false", *start)
        weights[stage] = detect(cfg)[1]["weights"]
    dataset = hydra.utils.instantiate(detect_cfg("debug=smoke").data, _convert_="all").dataset
    image = dataset.read_image(dataset.images["image"].iloc[0])
    cropper = RoiCropper.from_weights(weights["lumbar"], weights["ivd"], conf=0.0001)
    result = cropper(image)
    x1, y1, x2, y2 = result.lumbar_crop_box
    assert 0 <= x1 < x2 <= image.shape[1] and 0 <= y1 < y2 <= image.shape[0]
    assert result.lumbar_image.shape == (y2 - y1, x2 - x1)
    assert [d.level for d in result.discs] == list(range(1, len(result.discs) + 1))
    assert no_network == []
    with pytest.raises(NoLumbarRegionFound):  # nothing is that sure of itself after one epoch at 64 px
        RoiCropper.from_weights(weights["lumbar"], weights["ivd"], conf=0.999)(image)
    # the detector's direct calls give what ultralytics' model.predict gives, image after image
    detector = YoloDetector.from_weights(weights["lumbar"], conf=0.0001)
    for name in dataset.images["image"].iloc[:4]:
        image = dataset.read_image(name)
        boxes, scores = detector(image)
        reference = detector.predict(image).boxes
        assert len(boxes) > 0
        np.testing.assert_allclose(boxes, reference.xyxy.numpy(), atol=1e-3)
        np.testing.assert_allclose(scores, reference.conf.numpy(), atol=1e-5)
    # the NMS IoU reaches ultralytics: the stricter default keeps fewer of the overlapping boxes than its 0.7
    found = {iou: len(YoloDetector.from_weights(weights["ivd"], conf=0.0001, iou=iou)(result.lumbar_image)[0])
             for iou in (NMS_IOU, 0.7)}
    assert 0 < found[NMS_IOU] < found[0.7]


@pytest.mark.slow
@requires_spider2d
def test_detect_command_on_real_slices_smoke(tmp_path):
    """``python -m plid.detect`` as a user runs it, on spider2d: the renders without a lumbar box are counted."""
    out = run_module("plid.detect", "stage=ivd", "data=spider2d_det", f"data.root={SPIDER2D}", "debug=smoke",
                     f"paths.data_dir={tmp_path}/data", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["left_out"]["no_lumbar_box"] > 0 and summary["samples"]["train"] == 4
    # the mid-sagittal renders with disc boxes train the detectors too, with a lumbar box derived from their discs
    assert summary["left_out"]["lumbar_box_from_discs"] == 128
    assert set(summary["test"]) == {"map50", "map50_95", "precision", "recall"}


def test_a_lumbar_box_derived_from_the_discs_follows_the_rule():
    from plid.datamodules.contract import DERIVED_LUMBAR_MARGINS, derived_lumbar_box

    discs = [(10, 100, 30, 110), (12, 80, 32, 90), (11, 60, 29, 70)]  # median width 20, height 10
    m = DERIVED_LUMBAR_MARGINS
    assert derived_lumbar_box(discs, 200, 100) == pytest.approx(
        (10 - m["anterior"] * 20, 60 - m["above"] * 10, 32 + m["posterior"] * 20, 110 + m["below"] * 10))
    assert derived_lumbar_box(discs, 105, 40)[2:] == (40.0, 105.0)  # clipped to the image


@requires_spider2d
def test_derived_lumbar_boxes_match_the_mask_boxes_on_real_slices():
    """On the t2_SPACE slices, where the mask gives the lumbar box, the rule gives nearly the same box; every
    mid-sagittal render with disc boxes gets one."""
    import numpy as np
    import torch
    from torchvision.ops import box_iou

    from plid.datamodules.contract import LUMBAR_BOX, derived_lumbar_box, load_dataset, with_lumbar_boxes

    dataset = load_dataset(SPIDER2D)
    boxed = with_lumbar_boxes(dataset).images
    assert (boxed["lumbar_box_source"] == "discs").sum() == 128
    assert boxed.loc[boxed["lumbar_box_source"] == "discs", "series"].isin(["t1", "t2"]).all()
    masked = dataset.images[dataset.images["has_mask"] == 1]
    discs = dict(tuple(dataset.discs.groupby("image")))
    derived = np.array([derived_lumbar_box(discs[r.image][["x1", "y1", "x2", "y2"]].to_numpy(), r.height, r.width)
                        for r in masked.itertuples()])
    iou = box_iou(torch.tensor(derived), torch.tensor(masked[LUMBAR_BOX].to_numpy(float))).diagonal().numpy()
    assert np.median(iou) > 0.85 and np.quantile(iou, 0.1) > 0.7


def test_a_level_class_disc_detector_gives_each_box_a_level_and_one_box_per_disc(detect_cfg, tmp_path, no_network):
    """One epoch at 64 px of data.disc_classes=level: the detector says it names levels, each box gets a level in
    1..9, and NMS runs across classes (no two boxes of one disc with different levels)."""
    import hydra

    from plid.detect import detect
    from plid.labels import LEVEL_NAMES

    cfg = detect_cfg("stage=ivd", "debug=smoke", "data.disc_classes=level", "test=false")
    weights = detect(cfg)[1]["weights"]
    detector = YoloDetector.from_weights(weights, conf=0.0001)
    assert detector.by_level and detector.model.names == dict(enumerate(LEVEL_NAMES))
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    image = dm.dataset.read_image(dm.dataset.images["image"].iloc[0])
    boxes, scores, levels = detector(image)
    assert len(boxes) == len(scores) == len(levels) > 0
    assert set(levels.tolist()) <= set(range(1, len(LEVEL_NAMES) + 1))
    # NMS across classes, on both paths (an untrained net's boxes overlap only where clipped to the image)
    assert detector.model.predictor.args.agnostic_nms
    detector(image)
    assert detector._predictor.args.agnostic_nms and detector._predictor.args.iou == NMS_IOU
    assert no_network == []
