"""The inference pipeline: readers, model_dir round trip, per-disc reports, a folder with a broken file."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from plid.data.samples import write_dicom, write_volume
from plid.data.scans import ScanReadError, list_scans, read_scan
from plid.datamodules.synthetic import generate_case
from plid.inference.batch import predict_files
from plid.inference.levels import level_names
from plid.inference.model_dir import LoadedModels, LoadedModule, export_model_dir, load_model_dir
from plid.inference.pipeline import Pipeline
from plid.labels import LEVEL_NAMES
from plid.models.detection import RoiCropper
from tests.conftest import resign_manifest, run_module


@pytest.fixture(scope="module")
def case():
    return generate_case(np.random.default_rng(3), size=128)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


@pytest.mark.parametrize("name, stored", [("scan.dcm", None), ("scan.nii.gz", "LPS"), ("scan.mha", "RAS")])
def test_readers_bring_every_format_back_upright(tmp_path, case, name, stored):
    image = case.image[:, :100]  # not square, so a transposed read would show
    path = tmp_path / name
    if name.endswith(".dcm"):
        write_dicom(image, path, spacing_mm=0.7)
    else:
        write_volume(image, path, spacing_mm=0.7, stored_orientation=stored)
    scan = read_scan(path)
    assert scan.image.dtype == np.uint8 and scan.image.shape == image.shape
    assert _correlation(scan.image, image) > 0.99  # the same picture, not flipped or transposed
    assert scan.spacing_mm == pytest.approx(0.7)
    assert scan.name == "scan"


def test_a_broken_file_names_itself(tmp_path):
    for name in ("broken.png", "broken.dcm", "broken.nii.gz"):
        (tmp_path / name).write_bytes(b"not an image at all")
        with pytest.raises(ScanReadError, match=name.replace(".", r"\.")):
            read_scan(tmp_path / name)
    assert [p.name for p in list_scans(tmp_path)] == ["broken.dcm", "broken.nii.gz", "broken.png"]


def test_level_names_count_up_from_l5_s1_and_stop_where_the_count_is_suspect():
    assert level_names(3) == ["L5/S1", "L4/L5", "L3/L4"]
    assert level_names(len(LEVEL_NAMES))[-1] == "T9/T10"
    assert level_names(len(LEVEL_NAMES) + 1) == [None] * (len(LEVEL_NAMES) + 1)
    assert level_names(6, max_named=5) == [None] * 6


class _MeanIntensity(torch.nn.Module):
    """A stand-in classifier whose herniation probability is known: the mean standardised input, squashed."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        z = x.mean(dim=(1, 2, 3)) * self.scale
        return torch.stack([torch.zeros_like(z), z], 1)


def _segmenter(compose, image_size: int = 64) -> LoadedModule:
    import hydra

    cfg = compose("debug=smoke")
    return LoadedModule("segmenter", hydra.utils.instantiate(cfg.model, _convert_="all").eval(), image_size, 0.1)


def _truth_cropper(case) -> RoiCropper:
    """Detectors that return the case's reference boxes (the disc boxes moved into the lumbar crop), shuffled,
    so that ordering and numbering are the pipeline's own."""
    lumbar = np.array([case.lumbar_box], float)
    discs = np.array([d["box"] for d in case.discs], float)[::-1][np.random.default_rng(0).permutation(len(case.discs))]

    def detect_lumbar(image):
        return lumbar, np.array([0.9])

    def detect_discs(region):
        # the region is the lumbar box enlarged by 10 % and clipped: find its corner from its size
        from plid.boxes import enlarge_box

        x1, y1, _, _ = enlarge_box(case.lumbar_box, 0.1, *case.image.shape)
        return discs - [x1, y1, x1, y1], np.linspace(0.9, 0.5, len(discs))

    return RoiCropper(detect_lumbar, detect_discs, 0.1)


def _models(compose, classifiers=(), weights=()) -> LoadedModels:
    return LoadedModels(Path("."), {"detection": {"conf": 0.25, "margin": 0.1}}, None, None, _segmenter(compose),
                        list(classifiers), list(weights))


def test_pipeline_report_per_disc(compose, case):
    classifiers = [LoadedModule("a", _MeanIntensity(1.0), 32, 0.1), LoadedModule("b", _MeanIntensity(-2.0), 32, 0.1)]
    # levels counted: this segmenter is untrained (levels from the anatomy: tests/test_levels.py)
    pipeline = Pipeline(_models(compose, classifiers, [0.3, 0.9]), cropper=_truth_cropper(case), levels="count")
    from plid.data.scans import Scan

    result = pipeline(Scan("case", Path("case.png"), case.image, 0.5, "image"))
    report = result.report
    height, width = case.image.shape
    assert report["status"] == "ok"
    discs = report["discs"]
    assert len(discs) == len(case.discs)
    assert [d["level"] for d in discs] == list(range(1, len(discs) + 1))
    centres = [(d["box"][1] + d["box"][3]) / 2 for d in discs]
    assert centres == sorted(centres, reverse=True)  # level 1 lowest in the image, then upwards
    assert [d["name"] for d in discs] == level_names(len(discs))
    # the discs came back in image coordinates: the reference boxes, bottom-up
    reference = sorted((d["box"] for d in case.discs), key=lambda b: -(b[1] + b[3]))
    np.testing.assert_allclose([d["box"] for d in discs], reference, atol=0.01)
    for box in [report["lumbar"]["box"], *(d["box"] for d in discs)]:
        assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
    # the weighted average of the two stand-ins, by hand for one disc
    from plid.boxes import crop, enlarge_box
    from plid.datamodules.transforms import to_tensor

    lowest = to_tensor(cv2.resize(crop(case.image, enlarge_box(reference[0], 0.1, height, width)), (32, 32),
                                  interpolation=cv2.INTER_AREA))[None]
    p = [torch.softmax(c.net(lowest), 1)[0, 1].item() for c in classifiers]
    assert discs[0]["gradings"]["disc_herniation"]["probability"] == pytest.approx((0.3 * p[0] + 0.9 * p[1]) / 1.2, abs=1e-4)
    # segmentation: a class per pixel of the crop, areas in pixels and mm² (0.5 mm pixels)
    x1, y1, x2, y2 = report["segmentation"]["crop_box"]
    areas = report["segmentation"]["areas"]
    assert sum(a["pixels"] for a in areas.values()) <= (x2 - x1) * (y2 - y1)
    assert all(a["mm2"] == pytest.approx(a["pixels"] * 0.25) for a in areas.values())
    assert result.mask.shape == case.image.shape and not result.mask[:y1].any()


def test_no_lumbar_region_is_reported_per_image(compose, case):
    cropper = RoiCropper(lambda image: (np.zeros((0, 4)), np.zeros(0)), lambda region: (np.zeros((0, 4)), np.zeros(0)))
    from plid.data.scans import Scan

    report = Pipeline(_models(compose), cropper=cropper)(Scan("c", Path("c.png"), case.image, None, "image")).report
    assert report["status"] == "no_lumbar_region" and report["discs"] == [] and "no lumbar region" in report["message"]


def test_folder_with_a_broken_file_reports_the_others(tmp_path, compose, case):
    folder = tmp_path / "scans"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), case.image)
    write_dicom(case.image, folder / "b.dcm")
    write_volume(case.image, folder / "c.nii.gz")
    (folder / "d.png").write_bytes(b"\x89PNG truncated")
    pipeline = Pipeline(_models(compose), cropper=_truth_cropper(case))
    summary = predict_files(list_scans(folder), pipeline, tmp_path / "out", progress=False)
    assert [c["name"] for c in summary["cases"]] == ["a", "b", "c"]
    assert len(summary["errors"]) == 1 and "d.png" in summary["errors"][0]["error"]
    for report in summary["cases"]:
        assert report["status"] == "ok" and [d["level"] for d in report["discs"]] == list(range(1, len(case.discs) + 1))
        assert (tmp_path / "out" / report["overlay"]).is_file()  # relative to report.json's folder
    import hashlib

    by_name = {c["name"]: c for c in summary["cases"]}
    assert by_name["a"]["input"]["sha256"] == hashlib.sha256((folder / "a.png").read_bytes()).hexdigest()
    assert all(d["box_mm"] is None for d in by_name["a"]["discs"])  # a PNG has no geometry
    assert all(len(d["box_mm"]) == 2 for d in by_name["c"]["discs"])  # a volume has
    assert by_name["b"]["input"]["sop_instance_uids"] and by_name["b"]["input"]["series_uid"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["errors"][0]["file"].endswith("d.png")
    page = (tmp_path / "out" / "report.html").read_text()
    assert "d.png" in page and "overlays/a.png" in page
    assert "probabilities are the classifier's\n(no disc classified)" in page  # these models have no classifier
    # the page says which rule named the levels: a one-class disc detector's default, the lumbar edge
    assert "named from L5/S1 where the lumbar region's lower edge" in page and "(levels=anchor;" in page


def _fake_train_run(compose, folder: Path, model: str = "unet_resnet34", *overrides: str, **summary) -> Path:
    """A run folder as plid.train leaves it (config, a weights-only checkpoint, summary.json), untrained."""
    import hydra

    cfg = compose("debug=smoke", f"model={model}", *overrides)
    module = hydra.utils.instantiate(cfg.model, _convert_="all")
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (folder / "checkpoints").mkdir()
    torch.save({"state_dict": module.state_dict(), "epoch": 0}, folder / "checkpoints" / "epoch_000.ckpt")
    (folder / "summary.json").write_text(json.dumps({"best_checkpoint": str(folder / "checkpoints" / "epoch_000.ckpt"),
                                                     "choices": {"model": model}, **summary}))
    return folder


@pytest.fixture(scope="module")
def detector_runs(tmp_path_factory):
    """Untrained YOLOv8n weights in detect-run folders (``<run>/yolo/weights/best.pt`` and the weights-only
    ``<run>/detector.pt`` plid.detect writes beside it), the disc detector's run trained, its summary says, with a
    crop margin of 0.25."""
    from plid.models.detection import WEIGHTS_ONLY_FILE, load_yolo, save_weights_only

    root = tmp_path_factory.mktemp("detectors")
    runs = {}
    for stage, margin in (("lumbar", 0.1), ("ivd", 0.25)):
        yolo = load_yolo("yolov8n.yaml", root / "ultralytics")
        yolo.ckpt = {"train_args": {"imgsz": 64}}
        runs[stage] = root / stage
        (runs[stage] / "yolo" / "weights").mkdir(parents=True)
        yolo.save(runs[stage] / "yolo" / "weights" / "best.pt")
        save_weights_only(runs[stage] / "yolo" / "weights" / "best.pt", runs[stage] / WEIGHTS_ONLY_FILE,
                          root / "ultralytics")
        (runs[stage] / "summary.json").write_text(json.dumps({"task": f"detection_{stage}", "roi_margin": margin}))
    return runs


def test_the_disc_stage_crop_margin_is_the_one_the_disc_detector_was_trained_with(tmp_path, compose, detector_runs):
    seg = _fake_train_run(compose, tmp_path / "seg")
    out = export_model_dir(tmp_path / "model_dir", detector_runs["lumbar"], detector_runs["ivd"], seg)
    loaded = load_model_dir(out)
    assert loaded.manifest["detection"]["margin"] == 0.25
    assert Pipeline(loaded).cropper.margin == 0.25
    # without a summary, the run's config says it
    (detector_runs["ivd"] / "summary.json").rename(tmp_path / "moved.json")
    try:
        (detector_runs["ivd"] / ".hydra").mkdir()
        (detector_runs["ivd"] / ".hydra" / "config.yaml").write_text("data:\n  roi_margin: 0.3\n")
        again = export_model_dir(tmp_path / "again", detector_runs["lumbar"], detector_runs["ivd"], seg)
        assert json.loads((again / "manifest.json").read_text())["detection"]["margin"] == 0.3
    finally:
        (tmp_path / "moved.json").rename(detector_runs["ivd"] / "summary.json")
        (detector_runs["ivd"] / ".hydra" / "config.yaml").unlink()
        (detector_runs["ivd"] / ".hydra").rmdir()


def test_a_model_dir_loads_offline_after_the_initial_weights_are_gone(tmp_path, compose, detector_runs, caplog):
    import timm

    weights_file = tmp_path / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), weights_file)
    classifier = _fake_train_run(compose, tmp_path / "cls", "cls_resnet50", "model.net.name=test_resnet",
                                 f"model.net.weights_file={weights_file}", "model.mode=fine_tune")
    seg = _fake_train_run(compose, tmp_path / "seg")
    config = seg / ".hydra" / "config.yaml"  # trained from ImageNet weights: rebuilding it would download them
    config.write_text(config.read_text().replace("encoder_weights: null", "encoder_weights: imagenet"))
    out = export_model_dir(tmp_path / "model_dir", detector_runs["lumbar"], detector_runs["ivd"], seg, [classifier])
    weights_file.unlink()  # another machine: the file the classifier started from is not there
    assert OmegaConf.load(out / "segmenter" / "config.yaml").model.net.encoder_weights is None
    exported = OmegaConf.load(out / "classifiers" / "cls_resnet50" / "config.yaml").model.net
    assert exported.weights_file is None and exported.pretrained is False
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["segmenter"]["initial_weights"] == {"model.net.encoder_weights": "imagenet"}
    assert manifest["classifiers"]["cls_resnet50"]["initial_weights"] == {"model.net.weights_file": str(weights_file)}
    with caplog.at_level("WARNING"):
        loaded = load_model_dir(out)
    assert "random weights" not in caplog.text  # training advice, moot when the checkpoint is loaded over them
    state = torch.load(classifier / "checkpoints" / "epoch_000.ckpt", weights_only=True)["state_dict"]
    for key, value in loaded.classifiers[0].net.state_dict().items():
        torch.testing.assert_close(value, state[key])


def _two_classifiers(compose, tmp_path) -> list[Path]:
    return [_fake_train_run(compose, tmp_path / name, name, "data.image_size=32", threshold=threshold)
            for name, threshold in (("cls_resnet50", 0.3), ("cls_vgg16", 0.6))]


@pytest.mark.slow
def test_ensemble_and_classifier_names_must_match_both_ways(tmp_path, compose, detector_runs):
    from plid.errors import UserInputError

    seg = _fake_train_run(compose, tmp_path / "seg")
    classifiers = _two_classifiers(compose, tmp_path)
    ensemble = tmp_path / "ensemble_weights.json"
    ensemble.write_text(json.dumps({"task": "cls", "weights": {"cls_resnet50": 0.7}}))  # no weight for cls_vgg16
    with pytest.raises(UserInputError, match=r"no weight for \['cls_vgg16'\]"):
        export_model_dir(tmp_path / "a", detector_runs["lumbar"], detector_runs["ivd"], seg, classifiers, ensemble)
    ensemble.write_text(json.dumps({"task": "cls", "weights": {"cls_resnet50": 0.7, "cls_vgg16": 0.0}}))
    out = export_model_dir(tmp_path / "b", detector_runs["lumbar"], detector_runs["ivd"], seg, classifiers, ensemble)
    assert load_model_dir(out).weights == [0.7, 0.0]  # a weight of 0 the ensemble chose is kept
    # a model_dir whose ensemble file lost a name is refused at load, not run with a weight of 0
    (out / "ensemble_weights.json").write_text(json.dumps({"task": "cls", "weights": {"cls_vgg16": 1.0}}))
    resign_manifest(out)  # the checksums match, so what refuses it is the names check
    with pytest.raises(UserInputError, match=r"no weight for \['cls_resnet50'\]"):
        load_model_dir(out)


@pytest.mark.slow
def test_predict_applies_the_thresholds_chosen_on_validation(tmp_path, compose, case, detector_runs):
    seg = _fake_train_run(compose, tmp_path / "seg")
    classifiers = _two_classifiers(compose, tmp_path)
    ensemble = tmp_path / "ensemble_weights.json"
    ensemble.write_text(json.dumps({"task": "cls", "weights": {"cls_resnet50": 0.5, "cls_vgg16": 1.0},
                                    "threshold": 0.42}))
    out = export_model_dir(tmp_path / "two", detector_runs["lumbar"], detector_runs["ivd"], seg, classifiers, ensemble)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [manifest["classifiers"][n]["threshold"] for n in ("cls_resnet50", "cls_vgg16")] == [0.3, 0.6]
    assert Pipeline(load_model_dir(out)).classifier_description()["threshold"] == 0.42
    one = export_model_dir(tmp_path / "one", detector_runs["lumbar"], detector_runs["ivd"], seg, classifiers[1:])
    pipeline = Pipeline(load_model_dir(one), cropper=_truth_cropper(case))
    assert pipeline.classifier_description()["threshold"] == 0.6
    from plid.data.scans import Scan

    discs = pipeline(Scan("case", Path("case.png"), case.image, 0.5, "image")).report["discs"]
    assert discs and all(d["gradings"]["disc_herniation"]["positive"] == (d["gradings"]["disc_herniation"]["probability"] > 0.6) for d in discs)
    # a version-1 model_dir (no thresholds) loads, with 0.5
    manifest = json.loads((one / "manifest.json").read_text())
    manifest["version"] = 1
    del manifest["classifiers"]["cls_vgg16"]["threshold"]
    (one / "manifest.json").write_text(json.dumps(manifest))
    assert Pipeline(load_model_dir(one)).classifier_description()["threshold"] == 0.5


def _untrained_detectors(folder: Path, imgsz: int = 64) -> dict[str, Path]:
    """``{lumbar, ivd}``: untrained YOLOv8n checkpoints as ultralytics saves them (pickles this test made itself: it
    exports them with ``trust_run=True``)."""
    from plid.models.detection import load_yolo

    weights = {}
    for stage in ("lumbar", "ivd"):
        yolo = load_yolo("yolov8n.yaml", folder / "ultralytics")
        yolo.ckpt = {"train_args": {"imgsz": imgsz}}
        weights[stage] = folder / f"{stage}.pt"
        yolo.save(weights[stage])
    return weights


def test_model_dir_round_trip_loads_weights_only(tmp_path, compose, case, monkeypatch):
    from plid.models.detection import load_yolo

    weights = _untrained_detectors(tmp_path)
    seg = _fake_train_run(compose, tmp_path / "seg")
    classifier = _fake_train_run(compose, tmp_path / "cls", "cls_resnet50")
    out = export_model_dir(tmp_path / "model_dir", weights["lumbar"], weights["ivd"], seg, [classifier], iou=0.45, trust_run=True)
    assert sorted(p.name for p in out.iterdir()) == ["classifiers", "detector_ivd.pt", "detector_lumbar.pt",
                                                     "manifest.json", "segmenter"]
    # nothing in a model_dir needs unpickling
    for path in [*out.glob("*.pt"), *out.glob("*/**/model.ckpt")]:
        torch.load(path, weights_only=True)
    loaded = load_model_dir(out)
    # bare .pt files: the disc detector's run (and its crop margin) is not known, data.roi_margin's default is used
    assert loaded.manifest["detection"] == {"conf": 0.25, "iou": 0.45, "margin": 0.1, "margin_source": "default"}
    # predict's detectors take the exported thresholds unless told otherwise
    assert [(d.conf, d.iou) for d in (Pipeline(loaded).cropper.lumbar, Pipeline(loaded, iou=0.6).cropper.ivd)] \
        == [(0.25, 0.45), (0.25, 0.6)]
    original = load_yolo(str(weights["lumbar"]), tmp_path / "ultralytics")
    image = np.repeat(case.image[..., None], 3, axis=2)
    a = loaded.lumbar.predict(image, conf=0.0001, imgsz=64, verbose=False)[0].boxes
    b = original.predict(image, conf=0.0001, imgsz=64, verbose=False)[0].boxes
    np.testing.assert_allclose(a.xyxy.numpy(), b.xyxy.numpy(), atol=1e-3)
    state = torch.load(seg / "checkpoints" / "epoch_000.ckpt", weights_only=True)["state_dict"]
    for key, value in loaded.segmenter.net.state_dict().items():
        torch.testing.assert_close(value, state[key])
    assert [c.name for c in loaded.classifiers] == ["cls_resnet50"] and loaded.weights == [1.0]
    assert loaded.classifiers[0].target == "disc_herniation"
    state = torch.load(classifier / "checkpoints" / "epoch_000.ckpt", weights_only=True)["state_dict"]
    for key, value in loaded.classifiers[0].net.state_dict().items():
        torch.testing.assert_close(value, state[key])
    with pytest.raises(Exception, match="ensemble"):  # two classifiers need the weights that combine them
        export_model_dir(tmp_path / "two", weights["lumbar"], weights["ivd"], seg,
                         [classifier, _fake_train_run(compose, tmp_path / "cls2", "cls_resnet50")], trust_run=True)
    with pytest.raises(Exception, match="not empty"):
        export_model_dir(out, weights["lumbar"], weights["ivd"], seg, trust_run=True)


@pytest.mark.slow
def test_predict_command_end_to_end_on_trained_tiny_models(tmp_path, data_dir, case):
    """plid.detect, plid.train, plid.export and plid.predict as a user runs them, on tiny models trained here.

    One-epoch detectors are weak, so predict runs with a low confidence: every image must then either have
    boxes inside it with levels bottom-up, or say clearly that no lumbar region was found.
    """
    common = [f"paths.data_dir={data_dir}", "debug=smoke"]
    runs = {}
    for stage in ("lumbar", "ivd"):
        runs[stage] = tmp_path / stage
        result = run_module("plid.detect", f"stage={stage}", f"hydra.run.dir={runs[stage]}", *common)
        assert result.returncode == 0, result.stderr[-2000:]
    runs["seg"] = tmp_path / "seg"
    result = run_module("plid.train", f"hydra.run.dir={runs['seg']}", *common)
    assert result.returncode == 0, result.stderr[-2000:]
    runs["cls"] = tmp_path / "cls"
    result = run_module("plid.train", "model=cls_resnet50", "data.image_size=32", f"hydra.run.dir={runs['cls']}",
                        *common)
    assert result.returncode == 0, result.stderr[-2000:]
    model_dir = tmp_path / "model_dir"
    result = run_module("plid.export", f"lumbar_run={runs['lumbar']}", f"ivd_run={runs['ivd']}",
                        f"seg_run={runs['seg']}", f"cls_runs=[{runs['cls']}]", f"out={model_dir}",
                        f"hydra.run.dir={tmp_path / 'export'}")
    assert result.returncode == 0, result.stderr[-2000:]
    scans = tmp_path / "scans"
    scans.mkdir()
    cv2.imwrite(str(scans / "a.png"), case.image)
    write_dicom(case.image, scans / "b.dcm")
    write_volume(case.image, scans / "c.mha")
    (scans / "d.dcm").write_bytes(b"garbage")
    result = run_module("plid.predict", f"input={scans}", f"model_dir={model_dir}", f"out={tmp_path / 'out'}",
                        "conf=0.001", f"hydra.run.dir={tmp_path / 'predict'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "report.html" in result.stdout
    summary = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [c["name"] for c in summary["cases"]] == ["a", "b", "c"] and summary["levels"] == "anchor"
    assert len(summary["errors"]) == 1 and "d.dcm" in summary["errors"][0]["error"]
    for report in summary["cases"]:
        if report["status"] != "ok":
            assert report["status"] == "no_lumbar_region" and report["message"]
            continue
        for box in [report["lumbar"]["box"], *(d["box"] for d in report["discs"])]:
            assert 0 <= box[0] < box[2] <= report["width"] and 0 <= box[1] < box[3] <= report["height"]
        centres = [(d["box"][1] + d["box"][3]) / 2 for d in report["discs"]]
        assert centres == sorted(centres, reverse=True)
        assert [d["level"] for d in report["discs"]] == list(range(1, len(centres) + 1))
        assert all(0 <= d["gradings"]["disc_herniation"]["probability"] <= 1 for d in report["discs"])
    # the same model_dir scored end to end on the test patients of its training folder, as a user runs it
    evaluation = tmp_path / "evaluate"
    result = run_module("plid.evaluate", f"model_dir={model_dir}", "split=test", "conf=0.001",
                        "bootstrap.samples=50", f"hydra.run.dir={evaluation}", f"paths.data_dir={data_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    scored = json.loads((evaluation / "evaluation.json").read_text())
    assert scored["groups"]["all"]["counts"]["images"] > 0 and "disc_herniation" in scored["thresholds"]
    for name in ("evaluation.md", "failures.html", "predict/report.json"):
        assert (evaluation / name).is_file()


def test_a_single_target_fold_bag_predicts_the_runs_mean_at_its_pooled_threshold(tmp_path, compose, case,
                                                                                 detector_runs):
    from plid.data.scans import Scan
    from plid.ensemble.predictions import Predictions, save_predictions
    from plid.errors import UserInputError
    from plid.metrics import prevalence_threshold

    seg = _fake_train_run(compose, tmp_path / "seg")
    rng = np.random.default_rng(0)
    runs, pooled = [], []
    for fold in (0, 1):  # folders of one name, as two multiruns' job dirs "0" would be
        torch.manual_seed(fold)
        run = _fake_train_run(compose, tmp_path / f"sweep{fold}" / "0", "cls_resnet50", "model.net.name=test_resnet",
                              "data.image_size=32", fold=fold, threshold=0.99, choices={"model": "cls_resnet50",
                                                                                       "callbacks": "fixed_schedule"})
        ids = np.array([f"p{fold}{k}_t2:1" for k in range(10)])
        targets = (np.arange(10) < 4).astype(int)
        p1 = np.clip(0.3 + 0.3 * targets + rng.normal(0, 0.2, 10), 0, 1)
        save_predictions(run / "predictions" / "val.npz", Predictions(ids, np.stack([1 - p1, p1], 1), targets))
        runs.append(run)
        pooled.append((p1, targets))
    # chosen on both folds' predictions together, by the default operating point
    cut = round(prevalence_threshold(np.concatenate([p for p, _ in pooled]), np.concatenate([t for _, t in pooled])),
                6)
    out = export_model_dir(tmp_path / "bag", detector_runs["lumbar"], detector_runs["ivd"], seg, runs)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == 3 and manifest["bag"]["thresholds"] == {"disc_herniation": cut}
    # named by their fold, so the two job dirs "0" do not overwrite each other
    assert list(manifest["classifiers"]) == ["cls_resnet50 (fold 0)", "cls_resnet50 (fold 1)"]
    loaded = load_model_dir(out)
    pipeline = Pipeline(loaded, cropper=_truth_cropper(case), levels="count")
    assert pipeline.decision_threshold() == cut != 0.99  # the bag's, not a run's own
    discs = pipeline(Scan("case", Path("case.png"), case.image, 0.5, "image")).report["discs"]
    boxes = [d["box"] for d in discs]
    with torch.inference_mode():
        mean = torch.stack([c.net(Pipeline._crops(c, case.image, boxes)).softmax(1)[:, 1]
                            for c in loaded.classifiers]).mean(0)
    for disc, p in zip(discs, mean.tolist()):
        assert disc["gradings"]["disc_herniation"]["probability"] == pytest.approx(p, abs=1e-4)
        assert disc["gradings"]["disc_herniation"]["positive"] == (p > cut)
    # two runs of one model whose folders share a name, not a bag: refused, not one silently overwritten
    summary = json.loads((runs[1] / "summary.json").read_text())
    (runs[1] / "summary.json").write_text(json.dumps({**summary, "fold": 0}))
    with pytest.raises(UserInputError, match="same name"):
        export_model_dir(tmp_path / "clash", detector_runs["lumbar"], detector_runs["ivd"], seg, runs, tmp_path / "e")
