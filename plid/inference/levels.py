"""Disc levels from the anatomy: the detector's discs checked against the segmentation and against each other.

Counting up from the lowest disc found (``method="count"``, the paper-era rule) names every disc wrongly as soon
as the lowest one, L5/S1, is missed or a box lands on a vertebral body. ``method="anatomy"`` uses what the
segmenter sees in the lumbar crop; ``method="anchor"`` (the default) does the same and takes the L5/S1 anchor from
the stage-1 lumbar region instead (item 3):

1. **Boxes that are not discs.** A detected box whose inside the segmenter calls vertebra, with (almost) no disc
   pixel, is a box on a vertebral body: it is kept in the report, flagged ``not_a_disc_suspected``, and not
   numbered.
2. **Discs the detector missed.** A disc of the segmentation (a connected region of the disc class, of a size
   like the others) that no detected box covers is a ``missed_disc_suspected`` at that position; so is a gap
   between two neighbouring discs of about twice the usual spacing (or more: one suspected disc per missing
   spacing). They are numbered, so the levels above them stay right.
3. **The anchor.** SPIDER, and plid's segmenters, label no bone below L5/S1 (the sacrum is background), so the
   lowest disc is L5/S1 when the segmentation shows no vertebral body below it. Where one lies below it, or where
   there is no segmentation to trust (none, or one where most detected boxes hold no disc pixel), the anchor is
   not found: discs are numbered, not named. With ``anchor``, the lumbar region's lower edge is L5/S1's lower edge
   (SPIDER's lumbar box, and plid's derived one, end at the lowest disc): where it lies ``MISSED_BELOW`` (0.7)
   vertical spacings or more below the lowest disc found and the segmentation shows a vertebral body below that disc
   (looked for along the column), the discs between are suspected missed discs (source ``lumbar region``) and
   counted; where the two disagree, or the lowest disc lies a spacing or more below the edge, the discs are numbered,
   not named. A segmentation showing bone below an anchored L5/S1 makes the levels uncertain, but they stay named.
4. **Checks on every image**: levels bottom-up and contiguous (by construction), no level twice (two boxes closer
   than half the usual spacing are one disc found twice: the less confident is flagged ``duplicate`` and not
   numbered), spacings plausible. Any finding makes ``levels_uncertain`` true, with the reasons.

5. ``method="detector"`` takes the anchor from a disc detector with one class per level (``data.disc_classes=level``)
   instead of the lumbar region: after steps 1, 2 and 4, each detected disc's class votes for where L5/S1 lies in
   the column (:func:`_detector_anchor`); discs missed below are added, boxes below L5/S1 flagged, and a vote
   under half the detector's score leaves the discs numbered, not named.

``level_confidence`` of a disc is a documented rule, not a calibrated probability: 1 for a disc counted from a
confirmed anchor with nothing irregular below it, halved for every suspected missed disc or removed box below or
at it, 0.25 at most where the anchor was not confirmed; with ``detector``, times the share of the detector's score
that agrees with the levels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from plid.boxes import centres_inside
from plid.labels import LEVEL_NAMES

VERTEBRA, DISC = 1, 2
# a spacing this many times the median means a disc is missing between (one missing gives about 2; on fold 0's val
# images, gaps of 1.6 and 1.7 occurred between detected discs with no labelled disc between them)
GAP_FACTOR = 1.8
NEXT_DISC_MAX = 1.6  # a segmented disc beyond the lowest or highest disc found, at most this many spacings away
DUPLICATE_FACTOR = 0.5  # two boxes closer than this share of the median spacing are one disc
MIN_REGION_SHARE = 0.25  # a disc region smaller than this share of the median disc region is noise
# How far (in vertical disc spacings) the detected lumbar region's lower edge lies below the lower edge of the lowest
# disc. Where that disc is SPIDER's lowest, this offset was -0.93 to 1.22 on fold 0's val images (t2_SPACE: -0.25
# to 0.75; mid-sagittal renders, whose boxes are derived, spread wider), so only an offset past these bounds says
# something: a disc missed below (from MISSED_BELOW on), or a lowest disc below L5/S1 (at -BELOW_TOLERANCE or less).
# A disc is only added where the segmentation also shows a vertebral body below (see PROBE_STEP), which is what tells
# the two apart where the bounds overlap: with L5/S1 taken out of SPIDER's own boxes and masks (non-test patients), the
# edge lay 0.76 spacings below L4/L5 on a tilted junction; 0.7 named 190 of 191 such slices right, 0.9 182 of 191, with
# the same level figures on fold 0's val images end to end (0.6 misnamed one more mid-sagittal T2 render there).
MISSED_BELOW = 0.7
BELOW_TOLERANCE = 1.0
# Where the vertebral body below the lowest disc is looked for: this share of the step along the column towards the
# next disc down (its centre lies at half the step). On SPIDER's own t2_SPACE boxes, masks and lumbar boxes of the
# non-test patients with L5/S1 taken out of boxes and mask (MISSED_BELOW at 0.9 then), every level was right on 182 of
# 191 slices with 0.4, 178 with 0.5 and 160 with a band straight under the disc (before): thin or tilted L5 bodies
# hold bone near the disc above.
PROBE_STEP = 0.4


def level_names(count: int, max_named: int = len(LEVEL_NAMES)) -> list[str | None]:
    """Names of ``count`` discs from L5/S1 up; None for all where there are more than ``max_named``."""
    if count > min(max_named, len(LEVEL_NAMES)):
        return [None] * count
    return list(LEVEL_NAMES[:count])


@dataclass
class LevelledDisc:
    box: tuple[float, float, float, float]
    score: float | None  # detector score; None for a suspected missed disc
    detected: int | None  # index into the detector's discs; None for a suspected missed disc
    level: int | None = None
    name: str | None = None
    level_confidence: float | None = None
    flag: str | None = None  # missed_disc_suspected, not_a_disc_suspected, duplicate
    reason: str | None = None  # why it was flagged, or where a suspected disc comes from (segmentation, gap)


@dataclass
class Levels:
    discs: list[LevelledDisc]  # detected (numbered or flagged) and suspected missed discs, bottom-up
    anchor_found: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def uncertain(self) -> bool:
        return bool(self.reasons)

    def detected(self) -> list[LevelledDisc]:
        """The detector's discs in its own order (index ``detected``)."""
        return sorted((d for d in self.discs if d.detected is not None), key=lambda d: d.detected)

    def suspected(self) -> list[LevelledDisc]:
        return [d for d in self.discs if d.flag == "missed_disc_suspected"]

    def describe(self) -> dict[str, Any]:
        return {"levels_uncertain": self.uncertain, "levels_uncertain_reason": "; ".join(self.reasons) or None,
                "level_anchor_found": self.anchor_found}


def _centre(box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], dtype=np.float64)


def segmented_discs(mask: np.ndarray | None) -> list[tuple[float, float, float, float]]:
    """Boxes of the disc regions of a class mask (connected regions of the disc class, noise left out)."""
    if mask is None:
        return []
    count, _, stats, _ = cv2.connectedComponentsWithStats((mask == DISC).astype(np.uint8), connectivity=8)
    regions = stats[1:]
    if len(regions) == 0:
        return []
    areas = regions[:, cv2.CC_STAT_AREA]
    keep = areas >= max(10, MIN_REGION_SHARE * np.median(areas))
    return [(float(x), float(y), float(x + w), float(y + h)) for x, y, w, h, _ in regions[keep]]


def _share(mask: np.ndarray, box, value: int) -> float:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    region = mask[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)]
    return float((region == value).mean()) if region.size else 0.0


def _vertebra_below(mask: np.ndarray, discs: list[LevelledDisc]) -> bool:
    """Whether a vertebral body lies below the lowest of ``discs`` (bottom-up): vertebra over most of a small box
    ``PROBE_STEP`` of a step along the column below it, towards where the next disc down would be. The step follows
    the column (from the disc above to the lowest), as the lumbosacral junction bends and tilts; one disc alone steps
    straight down by the usual spacing (:func:`_vertical_spacing`)."""
    lowest = discs[0]
    step = (_centre(lowest.box) - _centre(discs[1].box) if len(discs) > 1
            else np.array([0.0, _vertical_spacing(discs)]))
    centre = _centre(lowest.box) + PROBE_STEP * step
    width, height = 0.5 * (lowest.box[2] - lowest.box[0]), max(0.25 * float(np.linalg.norm(step)), 4.0)
    probe = (centre[0] - width / 2, centre[1] - height / 2, centre[0] + width / 2, centre[1] + height / 2)
    return probe[3] < mask.shape[0] - 2 and _share(mask, probe, VERTEBRA) > 0.4


def assign_levels(boxes, scores, mask: np.ndarray | None, method: str = "anchor",
                  max_named: int = len(LEVEL_NAMES), lumbar_box=None, detected_levels=None) -> Levels:
    """Levels of the detector's disc ``boxes`` (image pixels) given the segmenter's class ``mask`` over the image,
    the stage-1 detector's ``lumbar_box`` (image pixels, before any margin) and, from a disc detector with one
    class per level, each box's ``detected_levels`` (1 = L5/S1; see the module docstring)."""
    if method not in LEVEL_RULES:
        raise ValueError(f"levels={method!r} is not one of {tuple(LEVEL_RULES)}")
    rule = LEVEL_RULES[method]
    if rule.needs_level_classes and detected_levels is None:
        raise ValueError(f"levels={method} needs a disc detector with one class per level (trained with "
                         "data.disc_classes=level); this one has one class")
    discs = [LevelledDisc(tuple(float(v) for v in b), float(s), k) for k, (b, s) in enumerate(zip(boxes, scores))]
    reasons: list[str] = []
    if rule.anchor is None:  # counted up, unchecked
        ordered = sorted(discs, key=lambda d: -_centre(d.box)[1])
        for level, (disc, name) in enumerate(zip(ordered, level_names(len(ordered), max_named)), start=1):
            disc.level, disc.name = level, name
        return Levels(ordered, anchor_found=bool(ordered), reasons=[])
    if mask is not None and discs and np.mean([_share(mask, d.box, DISC) >= 0.1 for d in discs]) < 0.5:
        # most detected boxes hold (almost) no disc in the segmentation: one of the two is wrong; trust neither
        mask = None
        reasons.append("the segmentation does not confirm the detected discs")
    irregular: list[float] = []  # image y of each irregularity: discs above it lose confidence
    numbered = []
    for disc in discs:
        if mask is not None and _share(mask, disc.box, DISC) < 0.02 and _share(mask, disc.box, VERTEBRA) > 0.5:
            disc.flag, disc.reason = "not_a_disc_suspected", "the segmentation shows a vertebral body in this box"
            reasons.append("a detected box lies on a vertebral body")
            irregular.append(_centre(disc.box)[1])
        else:
            numbered.append(disc)
    for box in _plausible_missed(numbered, segmented_discs(mask)):
        numbered.append(LevelledDisc(box, None, None, flag="missed_disc_suspected", reason="segmentation"))
        reasons.append("the segmentation shows a disc the detector missed")
        irregular.append(_centre(box)[1])
    numbered.sort(key=lambda d: -_centre(d.box)[1])
    spacing = _median_spacing(numbered)
    if spacing:
        kept = [numbered[0]] if numbered else []
        for disc in numbered[1:]:
            previous = kept[-1]
            if np.linalg.norm(_centre(disc.box) - _centre(previous.box)) < DUPLICATE_FACTOR * spacing:
                weaker = min((previous, disc), key=lambda d: -1 if d.score is None else d.score)
                stronger = disc if weaker is previous else previous
                weaker.flag, weaker.reason = "duplicate", "closer to the disc below than half the usual spacing"
                reasons.append("two boxes on one disc")
                kept[-1] = stronger
                continue
            kept.append(disc)
        numbered = kept
        filled = [numbered[0]] if numbered else []
        for disc in numbered[1:]:
            below = filled[-1]
            step = _centre(disc.box) - _centre(below.box)
            missing = int(round(np.linalg.norm(step) / spacing)) - 1
            if np.linalg.norm(step) > GAP_FACTOR * spacing and missing >= 1:
                size = (np.asarray(disc.box[2:]) - disc.box[:2] + np.asarray(below.box[2:]) - below.box[:2]) / 2
                for k in range(1, missing + 1):
                    centre = _centre(below.box) + step * k / (missing + 1)
                    box = (*(centre - size / 2), *(centre + size / 2))
                    filled.append(LevelledDisc(tuple(float(v) for v in box), None, None,
                                               flag="missed_disc_suspected", reason="gap"))
                    irregular.append(centre[1])
                reasons.append(f"a gap of {np.linalg.norm(step) / spacing:.1f} times the usual spacing")
            filled.append(disc)
        numbered = filled
    bone_below = bool(numbered) and mask is not None and _vertebra_below(mask, numbered)
    anchor, agreement = False, 1.0
    if numbered:
        anchor, agreement = rule.anchor(AnchorInputs(numbered, mask, lumbar_box, detected_levels, irregular, reasons,
                                                     bone_below))
    names = level_names(len(numbered), max_named) if anchor else [None] * len(numbered)
    for level, (disc, name) in enumerate(zip(numbered, names), start=1):
        y = _centre(disc.box)[1]
        confidence = (1.0 if anchor else 0.25) * agreement * 0.5 ** sum(1 for i in irregular if i >= y - 1e-6)
        disc.level, disc.name, disc.level_confidence = level, name, round(confidence, 4)
    flagged = [d for d in discs if d.flag in ("not_a_disc_suspected", "duplicate")]
    everything = sorted([*numbered, *flagged], key=lambda d: -_centre(d.box)[1])
    return Levels(everything, anchor, list(dict.fromkeys(reasons)))


@dataclass
class AnchorInputs:
    """What a level rule's anchor sees: the discs numbered bottom-up (it may add suspected missed discs at the start
    or take boxes out), the segmentation, the lumbar box, the detector's per-level classes, and the lists it adds
    irregularities (image y) and reasons to; ``bone_below``: a vertebral body below the lowest disc."""

    numbered: list[LevelledDisc]
    mask: np.ndarray | None
    lumbar_box: Any
    detected_levels: Any
    irregular: list[float]
    reasons: list[str]
    bone_below: bool


def anatomy_anchor(inputs: AnchorInputs) -> tuple[bool, float]:
    """L5/S1 is the lowest disc found where the segmentation shows no vertebral body below it."""
    anchor = inputs.mask is not None and not inputs.bone_below
    if not anchor and inputs.mask is None and not inputs.reasons:
        inputs.reasons.append("no segmentation to confirm L5/S1")
    elif not anchor and inputs.mask is not None:
        inputs.reasons.append("a vertebral body lies below the lowest disc found: L5/S1 may be missing")
    return anchor, 1.0


def lumbar_anchor(inputs: AnchorInputs) -> tuple[bool, float]:
    """L5/S1 where the lumbar region's lower edge puts it (:func:`_lumbar_anchor`); the anatomy's rule without a
    lumbar box."""
    if inputs.lumbar_box is None:
        return anatomy_anchor(inputs)
    numbered = inputs.numbered
    anchor = _lumbar_anchor(numbered, inputs.lumbar_box, inputs.irregular, inputs.reasons, inputs.bone_below)
    if anchor and inputs.bone_below and numbered[0].reason != "lumbar region":
        inputs.reasons.append("the segmentation shows a vertebral body below L5/S1")
        inputs.irregular.append(_centre(numbered[0].box)[1])
    return anchor, 1.0


def detector_anchor(inputs: AnchorInputs) -> tuple[bool, float]:
    """L5/S1 where the disc detector's per-level classes vote it (:func:`_detector_anchor`)."""
    numbered, mask = inputs.numbered, inputs.mask
    anchor, agreement = _detector_anchor(numbered, inputs.detected_levels, inputs.irregular, inputs.reasons)
    # the vote may have removed boxes below L5/S1: bone is looked for below the disc now lowest
    if anchor and mask is not None and _vertebra_below(mask, numbered) and numbered[0].detected is not None:
        inputs.reasons.append("the segmentation shows a vertebral body below L5/S1")
        inputs.irregular.append(_centre(numbered[0].box)[1])
    return anchor, agreement


@dataclass(frozen=True)
class LevelRule:
    """A way of naming levels: where it takes L5/S1 from (as the report page says it), the function that finds that
    anchor (None: count up from the lowest disc found, no checks), and whether it needs a disc detector with one
    class per level. A new rule is a function and a line of :data:`LEVEL_RULES`."""

    description: str
    anchor: Callable[[AnchorInputs], tuple[bool, float]] | None
    needs_level_classes: bool = False


LEVEL_RULES = {
    "anchor": LevelRule("where the lumbar region's lower edge, checked against the segmentation, confirms it",
                        lumbar_anchor),
    "anatomy": LevelRule("where the segmentation shows no vertebral body below the lowest disc", anatomy_anchor),
    "count": LevelRule("counting up from the lowest disc found", None),
    "detector": LevelRule("where the disc detector's per-level classes put it, checked against the segmentation",
                          detector_anchor, needs_level_classes=True),
}
# each rule's description, by name: what the pipeline, the page and the configs check names against
LEVEL_METHODS = {name: rule.description for name, rule in LEVEL_RULES.items()}


def _lumbar_anchor(numbered: list[LevelledDisc], lumbar_box, irregular: list[float], reasons: list[str],
                   bone_below: bool) -> bool:
    """The L5/S1 anchor from the lumbar region: its lower edge is the lower edge of L5/S1 (the lumbar box of
    SPIDER's masks and of plid's derived boxes ends at the lowest disc; the sacrum is not labelled). Where it lies
    ``MISSED_BELOW`` or more vertical spacings below the lowest disc found, discs were missed below (one more per
    further spacing): they are added as suspected missed discs (``numbered`` grows at its start), so the names above
    stay right, but only where the segmentation shows a vertebral body below the lowest disc found (``bone_below``):
    on fold 0's val images the lumbar region alone also reached a spacing below SPIDER's lowest disc on mid-sagittal
    T1 renders, where no disc was missed. Without that agreement, or where the lowest disc lies
    ``BELOW_TOLERANCE`` spacings or more below the edge, L5/S1 is not confirmed: False (numbered, not named)."""
    lowest = numbered[0]
    rise = _vertical_spacing(numbered)
    offset = (float(lumbar_box[3]) - lowest.box[3]) / rise
    if offset <= -BELOW_TOLERANCE:
        reasons.append(f"the lowest disc found lies {-offset:.1f} spacings below the lumbar region: L5/S1 not confirmed")
        return False
    missing = int(np.floor(offset + 1 - MISSED_BELOW))
    if missing < 1:
        return True
    if not bone_below:
        reasons.append(f"the lumbar region reaches {offset:.1f} spacings below the lowest disc found, but the "
                       "segmentation shows no vertebral body there: L5/S1 not confirmed")
        return False
    _extend_below(numbered, missing, "lumbar region", irregular)
    reasons.append(f"the lumbar region reaches {offset:.1f} spacings below the lowest disc found: "
                   f"{missing} disc(s) missed below it")
    return True


def _extend_below(numbered: list[LevelledDisc], count: int, source: str, irregular: list[float]) -> None:
    """Add ``count`` suspected missed discs below the lowest of ``numbered`` (bottom-up), one vertical spacing apart
    along the column."""
    lowest, rise = numbered[0], _vertical_spacing(numbered)
    step = _centre(lowest.box) - _centre(numbered[1].box) if len(numbered) > 1 else np.array([0.0, rise])
    step *= rise / max(step[1], 1e-6)  # one vertical spacing down, along the column
    size = np.asarray(lowest.box[2:]) - lowest.box[:2]
    for k in range(1, count + 1):
        centre = _centre(lowest.box) + k * step
        numbered.insert(0, LevelledDisc(tuple(float(v) for v in (*(centre - size / 2), *(centre + size / 2))), None,
                                        None, flag="missed_disc_suspected", reason=source))
        irregular.append(centre[1])


def _detector_anchor(numbered: list[LevelledDisc], detected_levels, irregular: list[float],
                     reasons: list[str]) -> tuple[bool, float]:
    """The L5/S1 anchor from a disc detector with one class per level: each detected disc's class votes (with its
    score) for the offset between its level and its place in the column counted from the bottom, ``numbered``
    (suspected missed discs included, so a gap does not shift the vote); the offset most of the score agrees on
    wins. An offset of k > 0 says the k lowest discs were missed (added as suspected, source ``disc detector``),
    k < 0 that the -k lowest boxes lie below L5/S1 (flagged ``not_a_disc_suspected``, no longer numbered).
    Returns (anchor found, the share of the score that agrees); under half agreeing, not named."""
    votes: dict[int, float] = {}
    for rank, disc in enumerate(numbered, start=1):
        if disc.detected is not None and detected_levels[disc.detected] is not None:
            offset = int(detected_levels[disc.detected]) - rank
            votes[offset] = votes.get(offset, 0.0) + max(float(disc.score or 0.0), 1e-6)
    if not votes:
        reasons.append("the disc detector gave no level")
        return False, 1.0
    offset = max(votes, key=lambda k: (votes[k], -abs(k)))
    agreement = votes[offset] / sum(votes.values())
    if agreement < 0.5:
        reasons.append(f"the disc detector's levels agree with the order of the discs for {agreement:.0%} of its "
                       "score: L5/S1 not confirmed")
        return False, 1.0
    if agreement < 1:
        reasons.append(f"the disc detector's levels disagree with the order of the discs for {1 - agreement:.0%} "
                       "of its score")
    if offset > 0:
        _extend_below(numbered, offset, "disc detector", irregular)
        reasons.append(f"the disc detector calls the lowest disc found {_name(offset + 1)}: {offset} disc(s) missed "
                       "below it")
    elif offset < 0:
        for disc in numbered[:-offset]:
            if disc.detected is not None:
                disc.flag, disc.reason = "not_a_disc_suspected", "the disc detector places this box below L5/S1"
            irregular.append(_centre(disc.box)[1])
        del numbered[:-offset]
        reasons.append(f"the disc detector places {-offset} box(es) below L5/S1")
    return bool(numbered), agreement


def _name(level: int) -> str:
    return LEVEL_NAMES[level - 1] if 1 <= level <= len(LEVEL_NAMES) else f"level {level}"


def _vertical_spacing(discs: list[LevelledDisc]) -> float:
    """The usual vertical distance between neighbouring discs (bottom-up ``discs``): the median over neighbours, else
    three disc heights where only one disc is found."""
    if len(discs) < 2:
        return 3 * _height(discs[0].box)
    rises = -np.diff([_centre(d.box)[1] for d in discs])
    return float(max(np.median(rises), 1.0))


def _plausible_missed(found: list[LevelledDisc], regions: list) -> list[tuple[float, float, float, float]]:
    """The segmented disc regions that are discs the detector missed: not covered by a detected box, of a size like
    the detected discs (a quarter to four times their median area), and where the column's next disc would be:
    below the lowest or above the highest disc at 0.6 to ``NEXT_DISC_MAX`` spacings, or inside a gap of at least
    ``GAP_FACTOR`` spacings, at least 0.6 spacings from both its neighbours, and as far down or up the column: at
    least 0.6 vertical spacings from them (discs stack; a disc-like region level with a disc but behind it, in the
    canal or the posterior elements, is not the next disc). Needs three detected discs to know what is usual; a
    segmentation of its own is not trusted to add discs."""
    spacing = _median_spacing(found)
    if spacing is None:
        return []
    rise = _vertical_spacing(sorted(found, key=lambda d: -_centre(d.box)[1]))
    area = float(np.median([_height(d.box) * (d.box[2] - d.box[0]) for d in found]))
    candidates = [b for b in regions if not centres_inside(b, [d.box for d in found]).any()
                  and 0.25 * area <= _height(b) * (b[2] - b[0]) <= 4 * area]
    accepted: list[tuple[float, float, float, float]] = []
    for box in sorted(candidates, key=lambda b: -_centre(b)[1]):  # bottom-up, so a chain below the lowest grows
        column = sorted([*(d.box for d in found), *accepted], key=lambda b: -_centre(b)[1])
        y = _centre(box)[1]
        below = [b for b in column if _centre(b)[1] > y]
        above = [b for b in column if _centre(b)[1] < y]
        neighbours = below[-1:] + above[:1]
        gap_to = [np.linalg.norm(_centre(box) - _centre(b)) / spacing for b in neighbours]
        if below and above:
            gap = np.linalg.norm(_centre(below[-1]) - _centre(above[0])) / spacing
            plausible = gap >= GAP_FACTOR and min(gap_to) >= 0.6
        else:  # beyond the lowest or the highest disc
            plausible = 0.6 <= gap_to[0] <= NEXT_DISC_MAX
        if plausible and min(abs(y - _centre(b)[1]) for b in neighbours) >= 0.6 * rise:
            accepted.append(box)
    return accepted


def _height(box) -> float:
    return float(box[3] - box[1])


def _median_spacing(discs: list[LevelledDisc]) -> float | None:
    """The median distance between neighbouring disc centres, or None with fewer than three discs (too few to
    say what is usual)."""
    if len(discs) < 3:
        return None
    centres = np.array(sorted((_centre(d.box) for d in discs), key=lambda c: -c[1]))
    return float(np.median(np.linalg.norm(np.diff(centres, axis=0), axis=1)))
