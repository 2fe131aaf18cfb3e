"""plid.metrics: figures by hand and against independent computations, NaN where undefined, the weighted (bootstrap
count) scorers equal to the one-sample ones on repeated cases, and the patient-level bootstrap.

The independent references are scipy's ranks (Mann-Whitney AUC), torchmetrics' functional API and numpy counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import rankdata
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from plid.metrics import (
    auc,
    batched_patient_bootstrap,
    binary_confusion,
    binary_scores,
    bootstrap_counts,
    case_segmentation_scores,
    confusions_per_case,
    multiclass_scores,
    ordinal_scores,
    patient_bootstrap,
    predicted_classes,
    roc_points,
    segmentation_scores,
    weighted_binary_scores,
    weighted_ordinal_scores,
    youden_threshold,
)

CLASSES = ("background", "vertebra", "disc", "canal")


def _cases(patients: int, per_patient: int, seed: int, decimals: int | None = None):
    """Scores that separate the classes imperfectly, several cases per patient (rounded: ties)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"p{k}" for k in range(patients)], per_patient)
    targets = rng.integers(0, 2, len(groups))
    scores = np.clip(0.5 + (targets - 0.5) * 0.4 + rng.normal(0, 0.25, len(groups)), 0, 1)
    return groups, (scores if decimals is None else np.round(scores, decimals)), targets


def _mann_whitney(scores, targets) -> float:
    ranks = rankdata(scores)
    positive = targets.astype(bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ---------------------------------------------------------------- binary classification


def test_binary_scores_by_hand():
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    m = binary_scores(np.array([0.9, 0.8, 0.2, 0.6]), np.array([1, 0, 0, 1]))
    # predicted 1, 1, 0, 1: tp 2, fp 1, tn 1, fn 0
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 0)
    assert (m["accuracy"], m["recall"], m["specificity"], m["balanced_accuracy"]) == (0.75, 1.0, 0.5, 0.75)
    assert m["precision"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(0.8)
    assert m["brier"] == pytest.approx((0.1**2 + 0.8**2 + 0.2**2 + 0.4**2) / 4)


def test_binary_scores_are_nan_where_undefined():
    one_class = binary_scores(np.array([0.1, 0.7]), np.array([1, 1]))
    for name in ("auc", "pr_auc", "balanced_accuracy", "specificity"):
        assert math.isnan(one_class[name]), name
    assert one_class["recall"] == 0.5
    no_positive_call = binary_scores(np.array([0.1, 0.2]), np.array([0, 1]))
    assert math.isnan(no_positive_call["precision"]) and no_positive_call["f1"] == 0.0
    assert math.isnan(binary_scores(np.array([0.1, 0.2]), np.array([0, 0]))["f1"])  # no positive anywhere


def test_binary_scores_match_mann_whitney_and_counts_with_ties():
    _, scores, targets = _cases(50, 4, seed=2, decimals=1)  # many ties
    m = binary_scores(scores, targets, 0.4)
    assert m["auc"] == pytest.approx(_mann_whitney(scores, targets), abs=1e-6)
    called = scores > 0.4
    assert m["tp"] == int((called & (targets == 1)).sum()) and m["fp"] == int((called & (targets == 0)).sum())
    # float32 and float64 probabilities give the same calls at a threshold chosen on the data
    threshold = youden_threshold(scores.astype(np.float32), targets)
    assert binary_scores(scores.astype(np.float32), targets, threshold) == \
        binary_scores(scores.astype(np.float32).astype(np.float64), targets, threshold)


def test_binary_confusion_takes_one_threshold_per_case():
    probs, targets = np.array([0.3, 0.3, 0.6, 0.6]), np.array([1, 0, 1, 0])
    assert binary_confusion(probs, targets, np.array([0.2, 0.2, 0.7, 0.7])).tolist() == [[1, 1], [1, 1]]
    assert binary_confusion(probs, targets, 0.5).tolist() == [[1, 1], [1, 1]]
    assert binary_confusion(probs, targets, 0.3).tolist() == [[1, 1], [1, 1]]  # 0.3 is not above 0.3
    assert binary_confusion(probs, targets, 0.2).tolist() == [[0, 2], [0, 2]]


def test_roc_points_step_once_per_distinct_probability():
    fpr, tpr, thresholds = roc_points(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0]))
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0] and tpr.tolist() == [0.0, 0.5, 1.0, 1.0]  # the tie: one diagonal step
    assert np.trapezoid(tpr.numpy(), fpr.numpy()) == pytest.approx(auc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]))
    fpr, tpr, _ = roc_points(np.array([0.2, 0.4]), np.array([0, 0]))  # no positive: rates of it are 0
    assert tpr.tolist() == [0.0, 0.0, 0.0]


def test_youden_threshold_by_hand():
    probs = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7])
    # cut at 0.3 (positive from 0.3 up): sensitivity 1, specificity 2/3 -> J = 2/3, the best
    assert youden_threshold(probs, np.array([0, 0, 1, 1, 0, 1])) == 0.2
    # cuts at 0.6 and 0.3 both give J = 2/3: the higher one
    assert youden_threshold(probs, np.array([0, 0, 1, 0, 1, 1])) == 0.4
    assert youden_threshold(probs, np.array([1, 1, 1, 1, 1, 1])) == 0.5  # one class: undefined
    assert youden_threshold(probs, np.array([1, 1, 0, 0, 0, 0])) == 0.5  # no cut beats chance
    probs = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.8, 0.9])
    target = np.array([0, 0, 0, 1, 0, 1, 1])
    # the cut at 0.35 (sensitivity 1, specificity 3/4: J = 0.75; 0.8 gives 2/3), as "above the highest probability
    # below it"
    threshold = youden_threshold(probs, target)
    assert threshold == pytest.approx(0.3)
    scores = binary_scores(probs, target, threshold)
    assert scores["recall"] == 1 and scores["specificity"] == pytest.approx(3 / 4)
    assert scores["balanced_accuracy"] == pytest.approx(7 / 8) and scores["auc"] == pytest.approx(11 / 12)


def test_prevalence_threshold_calls_as_many_positives_as_there_are():
    from plid.metrics import operating_threshold, prevalence_threshold

    probs = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
    target = np.array([0, 0, 0, 1, 0, 0, 1, 0])  # 2 positives of 8
    threshold = prevalence_threshold(probs, target)
    assert threshold == 0.7 and (probs > threshold).sum() == 2
    # ties at the cut call fewer, never more
    assert (np.array([0.5, 0.5, 0.5, 0.1]) > prevalence_threshold([0.5, 0.5, 0.5, 0.1], [1, 0, 0, 0])).sum() == 0
    assert prevalence_threshold(probs, np.zeros(8)) == 0.5 and prevalence_threshold(probs, np.ones(8)) == 0.5
    assert operating_threshold(probs, target, "prevalence") == threshold


def test_specificity_threshold_keeps_the_specificity_asked_for():
    from plid.errors import UserInputError
    from plid.metrics import operating_threshold, specificity_threshold

    rng = np.random.default_rng(0)
    target = (np.arange(200) < 40).astype(int)
    probs = np.clip(0.3 + 0.3 * target + rng.normal(0, 0.2, 200), 0, 1)
    for wanted in (0.8, 0.9, 0.95):
        threshold = specificity_threshold(probs, target, wanted)
        scores = binary_scores(probs, target, threshold)
        assert scores["specificity"] >= wanted
        # the lowest such cut: one negative more called positive would break it
        lower = np.sort(probs[target == 0])[::-1][round((1 - wanted) * 160) + 1]
        assert binary_scores(probs, target, lower)["specificity"] < wanted
    assert operating_threshold(probs, target, "specificity", 0.9) == specificity_threshold(probs, target, 0.9)
    assert operating_threshold(probs, target, "youden") == youden_threshold(probs, target)
    with pytest.raises(UserInputError, match="operating_point=best"):
        operating_threshold(probs, target, "best")
    with pytest.raises(UserInputError, match="specificity=1.5"):
        specificity_threshold(probs, target, 1.5)


@pytest.mark.parametrize("decimals", [None, 1])
def test_weighted_binary_scores_equal_binary_scores_of_the_repeated_cases(decimals):
    _, probability, target = _cases(60, 5, seed=3, decimals=decimals)
    counts = np.random.default_rng(4).integers(0, 4, (6, len(target)))
    counts[0] = 1
    counts[1, target == 1] = 0  # a sample without positives: threshold-free figures NaN
    weighted = weighted_binary_scores(probability, target, counts, 0.45)
    for r, row in enumerate(counts):
        expected = binary_scores(np.repeat(probability, row), np.repeat(target, row), 0.45)
        for name, key in [("auc", "auc"), ("pr_auc", "pr_auc"), ("balanced_accuracy", "balanced_accuracy"),
                          ("sensitivity", "recall"), ("specificity", "specificity"), ("brier", "brier")]:
            np.testing.assert_allclose(weighted[name][r], expected[key], atol=1e-6, equal_nan=True, err_msg=name)
    assert np.isnan(weighted["auc"][1]) and np.isnan(weighted["balanced_accuracy"][1])


# ---------------------------------------------------------------- multiclass and ordinal


def test_multiclass_scores_are_torchmetrics_macro_f1_and_accuracy():
    rng = np.random.default_rng(5)
    target = torch.as_tensor(rng.integers(0, 3, 50))  # class 3 of 4 absent from reference and prediction
    predicted = torch.where(torch.rand(50) < 0.7, target, torch.as_tensor(rng.integers(0, 3, 50)))
    scores = multiclass_scores(predicted, target, 4)
    assert scores["f1"] == pytest.approx(float(multiclass_f1_score(predicted, target, 4, average="macro")), abs=1e-6)
    assert scores["accuracy"] == pytest.approx(float(multiclass_accuracy(predicted, target, 4, average="micro")))


def test_ordinal_scores_by_hand():
    pred, truth = torch.tensor([0, 1, 2, 4, 2]), torch.tensor([0, 1, 1, 2, 2])
    scores = ordinal_scores(pred, truth, 5)
    assert scores["balanced_accuracy"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert scores["within_one"] == pytest.approx(4 / 5) and scores["accuracy"] == pytest.approx(3 / 5)
    # quadratic-weighted kappa by its definition: 1 - sum(w O) / sum(w E), w_ij = (i - j)^2
    observed = np.zeros((5, 5))
    np.add.at(observed, (truth.numpy(), pred.numpy()), 1)
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    w = (np.arange(5)[:, None] - np.arange(5)[None]) ** 2
    assert scores["kappa"] == pytest.approx(1 - (w * observed).sum() / (w * expected).sum(), abs=1e-5)
    assert math.isnan(ordinal_scores(torch.tensor([2, 2]), torch.tensor([2, 2]), 5)["kappa"])
    assert ordinal_scores(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 5)["count"] == 0


def test_ordinal_cuts_call_the_rare_end_grade_that_the_head_rule_never_calls():
    from plid.metrics import grade_of_distribution, ordinal_cuts, youden_threshold

    # three grades, P(grade > 0) and P(grade > 1) per disc (dyadic values: the distribution's cumsum is exact); the
    # head answers "grade > 0" yes for every disc at 0.5, so grade 0 is never called
    above = np.array([[0.5625, 0.125], [0.625, 0.125], [0.6875, 0.25], [0.75, 0.25], [0.8125, 0.3125],
                      [0.875, 0.6875], [0.9375, 0.8125], [0.96875, 0.875]])
    target = np.array([0, 0, 1, 1, 1, 2, 2, 2])
    distribution = np.stack([1 - above[:, 0], above[:, 0] - above[:, 1], above[:, 1]], 1)
    assert grade_of_distribution(distribution).tolist() == [1, 1, 1, 1, 1, 2, 2, 2]
    cuts = ordinal_cuts(distribution, target)
    assert cuts == [youden_threshold(above[:, 0], target > 0), youden_threshold(above[:, 1], target > 1)]
    assert cuts == [0.625, 0.3125]
    assert grade_of_distribution(distribution, cuts).tolist() == target.tolist()
    assert ordinal_scores(torch.as_tensor(grade_of_distribution(distribution, cuts)), torch.as_tensor(target),
                          3)["balanced_accuracy"] == 1.0
    # one row of cuts per disc (pooled folds, each at its own run's cuts) gives the same grades
    assert grade_of_distribution(distribution, np.tile(cuts, (8, 1))).tolist() == target.tolist()
    # a question with one answer in these cases (no grade 0) keeps the head's 0.5
    assert ordinal_cuts(distribution, np.maximum(target, 1))[0] == 0.5


def test_distinct_discs_count_a_disc_on_several_slices_once_and_a_disc_without_level_alone():
    from plid.metrics import distinct_discs

    assert distinct_discs(["1", "1", "1", "2", "2", "2"], [1, 1.0, 2, 1, None, float("nan")]) == 5
    assert distinct_discs([], []) == 0


def test_weighted_ordinal_scores_equal_ordinal_scores_of_the_repeated_cases():
    rng = np.random.default_rng(0)
    grade, target = rng.integers(1, 6, 40), rng.integers(1, 6, 40)
    counts = rng.integers(0, 3, (4, 40))
    weighted = weighted_ordinal_scores(grade, target, counts, 5, first=1)
    for r, row in enumerate(counts):
        repeated = ordinal_scores(torch.tensor(np.repeat(grade, row) - 1), torch.tensor(np.repeat(target, row) - 1), 5)
        for key in ("balanced_accuracy", "kappa", "within_one", "accuracy"):
            assert weighted[key][r] == pytest.approx(repeated[key], abs=1e-5), key


# ---------------------------------------------------------------- segmentation


def test_scores_from_confusion_matrix():
    # rows: true class, columns: predicted; class 3 absent from reference and prediction
    confusion = torch.tensor([[10, 0, 0, 0], [2, 6, 0, 0], [0, 0, 4, 0], [0, 0, 0, 0]])
    scores = segmentation_scores(confusion, CLASSES)
    assert scores["dice_vertebra"] == pytest.approx(2 * 6 / (2 * 6 + 0 + 2))
    assert scores["iou_background"] == pytest.approx(10 / 12)
    assert math.isnan(scores["dice_canal"])
    assert scores["dice"] == pytest.approx((12 / 14 + 1.0) / 2)  # nanmean over vertebra, disc
    assert scores["miou"] == pytest.approx((10 / 12 + 6 / 8 + 1.0) / 3)


def test_predicted_classes_is_argmax_ties_included():
    scores = torch.randn(3, 4, 9, 7)
    scores[0, :, 0, 0] = 1.0  # a four-way tie: the first class, as argmax
    scores[1, 2:, 1, 1] = scores[1, :, 1, 1].max() + 1  # classes 2 and 3 tie above the rest
    assert torch.equal(predicted_classes(scores), scores.argmax(1))
    assert predicted_classes(scores)[0, 0, 0] == 0 and predicted_classes(scores)[1, 1, 1] == 2
    assert torch.equal(predicted_classes(scores[0], dim=0), scores[0].argmax(0))


def test_confusions_per_case_count_pixels_of_each_case():
    probs = torch.zeros(1, 4, 2, 2)
    probs[0, 2] = 1  # everything predicted disc
    conf = confusions_per_case(predicted_classes(probs), torch.tensor([[[2, 2], [0, 1]]]), 4)
    assert conf.shape == (1, 4, 4) and conf[0, 2, 2] == 2 and conf.sum() == 4
    assert case_segmentation_scores(conf, CLASSES)["dice_disc"] == pytest.approx(2 * 2 / (2 * 2 + 2))


def test_dice_is_reported_pooled_over_pixels_and_per_case_as_nnunet():
    # two cases, classes background, vertebra, disc, canal; rows true class, columns predicted
    big = np.diag([100, 0, 90, 0])  # a large disc found whole; no canal in reference or prediction
    small = np.array([[100, 0, 0, 0], [0, 0, 0, 0], [10, 0, 0, 0], [0, 0, 0, 20]])  # a small disc missed
    scores = case_segmentation_scores(np.stack([big, small]), CLASSES)
    assert scores["dice_disc"] == scores["dice_pooled_disc"] == pytest.approx(180 / 190)  # pixels pooled
    assert scores["dice_per_case_disc"] == pytest.approx((1.0 + 0.0) / 2)  # each case counts the same
    assert scores["dice_per_case_canal"] == 1.0  # case 1 has no canal anywhere: NaN, left out of the mean
    assert np.isnan(scores["dice_per_case_vertebra"])  # absent from every case
    assert scores["dice_per_case"] == pytest.approx((0.5 + 1.0) / 2)  # nanmean over the foreground classes
    assert scores["dice"] == scores["dice_pooled"] == pytest.approx((180 / 190 + 1.0) / 2)


# ---------------------------------------------------------------- patient-level bootstrap


def _interval(patients: int, seed: int = 0):
    groups, scores, targets = _cases(patients, 3, seed)
    return patient_bootstrap(groups, lambda i: binary_scores(scores[i], targets[i]), samples=300, seed=0)


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


def test_batched_bootstrap_equals_the_bootstrap_of_the_one_sample_scores():
    groups, scores, targets = _cases(25, 3, seed=6, decimals=2)
    names = {"auc": "auc", "pr_auc": "pr_auc", "sensitivity": "recall", "specificity": "specificity"}
    plain = patient_bootstrap(groups, lambda i: {k: binary_scores(scores[i], targets[i], 0.5)[v]
                                                 for k, v in names.items()}, samples=50, seed=2)
    batched = batched_patient_bootstrap(groups, lambda w: {k: weighted_binary_scores(scores, targets, w, 0.5)[k]
                                                           for k in names}, samples=50, seed=2)
    for name in names:
        for part in ("value", "low", "high"):
            assert batched[name][part] == pytest.approx(plain[name][part], abs=1e-6), (name, part)
    counts = bootstrap_counts(groups, samples=50, seed=2)
    assert counts.shape == (50, len(groups)) and (counts.sum(1) == len(groups)).all()  # 3 cases per patient


def test_the_batched_auc_of_the_ensemble_search_is_torchmetrics_auc_row_by_row():
    from plid.metrics import auc, batched_auc

    rng = np.random.default_rng(3)
    positive = rng.random(40) < 0.3
    scores = np.round(rng.random((5, 40)), 1)  # rounded: many ties, which count one half in both
    batched = batched_auc(torch.from_numpy(scores), torch.from_numpy(positive)).numpy()
    np.testing.assert_allclose(batched, [auc(row, positive.astype(int)) for row in scores], atol=1e-6)  # float32
