"""The weighted average ensemble: weight grid, fast scorers against plain loops, the entry point end to end."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from conftest import run_module
from torchmetrics.functional.classification import binary_auroc

from plid.ensemble.combine import load_ensemble, weighted_average
from plid.ensemble.predictions import Predictions, load_predictions, save_predictions
from plid.ensemble.run import load_runs, resolve_runs
from plid.ensemble.scoring import ClassificationScorer, SegmentationScorer, allocate
from plid.ensemble.weights import count_unique, iter_unique, primitive, search_weights
from plid.errors import UserInputError
from plid.labels import CLASS_NAMES
from plid.metrics import (
    binary_scores,
    confusions_per_case,
    dice_iou,
    multiclass_scores,
    per_case_dice,
    predicted_classes,
    segmentation_metric,
)


def _softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    e = np.exp(logits - logits.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _seg_case(rng, n=3, size=12, strengths=(3.0, 1.5, 0.5)):
    """Targets and float16 probabilities of models that are right more often the stronger they are."""
    targets = rng.integers(0, 4, (n, size, size))
    onehot = np.eye(4)[targets].transpose(0, 3, 1, 2)
    probs = [_softmax(onehot * s + rng.normal(size=onehot.shape)).astype(np.float16) for s in strengths]
    return probs, targets


def _cls_case(rng, n=40, strengths=(3.0, 1.0, 0.3)):
    targets = rng.integers(0, 2, n)
    onehot = np.eye(2)[targets]
    probs = [_softmax(onehot * s + rng.normal(size=onehot.shape), 1).astype(np.float16) for s in strengths]
    return probs, targets


def _equation_1(probs, weights) -> np.ndarray:
    """The paper's ensemble, written out: sum_i w_i M_i / sum_i w_i."""
    return sum(w * p.astype(np.float64) for w, p in zip(weights, probs)) / sum(weights)


def _loop_miou(probs, targets, weights) -> float:
    pred = _equation_1(probs, weights).argmax(1)
    confusion = np.bincount((targets * 4 + pred).ravel(), minlength=16).reshape(4, 4)
    return float(segmentation_metric(torch.as_tensor(confusion), "miou"))


def _raw_grid(num_models: int, levels: int):
    return [v for v in itertools.product(range(levels + 1), repeat=num_models) if any(v)]


@pytest.mark.parametrize(("models", "levels"), [(2, 10), (3, 4), (3, 10), (4, 6)])
def test_unique_directions_are_the_raw_grid_up_to_scale(models, levels):
    raw = np.array(_raw_grid(models, levels))
    directions = {tuple(v) for v in primitive(raw)}
    enumerated = np.concatenate(list(iter_unique(models, levels, chunk=97)))
    assert len(enumerated) == count_unique(models, levels) == len(directions)
    assert {tuple(v) for v in enumerated} == directions


def test_paper_grid_size():
    assert count_unique(8, 10) == 212_607_425  # of 11^8 - 1 = 214,358,880 non-zero vectors


def test_allocate_spreads_draws_evenly_within_stratum_sizes():
    assert allocate(np.array([5, 100, 100, 2]), 40).tolist() == [5, 16, 17, 2]
    assert allocate(np.array([3, 4]), 100).tolist() == [3, 4]


def test_segmentation_confusion_equals_full_maps_for_every_candidate():
    rng = np.random.default_rng(1)
    probs, targets = _seg_case(rng, strengths=(2.0, 1.0, 0.5, 0.2))
    scorer = SegmentationScorer(probs, targets, sample_pixels=None)
    assert 0 < scorer.disagreement_pixels < scorer.total_pixels
    assert 0 < scorer.pixels.pair_size < scorer.disagreement_pixels  # both the pair and the general path run
    candidates = np.concatenate(list(iter_unique(4, 3)))
    confusion = scorer.confusion(candidates).numpy()
    for vector, matrix in zip(candidates, confusion):
        pred = _equation_1(probs, vector).argmax(1)
        expected = np.bincount((targets * 4 + pred).ravel(), minlength=16).reshape(4, 4)
        np.testing.assert_array_equal(matrix, expected)


def test_segmentation_ensemble_reports_dice_pooled_and_per_case():
    rng = np.random.default_rng(4)
    probs, targets = _seg_case(rng, n=5, strengths=(2.0, 1.0, 0.5))
    targets[0][targets[0] == 3] = 0  # the canal absent from case 0's reference ...
    for p in probs:
        p[0, 3] = 0  # ... and from every model's prediction there: NaN for that case, left out of the mean
    scorer = SegmentationScorer(probs, targets, sample_pixels=None)
    for vector in ([1, 0, 0], [1, 2, 3], [0, 1, 1]):
        scores = scorer.scores(vector, CLASS_NAMES)
        ensemble = torch.as_tensor(_equation_1(probs, vector))
        confusions = confusions_per_case(predicted_classes(ensemble), torch.as_tensor(targets), 4).numpy()
        np.testing.assert_array_equal(scorer.case_confusions(vector).numpy(), confusions)
        case_dice = per_case_dice(torch.as_tensor(confusions))
        assert np.isnan(dice_iou(torch.as_tensor(confusions[0]))[0][3])
        assert scores["dice_per_case_canal"] == pytest.approx(float(case_dice[3]))
        assert scores["dice_per_case"] == pytest.approx(float(case_dice[1:].mean()))
        assert scores["dice_pooled"] == scores["dice"] == pytest.approx(_pooled_dice(confusions.sum(0)))
        assert scores["dice_per_case"] != pytest.approx(scores["dice_pooled"])


def _pooled_dice(confusion) -> float:
    tp = np.diag(confusion)
    return float((2 * tp / (confusion.sum(0) + confusion.sum(1)))[1:].mean())


def test_deduplicated_search_equals_brute_force_segmentation():
    rng = np.random.default_rng(0)
    probs, targets = _seg_case(rng)
    scorer = SegmentationScorer(probs, targets, sample_pixels=None)
    result = search_weights(scorer, 3, step=0.1, max_candidates=None)
    brute = max(_loop_miou(probs, targets, v) for v in _raw_grid(3, 10))
    assert result.strategy == "exhaustive" and result.scored == count_unique(3, 10) < 11**3 - 1
    assert result.score == pytest.approx(brute, abs=1e-12)
    assert _loop_miou(probs, targets, result.best) == pytest.approx(brute, abs=1e-12)


@pytest.mark.parametrize("metric", ["accuracy", "f1", "auc"])
def test_deduplicated_search_equals_brute_force_classification(metric):
    rng = np.random.default_rng(2)
    probs, targets = _cls_case(rng, strengths=(1.0, 0.8, 0.5))

    def loop_score(vector):
        return binary_scores(_equation_1(probs, vector)[:, 1], targets, 0.5)[metric]

    scorer = ClassificationScorer(probs, targets, metric)
    result = search_weights(scorer, 3, step=0.1, max_candidates=None)
    brute = max(loop_score(v) for v in _raw_grid(3, 10))
    assert result.score == pytest.approx(brute, abs=1e-6)
    assert loop_score(result.best) == pytest.approx(brute, abs=1e-6)


def test_classification_scorer_equals_the_metrics_module_for_every_candidate():
    """The batched fast path against plid.metrics on each candidate's ensemble probabilities (equation 1)."""
    rng = np.random.default_rng(3)
    probs, targets = _cls_case(rng, n=60)
    candidates = np.concatenate(list(iter_unique(3, 3)))
    for metric in ("accuracy", "f1", "auc"):
        scores = ClassificationScorer(probs, targets, metric)(candidates)
        for vector, score in zip(candidates, scores):
            assert score == pytest.approx(binary_scores(_equation_1(probs, vector)[:, 1], targets, 0.5)[metric],
                                          abs=1e-6)
    scorer = ClassificationScorer(probs, targets)
    for vector in candidates[:5]:
        expected = binary_scores(_equation_1(probs, vector)[:, 1], targets, 0.5)
        for name, value in scorer.scores(vector).items():
            assert value == pytest.approx(expected[name], abs=1e-6), name


def test_multiclass_scorer_equals_the_metrics_module_for_every_candidate():
    rng = np.random.default_rng(6)
    targets = rng.integers(0, 3, 50)  # class 3 of 4 in no reference, and (weak logits) rarely predicted
    onehot = np.eye(4)[targets]
    probs = [_softmax(onehot * s + rng.normal(size=onehot.shape) - 3 * np.eye(4)[3], 1).astype(np.float16)
             for s in (2.0, 1.0, 0.5)]
    candidates = np.concatenate(list(iter_unique(3, 3)))
    for metric in ("accuracy", "f1"):
        scores = ClassificationScorer(probs, targets, metric)(candidates)
        for vector, score in zip(candidates, scores):
            predicted = torch.as_tensor(_equation_1(probs, vector).argmax(1))
            expected = multiclass_scores(predicted, torch.as_tensor(targets), 4)[metric]
            assert score == pytest.approx(expected, abs=1e-6), metric


def test_weight_lands_on_the_perfect_model():
    rng = np.random.default_rng(4)
    targets = rng.integers(0, 4, (4, 16, 16))
    perfect = _softmax(np.eye(4)[targets].transpose(0, 3, 1, 2) * 2).astype(np.float16)
    random = _softmax(rng.normal(size=perfect.shape) * 3).astype(np.float16)
    for scorer in (SegmentationScorer([random, perfect], targets, sample_pixels=None),
                   SegmentationScorer([random, perfect], targets, sample_pixels=50)):
        result = search_weights(scorer, 2, step=0.1, exact_scorer=scorer.exact)
        weights = result.weights()
        assert result.score == 1.0 and weights[1] == 1.0 and weights[0] < weights[1]

    labels = rng.integers(0, 2, 50)
    perfect = _softmax(np.eye(2)[labels] * 2, 1).astype(np.float16)
    random = _softmax(rng.normal(size=perfect.shape) * 3, 1).astype(np.float16)
    for metric in ("accuracy", "f1", "auc"):
        result = search_weights(ClassificationScorer([random, perfect], labels, metric), 2, step=0.1)
        assert result.score == 1.0 and result.weights()[1] == 1.0 and result.weights()[0] < 1.0


def test_sampled_coarse_to_fine_search_reports_the_exact_score_of_its_choice():
    rng = np.random.default_rng(5)
    probs, targets = _seg_case(rng, n=4, size=16, strengths=(2.0, 1.5, 1.0, 0.5))
    scorer = SegmentationScorer(probs, targets, sample_pixels=60, seed=1)
    assert scorer.sampled_pixels == 60 < scorer.disagreement_pixels
    result = search_weights(scorer, 4, step=0.1, exact_scorer=scorer.exact, max_candidates=200, top_k=4)
    assert result.strategy == "coarse-to-fine" and result.coarse_levels == 2 and result.rounds >= 1
    assert result.score == pytest.approx(_loop_miou(probs, targets, result.best), abs=1e-12)
    coarse_best = max(_loop_miou(probs, targets, v) for v in iter_unique(4, 2).__next__())
    assert result.score >= coarse_best - 0.02  # the sample ranks well enough that refining does not lose much


def test_step_that_does_not_divide_one_is_refused():
    with pytest.raises(UserInputError, match="must divide 1"):
        search_weights(lambda v: np.zeros(len(v)), 2, step=0.3)


# ---------------------------------------------------------------- runs on disk and the entry point


def _fake_run(path, model: str, splits: dict[str, Predictions]):
    for split, pred in splits.items():
        save_predictions(path / "predictions" / f"{split}.npz", pred)
    (path / "summary.json").write_text(json.dumps({"choices": {"model": model}, "data_root": "/data"}))
    return path


def _cls_runs(tmp_path, rng, strengths=(2.0, 0.5)):
    ids = {s: np.array([f"img{k}:{level}" for k in range(10) for level in range(1, 4)]) for s in ("val", "test")}
    targets = {s: rng.integers(0, 2, len(ids[s])) for s in ids}
    runs = []
    for i, strength in enumerate(strengths):
        splits = {}
        for s in ids:
            logits = np.eye(2)[targets[s]] * strength + rng.normal(size=(len(ids[s]), 2))
            order = rng.permutation(len(ids[s]))  # saved in loader order; loading sorts by id
            splits[s] = Predictions(ids[s][order], _softmax(logits, 1)[order], targets[s][order])
        runs.append(_fake_run(tmp_path / "multirun" / f"{i}_model{i}", f"model{i}", splits))
    (tmp_path / "multirun" / "multirun.yaml").write_text("{}\n")
    return runs


def test_runs_with_other_cases_are_refused_naming_the_run(tmp_path):
    rng = np.random.default_rng(6)
    first, second = _cls_runs(tmp_path, rng)
    val = load_predictions(second / "predictions" / "val.npz")
    save_predictions(second / "predictions" / "val.npz", Predictions(val.ids[1:], val.probs[1:], val.targets[1:]))
    with pytest.raises(UserInputError, match=f"run {second}: its val cases differ"):
        load_runs(resolve_runs(str(tmp_path / "multirun" / "*")), "cls")
    with pytest.raises(UserInputError, match="not on data.root=/elsewhere"):
        load_runs([first, first], "cls", data_root="/elsewhere")
    with pytest.raises(UserInputError, match="task=seg"):
        load_runs([first, first], "seg")
    with pytest.raises(UserInputError, match="at least two runs"):
        resolve_runs([str(first)])


def test_classification_ensemble_end_to_end_from_a_multirun_dir(tmp_path):
    rng = np.random.default_rng(7)
    _cls_runs(tmp_path, rng, strengths=(2.0, 0.5, 1.0))
    out = tmp_path / "ensemble"
    # no metric given: classification weights maximise the validation ROC AUC (accuracy favours "all negative")
    result = run_module("plid.ensemble", "task=cls", f"runs={tmp_path}/multirun", f"hydra.run.dir={out}",
                        "debug=smoke")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    weights = json.loads((out / "ensemble_weights.json").read_text())
    assert summary["metric"] == weights["metric"] == "auc"
    assert summary["models"] == ["model0", "model1", "model2"] == list(weights["weights"])
    assert set(summary["val"]) == set(summary["test"]) == {"model0", "model1", "model2", "AEM", "WAE"}
    assert weights["val_score"] == summary["val"]["WAE"]["auc"] >= summary["val"]["AEM"]["auc"]
    assert summary["samples"] == weights["samples"] == {"val": 30, "test": 30}
    assert summary["search"]["strategy"] == "exhaustive"
    # AEM is the plain mean of the models' probabilities
    preds = [load_predictions(tmp_path / "multirun" / f"{i}_model{i}" / "predictions" / "test.npz") for i in range(3)]
    mean = np.mean([p.probs.astype(np.float64) for p in preds], 0)
    target = torch.as_tensor(preds[0].targets)
    assert summary["test"]["AEM"]["auc"] == pytest.approx(float(binary_auroc(torch.as_tensor(mean[:, 1]), target)))
    called = mean[:, 1] > summary["test"]["AEM"]["threshold"]  # AEM's own threshold, chosen on val
    assert summary["test"]["AEM"]["accuracy"] == pytest.approx(float((called == preds[0].targets).mean()))
    # the saved weights, applied to the saved probabilities, give the reported WAE
    chosen = load_ensemble(out)
    wae = weighted_average([p.probs.astype(np.float64) for p in preds], list(chosen["weights"].values()))
    assert summary["test"]["WAE"]["auc"] == pytest.approx(float(binary_auroc(torch.as_tensor(wae[:, 1]), target)))
    assert weighted_average([p.probs.astype(np.float64) for p in preds], [1, 1, 1]) == pytest.approx(mean)
    csv = (out / "ensemble_table.csv").read_text().splitlines()
    assert csv[0].startswith("model,val_auc,accuracy") and [r.split(",")[0] for r in csv[1:]][-2:] == ["AEM", "WAE"]
    assert "| WAE |" in (out / "ensemble_table.md").read_text()


def test_the_ensemble_decision_threshold_is_chosen_on_its_validation_probabilities(tmp_path):
    from plid.metrics import youden_threshold

    runs = _cls_runs(tmp_path, np.random.default_rng(9), strengths=(1.0, 0.5))
    out = tmp_path / "ensemble"
    result = run_module("plid.ensemble", "task=cls", f"runs={tmp_path}/multirun", f"hydra.run.dir={out}", "debug=smoke")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    chosen = json.loads((out / "ensemble_weights.json").read_text())
    weights = list(chosen["weights"].values())

    def wae(split):
        preds = [load_predictions(run / "predictions" / f"{split}.npz") for run in runs]
        return weighted_average([p.probs.astype(np.float64) for p in preds], weights)[:, 1], preds[0].targets

    threshold = youden_threshold(*wae("val"))
    assert chosen["threshold"] == summary["threshold"] == summary["val"]["WAE"]["threshold"] == pytest.approx(threshold)
    assert summary["test"]["WAE"]["threshold"] == chosen["threshold"]  # test is scored at the val threshold
    expected = binary_scores(*wae("test"), chosen["threshold"])
    for name in ("recall", "specificity", "f1", "balanced_accuracy"):
        assert summary["test"]["WAE"][name] == pytest.approx(expected[name])


@pytest.mark.slow
def test_search_budget_is_per_task(tmp_path):
    rng = np.random.default_rng(8)
    _cls_runs(tmp_path, rng, strengths=(2.0, 0.5, 1.0))
    out = tmp_path / "ensemble"
    # the seg budget does not touch a classification search; its own budget sends it coarse to fine
    result = run_module("plid.ensemble", "task=cls", f"runs={tmp_path}/multirun", f"hydra.run.dir={out}",
                        "search.max_candidates.seg=1", "search.max_candidates.cls=20")
    assert result.returncode == 0, result.stderr[-3000:]
    search = json.loads((out / "summary.json").read_text())["search"]
    assert search["strategy"] == "coarse-to-fine" and search["unique_grid"] == count_unique(3, 10)


@pytest.mark.slow
def test_bad_runs_give_one_clear_line(tmp_path):
    result = run_module("plid.ensemble", f"runs={tmp_path}/nowhere/*", f"hydra.run.dir={tmp_path}/out")
    assert result.returncode != 0
    assert "matches no file or folder" in result.stderr and "Traceback" not in result.stderr
    # the search budget is per task: one number for both is refused with the way to write it
    result = run_module("plid.ensemble", f"runs={tmp_path}", "search.max_candidates=1000", f"hydra.run.dir={tmp_path}/b")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "search.max_candidates.seg=500000" in result.stderr


@pytest.mark.slow
def test_segmentation_ensemble_over_two_smoke_training_runs(tmp_path):
    sweep = tmp_path / "sweep"
    trained = run_module("plid.train", "-m", "debug=smoke", "model=unet_resnet34,linknet_resnet34",
                         f"hydra.sweep.dir={sweep}", f"paths.data_dir={tmp_path}/data", f"paths.log_dir={tmp_path}/logs")
    assert trained.returncode == 0, trained.stderr[-3000:]
    out = tmp_path / "ensemble"
    result = run_module("plid.ensemble", "task=seg", f"runs={sweep}/*", "debug=smoke", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    weights = json.loads((out / "ensemble_weights.json").read_text())
    assert list(weights["weights"]) == ["unet_resnet34", "linknet_resnet34"]
    assert weights["checkpoints"]["unet_resnet34"].startswith(str(sweep / "0_unet_resnet34" / "checkpoints"))
    run_summary = json.loads((sweep / "0_unet_resnet34" / "summary.json").read_text())
    assert summary["samples"] == {s: run_summary["samples"][s] for s in ("val", "test")}
    assert summary["val"]["WAE"]["miou"] == pytest.approx(weights["val_score"])
    assert summary["val"]["WAE"]["miou"] >= max(summary["val"][m]["miou"] for m in ("unet_resnet34", "linknet_resnet34", "AEM"))
    assert (out / "ensemble_table.csv").is_file() and (out / "ensemble_table.md").is_file()


def test_a_fold_bag_of_single_target_runs_chooses_its_threshold_on_the_pooled_out_of_fold_predictions(tmp_path, caplog):
    from omegaconf import OmegaConf

    from plid.ensemble.folds import GradingPolicy, fold_bag, is_fold_bag
    from plid.metrics import prevalence_threshold, youden_threshold

    rng = np.random.default_rng(0)
    runs, pooled = [], []
    for fold in range(3):
        run = tmp_path / str(fold)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml({"data": {"target": "disc_herniation"}}))
        (run / "summary.json").write_text(json.dumps({"fold": fold, "choices": {"model": "cls_resnet50"},
                                                      "threshold": 0.9}))
        ids = np.array([f"p{fold}_{k}_t2:1" for k in range(20)])
        targets = (np.arange(20) < 3).astype(int)  # 3 positives per fold, as rare as herniation
        p1 = np.clip(0.2 + 0.3 * targets + rng.normal(0, 0.15, 20), 0, 1)
        save_predictions(run / "predictions" / "val.npz", Predictions(ids, np.stack([1 - p1, p1], 1), targets))
        pooled.append((p1, targets))
        runs.append(run)
    with caplog.at_level("WARNING", logger="plid.ensemble.folds"):
        bag = fold_bag(runs)
    assert "fixed_schedule" in caplog.text  # these runs name no callbacks choice: selected on their own val, maybe
    probs, truths = np.concatenate([p for p, _ in pooled]), np.concatenate([t for _, t in pooled])
    # the default operating point: as many positive calls on the pool as it holds positives (9 of 60)
    cut = prevalence_threshold(probs, truths)
    assert bag.targets == ["disc_herniation"] and not bag.multi_task and bag.folds == [0, 1, 2]
    assert bag.thresholds == {"disc_herniation": pytest.approx(cut, abs=1e-6)}
    assert (probs > bag.thresholds["disc_herniation"]).sum() == 9
    assert bag.pooled["disc_herniation"]["called_positive"] == pytest.approx(9 / 60)
    assert fold_bag(runs, GradingPolicy(operating_point="youden")).thresholds["disc_herniation"] == pytest.approx(
        youden_threshold(probs, truths), abs=1e-6)
    assert bag.pooled["disc_herniation"]["positives"] == 9 and bag.pooled["disc_herniation"]["cases"] == 60
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    assert is_fold_bag(summaries)
    assert not is_fold_bag([summaries[0], {**summaries[1], "choices": {"model": "cls_densenet121"}}])
    assert not is_fold_bag([summaries[0], {**summaries[1], "fold": 0}])
    with pytest.raises(UserInputError, match="not a fold bag"):
        fold_bag([runs[0], runs[0]])
