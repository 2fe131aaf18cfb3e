"""Scored per disc: one answer per distinct disc of a series, as a radiologist reads a series and SPIDER grades each
disc once, against the per-slice figures beside it.

The per-slice reports of a series' images (spider2d rows sharing ``patient`` and ``series``, in ``slice`` order; a
mid-sagittal render is a series of one) are read as one case by the pipeline's own rule
(:func:`plid.inference.slices.aggregate`: the slice with the most discs is the reference, each of its discs is
followed on the others, its level is the slices' vote and each grading is decided once from the aggregate). Each
series disc is then given the reference level its slices' boxes match most (IoU at least
:data:`plid.evaluation.scoring.MATCH_IOU` on each slice where it was found), and each distinct reference disc
``(patient, series, ivd_label)`` is taken by the series disc most of whose slices matched it. Per distinct disc:

- ``disc_recall``: the share of labelled discs a series disc was matched to; ``level_accuracy``: of those, the share
  whose series level is the reference level; ``series_all_levels_right``: the share of series (with a labelled
  disc) where every labelled disc was matched with its right level;
- each binary grading on the matched discs it labels, by the series decision's probability (ROC AUC, PR AUC,
  balanced accuracy, sensitivity and specificity at the decision threshold, Brier), with ``called_positive`` (the
  share of those discs the decisions call positive) beside ``prevalence``;
- each ordinal grading by the series decision's grade (balanced accuracy, quadratic-weighted kappa, within one
  grade, accuracy);

with patient-bootstrap intervals (series resampled with their patient) and positives counted as distinct discs.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from plid.boxes import box_iou_matrix
from plid.datamodules.contract import DISC_BOX, SpineDataset
from plid.evaluation.scoring import MATCH_IOU, ImageTruth
from plid.inference.slices import aggregate
from plid.labels import grading as grading_spec
from plid.metrics import batched_patient_bootstrap, ratio, weighted_binary_scores, weighted_ordinal_scores
from plid.reports import decision

SERIES_AGGREGATION = "mean"


@dataclass
class SeriesScore:
    """One series: its patient, its labelled distinct discs and what the series' answer says of each."""

    patient: str
    series: str
    images: list[str]
    labelled: list[int] = field(default_factory=list)  # ivd_label of each distinct labelled disc
    found: list[bool] = field(default_factory=list)
    right: list[bool] = field(default_factory=list)
    binary: dict[str, list[tuple[float, float, bool]]] = field(default_factory=dict)  # (probability, target, called)
    ordinal: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # (grade, target)
    reported_levels: list[int | None] = field(default_factory=list)

    @property
    def all_levels_right(self) -> float:
        return float(all(self.right)) if self.labelled else float("nan")


def series_of(dataset: SpineDataset, images: list[str]) -> list[tuple[str, str, list[str]]]:
    """``(patient, series, images in slice order)`` of every series among ``images``, in the order first met."""
    rows = dataset.images.set_index("image").loc[images]
    series = rows["series"].fillna("all").astype(str) if "series" in rows.columns else pd.Series("all", rows.index)
    order = rows["slice"] if "slice" in rows.columns else pd.Series(np.nan, rows.index)
    groups: dict[tuple[str, str], list[str]] = {}
    for image in images:
        groups.setdefault((str(rows.at[image, "patient"]), series.at[image]), []).append(image)
    return [(p, s, sorted(members, key=lambda i: (pd.isna(order.at[i]), order.at[i], i)))
            for (p, s), members in groups.items()]


def series_report(slice_reports: list[dict[str, Any]], how: str = SERIES_AGGREGATION) -> tuple[dict[str, Any], int]:
    """The series' one case from its slices' reports (in slice order), and the position of its reference slice: the
    one with the most discs, ties going to the one nearest the middle."""
    middle = (len(slice_reports) - 1) / 2
    reference = min(range(len(slice_reports)), key=lambda k: (-len(slice_reports[k].get("discs") or []),
                                                               abs(k - middle)))
    copies = {k: copy.deepcopy(r) for k, r in enumerate(slice_reports)}
    return aggregate(copies, reference, how), reference


def _distinct(truths: list[ImageTruth], gradings: list[str]) -> dict[int, dict[str, float]]:
    """Each labelled disc of the series once: its gradings (the first labelled value over its slices' rows)."""
    discs: dict[int, dict[str, float]] = {}
    for truth in truths:
        if "ivd_label" not in truth.discs.columns:
            continue
        for row in truth.discs.to_dict("records"):
            if pd.isna(row["ivd_label"]):
                continue
            entry = discs.setdefault(int(row["ivd_label"]), {})
            for g in gradings:
                if g in row and not pd.isna(row[g]) and g not in entry:
                    entry[g] = float(row[g])
    return discs


def score_series(patient: str, series: str, images: list[str], reports: dict[str, dict[str, Any]],
                 truths: dict[str, ImageTruth], binary: list[str], ordinal: list[str],
                 how: str = SERIES_AGGREGATION) -> SeriesScore:
    """The series' answer (:func:`series_report`) scored against its distinct labelled discs."""
    score = SeriesScore(patient, series, images, binary={g: [] for g in binary}, ordinal={g: [] for g in ordinal})
    slice_truths = [truths[i] for i in images]
    distinct = _distinct(slice_truths, [*binary, *ordinal])
    case, _ = series_report([reports[i] for i in images], how)
    discs = [d for d in case.get("discs") or [] if d.get("level") is not None]
    # the reference level each series disc's slices match most
    votes: list[Counter] = []
    for disc in discs:
        counted: Counter = Counter()
        for position, seen in enumerate(disc.get("slices") or [{"box": disc["box"]}]):
            truth = slice_truths[position]
            if seen["box"] is None or not len(truth.discs) or "ivd_label" not in truth.discs.columns:
                continue
            iou = box_iou_matrix([seen["box"]], truth.discs[DISC_BOX].to_numpy(dtype=np.float64))[0]
            best = int(np.argmax(iou))
            if iou[best] >= MATCH_IOU and not pd.isna(truth.discs["ivd_label"].iloc[best]):
                counted[int(truth.discs["ivd_label"].iloc[best])] += 1
        votes.append(counted)
    for level in sorted(distinct):
        claims = [(votes[i][level], -i) for i in range(len(discs)) if votes[i] and votes[i].most_common(1)[0][0] == level]
        score.labelled.append(level)
        if not claims:
            score.found.append(False)
            score.right.append(False)
            score.reported_levels.append(None)
            continue
        disc = discs[-max(claims)[1]]
        score.found.append(True)
        score.right.append(disc["level"] == level)
        score.reported_levels.append(disc["level"])
        for g in binary:
            made = decision(disc, g)
            if g in distinct[level] and made is not None:
                score.binary[g].append((made.probability, distinct[level][g], bool(made.positive)))
        for g in ordinal:
            made = decision(disc, g)
            if g in distinct[level] and made is not None and made.grade is not None:
                score.ordinal[g].append((float(made.grade), distinct[level][g]))
    return score


class PerDiscScores:
    """Every per-disc figure for many bootstrap samples at once: ``weights`` (R, series) counts of each series."""

    def __init__(self, scores: list[SeriesScore], thresholds: dict[str, float], ordinal: list[str]):
        self.scores, self.thresholds, self.ordinal = scores, dict(thresholds), list(ordinal)
        self.unit = np.concatenate([[k] * len(s.labelled) for k, s in enumerate(scores)] or [[]]).astype(int)
        self.found = np.concatenate([s.found for s in scores] or [[]]).astype(float)
        self.right = np.concatenate([s.right for s in scores] or [[]]).astype(float)
        self.levelled = np.array([s.all_levels_right for s in scores], dtype=float)

        def rows(per_series, width: int):
            values = [np.asarray(per_series(s), dtype=np.float64).reshape(-1, width) for s in scores]
            units = np.concatenate([[k] * len(v) for k, v in enumerate(values)] or [[]]).astype(int)
            return (np.concatenate(values) if values else np.zeros((0, width))), units

        self.binary = {g: rows(lambda s, g=g: s.binary.get(g, []), 3) for g in self.thresholds}
        self.ordinal_rows = {g: rows(lambda s, g=g: s.ordinal.get(g, []), 2) for g in self.ordinal}

    def batch(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        w = np.asarray(weights, dtype=np.float64)
        out: dict[str, np.ndarray] = {}
        per_disc = w[:, self.unit]
        out["disc_recall"] = ratio(per_disc @ self.found, per_disc.sum(1))
        out["level_accuracy"] = ratio(per_disc @ (self.right * self.found), per_disc @ self.found)
        levelled = ~np.isnan(self.levelled)
        out["series_all_levels_right"] = ratio(w[:, levelled] @ self.levelled[levelled], w[:, levelled].sum(1))
        for g, threshold in self.thresholds.items():
            values, units = self.binary[g]
            rows_w = w[:, units]
            for name, figure in weighted_binary_scores(values[:, 0], values[:, 1], rows_w, threshold).items():
                out[f"{g}/{name}"] = figure
            out[f"{g}/called_positive"] = ratio(rows_w @ values[:, 2], rows_w.sum(1))
            out[f"{g}/prevalence"] = ratio(rows_w @ values[:, 1], rows_w.sum(1))
        for g in self.ordinal:
            values, units = self.ordinal_rows[g]
            spec = grading_spec(g)
            for name, figure in weighted_ordinal_scores(values[:, 0], values[:, 1], w[:, units], spec.num_classes,
                                                        spec.first).items():
                out[f"{g}/{name}"] = figure
        return out

    def counts(self, index: np.ndarray) -> dict[str, Any]:
        chosen = [self.scores[i] for i in index]
        counts: dict[str, Any] = {
            "series": len(chosen), "patients": len({s.patient for s in chosen}),
            "labelled_discs": sum(len(s.labelled) for s in chosen), "matched_discs": sum(sum(s.found) for s in chosen),
            "series_with_labelled_discs": sum(bool(s.labelled) for s in chosen)}
        for g in self.thresholds:
            rows = [r for s in chosen for r in s.binary.get(g, [])]
            counts[f"{g}/discs"] = len(rows)
            counts[f"{g}/positive_discs"] = int(sum(r[1] > 0 for r in rows))
        for g in self.ordinal:
            counts[f"{g}/discs"] = sum(len(s.ordinal.get(g, [])) for s in chosen)
        return counts


def per_disc_section(dataset: SpineDataset, images: list[str], reports: dict[str, dict[str, Any]],
                     truths: dict[str, ImageTruth], thresholds: dict[str, float], ordinal: list[str],
                     bootstrap: dict[str, Any], how: str = SERIES_AGGREGATION) -> dict[str, Any]:
    """``evaluation.json``'s ``per_disc``: the figures of every series, and of each series type where there are
    several, with their counts, intervals and one row per distinct disc."""
    scores = [score_series(p, s, members, reports, truths, list(thresholds), ordinal, how)
              for p, s, members in series_of(dataset, images)]
    figures = PerDiscScores(scores, thresholds, ordinal)
    groups = {"all": np.arange(len(scores))}
    kinds = sorted({s.series for s in scores})
    if len(kinds) > 1:
        groups.update({k: np.flatnonzero([s.series == k for s in scores]) for k in kinds})
    section: dict[str, Any] = {"aggregation": how, "groups": {}}
    for name, index in groups.items():
        patients = [scores[i].patient for i in index]

        def statistic(counts, index=index):
            weights = np.zeros((len(counts), len(scores)))
            weights[:, index] = counts
            return figures.batch(weights)

        section["groups"][name] = {"counts": figures.counts(index),
                                   "figures": batched_patient_bootstrap(patients, statistic, **bootstrap)}
    section["series"] = [{"patient": s.patient, "series": s.series, "images": len(s.images),
                          "all_levels_right": None if np.isnan(s.all_levels_right) else bool(s.all_levels_right),
                          "discs": [{"ivd_label": lv, "found": f, "reported_level": r}
                                    for lv, f, r in zip(s.labelled, s.found, s.reported_levels)]}
                         for s in scores]
    return section
