"""Which sagittal slices of a volume the pipeline analyses, and each disc's probability over several slices.

``slice=anatomical`` (the default) picks the mid-sagittal slice from the image content: among the central
half of the slices (:data:`CANDIDATE_FRACTION`), the one where the lumbar detector (stage 1) is most confident,
ties going to the slice nearest the geometric centre. That detector was trained on mid-sagittal renders and the
central slices of SPIDER's SPACE series, where the whole lumbar column, canal and discs show; lateral slices
(pedicles, foramina, psoas) lose it first. It costs one stage-1 forward per candidate, the cheapest network of
the pipeline, and needs no model beyond those of a model_dir. A canal-width criterion would need the segmenter
on every candidate (several times the cost) and is less stable where the canal is narrowed, the case of
interest. Where an off-centre field of view or a scoliosis moves the spine away from the middle, the most
confident slice follows it within the candidates; it never leaves the central half, so a slice through the
psoas is never chosen. ``slice=center`` keeps the geometric centre.

``slices=K`` analyses K neighbouring slices centred on that choice. Each disc of the chosen slice is matched in
the others (greedily by box IoU, at least :data:`MIN_IOU`; a disc with no such overlap falls back to the nearest
box centre within half its height), and its probability becomes the mean or the maximum over the slices where
it was found (``slice_aggregation``), and its call is made again from that value by the same rule, with each slice's
decisions beside it: herniations are often paramedian, so a disc can look normal in the mid-sagittal slice and
herniated one slice beside it. Its level is decided once for the series too, by the slices' vote
(:func:`aggregate`). Boxes and the segmentation of the report are those of the chosen slice.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from plid.boxes import box_iou_matrix
from plid.data.sagittal import slice_window
from plid.errors import UserInputError
from plid.reports import AGGREGATIONS, Decision, SliceFinding, decision, disc_decisions

SLICE_MODES = ("anatomical", "center")
CANDIDATE_FRACTION = 0.5
MIN_IOU = 0.3


@dataclass
class SliceOptions:
    """``slice=``, ``slices=`` and ``slice_aggregation=`` of ``python -m plid.predict``."""

    slice: str = "anatomical"
    slices: int = 1
    aggregation: str = "mean"

    def __post_init__(self):
        if self.slice not in SLICE_MODES:
            raise UserInputError(f"slice={self.slice}: choose one of {', '.join(SLICE_MODES)}")
        if int(self.slices) < 1:
            raise UserInputError(f"slices={self.slices}: give the number of slices to analyse (1 or more)")
        self.slices = int(self.slices)
        if self.aggregation not in AGGREGATIONS:
            raise UserInputError(f"slice_aggregation={self.aggregation}: choose one of {', '.join(AGGREGATIONS)}")


def candidates(num: int) -> list[int]:
    """The central slices ``slice=anatomical`` chooses among."""
    return slice_window(num, max(1, math.ceil(num * CANDIDATE_FRACTION)))


def choose_slice(volume, lumbar_detector, mode: str) -> tuple[int, dict[str, Any]]:
    """The slice index to analyse (counting to the patient's left) and how it was chosen, for the report."""
    num = volume.num_slices
    centre = slice_window(num, 1)[0]
    if mode == "center" or num == 1:
        return centre, {"method": "center"}
    indices = candidates(num)
    scores = []
    for k in indices:
        _, confidences = lumbar_detector(volume.image(k))
        scores.append(float(np.max(confidences)) if len(confidences) else 0.0)
    best = min(range(len(indices)), key=lambda i: (-scores[i], abs(indices[i] - (num - 1) / 2)))
    detail = {"method": "anatomical", "candidates": indices, "lumbar_scores": [round(s, 4) for s in scores]}
    if scores[best] == 0.0:
        detail["note"] = "no lumbar region in any candidate slice: the geometric centre is kept"
        return centre, detail
    return indices[best], detail


def analysed_slices(num: int, chosen: int, count: int) -> list[int]:
    """``count`` neighbouring slices centred on ``chosen``, inside the volume."""
    return _window(num, count, chosen)


def _window(num: int, count: int, centre: int) -> list[int]:
    if count >= num:
        return list(range(num))
    start = int(np.clip(centre - (count - 1) // 2, 0, num - count))
    return list(range(start, start + count))


def match_discs(reference: list[dict], other: list[dict]) -> dict[int, int]:
    """Index in ``other`` of each disc of ``reference`` found there (one-to-one)."""
    overlaps = box_iou_matrix([a["box"] for a in reference], [b["box"] for b in other])
    pairs = sorted(((float(overlaps[i, j]), i, j) for i in range(len(reference)) for j in range(len(other))),
                   reverse=True)
    matched: dict[int, int] = {}
    used: set[int] = set()
    for overlap, i, j in pairs:
        if overlap < MIN_IOU:
            break
        if i not in matched and j not in used:
            matched[i] = j
            used.add(j)
    for i, a in enumerate(reference):
        if i in matched:
            continue
        centre = np.array([(a["box"][0] + a["box"][2]) / 2, (a["box"][1] + a["box"][3]) / 2])
        reach = (a["box"][3] - a["box"][1]) / 2
        near = [(float(np.hypot(*(centre - [(b["box"][0] + b["box"][2]) / 2, (b["box"][1] + b["box"][3]) / 2]))), j)
                for j, b in enumerate(other) if j not in used]
        near = [(d, j) for d, j in near if d <= reach]
        if near:
            matched[i] = min(near)[1]
            used.add(matched[i])
    return matched


def aggregate(reports: dict[int, dict[str, Any]], chosen: int, how: str) -> dict[str, Any]:
    """One answer per disc for several slices of a series (``reports``: slice index -> per-slice report): the discs
    of slice ``chosen``, each matched on the other slices (:func:`match_discs`), with

    - its level decided once for the series: the level most of the slices that found it gave it (ties: the chosen
      slice's), ``level_agreement`` the share that agree; where slices disagree, or two discs end up with one
      level, the case's ``levels_uncertain`` is set with the reason;
    - each decision combined over the slices where it was found (:meth:`plid.reports.Decision.aggregate`: the mean
      or maximum probability, the mean distribution, the call made again at the same threshold or cuts);
    - a ``slices`` list beside them: its box, level and decisions on each slice (null and empty where not found),
      and ``slices_seen``.
    """
    report = reports[chosen]
    discs = report.get("discs", [])
    findings: list[list[dict[str, Any]]] = [[] for _ in discs]
    for k in sorted(reports):
        other = reports[k].get("discs", [])
        matched = {i: i for i in range(len(other))} if k == chosen else match_discs(discs, other)
        for i in range(len(discs)):
            found = other[matched[i]] if i in matched else None
            finding = SliceFinding(slice_index=k, box=found["box"] if found else None,
                                   level=found.get("level") if found else None,
                                   name=found.get("name") if found else None,
                                   gradings=disc_decisions(found) if found else {})
            findings[i].append(finding.model_dump(mode="json"))
    disagree = 0
    for disc, seen in zip(discs, findings):
        disc["slices"] = seen
        disc["slices_seen"] = sum(s["box"] is not None for s in seen)
        disc["gradings"] = {name: Decision.aggregate([decision(s, name) for s in seen], how).model_dump(mode="json")
                            for name in disc.get("gradings") or {}}
        if disc.get("level") is None:  # a flagged box (duplicate, not a disc): no level to vote on
            continue
        level, name, agreement = _vote(disc, seen)
        disc["level"], disc["name"], disc["level_agreement"] = level, name, agreement
        disagree += agreement < 1
    reasons = [report.get("levels_uncertain_reason")] if report.get("levels_uncertain_reason") else []
    if disagree:
        reasons.append(f"the slices disagree on the level of {disagree} disc(s)")
    levels = [d["level"] for d in discs if d.get("level") is not None]
    if len(set(levels)) < len(levels):
        reasons.append("two discs were given one level by the slices' vote")
    if reasons:
        report["levels_uncertain"], report["levels_uncertain_reason"] = True, "; ".join(dict.fromkeys(reasons))
    report["slice_aggregation"] = how
    return report


def _vote(disc: dict[str, Any], seen: list[dict[str, Any]]) -> tuple[int, str | None, float]:
    """The level most slices gave the disc (ties: the chosen slice's own ``disc["level"]``), the name they gave
    it most (None where most named none), and the share of the levelled slices that agree."""
    levels = [s["level"] for s in seen if s["box"] is not None and s["level"] is not None]
    counts = Counter(levels)
    top = max(counts.values())
    level = disc["level"] if counts.get(disc["level"]) == top else min(lv for lv, c in counts.items() if c == top)
    names = Counter(s["name"] for s in seen if s["box"] is not None and s["level"] == level)
    name = max(names, key=lambda n: (names[n], n is not None))
    return level, name, round(counts[level] / len(levels), 4)
