"""The end-to-end evaluation of a model_dir: hand-built reports with known answers, and runs that write every file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plid.datamodules.contract import SpineDataset
from plid.datamodules.synthetic import SyntheticSpec, ensure_dataset
from plid.errors import UserInputError
from plid.evaluation.scoring import (
    EndToEndScores,
    ImageTruth,
    average_precision,
    crop_confusion,
    match_boxes,
    score_image,
)
from plid.reports import Decision

# four discs of one image, bottom-up: level 1 is the lowest (largest y)
BOXES = [[10, 160, 50, 180], [10, 120, 50, 140], [10, 80, 50, 100], [10, 40, 50, 60]]
LUMBAR = (5.0, 30.0, 60.0, 190.0)


def _truth(image="a", patient="p1", herniated=(0, 0, 1, 0), levels=(1, 2, 3, 4), boxes=BOXES) -> ImageTruth:
    discs = pd.DataFrame({"image": image, "patient": patient, "ivd_label": list(levels),
                          "x1": [b[0] for b in boxes], "y1": [b[1] for b in boxes], "x2": [b[2] for b in boxes],
                          "y2": [b[3] for b in boxes], "disc_herniation": list(herniated)})
    return ImageTruth(image, patient, "t2", LUMBAR, discs, has_mask=False)


def _report(boxes, levels, probabilities=None, lumbar=LUMBAR) -> dict:
    probabilities = probabilities or [0.5] * len(boxes)
    return {"status": "ok", "lumbar": {"box": list(lumbar), "score": 0.9},
            "discs": [{"level": lv, "box": list(b), "score": 0.9 - 0.1 * k,
                       "gradings": {"disc_herniation": Decision.binary("disc_herniation", p, 0.5).model_dump()}}
                      for k, (b, lv, p) in enumerate(zip(boxes, levels, probabilities))],
            "classifier": {"threshold": 0.5}}


def _figures(reports_truths, gradings=("disc_herniation",)) -> dict[str, float]:
    scores = [score_image(r, t, gradings) for r, t in reports_truths]
    figures = EndToEndScores(scores, dict.fromkeys(gradings, 0.5))
    return figures(np.arange(len(scores)))


def test_positives_are_counted_as_slices_and_as_distinct_discs():
    """One herniated disc (level 3) of patient p1 on three slices, and one of p2 whose reference has no level: five
    positive matched discs, three distinct discs (p1's level 3 once, p2's L5/S1 once, the unlevelled one alone)."""
    reports_truths = [(_report(BOXES, [1, 2, 3, 4]), _truth(f"s{k}", "p1")) for k in range(3)]
    reports_truths.append((_report(BOXES, [1, 2, 3, 4]), _truth("q", "p2", herniated=(1, 0, 1, 0),
                                                                levels=(1, 2, np.nan, 4))))
    scores = [score_image(r, t, ["disc_herniation"]) for r, t in reports_truths]
    figures = EndToEndScores(scores, {"disc_herniation": 0.5})
    assert figures.positives("disc_herniation") == (16, 5, 3)
    assert figures.positives("disc_herniation", np.array([0, 1])) == (8, 2, 1)


def test_a_perfect_report_scores_one_everywhere():
    out = _figures([(_report(BOXES, [1, 2, 3, 4], [0.1, 0.2, 0.9, 0.3]), _truth())])
    # ultralytics' 101-point interpolation integrates a perfect curve to 0.995, as its own validation reports
    assert out["disc_map50"] == pytest.approx(0.995)
    for key in ("lumbar_iou_median", "lumbar_iou_at_least_0.5", "disc_precision", "disc_recall", "disc_f1",
                "level_accuracy", "images_all_levels_right", "images_all_levels_right_by_centre", "disc_herniation/auc",
                "disc_herniation/pr_auc", "disc_herniation/balanced_accuracy", "disc_herniation/sensitivity",
                "disc_herniation/specificity"):
        assert out[key] == pytest.approx(1.0), key
    assert out["no_lumbar_region"] == 0.0


def test_missing_the_lowest_disc_costs_recall_and_shifts_every_level():
    # the pipeline counts from the lowest disc it found: L4/L5 becomes level 1, and so on up
    out = _figures([(_report(BOXES[1:], [1, 2, 3]), _truth())])
    assert out["disc_recall"] == pytest.approx(3 / 4)
    assert out["disc_precision"] == pytest.approx(1.0)
    assert out["disc_f1"] == pytest.approx(2 * 3 / (3 + 4))
    assert out["level_accuracy"] == 0.0
    assert out["images_all_levels_right"] == 0.0 and out["images_found_levels_right"] == 0.0
    score = score_image(_report(BOXES[1:], [1, 2, 3]), _truth(), ())
    assert [d["level"] for d in score.missed] == [1] and len(score.wrong_levels) == 3 and not score.extra
    assert not score.missed[0]["reported_at_centre"]
    assert out["missed_discs_flagged"] == 0.0
    # the same report with the missed disc flagged where it is, and the levels above it counted past it
    flagged = {**_report(BOXES[1:], [2, 3, 4]), "missed_discs_suspected": [{"box": [12, 158, 50, 182], "level": 1}]}
    out = _figures([(flagged, _truth())])
    assert out["missed_discs_flagged"] == 1.0 and out["level_accuracy"] == 1.0 and out["disc_recall"] == 0.75
    # a suspected disc pointing into a tall (tilted) labelled disc counts, though their IoU is under 0.3; one beside
    # it does not
    small = {**flagged, "missed_discs_suspected": [{"box": [25, 168, 35, 176], "level": 1}]}
    beside = {**flagged, "missed_discs_suspected": [{"box": [55, 165, 70, 176], "level": 1}]}
    assert _figures([(small, _truth())])["missed_discs_flagged"] == 1.0
    assert _figures([(beside, _truth())])["missed_discs_flagged"] == 0.0
    # every disc found has its right level, but not every labelled disc was found
    assert out["images_found_levels_right"] == 1.0 and out["images_all_levels_right"] == 0.0
    assert out["images_all_levels_right_by_centre"] == 0.0
    # an image whose report says its levels are uncertain leaves the "where certain" figure
    uncertain = {**_report(BOXES[1:], [1, 2, 3]), "levels_uncertain": True}
    out = _figures([(uncertain, _truth()), (_report(BOXES, [1, 2, 3, 4]), _truth("b", "p2"))])
    assert out["level_accuracy"] == pytest.approx(4 / 7) and out["level_accuracy_where_certain"] == 1.0
    assert out["images_levels_certain"] == 0.5


def test_a_disc_named_right_in_a_loose_labelled_box_is_right_by_centre_only():
    # SPIDER's box of a tilted L5/S1 (or of a render) can be far taller than the disc the detector boxes: IoU < 0.5
    tall = [[BOXES[0][0], BOXES[0][1] - 30, BOXES[0][2], BOXES[0][3] + 10], *BOXES[1:]]
    out = _figures([(_report(BOXES, [1, 2, 3, 4]), _truth(boxes=tall))])
    assert out["disc_recall"] == pytest.approx(3 / 4) and out["images_all_levels_right"] == 0.0
    assert out["images_all_levels_right_by_centre"] == 1.0
    missed = score_image(_report(BOXES, [1, 2, 3, 4]), _truth(boxes=tall)).missed
    assert [(d["level"], d["reported_at_centre"]) for d in missed] == [(1, True)]
    # the same box with the wrong level, or a box of the right level beside the labelled one, is not right
    assert _figures([(_report(BOXES, [2, 2, 3, 4]), _truth(boxes=tall))])["images_all_levels_right_by_centre"] == 0.0
    beside = [[b[0] + 60, b[1], b[2] + 60, b[3]] if k == 0 else b for k, b in enumerate(BOXES)]
    assert _figures([(_report(beside, [1, 2, 3, 4]), _truth())])["images_all_levels_right_by_centre"] == 0.0

def test_an_extra_box_lowers_precision_only():
    extra = [10, 0, 50, 20]  # above the highest disc: the levels below it stay right
    out = _figures([(_report([*BOXES, extra], [1, 2, 3, 4, 5]), _truth())])
    assert out["disc_precision"] == pytest.approx(4 / 5)
    assert out["disc_recall"] == pytest.approx(1.0)
    assert out["level_accuracy"] == pytest.approx(1.0) and out["images_all_levels_right"] == 1.0


def test_probabilities_that_rank_positives_last_give_auc_zero():
    out = _figures([(_report(BOXES, [1, 2, 3, 4], [0.9, 0.8, 0.1, 0.7]), _truth())])
    assert out["disc_herniation/auc"] == 0.0
    # at threshold 0.5: three healthy discs called positive, the herniated one missed
    assert out["disc_herniation/sensitivity"] == 0.0 and out["disc_herniation/specificity"] == 0.0
    assert out["disc_herniation/brier"] == pytest.approx((0.81 + 0.64 + 0.81 + 0.49) / 4)


def test_an_image_without_disc_boxes_is_unlabelled_not_free_of_discs():
    unlabelled = ImageTruth("u", "p3", "t1", None, _truth().discs.iloc[:0], has_mask=False)
    out = _figures([(_report(BOXES, [1, 2, 3, 4]), _truth()), (_report(BOXES, [1, 2, 3, 4]), unlabelled)])
    assert out["disc_precision"] == 1.0 and out["disc_map50"] == pytest.approx(0.995)
    assert not score_image(_report(BOXES, [1, 2, 3, 4]), unlabelled, ()).extra


def test_no_lumbar_region_counts_as_iou_zero_and_every_disc_missed():
    report = {"status": "no_lumbar_region", "lumbar": None, "discs": [], "segmentation": None}
    out = _figures([(report, _truth()), (_report(BOXES, [1, 2, 3, 4]), _truth("b", "p2"))])
    assert out["no_lumbar_region"] == 0.5
    assert out["lumbar_iou_median"] == pytest.approx(0.5) and out["lumbar_iou_at_least_0.5"] == 0.5
    assert out["disc_recall"] == pytest.approx(0.5) and out["disc_precision"] == 1.0
    assert out["images_all_levels_right"] == 0.5


def test_matching_is_one_to_one_in_score_order():
    reference = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], float)
    # two boxes on the first disc: the more confident one takes it, the other is extra
    predicted = np.array([[0, 0, 10, 11], [0, 0, 10, 10], [20, 0, 30, 10]], float)
    assert match_boxes(predicted, [0.5, 0.9, 0.8], reference).tolist() == [-1, 0, 1]
    assert match_boxes(np.array([[0, 0, 10, 30]]), [0.9], reference).tolist() == [-1]  # IoU 1/3 < 0.5


def test_average_precision_by_hand():
    # 2 references; detections by score: hit, miss, hit -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    detections = np.array([[0.9, 1], [0.8, 0], [0.7, 1]], float)
    # the precision envelope is 1 up to recall 1/2 and 2/3 after: area 1/2 + 2/3 * 1/2, up to interpolation
    assert average_precision(detections, 2) == pytest.approx(0.5 + 2 / 3 * 0.5, abs=0.01)
    assert average_precision(np.zeros((0, 2)), 2) == 0.0
    assert np.isnan(average_precision(detections, 0))


def test_segmentation_per_case_leaves_absent_classes_out_and_pooled_sums_pixels():
    reference = np.zeros((10, 10), np.uint8)
    reference[2:4, 2:4] = 2  # 4 disc pixels
    predicted = reference.copy()
    predicted[2, 2] = 0  # 3 of 4 found
    confusion = crop_confusion(predicted, reference, (0, 0, 10, 10))
    assert confusion[2, 2] == 3 and confusion[2, 0] == 1 and confusion.sum() == 100
    # the crop: pixels outside it do not count
    assert crop_confusion(predicted, reference, (0, 0, 3, 3)).sum() == 9
    # no lumbar region: the whole image against an empty prediction
    assert crop_confusion(None, reference, None)[2, 0] == 4
    # a second image with a large canal, perfectly found: per case averages images, pooled weighs pixels
    canal = np.zeros((10, 10), np.uint8)
    canal[:, 5:] = 3
    scores = []
    for conf in (confusion, crop_confusion(canal, canal, (0, 0, 10, 10))):
        score = score_image({"status": "no_lumbar_region", "discs": []}, _truth(), ())
        score.confusion = conf
        scores.append(score)
    out = EndToEndScores(scores, {})(np.arange(2))
    assert out["dice_per_case_disc"] == pytest.approx(2 * 3 / (2 * 3 + 1))  # the canal image has no disc: NaN, left out
    assert out["dice_per_case_canal"] == pytest.approx(1.0)
    assert np.isnan(out["dice_per_case_vertebra"])  # absent from both in every image
    assert out["dice_per_case"] == pytest.approx(np.mean([6 / 7, 1.0]))
    assert out["dice_pooled_disc"] == pytest.approx(6 / 7)


def _dataset_with_truth_cropper(data_dir, compose, patients: int = 6):
    """The synthetic folder and a pipeline whose detectors return each image's labelled boxes."""
    from plid.boxes import enlarge_box
    from plid.inference.pipeline import Pipeline
    from plid.models.detection import RoiCropper
    from tests.test_pipeline import _models

    root = ensure_dataset(data_dir / "synthetic", SyntheticSpec(num_patients=patients, image_size=128, seed=5))
    from plid.datamodules.contract import load_dataset

    dataset = load_dataset(root)
    truth = {}
    for row in dataset.images.itertuples():
        image = dataset.read_image(row.image)
        lumbar = (row.lumbar_x1, row.lumbar_y1, row.lumbar_x2, row.lumbar_y2)
        discs = dataset.discs[dataset.discs["image"] == row.image][["x1", "y1", "x2", "y2"]].to_numpy(float)
        truth[image.tobytes()] = (np.array([lumbar], float), discs, enlarge_box(lumbar, 0.1, *image.shape))
    state = {}

    def lumbar(image):
        state["current"] = truth[image.tobytes()]
        return state["current"][0], np.array([0.9])

    def discs(region):
        _, boxes, (x1, y1, _, _) = state["current"]
        return boxes - [x1, y1, x1, y1], np.linspace(0.9, 0.5, len(boxes))

    # levels counted: the segmenter is untrained (the anatomy's rules are tested in tests/test_levels.py)
    return dataset, Pipeline(_models(compose), cropper=RoiCropper(lumbar, discs, 0.1), levels="count")


def test_evaluating_reports_of_the_labelled_boxes_finds_every_disc_and_writes_every_file(tmp_path, data_dir, compose):
    from plid.evaluation.end_to_end import evaluate_model_dir

    dataset, pipeline = _dataset_with_truth_cropper(data_dir, compose)
    images = dataset.images["image"].tolist()
    bootstrap = {"samples": 50, "seed": 0, "confidence": 0.95}
    result = evaluate_model_dir(pipeline, dataset, images, tmp_path, "all", bootstrap, progress=False)
    figures = result["groups"]["all"]["figures"]
    for key in ("disc_precision", "disc_recall", "level_accuracy", "images_all_levels_right", "lumbar_iou_median"):
        assert figures[key]["value"] == pytest.approx(1.0), key
    # an untrained segmenter: some Dice, computed per case and pooled
    assert 0 <= figures["dice_per_case"]["value"] <= 1 and 0 <= figures["dice_pooled"]["value"] <= 1
    for name, score in figures.items():
        if not np.isnan(score["low"]):
            assert score["low"] - 1e-9 <= score["value"] <= score["high"] + 1e-9, name
    counts = result["groups"]["all"]["counts"]
    assert counts["images"] == len(images) and counts["matched_discs"] == len(dataset.discs)
    for name in ("evaluation.json", "evaluation.md", "failures.html", "predict/report.json"):
        assert (tmp_path / name).is_file(), name
    assert "no failure" in (tmp_path / "failures.html").read_text().lower()
    assert "disc recall" in (tmp_path / "evaluation.md").read_text()
    import jsonschema

    from plid.evaluation.schema import SCHEMA_FILE, evaluation_schema

    saved = json.loads((tmp_path / "evaluation.json").read_text())
    jsonschema.validate(saved, json.loads(SCHEMA_FILE.read_text()))  # the schema kept in the package fits the output
    assert json.loads(SCHEMA_FILE.read_text()) == evaluation_schema(), "python -m plid.evaluation.schema rewrites it"
    assert saved["provenance"]["plid_version"] and saved["per_disc"]["groups"]["all"]["figures"]
    broken = {k: v for k, v in saved.items() if k != "groups"}
    with pytest.raises(jsonschema.ValidationError, match="groups"):
        jsonschema.validate(broken, json.loads(SCHEMA_FILE.read_text()))


def test_a_grading_the_model_dir_did_not_validate_is_said_so_beside_its_figures(tmp_path, data_dir, compose,
                                                                              monkeypatch):
    from plid.evaluation.end_to_end import evaluate_model_dir
    from plid.inference.model_dir import LoadedModule
    from tests.test_pipeline import _MeanIntensity

    dataset, pipeline = _dataset_with_truth_cropper(data_dir, compose)
    pipeline.models.classifiers = [LoadedModule("a", _MeanIntensity(1.0), 32, 0.1, target="disc_herniation")]
    pipeline.models.weights = [1.0]
    monkeypatch.setattr(pipeline, "validated", lambda name: False)
    bootstrap = {"samples": 20, "seed": 0, "confidence": 0.95}
    result = evaluate_model_dir(pipeline, dataset, dataset.images["image"].tolist()[:3], tmp_path, "all", bootstrap,
                                progress=False)
    assert result["validated"] == {"disc_herniation": False}
    report = json.loads((tmp_path / "predict" / "report.json").read_text())
    made = [d["gradings"]["disc_herniation"] for c in report["cases"] for d in c["discs"]]
    assert made and all(m["validated"] is False for m in made)
    text = (tmp_path / "evaluation.md").read_text()
    assert text.count("Not validated") == 2  # per slice and per disc, under the grading's headings
    assert "not validated" in (tmp_path / "predict" / "report.html").read_text()


def test_a_folder_without_labels_is_refused(tmp_path):
    images = pd.DataFrame({"image": ["a"], "patient": ["p"], "has_mask": [0]})
    dataset = SpineDataset(tmp_path, images, pd.DataFrame(columns=["image", "patient", "x1", "y1", "x2", "y2"]))
    from plid.evaluation.end_to_end import check_labelled

    with pytest.raises(UserInputError, match="no labels"):
        check_labelled(dataset)


def test_a_grading_the_folder_does_not_label_is_skipped_and_said(tmp_path, data_dir, compose):
    from plid.evaluation.end_to_end import evaluate_model_dir
    from plid.inference.model_dir import LoadedModule
    from tests.test_pipeline import _MeanIntensity

    dataset, pipeline = _dataset_with_truth_cropper(data_dir, compose)
    pipeline.models.classifiers = [LoadedModule("a", _MeanIntensity(1.0), 32, 0.1, target="pfirrman_grade_5")]
    pipeline.models.weights = [1.0]
    result = evaluate_model_dir(pipeline, dataset, dataset.images["image"].tolist()[:3], tmp_path, "all",
                                {"samples": 10, "seed": 0, "confidence": 0.95}, progress=False)
    assert "pfirrman_grade_5" in result["skipped_gradings"] and not result["thresholds"]
    assert "pfirrman_grade_5: not scored" in (tmp_path / "evaluation.md").read_text()
    # the herniation classifier of the same folder is scored
    pipeline.models.classifiers[0].target = "disc_herniation"
    result = evaluate_model_dir(pipeline, dataset, dataset.images["image"].tolist(), tmp_path / "b", "all",
                                {"samples": 10, "seed": 0, "confidence": 0.95}, progress=False)
    assert list(result["thresholds"]) == ["disc_herniation"]
    assert result["groups"]["all"]["counts"]["disc_herniation/discs"] == len(dataset.discs)
    assert (tmp_path / "b" / "reliability_disc_herniation.png").is_file()


def test_a_fold_bag_is_not_scored_on_patients_its_runs_trained_on(tmp_path, data_dir, compose):
    from plid.evaluation.end_to_end import evaluate_model_dir
    from plid.inference.model_dir import LoadedModule
    from tests.test_pipeline import _MeanIntensity

    dataset, pipeline = _dataset_with_truth_cropper(data_dir, compose)
    pipeline.models.classifiers = [LoadedModule(f"cls ({k})", _MeanIntensity(1.0), 32, 0.1, target="disc_herniation")
                                   for k in range(2)]
    pipeline.models.weights = [1.0, 1.0]
    pipeline.models.bag = {"folds": [0, 1], "selection": "pooled out-of-fold",
                           "thresholds": {"disc_herniation": 0.5}}
    images = dataset.images["image"].tolist()[:3]
    bootstrap = {"samples": 10, "seed": 0, "confidence": 0.95}
    result = evaluate_model_dir(pipeline, dataset, images, tmp_path / "val", "val", bootstrap, progress=False)
    assert not result["thresholds"] and "in sample" in result["skipped_gradings"]["disc_herniation"]
    assert result["classifier_in_sample"] == result["skipped_gradings"]["disc_herniation"]
    assert "Gradings not scored on this split: in sample" in (tmp_path / "val" / "evaluation.md").read_text()
    assert "disc_herniation/discs" not in result["groups"]["all"]["counts"]
    # the test patients trained none of the bag's runs
    result = evaluate_model_dir(pipeline, dataset, images, tmp_path / "test", "test", bootstrap, progress=False)
    assert list(result["thresholds"]) == ["disc_herniation"] and not result["skipped_gradings"]
    assert result["classifier_in_sample"] is None


def test_failures_page_lists_the_worst_image_first(tmp_path):
    import cv2

    from plid.evaluation.end_to_end import write_failures

    image = np.zeros((200, 80), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    cv2.imwrite(str(tmp_path / "b.png"), image)
    reports = {"a": {**_report(BOXES[1:], [1, 2, 3]), "file": str(tmp_path / "a.png")},
               "b": {**_report([*BOXES, [10, 0, 50, 20]], [1, 2, 3, 4, 5]), "file": str(tmp_path / "b.png")}}
    # c: every disc found and named right, L5/S1 inside a labelled box too tall for IoU 0.5 (1 missed + 1 extra)
    cv2.imwrite(str(tmp_path / "c.png"), image)
    reports["c"] = {**_report(BOXES, [1, 2, 3, 4]), "file": str(tmp_path / "c.png")}
    tall = [[10, 130, 50, 190], *BOXES[1:]]
    scores = [score_image(reports["b"], _truth("b"), ()), score_image(reports["a"], _truth("a"), ()),
              score_image(reports["c"], _truth("c", boxes=tall), ())]
    summary = write_failures(tmp_path / "failures.html", scores, reports, max_images=10)
    page = (tmp_path / "failures.html").read_text()
    # a: 1 missed + 3 wrong levels, c: 1 missed + 1 extra, b: 1 extra
    assert summary["images"] == 3 and page.index("<h2>a") < page.index("<h2>c") < page.index("<h2>b")
    assert (tmp_path / "failures" / "a.png").is_file()
    boxed = "1 of them reported, with their level, centred inside the labelled box"
    assert page.count(boxed) == 1 and page.index("<h2>c") < page.index(boxed) < page.index("<h2>b")


def test_evaluate_command_on_an_exported_model_dir_writes_every_file(tmp_path, data_dir, compose):
    """python -m plid.evaluate model_dir=... as a user runs it (in-process), on a model_dir of untrained tiny
    models: whatever they find, every file is written and every interval holds its estimate."""
    from plid.evaluate import evaluate
    from plid.inference.model_dir import export_model_dir
    from tests.test_pipeline import _fake_train_run, _untrained_detectors

    weights = _untrained_detectors(tmp_path)
    seg = _fake_train_run(compose, tmp_path / "seg")
    classifier = _fake_train_run(compose, tmp_path / "cls", "cls_resnet50")
    model_dir = export_model_dir(tmp_path / "model_dir", weights["lumbar"], weights["ivd"], seg, [classifier], trust_run=True)
    cfg = compose(f"model_dir={model_dir}", "split=test", "conf=0.0001", "bootstrap.samples=20",
                  config_name="evaluate")
    result = evaluate(cfg)
    out = Path(cfg.paths.output_dir)
    for name in ("evaluation.json", "evaluation.md", "failures.html", "predict/report.json", "predict/report.html"):
        assert (out / name).is_file(), name
    assert result["split"] == "test" and result["groups"]["all"]["counts"]["images"] > 0
    assert result["levels"] == "anchor"  # the rule used, not asked for: that of a one-class disc detector
    for score in result["groups"]["all"]["figures"].values():
        if not np.isnan(score["low"]):
            assert score["low"] - 1e-9 <= score["value"] <= score["high"] + 1e-9
    with pytest.raises(UserInputError, match="already holds"):
        evaluate(cfg)


def test_batched_figures_equal_the_figures_of_each_resampled_set():
    """A replicate of the bootstrap scored as counts equals the figures of the images repeated that often."""
    from plid.metrics import bootstrap_counts

    rng = np.random.default_rng(1)
    scores = []
    for k in range(12):
        keep = sorted(rng.choice(4, size=int(rng.integers(1, 5)), replace=False))
        boxes = [BOXES[j] for j in keep] + ([[10, 0, 50, 20]] if k % 3 == 0 else [])
        report = _report(boxes, list(range(1, len(boxes) + 1)), list(np.round(rng.random(len(boxes)), 1)))
        if k == 5:
            report = {"status": "no_lumbar_region", "lumbar": None, "discs": []}
        score = score_image(report, _truth(f"i{k}", f"p{k // 2}", tuple(rng.integers(0, 2, 4))), ["disc_herniation"])
        score.confusion = rng.integers(0, 50, (4, 4)) if k % 4 else None
        scores.append(score)
    figures = EndToEndScores(scores, {"disc_herniation": 0.5})
    counts = bootstrap_counts([s.patient for s in scores], samples=5, seed=3)
    batch = figures.batch(counts)
    for r, row in enumerate(counts):
        repeated = EndToEndScores([s for s, c in zip(scores, row) for _ in range(c)], {"disc_herniation": 0.5})
        expected = repeated(np.arange(int(row.sum())))
        for name, value in expected.items():
            if name == "disc_map50":  # repeated boxes of one image add points to the curve; counts do not
                continue
            np.testing.assert_allclose(batch[name][r], value, atol=1e-9, equal_nan=True, err_msg=name)


def _series_dataset(slices: int = 9, patients=("p1", "p2")):
    """Per patient one t2_SPACE series of ``slices`` slices, each showing the four discs of BOXES (herniated: level 3
    for p1, none for p2), and one mid-sagittal render (a series of one)."""
    images, discs = [], []
    for patient in patients:
        for k in range(slices):
            images.append({"image": f"{patient}_s{k}", "patient": patient, "series": "t2_SPACE", "slice": 40 + k})
        images.append({"image": f"{patient}_t2", "patient": patient, "series": "t2", "slice": np.nan})
    truths = {}
    for row in images:
        herniated = (0, 0, 1, 0) if row["patient"] == "p1" else (0, 0, 0, 0)
        truths[row["image"]] = _truth(row["image"], row["patient"], herniated)
        discs.append(truths[row["image"]].discs)
    return SpineDataset(Path("."), pd.DataFrame(images), pd.concat(discs, ignore_index=True)), truths


def test_per_disc_scoring_counts_a_disc_seen_on_nine_slices_once():
    from plid.evaluation.per_disc import per_disc_section

    dataset, truths = _series_dataset()
    # p1's level-3 disc is called herniated on every slice, and p2's slices number the discs one too high on two of
    # nine slices: the series' vote names them right
    reports = {}
    for image, truth in truths.items():
        shifted = truth.patient == "p2" and image.endswith(("_s0", "_s1"))
        probabilities = [0.1, 0.2, 0.9 if truth.patient == "p1" else 0.3, 0.2]
        reports[image] = _report(BOXES, [2, 3, 4, 5] if shifted else [1, 2, 3, 4], probabilities)
    section = per_disc_section(dataset, list(truths), reports, truths, {"disc_herniation": 0.5}, [],
                               {"samples": 50, "seed": 0, "confidence": 0.95})
    counts, figures = section["groups"]["all"]["counts"], section["groups"]["all"]["figures"]
    # 2 patients x (one series of 9 slices + one render) = 4 series of 4 distinct discs each: 16, not 80
    assert counts["series"] == 4 and counts["labelled_discs"] == 16 == counts["matched_discs"]
    assert counts["disc_herniation/discs"] == 16 and counts["disc_herniation/positive_discs"] == 2  # p1's, twice
    assert figures["level_accuracy"]["value"] == 1.0 and figures["series_all_levels_right"]["value"] == 1.0
    assert figures["disc_herniation/auc"]["value"] == 1.0
    assert figures["disc_herniation/called_positive"]["value"] == pytest.approx(2 / 16)
    assert figures["disc_herniation/prevalence"]["value"] == pytest.approx(2 / 16)
    assert set(section["groups"]) == {"all", "t2", "t2_SPACE"}
    assert [len(s["discs"]) for s in section["series"]] == [4, 4, 4, 4]


def test_per_disc_scoring_says_a_series_misnamed_on_most_slices_is_wrong():
    from plid.evaluation.per_disc import per_disc_section

    dataset, truths = _series_dataset(slices=3, patients=("p1",))
    reports = {image: _report(BOXES, [1, 2, 3, 4] if image.endswith(("_s0", "_t2")) else [2, 3, 4, 5])
               for image in truths}
    section = per_disc_section(dataset, list(truths), reports, truths, {}, [],
                               {"samples": 0, "seed": 0, "confidence": 0.95})
    by_type = {name: g["figures"] for name, g in section["groups"].items()}
    assert by_type["t2_SPACE"]["level_accuracy"]["value"] == 0.0  # two of three slices shift every name: one answer
    assert by_type["t2_SPACE"]["series_all_levels_right"]["value"] == 0.0
    assert by_type["t2"]["level_accuracy"]["value"] == 1.0


def test_failures_page_shows_a_failing_series_as_one_row(tmp_path):
    from plid.evaluation.end_to_end import write_failures

    series = [{"patient": "p1", "series": "t2_SPACE", "images": 9, "all_levels_right": True,
               "discs": [{"ivd_label": 1, "found": True, "reported_level": 1}]},
              {"patient": "p2", "series": "t2_SPACE", "images": 9, "all_levels_right": False,
               "discs": [{"ivd_label": 1, "found": True, "reported_level": 1},
                         {"ivd_label": 2, "found": False, "reported_level": None},
                         {"ivd_label": 3, "found": True, "reported_level": 4}]},
              {"patient": "p3", "series": "t1", "images": 1, "all_levels_right": False, "discs": []}]  # unlabelled
    summary = write_failures(tmp_path / "failures.html", [], {}, max_images=10, series=series)
    page = (tmp_path / "failures.html").read_text()
    assert summary["series"] == 1 and "1 of 2 series with labelled discs" in page
    assert page.count("<tr><td>") == 1  # p2 once, though nine slices show it
    assert "<td>p2</td><td>t2_SPACE</td><td>9</td><td>3</td><td>2</td><td>3 named 4</td>" in page
