"""The k-fold evaluation: the fold plan, collecting fold runs into tables and figures (its statistics: test_metrics.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plid.ensemble.predictions import Predictions, load_predictions, save_predictions
from plid.errors import UserInputError
from plid.evaluate import check_disjoint_folds, evaluate_runs, fold_plan


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
