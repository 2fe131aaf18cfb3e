"""Scores of many weighted ensembles at once, from the saved probabilities of M models.

For a batch of candidate weight vectors W (B, M), the ensemble of equation 1, ``sum_i w_i M_i / sum_i w_i``,
is one matrix product ``W @ probs(M, cases * classes)``; dividing by ``sum_i w_i`` changes no argmax and no
ranking, so it is left out of the search. Scorers are called with integer grid vectors (see weights.py) and
return one score per candidate, higher is better.

Segmentation never builds a full probability map per candidate:

- a pixel where every model predicts the same class is predicted that class by every weighting (a weighted
  sum of distributions that all peak at class k peaks at k), so such pixels add a fixed confusion matrix,
  counted once, and only the pixels where the models disagree depend on the weights;
- the search ranks candidates on a seeded sample of those pixels, stratified by reference class so that
  small structures (the spinal canal) weigh in, each sampled pixel counting for its stratum
  (``stratum size / sampled``); the best candidates are then re-scored exactly on every pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from plid.errors import UserInputError
from plid.metrics import SEGMENTATION_METRICS, batched_auc, per_case_dice, segmentation_metric, segmentation_scores

# the figures of plid.metrics.CLASSIFICATION_METRICS a search can maximise (AUC for two classes only)
SEARCH_METRICS = ("accuracy", "f1", "auc")
# elements of the largest (B, cases, classes) block built at once: bounds memory to ~64 MB of float32
_BLOCK = 1 << 24
# candidates x pixels of one sign-test block: small enough to stay in cache (measured fastest on 2 CPU cores)
_PAIR_BLOCK = 1 << 22


def _as_weights(vectors: np.ndarray | Sequence) -> torch.Tensor:
    return torch.as_tensor(np.asarray(vectors, dtype=np.float32))


class ClassificationScorer:
    """Accuracy, F1 and AUC of weighted ensembles of (N, C) probabilities, all candidates in batched tensor ops.

    With two classes (the disc classifiers) a case is predicted positive when ``w . (p1 - p0) > 0``, so a
    batch of candidates is one (B, M) x (M, N) product, a sign test and a second product with the labels that
    counts true and all positive calls; every score but AUC comes from those counts, and only the cases where
    the models disagree enter the products (the others are called the same by every weighting). F1 is that of
    the positive class 1 (when C > 2 the macro mean over the classes present in reference or prediction); AUC,
    for two classes only, is the Mann-Whitney statistic, ties counting one half (the ROC area). These equal
    :func:`plid.metrics.binary_scores` and :func:`plid.metrics.multiclass_scores` of the ensemble's
    probabilities (``tests/test_ensemble.py``), but for zero over zero (e.g. precision with no positive call),
    which scores 0 here, so that every candidate has a score to rank, and NaN there.
    """

    def __init__(self, probs: Sequence[np.ndarray], targets: np.ndarray, metric: str = "accuracy"):
        if metric not in SEARCH_METRICS:
            raise UserInputError(f"metric={metric!r} is not a classification metric; one of {SEARCH_METRICS}")
        self.probs = torch.as_tensor(np.stack([np.asarray(p, dtype=np.float32) for p in probs]))  # (M, N, C)
        _, self.num_cases, self.num_classes = self.probs.shape
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.int64))
        self.metric = metric
        self.binary = self.num_classes == 2
        if metric == "auc" and not self._has_both():
            raise UserInputError("metric=auc needs two classes, both present among the cases; use accuracy or f1")
        if self.binary:
            # p1 - p0 ranks and thresholds cases as the ensemble's p1 does (p0 + p1 is the same for every case)
            self.margin = self.probs[..., 1] - self.probs[..., 0]  # (M, N)
            self.positive = (self.targets == 1).float()
            # a case every model calls positive (or every model negative) is called so by every weighting: its
            # counts are fixed; the search only looks at the cases where the models disagree
            always = (self.margin > 0).all(0)
            self.open = ~(always | (self.margin <= 0).all(0))
            self.fixed_tp = float((always * self.positive).sum())
            self.fixed_pp = float(always.sum())
            self.open_margin = self.margin[:, self.open].contiguous()
            self.open_labels = torch.stack([self.positive[self.open], torch.ones(int(self.open.sum()))], 1)

    def positive_probs(self, vector) -> np.ndarray:
        """The ensemble's class-1 probability per case, equation 1 (``sum_i w_i p_i / sum_i w_i``), in float64."""
        w = _as_weights([vector])[0].double()
        return ((w[:, None] * self.probs[..., 1].double()).sum(0) / w.sum()).numpy()

    def _has_both(self) -> bool:
        return self.binary and self.targets.unique().numel() == 2

    def __call__(self, vectors) -> np.ndarray:
        weights = _as_weights(vectors)
        if self.metric == "auc":
            per_candidate = 8 * self.num_cases  # sorting makes a few copies
        else:
            per_candidate = int(self.open.sum()) if self.binary else self.num_cases * self.num_classes
        chunk = max(1, _PAIR_BLOCK // max(1, per_candidate))
        return torch.cat([self._metrics(weights[i : i + chunk], (self.metric,))[self.metric]
                          for i in range(0, len(weights), chunk)]).numpy()

    def scores(self, vector) -> dict[str, float]:
        """Every metric of one weighting, for reports."""
        names = ("accuracy", "precision", "recall", "specificity", "f1") if self.binary else ("accuracy", "f1")
        names += ("auc",) if self._has_both() else ()
        return {k: float(v[0]) for k, v in self._metrics(_as_weights([vector]), names).items()}

    def _metrics(self, weights: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        if not self.binary:
            pred = (weights @ self.probs.reshape(len(self.probs), -1)).reshape(len(weights), self.num_cases, -1).argmax(-1)
            onehot_pred = torch.nn.functional.one_hot(pred, self.num_classes).double()
            onehot_true = torch.nn.functional.one_hot(self.targets, self.num_classes).double()
            tp = (onehot_pred * onehot_true).sum(-2)
            den = onehot_pred.sum(-2) + onehot_true.sum(-2)
            present = (den > 0).double()  # classes absent from reference and prediction leave the macro mean
            f1 = (2 * tp / den.clamp(min=1) * present).sum(-1) / present.sum(-1)
            out = {"accuracy": (pred == self.targets).double().mean(-1), "f1": f1}
            return {k: v for k, v in out.items() if k in names}
        out = {}
        if "auc" in names:
            out["auc"] = batched_auc(weights @ self.margin, self.positive.bool())
        # in place: 1.0 where the ensemble says class 1 (a tie goes to class 0, as argmax does)
        predicted = (weights @ self.open_margin).gt_(0)
        tp, pp = (predicted @ self.open_labels).double().unbind(-1)  # true and all positive calls
        tp, pp = tp + self.fixed_tp, pp + self.fixed_pp
        n_pos = float(self.positive.sum())
        fp, fn = pp - tp, n_pos - tp
        tn = self.num_cases - n_pos - fp
        ratios = {"accuracy": (tp + tn, torch.full_like(tp, self.num_cases)), "precision": (tp, tp + fp),
                  "recall": (tp, tp + fn), "specificity": (tn, tn + fp), "f1": (2 * tp, 2 * tp + fp + fn)}
        for name, (num, den) in ratios.items():
            if name in names:
                out[name] = torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))
        return out


def allocate(sizes: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` draws over strata as evenly as their sizes allow (a stratum smaller than its share gives
    all it has and the rest goes to the others)."""
    quota = np.zeros(len(sizes), dtype=np.int64)
    left = int(total)
    for rank, k in enumerate(np.argsort(sizes, kind="stable")):
        quota[k] = min(int(sizes[k]), left // (len(sizes) - rank))
        left -= quota[k]
    return quota


class _Pixels:
    """Pixels where the models disagree, arranged for scoring many weightings at once.

    At most pixels only two classes can win under any weighting: every other class is below one of them in
    every model (a class strictly below another in all models is below it in every weighted sum). There the
    prediction is the class ``hi`` when ``w . (p_hi - p_lo) > 0`` and ``lo`` otherwise (argmax keeps the lower
    index on a tie), so a batch of candidates costs one (B, M) x (M, pixels) product and a sign test, and the
    sign tests are summed per (target, lo, hi) group by a second, thin product. Pixels with three or more
    possible winners take the general path: the argmax of the weighted sum over all classes.
    """

    def __init__(self, probs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None, num_classes: int):
        c = self.num_classes = num_classes
        m, d, _ = probs.shape
        weights = torch.ones(d, dtype=torch.float64) if weights is None else weights.double()
        beaten = torch.zeros(d, c, dtype=torch.bool)
        for j in range(c):
            for k in range(c):
                if k != j:
                    beaten[:, j] |= (probs[:, :, k] > probs[:, :, j]).all(0)
        contenders = ~beaten
        pair = contenders.sum(1) == 2
        lo = contenders.int().argmax(1)
        hi = c - 1 - contenders.flip(1).int().argmax(1)
        self.pair, self.targets = pair, targets
        lo, hi, t, w = lo[pair], hi[pair], targets[pair], weights[pair]
        self.lo, self.hi = lo, hi
        pair_probs = probs[:, pair]
        self.diff = (pair_probs.gather(2, hi.view(1, -1, 1).expand(m, -1, 1))
                     - pair_probs.gather(2, lo.view(1, -1, 1).expand(m, -1, 1))).squeeze(2)  # (M, D2)
        groups, group = torch.unique((t * c + lo) * c + hi, return_inverse=True)
        self.lo_cell = groups // (c * c) * c + groups // c % c  # cell (target, lo) of each group
        self.hi_cell = groups // (c * c) * c + groups % c
        # float32 sums are exact for integer counts below 2^24 pixels per group
        self.membership = torch.zeros(len(w), len(groups), dtype=torch.float32)
        self.membership[torch.arange(len(w)), group] = w.float()
        # every pair pixel counted for its lo class; a win of hi moves the pixel's weight to the hi cell
        self.base = torch.zeros(c * c, dtype=torch.float64).index_add_(0, t * c + lo, w)
        self.multi_probs = probs[:, ~pair].reshape(m, -1)  # (M, D3 * C)
        self.multi_targets, self.multi_weights = targets[~pair], weights[~pair]
        self.size, self.pair_size = d, int(pair.sum())

    def predicted(self, weights: torch.Tensor) -> torch.Tensor:
        """(D,) class each pixel is predicted under one weighting (M,), by the same rules as :meth:`confusion`."""
        out = torch.empty(len(self.targets), dtype=torch.long)
        out[self.pair] = torch.where((weights @ self.diff) > 0, self.hi, self.lo)
        d3 = len(self.multi_targets)
        if d3:
            out[~self.pair] = (weights @ self.multi_probs).reshape(d3, self.num_classes).argmax(-1)
        return out

    def confusion(self, weights: torch.Tensor) -> torch.Tensor:
        """(B, C * C) weighted counts of (target, prediction) over these pixels."""
        c, b = self.num_classes, len(weights)
        out = self.base.repeat(b, 1)
        chunk = max(1, _PAIR_BLOCK // max(1, self.pair_size))
        for start in range(0, b * (self.pair_size > 0), chunk):
            # in place: the (B', D2) block is the memory traffic that bounds the speed
            wins = (weights[start : start + chunk] @ self.diff).gt_(0) @ self.membership  # (B', groups)
            rows = out[start : start + chunk]
            rows.index_add_(1, self.hi_cell, wins.double())
            rows.index_add_(1, self.lo_cell, -wins.double())
        d3 = len(self.multi_targets)
        chunk = max(1, _BLOCK // max(1, d3 * c))
        for start in range(0, b * (d3 > 0), chunk):
            w = weights[start : start + chunk]
            pred = (w @ self.multi_probs).reshape(len(w), d3, c).argmax(-1)
            cell = self.multi_targets * c + pred + torch.arange(len(w))[:, None] * (c * c)
            counts = torch.bincount(cell.reshape(-1), weights=self.multi_weights.repeat(len(w)),
                                    minlength=len(w) * c * c)
            out[start : start + chunk] += counts.reshape(len(w), c * c)
        return out


class SegmentationScorer:
    """mIoU / Dice of weighted ensembles of (N, C, H, W) probability maps, computed as training does (the
    confusion matrix of argmax predictions over every pixel of the split, then ``segmentation_metric``).

    Args:
        probs: one (N, C, H, W) array per model, cases in the same order.
        targets: (N, H, W) reference labels.
        metric: ``miou`` (default), ``dice`` or ``miou_fg``.
        sample_pixels: size of the stratified sample of disagreement pixels the fast ``__call__`` scores on;
            None (or at least as many as there are) scores on all of them, exactly.
        seed: seeds the sample.
    """

    def __init__(self, probs: Sequence[np.ndarray], targets: np.ndarray, metric: str = "miou",
                 sample_pixels: int | None = 10_000, seed: int = 0):
        if metric not in SEGMENTATION_METRICS:
            raise UserInputError(f"metric={metric!r} is not a segmentation metric; one of {SEGMENTATION_METRICS}")
        self.metric = metric
        self.num_classes = c = probs[0].shape[1]
        flat = [np.asarray(p).reshape(p.shape[0], c, -1) for p in probs]  # (N, C, HW) views
        target = np.asarray(targets, dtype=np.int64).reshape(-1)
        labels = np.stack([p.argmax(1).reshape(-1) for p in flat])  # (M, N*HW)
        agree = (labels == labels[0]).all(0)
        self.fixed = torch.as_tensor(np.bincount(target[agree] * c + labels[0][agree], minlength=c * c)
                                     .astype(np.float64))
        where = np.flatnonzero(~agree)
        case, pixel = np.divmod(where, flat[0].shape[2])
        # per case: the fixed counts of the agreeing pixels, and the case of each disagreement pixel (Dice per case)
        self.num_cases = n = len(targets)
        agree_case = np.flatnonzero(agree) // flat[0].shape[2]
        self.case_fixed = torch.as_tensor(np.bincount(
            agree_case * c * c + target[agree] * c + labels[0][agree], minlength=n * c * c).reshape(n, c * c))
        self.case_of_pixel = torch.as_tensor(case)
        # (M, D, C) probabilities at the D disagreement pixels
        probs_d = torch.as_tensor(np.stack([p[case, :, pixel].astype(np.float32) for p in flat]))
        targets_d = torch.as_tensor(target[where])
        self.total_pixels, self.disagreement_pixels = target.size, where.size
        self.pixels = _Pixels(probs_d, targets_d, None, c)
        sample, sample_weights = self._stratified(targets_d.numpy(), sample_pixels, seed)
        self.sampled_pixels = self.disagreement_pixels if sample is None else len(sample)
        self.sample = None if sample is None else _Pixels(probs_d[:, sample], targets_d[sample], sample_weights, c)

    @staticmethod
    def _stratified(targets: np.ndarray, size: int | None, seed: int) -> tuple[np.ndarray | None, torch.Tensor | None]:
        if size is None or size >= len(targets):
            return None, None
        rng = np.random.default_rng(seed)
        classes, sizes = np.unique(targets, return_counts=True)
        picks, weights = [], []
        for cls, stratum, take in zip(classes, sizes, allocate(sizes, size)):
            if take:
                picks.append(np.sort(rng.choice(np.flatnonzero(targets == cls), take, replace=False)))
                weights.append(np.full(take, stratum / take))
        return np.concatenate(picks), torch.as_tensor(np.concatenate(weights))

    def confusion(self, vectors) -> torch.Tensor:
        """Exact (B, C, C) confusion matrices over every pixel."""
        c = self.num_classes
        return (self.pixels.confusion(_as_weights(vectors)) + self.fixed).reshape(-1, c, c)

    def exact(self, vectors) -> np.ndarray:
        return segmentation_metric(self.confusion(vectors), self.metric).numpy()

    def __call__(self, vectors) -> np.ndarray:
        """Scores on the stratified sample (an unbiased estimate of the confusion matrix); exact without one."""
        if self.sample is None:
            return self.exact(vectors)
        c = self.num_classes
        confusion = (self.sample.confusion(_as_weights(vectors)) + self.fixed).reshape(-1, c, c)
        return segmentation_metric(confusion, self.metric).numpy()

    def case_confusions(self, vector) -> torch.Tensor:
        """(N, C, C) confusion matrix of each case under one weighting, exactly."""
        c, n = self.num_classes, self.num_cases
        pixels = self.pixels
        w = _as_weights([vector])[0]
        predicted = pixels.predicted(w)
        cells = self.case_of_pixel * c * c + pixels.targets * c + predicted
        counts = torch.bincount(cells, minlength=n * c * c).reshape(n, c * c)
        return (counts + self.case_fixed).reshape(n, c, c)

    def scores(self, vector, class_names: Sequence[str]) -> dict[str, float]:
        """Every score of one weighting (per-class Dice and IoU pooled over pixels, dice, miou, miou_fg, and Dice
        per case, ``dice_per_case``), exactly."""
        case_dice = per_case_dice(self.case_confusions(vector))
        return segmentation_scores(self.confusion([vector])[0], class_names, case_dice=case_dice)
