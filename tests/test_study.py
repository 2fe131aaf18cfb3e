"""python -m plid.study (what make run calls), at smoke sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_module


@pytest.mark.slow
def test_study_smoke_runs_every_step_and_ends_with_the_report(tmp_path, data_dir):
    out = tmp_path / "study"
    result = run_module("plid.study", "debug=smoke", "evaluate=[test]", f"hydra.run.dir={out}",
                        f"paths.data_dir={data_dir}", timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.endswith("report.html") and Path(last.split(": ", 1)[1]).is_file()
    study = json.loads((out / "study.json").read_text())
    steps = [s["step"] for s in study["steps"]]
    assert steps[:2] == ["detect_lumbar", "detect_ivd"]
    assert steps[-4:] == ["train_segmenter", "export", "predict", "evaluate_test"]
    assert all(s["returncode"] == 0 for s in study["steps"])
    # the disc detector starts from the lumbar detector's weights
    lumbar_weights = json.loads((out / "detect_lumbar" / "summary.json").read_text())["weights"]
    assert f"detector.weights={lumbar_weights}" in study["steps"][1]["command"]
    report = json.loads((out / "predict" / "report.json").read_text())
    assert {c["format"] for c in report["cases"]} == {"image", "dicom", "volume"} and not report["errors"]
    import jsonschema

    from plid.reports import SCHEMA_FILE

    jsonschema.validate(report, json.loads(SCHEMA_FILE.read_text()))
    # (the smoke study's detectors, one epoch at 64 px, find no lumbar region; that discs carry their gradings
    # is asserted with a truth cropper in tests/test_pipeline.py)
    assert (out / "model_dir" / "manifest.json").is_file()
    # the model_dir scored end to end on the test split, where study.json says
    assert Path(study["evaluations"]["test"]).is_file() and (out / "evaluate_test" / "evaluation.json").is_file()


@pytest.mark.slow
def test_study_with_classifier_folds_exports_a_fold_bag_scored_out_of_fold(tmp_path, data_dir):
    out = tmp_path / "study"
    result = run_module("plid.study", "debug=smoke", "classifiers.models=[cls_resnet50]", "classifiers.folds=[0,1]",
                        "evaluate=[val,test]", f"hydra.run.dir={out}", f"paths.data_dir={data_dir}", timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = json.loads((out / "study.json").read_text())
    steps = [s["step"] for s in study["steps"]]
    assert steps[2:5] == ["train_cls_resnet50_fold0", "train_cls_resnet50_fold1", "evaluate_classifier_folds"]
    for k in (0, 1):  # each fold on a fixed schedule, on its own fold
        command = study["steps"][2 + k]["command"]
        assert f"data.fold={k}" in command and "callbacks=fixed_schedule" in command
    folds = json.loads((out / "evaluate_classifier_folds" / "evaluation.json").read_text())
    assert "val_pooled" in folds["overall"] and "test_bag" in folds["overall"]
    manifest = json.loads((out / "model_dir" / "manifest.json").read_text())
    assert manifest["bag"]["folds"] == [0, 1] and len(manifest["classifiers"]) == 2
    assert set(manifest["bag"]["thresholds"]) == {"disc_herniation"}
    val = json.loads((out / "evaluate_val" / "evaluation.json").read_text())
    test = json.loads((out / "evaluate_test" / "evaluation.json").read_text())
    # val patients trained fold 1's run: the bag's gradings are not scored there; the test patients trained none
    assert "in sample" in val["classifier_in_sample"] and not val["thresholds"]
    assert test["classifier_in_sample"] is None


def test_study_refuses_classifier_folds_of_several_models_before_training(compose, tmp_path):
    from plid.errors import UserInputError
    from plid.study import study

    cfg = compose("classifiers.folds=[0,1]", config_name="study")
    assert len(cfg.classifiers.models) == 2
    with pytest.raises(UserInputError, match="fold bag of one classifier"):
        study(cfg)
    assert not any(tmp_path.rglob("study.json"))


def test_study_refuses_levels_from_a_one_class_disc_detector_before_training(compose, tmp_path):
    from plid.errors import UserInputError
    from plid.study import study

    with pytest.raises(UserInputError, match="detector.disc_classes=level"):
        study(compose("levels=detector", config_name="study"))
    assert not any(tmp_path.rglob("study.json"))
