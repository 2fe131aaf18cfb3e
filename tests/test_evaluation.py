"""The k-fold evaluation: the fold plan, collecting fold runs into tables and figures (its statistics: test_metrics.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plid.ensemble.predictions import Predictions, load_predictions, save_predictions
from plid.errors import UserInputError
from plid.evaluation.cross_validation import check_disjoint_folds, evaluate_runs, fold_plan


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


def _dataset(tmp_path: Path, count: int) -> tuple[Path, list[str]]:
    """A dataset folder whose images.csv holds one image of each of ``count`` patients (all the evaluation reads)."""
    root = tmp_path / "data"
    root.mkdir()
    patients = [f"p{k}" for k in range(count)]
    pd.DataFrame({"image": [f"{p}_t2" for p in patients], "patient": patients, "has_mask": 0}).to_csv(
        root / "images.csv", index=False)
    return root, patients


def test_collects_fold_runs_into_tables_and_figures(tmp_path):
    """Three classification folds as plid.train leaves them: summary.json and predictions/{val,test}.npz."""
    root, patients = _dataset(tmp_path, 30)
    rng = np.random.default_rng(0)
    runs = []
    test_ids = np.array([f"{p}_t2:{level}" for p in patients[24:] for level in (1, 2)])
    test_targets = rng.integers(0, 2, len(test_ids))  # every fold's run predicts the same test discs
    for fold in range(3):
        run = tmp_path / "multirun" / f"{fold}_cls"
        for split, members in (("val", patients[fold * 8:(fold + 1) * 8]), ("test", patients[24:])):
            ids = np.array([f"{p}_t2:{level}" for p in members for level in (1, 2)])
            targets = rng.integers(0, 2, len(ids)) if split == "val" else test_targets
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
    # the fold bag on test: the folds' mean probability, called at the default operating point of the pooled val
    # predictions (as many positive calls as positives)
    from plid.metrics import auc, prevalence_threshold

    pooled_val = [load_predictions(run / "predictions" / "val.npz") for run in runs]
    cut = prevalence_threshold(np.concatenate([p.probs[:, 1] for p in pooled_val]), truths)
    tests = [load_predictions(run / "predictions" / "test.npz") for run in runs]
    mean = np.mean([p.probs[:, 1] for p in tests], axis=0)
    bag = result["overall"]["test_bag"]
    assert bag["threshold"] == pytest.approx(cut) and bag["cases"] == 12
    assert bag["metrics"]["auc"]["value"] == pytest.approx(auc(mean, tests[0].targets))
    assert bag["metrics"]["recall"]["value"] == pytest.approx((mean[tests[0].targets == 1] > cut).mean())
    # cross-fitted: each fold's val called at the cut the bag's rule chooses on the other two folds' val
    crossed_calls = []
    for fold in range(3):
        rest = [p for j, p in enumerate(pooled_val) if j != fold]
        rest_cut = round(prevalence_threshold(np.concatenate([p.probs[:, 1] for p in rest]),
                                              np.concatenate([p.targets for p in rest])), 6)
        crossed_calls.append(pooled_val[fold].probs[:, 1] > rest_cut)
    crossed_calls = np.concatenate(crossed_calls)
    crossed = result["overall"]["val_cross_fitted"]["metrics"]
    assert crossed["specificity"]["value"] == pytest.approx((~crossed_calls[truths == 0]).mean())
    assert crossed["recall"]["value"] == pytest.approx(crossed_calls[truths == 1].mean())
    assert not np.array_equal(crossed_calls, calls)  # not the own-fold calls of val_pooled
    table = (out / "evaluation.md").read_text()
    assert "| pooled, each fold at the other folds' choice |" in table
    assert f"fold 0: 16 cases of 8 patients, {int(load_predictions(runs[0] / 'predictions' / 'val.npz').targets.sum())} " \
           "positive" in table
    assert "| fold 2 |" in table and "mean ± std" in table and "pooled out-of-fold" in table
    assert "| fold bag (mean) |" in table
    for name in ("evaluation.json", "roc_val.png", "confusion_val.png", "training_curves.png"):
        assert (out / name).is_file()
    # the same patient in two folds' val sets is refused
    save_predictions(runs[1] / "predictions" / "val.npz",
                     Predictions(np.array(["p0_t2:1"]), np.array([[0.5, 0.5]]), np.array([1])))
    with pytest.raises(UserInputError, match="validation sets of folds"):
        evaluate_runs(runs, tmp_path / "eval2", {"samples": 10, "seed": 0, "confidence": 0.95}, plots=False)


def test_positive_crops_are_counted_as_distinct_discs_too():
    """Patient p0's level-1 disc on two t2_SPACE slices and its render, p1's level-3 disc, and a crop without a level:
    five positive crops, three distinct discs."""
    from plid.evaluation.cross_validation import split_scores

    ids = np.array(["p0_t2_SPACE_s001:1", "p0_t2_SPACE_s002:1", "p0_t2_mid:1", "p1_t2:3", "p1_t2:nan", "p1_t2:2"])
    patient_of = {"p0_t2_SPACE_s001": "p0", "p0_t2_SPACE_s002": "p0", "p0_t2_mid": "p0", "p1_t2": "p1"}
    probs = np.tile([0.2, 0.8], (6, 1))
    scored = split_scores("cls", Predictions(ids, probs, np.array([1, 1, 1, 1, 1, 0])), patient_of,
                          {"samples": 10, "seed": 0, "confidence": 0.95})
    assert (scored["positives"], scored["positive_discs"]) == (5, 3)


def test_a_multi_task_run_is_scored_per_grading_binary_at_its_threshold_and_ordinal_by_grade(tmp_path):
    """One fold of a model=grade_* run as plid.train leaves it: predictions/<grading>/{val,test}.npz, the discs
    missing a grading absent from its files, and the thresholds and cuts chosen on val in summary.json."""
    from plid.metrics import grade_of_distribution, ordinal_scores

    root, patients = _dataset(tmp_path, 12)
    rng = np.random.default_rng(1)
    run = tmp_path / "grade"
    for split, members in (("val", patients[:6]), ("test", patients[6:])):
        ids = np.array([f"{p}_t2:{level}" for p in members for level in (1, 2, 3)])
        targets = rng.integers(0, 2, len(ids))
        p1 = np.clip(0.3 + 0.4 * targets + rng.normal(0, 0.2, len(ids)), 0, 1)
        save_predictions(run / "predictions" / "disc_bulging" / f"{split}.npz",
                         Predictions(ids, np.stack([1 - p1, p1], 1), targets))
        grades = rng.integers(0, 5, len(ids) - 2)  # two discs without a Pfirrmann grade
        distribution = rng.dirichlet(np.ones(5), len(grades))
        save_predictions(run / "predictions" / "pfirrman_grade" / f"{split}.npz",
                         Predictions(ids[2:], distribution, grades))
    (run / "summary.json").write_text(json.dumps({
        "task": "GradingModule", "fold": 0, "data_root": str(root), "choices": {"model": "grade_resnet50"},
        "targets": ["disc_bulging", "pfirrman_grade"], "thresholds": {"disc_bulging": 0.42},
        "cuts": {"pfirrman_grade": [0.9, 0.8, 0.3, 0.1]}}))
    out = tmp_path / "eval"
    result = evaluate_runs([run], out, {"samples": 50, "seed": 0, "confidence": 0.95})
    assert result["task"] == "grade" and set(result["gradings"]) == {"disc_bulging", "pfirrman_grade"}
    bulging = result["gradings"]["disc_bulging"]
    test = load_predictions(run / "predictions" / "disc_bulging" / "test.npz")
    called = test.probs[:, 1] > 0.42
    assert bulging["kind"] == "cls" and bulging["folds"][0]["threshold"] == 0.42
    assert bulging["folds"][0]["test"]["metrics"]["recall"]["value"] == pytest.approx(called[test.targets == 1].mean())
    assert bulging["folds"][0]["test"]["positives"] == int(test.targets.sum())
    pfirrmann = result["gradings"]["pfirrman_grade"]
    saved = load_predictions(run / "predictions" / "pfirrman_grade" / "test.npz")
    expected = ordinal_scores(grade_of_distribution(saved.probs, [0.9, 0.8, 0.3, 0.1]), saved.targets, 5)
    at_half = ordinal_scores(grade_of_distribution(saved.probs), saved.targets, 5)
    scored = pfirrmann["folds"][0]["test"]
    assert pfirrmann["kind"] == "ordinal" and scored["cases"] == 16
    assert pfirrmann["folds"][0]["cuts"] == [0.9, 0.8, 0.3, 0.1]
    assert expected["within_one"] != pytest.approx(at_half["within_one"])  # the cuts matter to these grades
    for name in ("balanced_accuracy", "kappa", "within_one"):
        assert scored["metrics"][name]["value"] == pytest.approx(expected[name])
    # pooled val: each case at its own run's cuts
    val = load_predictions(run / "predictions" / "pfirrman_grade" / "val.npz")
    pooled = ordinal_scores(grade_of_distribution(val.probs, [0.9, 0.8, 0.3, 0.1]), val.targets, 5)
    assert pfirrmann["overall"]["val_pooled"]["metrics"]["kappa"]["value"] == pytest.approx(pooled["kappa"])
    assert "val_cross_fitted" not in pfirrmann["overall"]  # one fold: no other fold to choose its cuts
    table = (out / "evaluation.md").read_text()
    bulging_table, pfirrmann_table = table.split("## disc_bulging")[1].split("## pfirrman_grade")
    assert "| auc |" in bulging_table and "kappa" not in bulging_table
    assert "| kappa |" in pfirrmann_table and "auc" not in pfirrmann_table
    assert (out / "roc_val_disc_bulging.png").is_file()


def test_the_grade_of_a_distribution_at_the_default_cuts_is_the_coral_rule():
    import torch

    from plid.metrics import grade_of_distribution
    from plid.models.grading import grade_distribution

    # CORAL's logits: one score per disc less increasing biases, so P(grade > k) falls with k; its rule counts the
    # questions "grade > k" whose probability is above 0.5
    logits = torch.randn(200, 1) * 3 - torch.sort(torch.randn(4) * 2).values
    coral = (torch.sigmoid(logits) > 0.5).sum(1).numpy()
    assert (grade_of_distribution(grade_distribution(logits).numpy()) == coral).all()
    assert (grade_of_distribution(grade_distribution(logits).numpy(), [0.5] * 4) == coral).all()


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


def test_ordinal_folds_are_scored_on_val_at_cuts_chosen_on_the_other_folds(tmp_path):
    """Two folds of a multi-task run with a Pfirrmann head: pooled val graded at each fold's own cuts, and
    cross-fitted, each fold's discs at the cuts ordinal_cuts chooses on the other fold's."""
    from plid.metrics import grade_of_distribution, ordinal_cuts, ordinal_scores

    root, patients = _dataset(tmp_path, 12)
    rng = np.random.default_rng(3)
    runs, saved = [], []
    test_grades = rng.integers(0, 5, 10)  # both folds' runs predict the same test discs
    for fold in range(2):
        run = tmp_path / f"grade{fold}"
        for split, members in (("val", patients[fold * 5:(fold + 1) * 5]), ("test", patients[10:])):
            ids = np.array([f"{p}_t2:{level}" for p in members for level in (1, 2, 3, 4, 5)])
            grades = rng.integers(0, 5, len(ids)) if split == "val" else test_grades
            logits = -0.5 * (np.arange(5)[None, :] - grades[:, None] - rng.normal(0, 1, (len(ids), 1))) ** 2
            distribution = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            save_predictions(run / "predictions" / "pfirrman_grade" / f"{split}.npz",
                             Predictions(ids, distribution, grades))
        (run / "summary.json").write_text(json.dumps({
            "task": "GradingModule", "fold": fold, "data_root": str(root), "choices": {"model": "grade_resnet50"},
            "targets": ["pfirrman_grade"], "cuts": {"pfirrman_grade": [0.5, 0.5, 0.5, 0.5]}}))
        runs.append(run)
        saved.append(load_predictions(run / "predictions" / "pfirrman_grade" / "val.npz"))
    result = evaluate_runs(runs, tmp_path / "eval", {"samples": 20, "seed": 0, "confidence": 0.95}, plots=False)
    overall = result["gradings"]["pfirrman_grade"]["overall"]
    crossed = np.concatenate([grade_of_distribution(saved[k].probs,
                                                    ordinal_cuts(saved[1 - k].probs, saved[1 - k].targets))
                              for k in range(2)])
    targets = np.concatenate([p.targets for p in saved])
    expected, own = ordinal_scores(crossed, targets, 5), ordinal_scores(
        np.concatenate([grade_of_distribution(p.probs) for p in saved]), targets, 5)
    assert expected["within_one"] != pytest.approx(own["within_one"])  # the other fold's cuts grade differently
    for name in ("balanced_accuracy", "kappa", "within_one"):
        assert overall["val_cross_fitted"]["metrics"][name]["value"] == pytest.approx(expected[name])
        assert overall["val_pooled"]["metrics"][name]["value"] == pytest.approx(own[name])
