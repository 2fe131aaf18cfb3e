"""Every figure plid reports, computed in one place: training, the ensemble, both evaluations and the figures take
their numbers from here. The figures come from torchmetrics' functional API; what it lacks (Youden's threshold,
Dice per case, the patient-level bootstrap) is written here.

Undefined scores are NaN (a ratio over no case; ROC AUC, PR AUC and balanced accuracy of cases of one class) and
``null`` in the JSON files written from them (:func:`plid.utils.io.write_json`).

The ``weighted_*`` scorers score R samples of the same cases at once, each case counted ``weights[r, i]`` times
(the bootstrap's replicates, :func:`bootstrap_counts`): a bootstrap of thousands of replicates is then a few array
operations. With integer weights they equal the one-sample scorers on the cases repeated that often
(``tests/test_metrics.py``).

Segmentation scores come from confusion matrices, so that Dice and IoU per class take one pass over the pixels.
Two Dice definitions are reported, named for what they are:

- ``dice_pooled`` (and ``dice``, the same number, the key monitors and configs use): one confusion matrix summed
  over every pixel of every case of the split, then Dice per class; large structures and large images weigh
  more. It is what a metric accumulated over batches computes (torchmetrics, Keras metrics), what checkpoints
  are selected on (``val/dice``) and the definition of plid's Table 4 figures; ``dice_<class>`` is its
  per-class value.
- ``dice_per_case`` (as nnU-Net): Dice per case and class, NaN where the class is absent from both prediction
  and reference, the mean over cases ignoring NaN (nanmean) per class (``dice_per_case_<class>``), and the
  mean of those over the foreground classes. Each image weighs the same, so a small, missed structure counts.

Cases of one patient are not independent (several discs of one image, several slices of one patient), so the
bootstrap resamples patients with replacement and takes all their cases each time: the interval reflects how the
score would move with another sample of patients, which is what a reader of the paper asks. Intervals are
percentile intervals over ``samples`` seeded replicates.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional import mean_squared_error
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_confusion_matrix,
    binary_roc,
    multiclass_cohen_kappa,
    multiclass_confusion_matrix,
)

from plid.errors import UserInputError

# a binary classifier's figures of the paper's Table 2 (keys of binary_scores)
CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "auc")
# the figures segmentation_metric computes from a confusion matrix
SEGMENTATION_METRICS = ("dice", "miou", "miou_fg")
NAN = float("nan")


# the threshold (and each ordinal cut) of a model that chose none on validation: a version-1 model_dir, a run
# whose validation split held one class; also CORAL's own rule for a grade
DEFAULT_THRESHOLD = 0.5

def ratio(a, b) -> np.ndarray:
    """``a / b`` elementwise in float64, NaN where ``b`` is 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


# ---------------------------------------------------------------- binary classification


def _cases(positive_probs, targets) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities in float64 (exact for float32 input) and 0/1 targets as flat CPU tensors."""
    probs = torch.as_tensor(positive_probs).detach().cpu().double().reshape(-1)
    return probs, torch.as_tensor(targets).detach().cpu().long().reshape(-1)


def _both_classes(targets: torch.Tensor) -> bool:
    return bool((targets == 1).any() and (targets == 0).any())


def auc(positive_probs, targets) -> float:
    """ROC AUC (torchmetrics' ``binary_auroc``: the Mann-Whitney statistic, ties counting one half); NaN when one
    class is absent (where torchmetrics warns and returns 0)."""
    probs, targets = _cases(positive_probs, targets)
    return float(binary_auroc(probs, targets)) if _both_classes(targets) else NAN


def pr_auc(positive_probs, targets) -> float:
    """Area under the precision-recall curve as average precision (torchmetrics' ``binary_average_precision``);
    NaN when one class is absent."""
    probs, targets = _cases(positive_probs, targets)
    return float(binary_average_precision(probs, targets)) if _both_classes(targets) else NAN


def batched_auc(score: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """The ROC AUC of :func:`auc` (Mann-Whitney, ties one half) of each row of ``score`` (B, N) against the boolean
    labels ``positive`` (N,) at once: the ensemble's weight search scores thousands of weightings per call."""
    ordered, order = score.sort(-1)
    low = torch.searchsorted(ordered, ordered, side="left")
    high = torch.searchsorted(ordered, ordered, side="right")
    ranks = (low + high + 1).double() / 2  # average 1-based rank of each tie group
    is_pos = positive[order]
    n_pos = positive.sum().double()
    n_neg = positive.numel() - n_pos
    return ((ranks * is_pos).sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def roc_points(positive_probs, targets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """False and true positive rates from (0, 0) to (1, 1) and the thresholds between (torchmetrics'
    ``binary_roc``: one point per distinct probability, so tied cases make one diagonal step, as the AUC counts
    them); rates of an absent class are 0."""
    probs, targets = _cases(positive_probs, targets)
    with warnings.catch_warnings():  # one class: torchmetrics warns and returns zeros for the missing rate
        warnings.simplefilter("ignore", UserWarning)
        return binary_roc(probs, targets)


def binary_confusion(positive_probs, targets, threshold) -> torch.Tensor:
    """``[[tn, fp], [fn, tp]]``: rows the reference, columns the call, positive where the probability is above
    ``threshold`` (one for every case, or one per case: pooled folds call each case at its fold's)."""
    probs, targets = _cases(positive_probs, targets)
    called = probs > torch.as_tensor(threshold, dtype=torch.float64)
    return binary_confusion_matrix(called.long(), targets)


def binary_scores(positive_probs, targets, threshold=DEFAULT_THRESHOLD) -> dict[str, float]:
    """Positive-class probabilities against 0/1 targets, a case called positive where its probability is above
    ``threshold`` (the one chosen on validation, :func:`youden_threshold`; one for all cases or one per case, as
    :func:`binary_confusion`): accuracy, balanced accuracy (the mean of recall and specificity), precision, recall
    (sensitivity), specificity, F1, the threshold-free ROC AUC, PR AUC and Brier score, and the confusion counts
    ``tn``, ``fp``, ``fn``, ``tp``.

    NaN where undefined: a ratio over no case (precision without positive calls, recall without positives), and
    ROC AUC, PR AUC and balanced accuracy where one class is absent.
    """
    probs, targets = _cases(positive_probs, targets)
    tn, fp, fn, tp = binary_confusion(probs, targets, threshold).flatten().tolist()
    recall, specificity = float(ratio(tp, tp + fn)), float(ratio(tn, tn + fp))
    both = _both_classes(targets)
    return {"accuracy": float(ratio(tp + tn, tn + fp + fn + tp)),
            "balanced_accuracy": (recall + specificity) / 2 if both else NAN,
            "precision": float(ratio(tp, tp + fp)), "recall": recall, "specificity": specificity,
            "f1": float(ratio(2 * tp, 2 * tp + fp + fn)), "auc": auc(probs, targets), "pr_auc": pr_auc(probs, targets),
            "brier": float(mean_squared_error(probs, targets.double())) if len(probs) else NAN,
            "tn": tn, "fp": fp, "fn": fn, "tp": tp}


def youden_threshold(positive_probs, targets, default: float = DEFAULT_THRESHOLD) -> float:
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


def _ranked_cut(p: np.ndarray, allowed: int, default: float) -> float:
    """The lowest threshold (a value of ``p``) that calls at most ``allowed`` of ``p`` positive (``p > threshold``);
    ``default`` where ``p`` is empty."""
    if len(p) == 0:
        return float(default)
    ranked = np.sort(p)[::-1]
    return float(ranked[min(max(allowed, 0), len(ranked) - 1)])


def prevalence_threshold(positive_probs, targets, default: float = DEFAULT_THRESHOLD) -> float:
    """The threshold that calls as many cases positive as these (validation) cases hold positives (at most that
    many, on ties): on validation the calls' precision equals their sensitivity, and the share of positive calls
    is the reference prevalence, so a rare finding is called rarely. ``default`` where one class is absent."""
    p = np.asarray(positive_probs, dtype=np.float64).ravel()
    t = np.asarray(targets).astype(bool).ravel()
    if t.all() or not t.any():
        return float(default)
    return _ranked_cut(p, int(t.sum()), default)


def specificity_threshold(positive_probs, targets, specificity: float = 0.9,
                          default: float = DEFAULT_THRESHOLD) -> float:
    """The lowest threshold whose specificity on these (validation) cases is at least ``specificity``: at most
    ``floor((1 - specificity) * negatives)`` negatives called positive. ``default`` where one class is absent."""
    if not 0.0 < specificity <= 1.0:
        raise UserInputError(f"specificity={specificity}: give a value in (0, 1]")
    p = np.asarray(positive_probs, dtype=np.float64).ravel()
    t = np.asarray(targets).astype(bool).ravel()
    if t.all() or not t.any():
        return float(default)
    return _ranked_cut(p[~t], int(np.floor((1.0 - specificity) * (~t).sum() + 1e-9)), default)


# how a binary grading's threshold is chosen on validation (gradings.operating_point)
OPERATING_POINTS = ("prevalence", "specificity", "youden")


def operating_threshold(positive_probs, targets, operating_point: str, specificity: float = 0.9) -> float:
    """The threshold of one binary grading chosen on validation for the purpose ``operating_point`` names:
    ``prevalence`` (:func:`prevalence_threshold`), ``specificity`` (:func:`specificity_threshold` at
    ``specificity``) or ``youden`` (:func:`youden_threshold`)."""
    if operating_point == "prevalence":
        return prevalence_threshold(positive_probs, targets)
    if operating_point == "specificity":
        return specificity_threshold(positive_probs, targets, specificity)
    if operating_point == "youden":
        return youden_threshold(positive_probs, targets)
    raise UserInputError(f"gradings.operating_point={operating_point}: choose one of {', '.join(OPERATING_POINTS)}")


def _above(distribution) -> np.ndarray:
    """``P(grade > k)`` (..., K-1) from distributions ``P(grade = k)`` (..., K)."""
    return 1 - np.cumsum(np.asarray(distribution, dtype=np.float64), axis=-1)[..., :-1]


def grade_of_distribution(distribution, cuts=None) -> np.ndarray:
    """The grade index of distributions ``P(grade = k)`` (..., K), as saved or averaged over slices: how many
    questions "grade > k" are answered yes, ``P(grade > k)`` above ``cuts[k]`` (K-1 values, or one row per
    distribution; default 0.5 each: CORAL's own rule)."""
    above = _above(distribution)
    return (above > (DEFAULT_THRESHOLD if cuts is None else np.asarray(cuts, dtype=np.float64))).sum(-1)


def ordinal_cuts(distribution, targets) -> list[float]:
    """Each question "grade > k" answered at its own cut, chosen on these (validation) cases by Youden's J, as a
    binary grading's threshold is (:func:`youden_threshold`; 0.5 where a question has one answer only).

    Why: the head's 0.5 answers each question for its more common side. Pfirrmann 1 and 5 are 15 % and 10 % of
    SPIDER's graded discs, so 0.5 calls the end grades rarely and balanced accuracy (the mean recall over grades)
    pays for it; J weighs each question's two sides by their sizes, as it does for herniation."""
    above, targets = _above(distribution), np.asarray(targets).ravel()
    return [round(youden_threshold(above[:, k], targets > k), 6) for k in range(above.shape[1])]


def distinct_discs(patients, levels) -> int:
    """How many discs ``(patient, level)`` pairs name: a disc seen on several slices or series of one patient counts
    once; a disc without a level (None or NaN) counts alone, as nothing says which disc it is. Why: the positives of a
    rare grading are often a few discs on many slices (SPIDER's test split holds 20 herniated disc boxes, 4 discs), and
    a figure's weight is that of its discs, not of its slices."""
    named, unnamed = set(), 0
    for patient, level in zip(patients, levels):
        if level is None or (isinstance(level, float) and np.isnan(level)):
            unnamed += 1
        else:
            named.add((str(patient), int(level)))
    return len(named) + unnamed


def _tie_groups(scores: np.ndarray, descending: bool) -> tuple[np.ndarray, int]:
    """The rank of each score's group of equal scores (0 for the highest with ``descending``), and the count."""
    unique, inverse = np.unique(scores, return_inverse=True)
    return ((len(unique) - 1 - inverse) if descending else inverse), len(unique)


def _group_sums(weights: np.ndarray, groups: np.ndarray, count: int) -> np.ndarray:
    """(R, n) weights summed per group: (R, count)."""
    out = np.zeros((len(weights), count))
    np.add.at(out.T, groups, weights.T)
    return out


def weighted_binary_scores(probability: np.ndarray, target: np.ndarray, weights: np.ndarray, threshold: float
                           ) -> dict[str, np.ndarray]:
    """:func:`binary_scores`' ROC AUC, PR AUC, balanced accuracy, sensitivity (its ``recall``), specificity and
    Brier score of cases counted ``weights`` (R, n) times in each of R samples, by the same definitions."""
    probability, target = np.asarray(probability, dtype=np.float64), np.asarray(target).astype(bool)
    weights = np.asarray(weights, dtype=np.float64)
    positive_w, negative_w = weights[:, target].sum(1), weights[:, ~target].sum(1)
    called = probability > threshold
    sensitivity = ratio(weights[:, target & called].sum(1), positive_w)
    specificity = ratio(weights[:, ~target & ~called].sum(1), negative_w)
    both = (positive_w > 0) & (negative_w > 0)
    # ROC AUC: for each positive, the weight of negatives scored below it, plus half of those tied with it
    groups, count = _tie_groups(probability, descending=False)
    negatives = _group_sums(weights * ~target, groups, count)
    below = np.cumsum(negatives, axis=1) - negatives
    credit = below[:, groups] + 0.5 * negatives[:, groups]
    auc_value = ratio((weights * target * credit).sum(1), positive_w * negative_w)
    # PR AUC: precision at each distinct threshold, weighted by the recall it adds
    groups, count = _tie_groups(probability, descending=True)
    true = np.cumsum(_group_sums(weights * target, groups, count), axis=1)
    false = np.cumsum(_group_sums(weights * ~target, groups, count), axis=1)
    recall = ratio(true, positive_w[:, None])
    added = np.diff(np.concatenate([np.zeros((len(weights), 1)), recall], axis=1), axis=1)
    average_precision = np.nansum(added * ratio(true, true + false), axis=1)
    brier = ratio((weights * (probability - target) ** 2).sum(1), weights.sum(1))
    return {"auc": np.where(both, auc_value, np.nan), "pr_auc": np.where(both, average_precision, np.nan),
            "balanced_accuracy": np.where(both, (sensitivity + specificity) / 2, np.nan),
            "sensitivity": sensitivity, "specificity": specificity, "brier": brier}


# ---------------------------------------------------------------- multiclass and ordinal classification


def multiclass_scores(predicted, target, num_classes: int) -> dict[str, float]:
    """Accuracy and macro F1 of predicted classes; the F1 mean leaves out classes absent from both reference and
    prediction (as torchmetrics' ``multiclass_f1_score(average="macro")``)."""
    confusion = multiclass_confusion_matrix(torch.as_tensor(predicted).cpu(), torch.as_tensor(target).cpu(),
                                            num_classes).double()
    tp = confusion.diagonal()
    den = confusion.sum(0) + confusion.sum(1)
    f1 = ratio(2 * tp, den)
    return {"accuracy": float(ratio(tp.sum(), confusion.sum())), "f1": float(np.nanmean(f1)) if (den > 0).any()
            else NAN}


def ordinal_scores(predicted, target, num_classes: int) -> dict[str, float]:
    """Balanced accuracy (mean recall over the grades present), quadratic-weighted Cohen's kappa (NaN where
    reference and prediction hold one grade each, agreement beyond chance being undefined), the share within one
    grade, exact accuracy and the count, of grades ``0 .. num_classes - 1``."""
    predicted, target = torch.as_tensor(predicted).cpu().long(), torch.as_tensor(target).cpu().long()
    if target.numel() == 0:
        return {"balanced_accuracy": NAN, "kappa": NAN, "within_one": NAN, "accuracy": NAN, "count": 0}
    confusion = multiclass_confusion_matrix(predicted, target, num_classes).double()  # [true, predicted]
    rows = confusion.sum(1)
    present = rows > 0
    with warnings.catch_warnings():  # one grade in both: torchmetrics warns and divides by zero; NaN below
        warnings.simplefilter("ignore", UserWarning)
        kappa = float(multiclass_cohen_kappa(predicted, target, num_classes, weights="quadratic"))
    if target.min() == target.max() and predicted.min() == predicted.max():
        kappa = NAN
    return {"balanced_accuracy": float((confusion.diagonal()[present] / rows[present]).mean()), "kappa": kappa,
            "within_one": float(((predicted - target).abs() <= 1).double().mean()),
            "accuracy": float(confusion.diagonal().sum() / confusion.sum()), "count": int(target.numel())}


def weighted_ordinal_scores(grade: np.ndarray, target: np.ndarray, weights: np.ndarray, num_classes: int,
                            first: int = 0) -> dict[str, np.ndarray]:
    """:func:`ordinal_scores` (but the count) of cases counted ``weights`` (R, n) times; grades
    ``first .. first + num_classes - 1``."""
    weights = np.asarray(weights, dtype=np.float64)
    k = num_classes
    t = np.clip(np.asarray(target, dtype=np.int64) - first, 0, k - 1)
    g = np.clip(np.asarray(grade, dtype=np.int64) - first, 0, k - 1)
    cells = np.zeros((len(t), k * k))
    cells[np.arange(len(t)), t * k + g] = 1
    observed = (weights @ cells).reshape(len(weights), k, k)  # [sample, true, predicted]
    total = observed.sum((1, 2))
    rows, columns = observed.sum(2), observed.sum(1)
    expected = ratio(rows[:, :, None] * columns[:, None, :], total[:, None, None])
    penalty = (np.arange(k)[:, None] - np.arange(k)[None]) ** 2
    kappa = 1 - ratio((penalty * observed).sum((1, 2)), (penalty * expected).sum((1, 2)))
    recall = ratio(observed[:, np.arange(k), np.arange(k)], rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        balanced = np.nanmean(recall, axis=1)
    near = np.abs(t - g) <= 1
    return {"balanced_accuracy": np.where(total > 0, balanced, np.nan), "kappa": np.where(total > 0, kappa, np.nan),
            "within_one": ratio(weights @ near, total), "accuracy": ratio(weights @ (t == g), total)}


# ---------------------------------------------------------------- segmentation


def predicted_classes(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The argmax over the class dimension of logits or probabilities (the first class on a tie, as argmax).

    ``max(dim).indices`` rather than ``argmax(dim)``: on CPU, torch's argmax over a non-last dimension is several
    times slower (``benchmarks/inference.py`` measures both).
    """
    return scores.max(dim).indices


def dice_iou(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class Dice and IoU from ``confusion[..., i, j]`` (pixels of true class i predicted as j), with any
    leading batch dimensions; 0/0 gives NaN for a class absent from both reference and prediction."""
    confusion = confusion.double()
    tp = confusion.diagonal(dim1=-2, dim2=-1)
    fp = confusion.sum(-2) - tp
    fn = confusion.sum(-1) - tp
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def segmentation_metric(confusion: torch.Tensor, name: str) -> torch.Tensor:
    """``dice`` (mean foreground Dice), ``miou`` or ``miou_fg`` of each confusion matrix in a (..., C, C) batch."""
    dice, iou = dice_iou(confusion)
    if name == "dice":
        return dice[..., 1:].nanmean(-1)
    if name == "miou":
        return iou.nanmean(-1)
    if name == "miou_fg":
        return iou[..., 1:].nanmean(-1)
    raise ValueError(f"unknown segmentation metric {name!r}; one of {SEGMENTATION_METRICS}")


def confusions_per_case(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, C, C) confusion matrices ``[true, predicted]``, one per case, of (N, ...) predicted and reference
    classes."""
    n = len(target)
    cell = (torch.arange(n, device=target.device)[:, None] * num_classes * num_classes
            + target.reshape(n, -1).long() * num_classes + predicted.reshape(n, -1).long())
    return torch.bincount(cell.reshape(-1), minlength=n * num_classes**2).reshape(n, num_classes, num_classes)


def per_case_dice(confusions: torch.Tensor) -> torch.Tensor:
    """(C,) mean over cases of each class's Dice per case, from (N, C, C) matrices; a case where a class is absent
    from both prediction and reference is left out of that class's mean (NaN, as nnU-Net), and a class absent
    from every case is NaN."""
    return dice_iou(confusions)[0].nanmean(0)


class CaseDice(Metric):
    """Per-case Dice accumulated over batches (sums and counts of the defined per-case values, per class), so
    that :func:`per_case_dice` of a whole split is computed without keeping its masks."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("total", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        dice = dice_iou(confusions_per_case(predicted, target, self.num_classes))[0]
        defined = ~dice.isnan()
        self.total += dice.nan_to_num(0.0).sum(0)
        self.count += defined.sum(0)

    def compute(self) -> torch.Tensor:
        return self.total / self.count  # NaN (0/0) for a class absent from every case


def segmentation_scores(confusion: torch.Tensor, class_names: Sequence[str],
                        case_dice: torch.Tensor | None = None) -> dict[str, float]:
    """Per-class Dice and IoU of the pooled ``confusion`` (``confusion[i, j]`` counts pixels of true class i
    predicted as j, over all cases), mean foreground Dice (``dice``, also ``dice_pooled``), mIoU with (``miou``)
    and without background (``miou_fg``); a class absent from both reference and prediction scores NaN and is
    left out of the means (nanmean). With ``case_dice`` (:func:`per_case_dice`, per class), also
    ``dice_per_case_<class>`` and their foreground mean ``dice_per_case`` (see the module docstring).
    """
    dice, iou = dice_iou(confusion)
    scores = {}
    for k, name in enumerate(class_names):
        scores[f"dice_{name}"] = float(dice[k])
        scores[f"iou_{name}"] = float(iou[k])
    for name in SEGMENTATION_METRICS:
        scores[name] = float(segmentation_metric(confusion, name))
    scores["dice_pooled"] = scores["dice"]
    for k, name in enumerate(class_names):
        scores[f"dice_pooled_{name}"] = float(dice[k])
    if case_dice is not None:
        case_dice = torch.as_tensor(case_dice, dtype=torch.float64)
        for k, name in enumerate(class_names):
            scores[f"dice_per_case_{name}"] = float(case_dice[k])
        scores["dice_per_case"] = float(case_dice[1:].nanmean())
    return scores


def case_segmentation_scores(confusions, class_names: Sequence[str]) -> dict[str, float]:
    """:func:`segmentation_scores` of some cases' (N, C, C) confusion matrices: pooled over their pixels, and
    Dice per case averaged over them."""
    confusions = torch.as_tensor(confusions)
    return segmentation_scores(confusions.sum(0), class_names, case_dice=per_case_dice(confusions))


# ---------------------------------------------------------------- statistics over cases and folds


def _patient_draws(patients: Sequence[str], samples: int, seed: int) -> tuple[np.ndarray, Iterator[np.ndarray]]:
    """Each case's patient (an index into the distinct patients) and, per replicate, the patients drawn with
    replacement (as many as there are)."""
    unique, inverse = np.unique(np.asarray(patients, dtype=str), return_inverse=True)
    rng = np.random.default_rng(seed)
    return inverse, (rng.integers(0, len(unique), len(unique)) for _ in range(samples))


def _intervals(point: dict[str, float], draws: dict[str, Sequence[float]], confidence: float
               ) -> dict[str, dict[str, float]]:
    """Point estimates with the percentile interval of their replicates, NaN replicates left out."""
    tail = (1 - confidence) / 2 * 100
    result = {}
    for name, value in point.items():
        replicates = np.asarray(draws.get(name, []), dtype=float)
        replicates = replicates[~np.isnan(replicates)]
        low, high = np.percentile(replicates, [tail, 100 - tail]) if len(replicates) else (np.nan, np.nan)
        result[name] = {"value": float(value), "low": float(low), "high": float(high)}
    return result


def patient_bootstrap(patients: Sequence[str], statistic: Callable[[np.ndarray], dict[str, float]],
                      samples: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, dict[str, float]]:
    """Point estimate and percentile interval of every metric ``statistic(case indices)`` returns, resampling
    patients (with all their cases) with replacement.

    Returns ``{metric: {"value", "low", "high"}}``; replicates where a metric is undefined (NaN, e.g. an AUC of
    a sample without positives) are left out of its interval.
    """
    inverse, draws = _patient_draws(patients, samples, seed)
    members = [np.flatnonzero(inverse == k) for k in range(inverse.max(initial=-1) + 1)]
    point = statistic(np.arange(len(inverse)))
    replicates: dict[str, list[float]] = {name: [] for name in point}
    for chosen in draws:
        values = statistic(np.concatenate([members[k] for k in chosen]))
        for name in point:
            replicates[name].append(values[name])
    return _intervals(point, replicates, confidence)


def bootstrap_counts(patients: Sequence[str], samples: int = 1000, seed: int = 0) -> np.ndarray:
    """(samples, cases): how often each case is in each replicate of :func:`patient_bootstrap` (the same draws of
    patients, with replacement, each drawn patient bringing all their cases)."""
    inverse, draws = _patient_draws(patients, samples, seed)
    size = inverse.max(initial=-1) + 1
    drawn = np.stack([np.bincount(chosen, minlength=size) for chosen in draws]) if samples \
        else np.zeros((0, size), np.int64)
    return drawn[:, inverse]


def batched_patient_bootstrap(patients: Sequence[str], statistic: Callable[[np.ndarray], dict[str, np.ndarray]],
                              samples: int = 1000, seed: int = 0, confidence: float = 0.95
                              ) -> dict[str, dict[str, float]]:
    """:func:`patient_bootstrap` for a statistic that scores many replicates at once: ``statistic(counts)`` takes
    (R, cases) counts of each case and returns ``{metric: (R,) values}``; the point estimate is every case once.
    Same draws, same percentile intervals, NaN replicates left out."""
    point = {name: value[0] for name, value in statistic(np.ones((1, len(patients)))).items()}
    draws = statistic(bootstrap_counts(patients, samples, seed)) if samples else {}
    return _intervals(point, draws, confidence)


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
