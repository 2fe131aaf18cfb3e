"""Fold bags: one classifier config trained once per fold, selected on its pooled out-of-fold predictions.

Each run of a bag held out a different fold's patients for validation. Together, their validation predictions
cover every patient of those folds once, each predicted by the one run that never trained on them: the pooled
out-of-fold (OOF) predictions. On spider2d, one fold's validation split holds a dozen herniated disc crops of a
few patients, and a threshold or checkpoint chosen on them says little about new patients; the pool of six folds
holds every non-test herniated disc. So a bag's decision thresholds (Youden's J, as for one run) and its ordinal
gradings' cuts (:func:`plid.metrics.ordinal_cuts`) are chosen on the pool, and at prediction the bag averages its
runs' probabilities, as nnU-Net's cross-validation ensemble does.

The runs should train on a fixed schedule (``callbacks=fixed_schedule``): a checkpoint chosen on a run's own
validation split would make that split's predictions no longer out of fold for the threshold.

The threshold is chosen on single runs' probabilities and applied to their mean; averaging k runs narrows the
spread of the probabilities, so that cut is near, not at, the best cut of the mean (which no held-out case shows).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from plid.ensemble.predictions import Predictions, load_predictions
from plid.errors import UserInputError
from plid.labels import grading
from plid.metrics import (
    OPERATING_POINTS,
    binary_scores,
    grade_of_distribution,
    operating_threshold,
    ordinal_cuts,
    ordinal_scores,
)

SELECTION = "pooled out-of-fold"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GradingPolicy:
    """How a classifier's gradings are called and which a report states, decided on (pooled out-of-fold)
    validation predictions and written down before any test figure is seen (``gradings`` of plid.export and
    plid.evaluate; docs/gradings.md):

    - a binary grading's threshold is chosen for ``operating_point`` (:func:`plid.metrics.operating_threshold`):
      ``prevalence`` (as many positive calls as validation has positives, so a rare finding is called rarely),
      ``specificity`` (the lowest cut keeping validation specificity at ``specificity``) or ``youden``;
    - an ordinal grading's cuts by Youden's J per question "grade > k" (:func:`plid.metrics.ordinal_cuts`);
    - a grading is **validated** where its validation figure reaches the floor: ROC AUC ``auc_floor`` (binary),
      quadratic kappa ``kappa_floor`` of the grades called at the cuts (ordinal). A report gives the others as
      "not validated", with their figure, and calls no finding from them.
    """

    operating_point: str = "prevalence"
    specificity: float = 0.90
    auc_floor: float = 0.70
    kappa_floor: float = 0.40

    def __post_init__(self) -> None:
        if self.operating_point not in OPERATING_POINTS:
            raise UserInputError(f"gradings.operating_point={self.operating_point}: choose one of "
                                 f"{', '.join(OPERATING_POINTS)}")
        for key in ("specificity", "auc_floor", "kappa_floor"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise UserInputError(f"gradings.{key}={value}: give a number in [0, 1]")

    @classmethod
    def from_config(cls, cfg: Any) -> GradingPolicy:
        """From a config's ``gradings`` mapping (absent keys: the defaults)."""
        values = dict(cfg or {})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise UserInputError(f"gradings: unknown keys {sorted(unknown)}")
        return cls(**values)

    def describe(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_POLICY = GradingPolicy()


@dataclass
class FoldBag:
    """The runs of a bag (fold order) and what their pooled validation predictions chose."""

    runs: list[Path]
    folds: list[int]
    targets: list[str]  # a multi-task classifier's gradings, or a single-target classifier's one target
    multi_task: bool
    data_root: str | None = None  # the folder the runs trained on (their patients are in sample there)
    thresholds: dict[str, float] = field(default_factory=dict)  # per binary grading
    cuts: dict[str, list[float]] = field(default_factory=dict)  # per ordinal grading: one per "grade > k" question
    pooled: dict[str, dict[str, Any]] = field(default_factory=dict)  # per grading: pooled_validation's entry
    policy: GradingPolicy = field(default_factory=GradingPolicy)

    def describe(self) -> dict[str, Any]:
        """What a model_dir's manifest records of the bag."""
        return {"selection": SELECTION, "folds": self.folds, "runs": [str(r) for r in self.runs],
                "data_root": self.data_root, "thresholds": self.thresholds, "cuts": self.cuts,
                "pooled_val": self.pooled, "policy": self.policy.describe()}


def _summary(run: Path) -> dict[str, Any]:
    path = run / "summary.json"
    if not path.is_file():
        raise UserInputError(f"run {run}: no summary.json (was the run finished?)")
    return json.loads(path.read_text())


def _targets(run: Path, summary: dict[str, Any]) -> list[str]:
    """A multi-task run's gradings (summary.json), or a single-target run's ``data.target`` (its config)."""
    if summary.get("targets"):
        return [str(t) for t in summary["targets"]]
    config = run / ".hydra" / "config.yaml"
    target = OmegaConf.load(config).get("data", {}).get("target") if config.is_file() else None
    if target is None:
        raise UserInputError(f"run {run}: neither summary.json's targets nor data.target in .hydra/config.yaml; "
                             f"is it a classifier run of python -m plid.train?")
    return [str(target)]


def is_fold_bag(summaries: list[dict[str, Any]]) -> bool:
    """Two or more runs of one model config, each on a different fold."""
    models = {str((s.get("choices") or {}).get("model")) for s in summaries}
    folds = [s.get("fold") for s in summaries]
    return len(summaries) > 1 and len(models) == 1 and None not in folds and len(set(folds)) == len(folds)


def pooled_predictions(runs: list[Path], subdir: str = "") -> list[Predictions]:
    """Each run's saved validation predictions (``predictions/<subdir>/val.npz``; subdir a grading of a multi-task
    run), in the order of ``runs``."""
    loaded = []
    for run in runs:
        path = run / "predictions" / subdir / "val.npz"
        if not path.is_file():
            raise UserInputError(f"run {run}: no {path.relative_to(run)} (training writes it after testing)")
        loaded.append(load_predictions(path))
    return loaded


def out_of_fold(runs: list[Path], per_run: list[Predictions]) -> Predictions:
    """The runs' validation predictions concatenated: refused where two runs validated on the same case, since
    then the runs are not folds of one split."""
    seen: dict[str, Path] = {}
    for run, predictions in zip(runs, per_run):
        for case in predictions.ids.tolist():
            if case in seen:
                raise UserInputError(f"runs {seen[case]} and {run} both validated on {case}: a fold bag needs runs "
                                     f"of different folds of one splits file (data.fold=0,1,...)")
            seen[case] = run
    return Predictions(np.concatenate([p.ids for p in per_run]), np.concatenate([p.probs for p in per_run]),
                       np.concatenate([p.targets for p in per_run]))


def pooled_threshold(pooled: Predictions, policy: GradingPolicy = DEFAULT_POLICY) -> float:
    """The threshold of ``policy``'s operating point on the class-1 probabilities of the pooled out-of-fold
    predictions, rounded as a manifest stores it (so a bag's calls are the same from its manifest and from
    ``plid.evaluate runs=...``)."""
    probs = pooled.probs[:, 1].astype(np.float64)
    return round(operating_threshold(probs, pooled.targets, policy.operating_point, policy.specificity), 6)


def pooled_decision(pooled: Predictions, ordinal: bool, policy: GradingPolicy = DEFAULT_POLICY) -> float | list[float]:
    """What a bag calls at, chosen on pooled out-of-fold predictions: a binary grading's threshold
    (:func:`pooled_threshold`), an ordinal grading's cuts (:func:`plid.metrics.ordinal_cuts`)."""
    return ordinal_cuts(pooled.probs, pooled.targets) if ordinal else pooled_threshold(pooled, policy)


def grading_validation(pooled: Predictions, name: str, ordinal: bool, policy: GradingPolicy) -> dict[str, Any]:
    """One grading's choice and figures on (pooled out-of-fold) validation predictions: its threshold or cuts, the
    cases, and whether it is validated (:class:`GradingPolicy`); a binary grading's positives, ROC AUC and, at its
    threshold, sensitivity, specificity, the share called positive and the prevalence; an ordinal grading's
    quadratic kappa and balanced accuracy of the grades called at its cuts."""
    entry: dict[str, Any] = {"cases": len(pooled)}
    if ordinal:
        cuts = pooled_decision(pooled, True, policy)
        scores = ordinal_scores(grade_of_distribution(pooled.probs, cuts), pooled.targets, pooled.probs.shape[1])
        entry.update(cuts=cuts, kappa=scores["kappa"], balanced_accuracy=scores["balanced_accuracy"],
                     metric="kappa", floor=policy.kappa_floor)
        figure = scores["kappa"]
    else:
        threshold = pooled_decision(pooled, False, policy)
        probs = pooled.probs[:, 1].astype(np.float64)
        scores = binary_scores(probs, pooled.targets, threshold)
        called = (probs > threshold).mean() if len(probs) else float("nan")
        entry.update(positives=int((pooled.targets == 1).sum()), auc=scores["auc"], threshold=threshold,
                     operating_point=policy.operating_point, sensitivity=scores["recall"],
                     specificity=scores["specificity"], called_positive=float(called),
                     prevalence=float((pooled.targets == 1).mean()) if len(probs) else float("nan"),
                     metric="auc", floor=policy.auc_floor)
        figure = scores["auc"]
    entry["validated"] = bool(np.isfinite(figure) and figure >= entry["floor"])
    if not entry["validated"]:
        log.info("%s: validation %s %.3f under the floor %.2f: reports give it as not validated", name,
                 entry["metric"], figure, entry["floor"])
    return entry


def validate_gradings(runs: list[Path], targets: list[str], multi_task: bool,
                      policy: GradingPolicy = DEFAULT_POLICY) -> dict[str, dict[str, Any]]:
    """:func:`grading_validation` of every grading on the runs' validation predictions pooled (one run: its own
    validation split), a multi-task run's ordinal gradings as ordinal."""
    return {name: grading_validation(out_of_fold(runs, pooled_predictions(runs, name if multi_task else "")), name,
                                     multi_task and grading(name).ordinal, policy)
            for name in targets}


def bag_mean(per_run: list[Predictions]) -> Predictions:
    """The runs' predictions of the same cases (a test split) averaged: what the bag predicts."""
    first = per_run[0]
    for predictions in per_run[1:]:
        if not np.array_equal(predictions.ids, first.ids) or not np.array_equal(predictions.targets, first.targets):
            raise UserInputError("the bag's runs predicted different test cases; were they trained on one splits file?")
    return Predictions(first.ids, np.mean([p.probs for p in per_run], axis=0), first.targets)


def fold_bag(runs: list[str | Path], policy: GradingPolicy = DEFAULT_POLICY) -> FoldBag:
    """Check that ``runs`` are folds of one classifier config and choose each binary grading's threshold, and each
    ordinal grading's cuts, on their pooled out-of-fold validation predictions."""
    paths = [Path(r).expanduser().resolve() for r in runs]
    summaries = [_summary(p) for p in paths]
    if not is_fold_bag(summaries):
        described = [f"{p} (model {(s.get('choices') or {}).get('model')}, fold {s.get('fold')})"
                     for p, s in zip(paths, summaries)]
        raise UserInputError(f"not a fold bag: {described}; a bag is two or more runs of one model config, each on "
                             f"a different data.fold")
    order = np.argsort([s["fold"] for s in summaries], kind="stable")
    paths, summaries = [paths[i] for i in order], [summaries[i] for i in order]
    targets = [_targets(p, s) for p, s in zip(paths, summaries)]
    if any(t != targets[0] for t in targets):
        raise UserInputError(f"runs {[str(p) for p in paths]} learn different targets {targets}; a bag's runs differ "
                             f"in their fold only")
    multi_task = bool(summaries[0].get("targets"))
    bag = FoldBag(paths, [int(s["fold"]) for s in summaries], targets[0], multi_task, summaries[0].get("data_root"),
                  policy=policy)
    chosen = [str(p) for p, s in zip(paths, summaries) if (s.get("choices") or {}).get("callbacks") != "fixed_schedule"]
    if chosen:
        log.warning("fold bag: runs %s did not train on callbacks=fixed_schedule; a checkpoint chosen on a run's own "
                    "validation split makes its out-of-fold predictions optimistic", chosen)
    bag.pooled = validate_gradings(paths, bag.targets, multi_task, policy)
    for name, entry in bag.pooled.items():
        if "cuts" in entry:
            bag.cuts[name] = entry["cuts"]
        else:
            bag.thresholds[name] = entry["threshold"]
    return bag
