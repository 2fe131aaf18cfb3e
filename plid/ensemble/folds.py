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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from plid.ensemble.predictions import Predictions, load_predictions
from plid.errors import UserInputError
from plid.labels import grading
from plid.metrics import auc, ordinal_cuts, youden_threshold

SELECTION = "pooled out-of-fold"
log = logging.getLogger(__name__)


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
    pooled: dict[str, dict[str, Any]] = field(default_factory=dict)  # per grading: cases, positives, auc, threshold

    def describe(self) -> dict[str, Any]:
        """What a model_dir's manifest records of the bag."""
        return {"selection": SELECTION, "folds": self.folds, "runs": [str(r) for r in self.runs],
                "data_root": self.data_root, "thresholds": self.thresholds, "cuts": self.cuts,
                "pooled_val": self.pooled}


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


def pooled_threshold(pooled: Predictions) -> float:
    """Youden's cut on the class-1 probabilities of the pooled out-of-fold predictions, rounded as a manifest stores
    it (so a bag's calls are the same from its manifest and from ``plid.evaluate runs=...``)."""
    return round(youden_threshold(pooled.probs[:, 1].astype(np.float64), pooled.targets), 6)


def pooled_decision(pooled: Predictions, ordinal: bool) -> float | list[float]:
    """What a bag calls at, chosen on pooled out-of-fold predictions: a binary grading's threshold
    (:func:`pooled_threshold`), an ordinal grading's cuts (:func:`plid.metrics.ordinal_cuts`)."""
    return ordinal_cuts(pooled.probs, pooled.targets) if ordinal else pooled_threshold(pooled)


def bag_mean(per_run: list[Predictions]) -> Predictions:
    """The runs' predictions of the same cases (a test split) averaged: what the bag predicts."""
    first = per_run[0]
    for predictions in per_run[1:]:
        if not np.array_equal(predictions.ids, first.ids) or not np.array_equal(predictions.targets, first.targets):
            raise UserInputError("the bag's runs predicted different test cases; were they trained on one splits file?")
    return Predictions(first.ids, np.mean([p.probs for p in per_run], axis=0), first.targets)


def fold_bag(runs: list[str | Path]) -> FoldBag:
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
    bag = FoldBag(paths, [int(s["fold"]) for s in summaries], targets[0], multi_task, summaries[0].get("data_root"))
    chosen = [str(p) for p, s in zip(paths, summaries) if (s.get("choices") or {}).get("callbacks") != "fixed_schedule"]
    if chosen:
        log.warning("fold bag: runs %s did not train on callbacks=fixed_schedule; a checkpoint chosen on a run's own "
                    "validation split makes its out-of-fold predictions optimistic", chosen)
    for name in bag.targets:
        pooled = out_of_fold(paths, pooled_predictions(paths, name if multi_task else ""))
        entry: dict[str, Any] = {"cases": len(pooled)}
        if multi_task and grading(name).ordinal:
            bag.cuts[name] = entry["cuts"] = pooled_decision(pooled, ordinal=True)
        else:
            bag.thresholds[name] = pooled_decision(pooled, ordinal=False)
            entry.update(positives=int((pooled.targets == 1).sum()),
                         auc=auc(pooled.probs[:, 1].astype(np.float64), pooled.targets), threshold=bag.thresholds[name])
        bag.pooled[name] = entry
    return bag
