"""Statistics of an evaluation: metrics from saved predictions, patient-level bootstrap confidence intervals,
and summaries over cross-validation folds.

Cases of one patient are not independent (several discs of one image, several slices of one patient), so the
bootstrap resamples patients with replacement and takes all their cases each time: the interval reflects
how the score would move with another sample of patients, which is what a reader of the paper asks.
Intervals are percentile intervals over ``samples`` seeded replicates.

Undefined scores are NaN here and ``null`` in the JSON files written from them (:func:`plid.utils.io.write_json`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.stats import rankdata

from plid.labels import CLASS_NAMES
from plid.models.metrics import per_case_dice, segmentation_scores

CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "auc")
# dice / dice_<class>: pooled over the pixels of all cases (dice_pooled); dice_per_case: nnU-Net's per-case mean
SEGMENTATION_METRICS = ("dice", "dice_per_case", "miou", "miou_fg", *(f"dice_{c}" for c in CLASS_NAMES[1:]),
                        *(f"dice_per_case_{c}" for c in CLASS_NAMES[1:]), *(f"iou_{c}" for c in CLASS_NAMES[1:]))


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half); NaN when one class is absent."""
    targets = np.asarray(targets).astype(bool)
    positives, negatives = int(targets.sum()), int((~targets).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[targets].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def youden_threshold(positive_probs: np.ndarray, targets: np.ndarray, default: float = 0.5) -> float:
    """The decision threshold that maximises Youden's J (sensitivity + specificity - 1) on these cases, as
    ``predicted positive = probability > threshold``.

    The candidate cuts are the distinct probabilities (a case at or above the cut is called positive); the
    best cut is the one of highest J, the highest such cut on a tie (fewest positive calls). The threshold
    returned is the highest probability below that cut (a value of the data, so the rule gives the same calls in
    float32 and float64). ``default`` where J is undefined (one class only) or no cut beats chance (J <= 0).

    Why Youden's J: with class weights and rare positives (herniation is about 5 % of real discs) 0.5 is an
    arbitrary point of the ROC curve; J picks the point farthest above the chance diagonal, weighing missed
    positives and false alarms by the class sizes, and needs no cost of either, which the paper does not give.
    """
    p = np.asarray(positive_probs, dtype=np.float64).ravel()
    t = np.asarray(targets).astype(bool).ravel()
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return float(default)
    cuts = np.unique(p)[::-1]  # descending
    tp = n_pos - np.searchsorted(np.sort(p[t]), cuts, side="left")  # positives at or above each cut
    fp = n_neg - np.searchsorted(np.sort(p[~t]), cuts, side="left")
    j = tp * n_neg - fp * n_pos  # J * n_pos * n_neg, in integers: equal J are equal here
    best = int(np.argmax(j))  # the first maximum: the highest cut among equals
    if j[best] <= 0:  # the lowest cut calls every case positive (J = 0): a best cut above chance is never it
        return float(default)
    return float(cuts[best + 1])


def classification_metrics(positive_probs: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The paper's classification scores (positive class 1, predicted positive where the probability is above
    ``threshold``: the one chosen on validation, :func:`youden_threshold`, where there is one)."""
    targets = np.asarray(targets).astype(int)
    predicted = (np.asarray(positive_probs) > threshold).astype(int)
    tp = int(((predicted == 1) & (targets == 1)).sum())
    tn = int(((predicted == 0) & (targets == 0)).sum())
    fp = int(((predicted == 1) & (targets == 0)).sum())
    fn = int(((predicted == 0) & (targets == 1)).sum())
    recall, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    precision = _ratio(tp, tp + fp)
    return {
        "accuracy": _ratio(tp + tn, len(targets)),
        "balanced_accuracy": float(np.nanmean([recall, specificity])) if not np.isnan([recall, specificity]).all()
        else float("nan"),
        "precision": precision, "recall": recall, "specificity": specificity,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "auc": auc(positive_probs, targets),
    }


def case_confusions(probs: np.ndarray, targets: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """One confusion matrix per case (N, C, C) from class probabilities (N, C, H, W) and labels (N, H, W)."""
    num_classes = num_classes or probs.shape[1]
    predicted = probs.argmax(1).reshape(len(probs), -1).astype(np.int64)
    truth = targets.reshape(len(targets), -1).astype(np.int64)
    flat = truth * num_classes + predicted
    return np.stack([np.bincount(f, minlength=num_classes**2).reshape(num_classes, num_classes) for f in flat])


def segmentation_metrics(confusions: np.ndarray, class_names: Sequence[str] = CLASS_NAMES) -> dict[str, float]:
    """Dice and IoU of the summed confusion matrices of some cases, and Dice per case averaged over them
    (:func:`plid.models.metrics.segmentation_scores`: ``dice_pooled`` and ``dice_per_case``)."""
    confusions = torch.from_numpy(np.asarray(confusions))
    return segmentation_scores(confusions.sum(0), class_names, case_dice=per_case_dice(confusions))


def patient_bootstrap(patients: Sequence[str], statistic: Callable[[np.ndarray], dict[str, float]],
                      samples: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, dict[str, float]]:
    """Point estimate and percentile interval of every metric ``statistic(case indices)`` returns, resampling
    patients (with all their cases) with replacement.

    Returns ``{metric: {"value", "low", "high"}}``; replicates where a metric is undefined (NaN, e.g. an AUC of
    a sample without positives) are left out of its interval.
    """
    patients = np.asarray(patients, dtype=str)
    unique, inverse = np.unique(patients, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(unique))]
    point = statistic(np.arange(len(patients)))
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in point}
    for _ in range(samples):
        chosen = rng.integers(0, len(unique), len(unique))
        values = statistic(np.concatenate([members[k] for k in chosen]))
        for name in point:
            draws[name].append(values[name])
    tail = (1 - confidence) / 2 * 100
    result = {}
    for name, value in point.items():
        replicates = np.asarray(draws[name], dtype=float)
        replicates = replicates[~np.isnan(replicates)]
        low, high = (np.percentile(replicates, [tail, 100 - tail]) if len(replicates) else (np.nan, np.nan))
        result[name] = {"value": float(value), "low": float(low), "high": float(high)}
    return result


def fold_summary(per_fold: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (ddof 1) of each metric over folds, NaN folds left out."""
    names = list(per_fold[0]) if per_fold else []
    summary = {}
    for name in names:
        values = np.asarray([fold.get(name, np.nan) for fold in per_fold], dtype=float)
        values = values[~np.isnan(values)]
        summary[name] = {"mean": float(values.mean()) if len(values) else float("nan"),
                         "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                         "folds": int(len(values))}
    return summary


def bootstrap_counts(patients: Sequence[str], samples: int = 1000, seed: int = 0) -> np.ndarray:
    """(samples, cases): how often each case is in each replicate of :func:`patient_bootstrap` (the same draws of
    patients, with replacement, each drawn patient bringing all their cases)."""
    unique, inverse = np.unique(np.asarray(patients, dtype=str), return_inverse=True)
    rng = np.random.default_rng(seed)
    drawn = np.stack([np.bincount(rng.integers(0, len(unique), len(unique)), minlength=len(unique))
                      for _ in range(samples)]) if samples else np.zeros((0, len(unique)), np.int64)
    return drawn[:, inverse]


def batched_patient_bootstrap(patients: Sequence[str], statistic: Callable[[np.ndarray], dict[str, np.ndarray]],
                              samples: int = 1000, seed: int = 0, confidence: float = 0.95
                              ) -> dict[str, dict[str, float]]:
    """:func:`patient_bootstrap` for a statistic that scores many replicates at once: ``statistic(counts)`` takes
    (R, cases) counts of each case and returns ``{metric: (R,) values}``; the point estimate is every case once.
    Same draws, same percentile intervals, NaN replicates left out."""
    point = statistic(np.ones((1, len(patients))))
    draws = statistic(bootstrap_counts(patients, samples, seed)) if samples else {}
    tail = (1 - confidence) / 2 * 100
    result = {}
    for name, value in point.items():
        replicates = np.asarray(draws.get(name, []), dtype=float)
        replicates = replicates[~np.isnan(replicates)]
        low, high = np.percentile(replicates, [tail, 100 - tail]) if len(replicates) else (np.nan, np.nan)
        result[name] = {"value": float(value[0]), "low": float(low), "high": float(high)}
    return result
