"""Evaluation statistics: patient bootstrap, metrics, k-fold plan, collecting fold runs into tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plid.ensemble.predictions import Predictions, load_predictions, save_predictions
from plid.errors import UserInputError
from plid.evaluate import check_disjoint_folds, evaluate_runs, fold_plan
from plid.evaluation import auc, case_confusions, classification_metrics, patient_bootstrap, segmentation_metrics


def _cases(patients: int, per_patient: int, seed: int):
    """Scores that separate the classes imperfectly, several cases per patient."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"p{k}" for k in range(patients)], per_patient)
    targets = rng.integers(0, 2, len(groups))
    scores = np.clip(0.5 + (targets - 0.5) * 0.4 + rng.normal(0, 0.25, len(groups)), 0, 1)
    return groups, scores, targets


def _interval(patients: int, seed: int = 0):
    groups, scores, targets = _cases(patients, 3, seed)
    return patient_bootstrap(groups, lambda i: classification_metrics(scores[i], targets[i]), samples=300, seed=0)


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_patients():
    small, large = _interval(20), _interval(400)
    for name in ("accuracy", "auc", "f1"):
        for result in (small, large):
            assert result[name]["low"] <= result[name]["value"] <= result[name]["high"]
        assert large[name]["high"] - large[name]["low"] < 0.5 * (small[name]["high"] - small[name]["low"])


def test_bootstrap_resamples_patients_not_cases():
    # every case of a patient agrees: an accuracy bootstrap over patients moves in steps of whole patients
    groups = np.repeat(["a", "b"], [1, 9])
    correct = np.repeat([0.0, 1.0], [1, 9])
    result = patient_bootstrap(groups, lambda i: {"acc": float(correct[i].mean())}, samples=200, seed=1)
    assert result["acc"]["value"] == pytest.approx(0.9)
    # resampling patients gives 0 (a, a), 0.9 (a, b) or 1 (b, b); resampling cases could never reach 0
    assert result["acc"]["low"] == 0.0 and result["acc"]["high"] == 1.0


def test_bootstrap_is_seeded():
    assert _interval(30) == _interval(30)


def test_metrics_by_hand():
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert np.isnan(auc(np.array([0.1, 0.2]), np.array([1, 1])))
    m = classification_metrics(np.array([0.9, 0.8, 0.2, 0.6]), np.array([1, 0, 0, 1]))
    # predicted 1, 1, 0, 1: tp 2, fp 1, tn 1, fn 0
    assert (m["accuracy"], m["recall"], m["specificity"]) == (0.75, 1.0, 0.5)
    assert m["precision"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(0.8)
    probs = np.zeros((1, 4, 2, 2))
    probs[0, 2] = 1  # everything predicted disc
    conf = case_confusions(probs, np.array([[[2, 2], [0, 1]]]))
    assert conf.shape == (1, 4, 4) and conf[0, 2, 2] == 2 and conf.sum() == 4
    assert segmentation_metrics(conf)["dice_disc"] == pytest.approx(2 * 2 / (2 * 2 + 2))


def test_kfold_driver_never_puts_a_patient_in_two_folds(compose):
    cfg = compose("debug=smoke", config_name="evaluate")
    plan = fold_plan(cfg, list(range(cfg.data.num_folds)))
    vals = [set(parts["val"]) for parts in plan.values()]
    assert sum(len(v) for v in vals) == len(set().union(*vals))
    test = set(plan[0]["test"])
    assert not (test & set().union(*vals))
    for parts in plan.values():
        assert not set(parts["train"]) & set(parts["val"])
    with pytest.raises(UserInputError, match="folds 0 and 1"):
        check_disjoint_folds({0: {"val": ["p1"], "test": []}, 1: {"val": ["p1", "p2"], "test": []}})


def test_collects_fold_runs_into_tables_and_figures(tmp_path):
    """Three classification folds as plid.train leaves them: summary.json and predictions/{val,test}.npz."""
    root = tmp_path / "data"
    root.mkdir()
    patients = [f"p{k}" for k in range(30)]
    pd.DataFrame({"image": [f"{p}_t2" for p in patients], "patient": patients, "has_mask": 0}).to_csv(
        root / "images.csv", index=False)
    rng = np.random.default_rng(0)
    runs = []
    for fold in range(3):
        run = tmp_path / "multirun" / f"{fold}_cls"
        for split, members in (("val", patients[fold * 8:(fold + 1) * 8]), ("test", patients[24:])):
            ids = np.array([f"{p}_t2:{level}" for p in members for level in (1, 2)])
            targets = rng.integers(0, 2, len(ids))
            p1 = np.clip(0.3 + 0.4 * targets + rng.normal(0, 0.2, len(ids)), 0, 1)
            save_predictions(run / "predictions" / f"{split}.npz", Predictions(ids, np.stack([1 - p1, p1], 1), targets))
        (run / "csv").mkdir()
        pd.DataFrame({"epoch": [0, 1], "train/loss": [0.7, 0.6], "val/auc": [0.6, 0.7]}).to_csv(
            run / "csv" / "metrics.csv", index=False)
        (run / "summary.json").write_text(json.dumps({"task": "ClassificationModule", "fold": fold,
                                                      "data_root": str(root), "choices": {"model": "cls_resnet50"},
                                                      "threshold": (0.35, 0.5, 0.65)[fold]}))
        runs.append(run)
    out = tmp_path / "eval"
    result = evaluate_runs(runs, out, {"samples": 100, "seed": 0, "confidence": 0.95})
    assert [f["fold"] for f in result["folds"]] == [0, 1, 2]
    pooled = result["overall"]["val_pooled"]
    assert pooled["cases"] == 48 and pooled["patients"] == 24
    auc_summary = result["overall"]["val_mean_std"]["auc"]
    fold_aucs = [f["val"]["metrics"]["auc"]["value"] for f in result["folds"]]
    assert auc_summary["mean"] == pytest.approx(np.mean(fold_aucs))
    assert auc_summary["std"] == pytest.approx(np.std(fold_aucs, ddof=1))
    # each fold's calls at its own validation threshold; pooled: each case at its fold's
    calls, truths = [], []
    for fold, threshold in enumerate((0.35, 0.5, 0.65)):
        saved = load_predictions(runs[fold] / "predictions" / "val.npz")
        called = saved.probs[:, 1] > threshold
        recall = called[saved.targets == 1].mean()
        assert result["folds"][fold]["val"]["metrics"]["recall"]["value"] == pytest.approx(recall)
        calls.append(called)
        truths.append(saved.targets)
    calls, truths = np.concatenate(calls), np.concatenate(truths)
    assert pooled["metrics"]["specificity"]["value"] == pytest.approx((~calls[truths == 0]).mean())
    table = (out / "evaluation.md").read_text()
    assert "| fold 2 |" in table and "mean ± std" in table and "pooled out-of-fold" in table
    for name in ("evaluation.json", "roc_val.png", "confusion_val.png", "training_curves.png"):
        assert (out / name).is_file()
    # the same patient in two folds' val sets is refused
    save_predictions(runs[1] / "predictions" / "val.npz",
                     Predictions(np.array(["p0_t2:1"]), np.array([[0.5, 0.5]]), np.array([1])))
    with pytest.raises(UserInputError, match="validation sets of folds"):
        evaluate_runs(runs, tmp_path / "eval2", {"samples": 10, "seed": 0, "confidence": 0.95}, plots=False)


@pytest.mark.slow
def test_evaluate_smoke_command(tmp_path, data_dir):
    """python -m plid.evaluate collecting one finished run (made here by python -m plid.train debug=smoke)."""
    from tests.conftest import run_module

    run = tmp_path / "fold0"
    result = run_module("plid.train", f"hydra.run.dir={run}", f"paths.data_dir={data_dir}", "debug=smoke")
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_module("plid.evaluate", f"runs=[{run}]", f"hydra.run.dir={tmp_path / 'eval'}",
                        f"paths.data_dir={data_dir}", "bootstrap.samples=50", "debug=smoke")
    assert result.returncode == 0, result.stderr[-2000:]
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["task"] == "seg" and "dice" in evaluation["folds"][0]["val"]["metrics"]
    assert Path(evaluation["figures"]["segmentation_grid"]).is_file()


def test_dice_is_reported_pooled_over_pixels_and_per_case_as_nnunet():
    from plid.evaluation import segmentation_metrics

    # two cases, classes background, vertebra, disc, canal; rows true class, columns predicted
    big = np.diag([100, 0, 90, 0])  # a large disc found whole; no canal in reference or prediction
    small = np.array([[100, 0, 0, 0], [0, 0, 0, 0], [10, 0, 0, 0], [0, 0, 0, 20]])  # a small disc missed
    scores = segmentation_metrics(np.stack([big, small]))
    assert scores["dice_disc"] == scores["dice_pooled_disc"] == pytest.approx(180 / 190)  # pixels pooled
    assert scores["dice_per_case_disc"] == pytest.approx((1.0 + 0.0) / 2)  # each case counts the same
    assert scores["dice_per_case_canal"] == 1.0  # case 1 has no canal anywhere: NaN, left out of the mean
    assert np.isnan(scores["dice_per_case_vertebra"])  # absent from every case
    assert scores["dice_per_case"] == pytest.approx((0.5 + 1.0) / 2)  # nanmean over the foreground classes
    assert scores["dice"] == scores["dice_pooled"] == pytest.approx((180 / 190 + 1.0) / 2)
