"""Scoring per-image reports (what ``plid.predict`` writes) against a labelled folder in the spider2d layout.

One :class:`ImageScore` per image holds what the end-to-end evaluation needs of that image: the lumbar box's
IoU with the labelled one, the disc boxes matched one-to-one to the labelled discs, the levels of the matched
discs, the gradings' probabilities on the matched discs, and the segmentation's confusion matrix on the lumbar
crop the pipeline chose. :class:`EndToEndScores` turns a set of images into every figure at once, so that
the patient-level bootstrap of :func:`plid.metrics.batched_patient_bootstrap` resamples patients for all of them.

Definitions (also in the README's "Evaluating a model_dir end to end"):

- Discs are matched as COCO and ultralytics match: reported boxes in descending detector score, each to the
  unmatched labelled disc of its image with the highest IoU, if that IoU is at least 0.5. Matched boxes are
  true positives; precision, recall and F1 count them over all images. mAP50 is the area under that
  precision-recall curve (ultralytics' 101-point interpolation, by which a perfect detector scores 0.995, as in
  ultralytics' own validation) over the reported boxes, i.e. those above the
  model_dir's confidence threshold: it is the mAP of what a user sees, lower than a detector's own validation
  mAP, which sweeps every confidence. Images without any disc box are unlabelled for discs (not free of them):
  their reported boxes count neither way.
- Lumbar region: IoU of the reported box with the labelled one (0 where none was reported), on images that
  have a labelled box; ``no_lumbar_region`` is the share of all images where the pipeline found none.
- Levels: on matched discs whose labelled disc has an ``ivd_label``, the share whose reported ``level``
  equals it; per image with at least one labelled level, whether every such disc was found with its right level
  (``images_all_levels_right``: detection and levels together), and per image with a matched disc with a level,
  whether every one of those has its right level (``images_found_levels_right``: the levels alone), and whether
  every labelled disc has a reported disc of its level whose centre lies inside its box
  (``images_all_levels_right_by_centre``: the names and places, box sizes not judged; SPIDER's boxes of a tilted
  disc or of a mid-sagittal render can be much looser than the disc, so a disc found and named right can miss IoU 0.5).
  ``missed_discs_flagged``: the share of missed labelled discs where the report has a ``missed_discs_suspected``
  entry (IoU at least 0.3, or its centre inside the labelled box); ``level_accuracy_where_certain``: level accuracy
  on the images whose report does not say ``levels_uncertain``; ``images_levels_certain``: the share of such images.
- Gradings: on matched discs with that grading labelled, by the probability of each disc's decision; sensitivity
  and specificity at the threshold its decisions were made at (the model_dir's, chosen on validation), so that they
  count the calls ``report.json`` states.
- Ordinal gradings of a multi-task classifier (the grade of their decisions in the report, e.g. Pfirrmann): on matched
  discs with that grading labelled, balanced accuracy (mean recall over the grades present), quadratic-weighted
  kappa and the share within one grade, resampled with the same patient bootstrap.
- Segmentation: inside the crop the pipeline segmented (on images where no lumbar region was found, the
  whole image against an empty prediction). Per case: Dice and IoU per image, NaN where a class is absent
  from both reference and prediction, then the mean over images leaving NaN out (nnU-Net's definition).
  Pooled: one confusion matrix over every pixel of the split.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from plid.boxes import box_iou_matrix, centres_inside
from plid.datamodules.contract import DISC_BOX, LUMBAR_BOX, SpineDataset
from plid.labels import ALL_GRADINGS, CLASS_NAMES
from plid.metrics import (
    confusions_per_case,
    dice_iou,
    distinct_discs,
    ratio,
    weighted_binary_scores,
    weighted_ordinal_scores,
)
from plid.reports import disc_decisions

MATCH_IOU = 0.5
# a missed labelled disc counts as flagged where a reported suspected disc overlaps it this much, or has its centre
# inside it: a suspected disc is a position (the segmented part of a disc, or one spacing on from its neighbour), and
# on tilted L5/S1 discs, whose boxes are tall, it pointed at the disc with an IoU under 0.3 (patient 162 of fold 0's val)
SUSPECTED_IOU = 0.3


@dataclass
class ImageTruth:
    """The labels of one image: lumbar box (None where unlabelled), disc rows (boxes, levels, gradings)."""

    image: str
    patient: str
    series: str
    lumbar_box: tuple[float, float, float, float] | None
    discs: pd.DataFrame
    has_mask: bool


def image_truths(dataset: SpineDataset, images: Sequence[str]) -> list[ImageTruth]:
    wanted = set(images)
    rows = {r["image"]: r for r in dataset.images[dataset.images["image"].isin(wanted)].to_dict("records")}
    chosen = dataset.discs[dataset.discs["image"].isin(wanted)] if len(dataset.discs) else dataset.discs
    discs = {image: group.reset_index(drop=True) for image, group in chosen.groupby("image")} if len(chosen) else {}
    empty = pd.DataFrame(columns=dataset.discs.columns)
    truths = []
    for image in images:
        row = rows[image]
        values = [row.get(c, np.nan) for c in LUMBAR_BOX]
        box = None if any(pd.isna(v) for v in values) else tuple(float(v) for v in values)
        series = row.get("series")
        truths.append(ImageTruth(image, str(row["patient"]), "all" if pd.isna(series) else str(series), box,
                                 discs.get(image, empty), bool(row.get("has_mask", 0) == 1)))
    return truths


def match_boxes(predicted, scores, reference, threshold: float = MATCH_IOU) -> np.ndarray:
    """For each predicted box, the index of the reference box it is matched to, or -1 (see the module docstring)."""
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1, 4)
    matched = np.full(len(predicted), -1)
    if len(predicted) == 0 or len(reference) == 0:
        return matched
    iou = box_iou_matrix(predicted, reference)
    taken = np.zeros(iou.shape[1], bool)
    for k in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        candidates = np.where(taken, -1.0, iou[k])
        best = int(np.argmax(candidates))
        if candidates[best] >= threshold:
            matched[k], taken[best] = best, True
    return matched


@dataclass
class ImageScore:
    """What one image contributes to the evaluation (see the module docstring)."""

    image: str
    patient: str
    series: str
    lumbar_found: bool
    lumbar_iou: float  # NaN where the image has no labelled lumbar box
    reference_discs: int
    detections: np.ndarray  # (reported boxes, 2): detector score, 1 where matched
    levels_labelled: int  # matched discs whose reference has a level
    levels_right: int
    all_levels_right: float  # 1/0, NaN where no reference disc of the image has a level
    levels_uncertain: bool = False  # the report's own flag
    found_levels_right: float = float("nan")  # 1/0: every matched disc with a level has it right; NaN where none
    # 1/0: every reference disc with a level has a reported disc of that level centred inside its box; NaN where none
    all_levels_right_by_centre: float = float("nan")
    # grading -> (matched discs, 3): probability, target, the reference disc's level (NaN where it has none)
    gradings: dict[str, np.ndarray] = field(default_factory=dict)
    ordinal: dict[str, np.ndarray] = field(default_factory=dict)  # grading -> (matched discs, 2): grade, target
    confusion: np.ndarray | None = None  # (C, C) on the segmented crop; None where the image has no mask
    # reference discs not matched at IoU 0.5: box, level, suspected, reported_at_centre
    missed: list[dict[str, Any]] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)  # reported boxes matching no reference disc
    wrong_levels: list[dict[str, Any]] = field(default_factory=list)  # box, reported level, reference level

    @property
    def matched(self) -> int:
        return int(self.detections[:, 1].sum()) if len(self.detections) else 0

    @property
    def problems(self) -> int:
        """How badly the report of this image went: missed discs, extra boxes, wrong levels, no lumbar region."""
        return len(self.missed) + len(self.extra) + len(self.wrong_levels) + (0 if self.lumbar_found else 1)


def _level(value) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def score_image(report: dict[str, Any], truth: ImageTruth, gradings: Sequence[str] = (),
                ordinal: Sequence[str] = ()) -> ImageScore:
    """Score one image's report (``report.json``'s case) against its labels: ``gradings`` by their decisions'
    probabilities, ``ordinal`` by their decisions' grades."""
    found = report.get("status") == "ok" and report.get("lumbar") is not None
    lumbar_iou = float("nan")
    if truth.lumbar_box is not None:
        lumbar_iou = float(box_iou_matrix([report["lumbar"]["box"]], [truth.lumbar_box])[0, 0]) if found else 0.0
    discs = report.get("discs") or []
    boxes = [d["box"] for d in discs]
    scores = [float(d.get("score", 1.0)) for d in discs]
    reference = truth.discs[DISC_BOX].to_numpy(dtype=np.float64) if len(truth.discs) else np.zeros((0, 4))
    matched = match_boxes(boxes, scores, reference)
    # an image without disc boxes is unlabelled for discs (spider2d: 202 renders), not an image without discs: its
    # reported boxes are neither right nor wrong, and leave the detection figures
    detections = np.array([[s, float(m >= 0)] for s, m in zip(scores, matched)] if len(reference) else [],
                          dtype=np.float64).reshape(-1, 2)
    levels = truth.discs["ivd_label"].to_numpy() if "ivd_label" in truth.discs.columns else np.full(len(reference),
                                                                                                      np.nan)
    labelled = [j for j in range(len(reference)) if _level(levels[j]) is not None]
    score = ImageScore(truth.image, truth.patient, truth.series, found, lumbar_iou, len(reference), detections,
                       0, 0, float("nan"), bool(report.get("levels_uncertain")))
    right = set()
    for k, j in enumerate(matched):
        if j < 0 and not len(reference):
            continue
        if j < 0:
            score.extra.append({"box": boxes[k], "level": discs[k].get("level"), "score": scores[k]})
            continue
        if j in labelled:
            score.levels_labelled += 1
            if _level(discs[k].get("level")) == _level(levels[j]):
                right.add(j)
            else:
                score.wrong_levels.append({"box": boxes[k], "level": discs[k].get("level"),
                                           "reference_level": _level(levels[j])})
    score.levels_right = len(right)
    # (reported, reference): the reported disc is centred inside the labelled box, with its level where it has one
    reference_levels = [_level(v) for v in levels]
    same_level = np.array([[r is None or _level(d.get("level")) == r for r in reference_levels] for d in discs],
                          dtype=bool).reshape(len(discs), len(reference))
    at_centre = centres_inside(boxes, reference) & same_level
    if labelled:
        score.all_levels_right = float(len(right) == len(labelled))
        score.all_levels_right_by_centre = float(at_centre[:, labelled].any(0).all())
    if score.levels_labelled:
        score.found_levels_right = float(len(right) == score.levels_labelled)
    found_reference = set(matched[matched >= 0].tolist())
    missed = [j for j in range(len(reference)) if j not in found_reference]
    suspected = [d["box"] for d in report.get("missed_discs_suspected") or []]
    flagged = np.zeros(len(missed), bool)
    if missed and suspected:
        pointed = centres_inside(suspected, reference[missed]).T | (box_iou_matrix(reference[missed], suspected)
                                                                    >= SUSPECTED_IOU)
        flagged = pointed.any(1)
    # reported_at_centre: found (with its level) but boxed too differently for IoU 0.5 (a tilted disc's tall box)
    score.missed = [{"box": [float(v) for v in reference[j]], "level": _level(levels[j]), "suspected": bool(f),
                     "reported_at_centre": bool(at_centre[:, j].any())} for j, f in zip(missed, flagged)]
    decided = [disc_decisions(d) for d in discs]

    def labelled(grading: str):
        """(decision, reference value, reference index) of each matched disc the folder labels for ``grading``."""
        if grading not in truth.discs.columns:
            return
        for k, j in enumerate(matched):
            made = decided[k].get(grading)
            if j >= 0 and made is not None and not pd.isna(truth.discs[grading].iloc[j]):
                yield made, float(truth.discs[grading].iloc[j]), j

    for grading in gradings:
        pairs = [(made.probability, target, np.nan if _level(levels[j]) is None else float(_level(levels[j])))
                 for made, target, j in labelled(grading) if made.probability is not None]
        score.gradings[grading] = np.asarray(pairs, dtype=np.float64).reshape(-1, 3)
    for grading in ordinal:
        pairs = [(float(made.grade), target) for made, target, _ in labelled(grading) if made.grade is not None]
        score.ordinal[grading] = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
    return score


def crop_confusion(predicted: np.ndarray | None, reference: np.ndarray, crop_box, num_classes: int = len(CLASS_NAMES)
                   ) -> np.ndarray:
    """Confusion matrix ``[true, predicted]`` inside the crop the pipeline segmented; the whole image against an
    empty prediction where it segmented nothing (no lumbar region)."""
    if predicted is None or crop_box is None:
        truth, guess = reference, np.zeros_like(reference)
    else:
        x1, y1, x2, y2 = (int(v) for v in crop_box)
        truth, guess = reference[y1:y2, x1:x2], predicted[y1:y2, x1:x2]
    return confusions_per_case(torch.from_numpy(guess.astype(np.int64)[None]),
                               torch.from_numpy(truth.astype(np.int64)[None]), num_classes)[0].numpy()


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per row of ``weights`` (R, n) integer counts, the median of ``values`` repeated that often (as np.median of
    the repeated array: the mean of the two middle values for an even count); NaN for an empty row."""
    order = np.argsort(values, kind="stable")
    values, cumulative = values[order], np.cumsum(weights[:, order], axis=1)
    total = cumulative[:, -1] if values.size else np.zeros(len(weights))
    low = ((cumulative <= ((total - 1) // 2)[:, None]).sum(1)).clip(0, max(values.size - 1, 0))
    high = ((cumulative <= (total // 2)[:, None]).sum(1)).clip(0, max(values.size - 1, 0))
    if not values.size:
        return np.full(len(weights), np.nan)
    return np.where(total > 0, (values[low] + values[high]) / 2, np.nan)


def weighted_average_precision(detections: np.ndarray, weights: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Area under the precision-recall curve of ``detections`` (score, matched), each counted ``weights`` (R, n)
    times, against ``references`` (R,) labelled boxes, with ultralytics' interpolation
    (:func:`ultralytics.utils.metrics.compute_ap`); NaN where a sample has no labelled box."""
    from ultralytics.utils.metrics import compute_ap

    order = np.argsort(-detections[:, 0], kind="stable")
    hits, weights = detections[order, 1], np.asarray(weights, dtype=np.float64)[:, order]
    true, false = np.cumsum(weights * hits, axis=1), np.cumsum(weights * (1 - hits), axis=1)
    out = np.full(len(weights), np.nan)
    for r in range(len(weights)):
        if references[r] == 0:
            continue
        kept = weights[r] > 0  # boxes of images this sample does not hold are not points of its curve
        if not kept.any():
            out[r] = 0.0
            continue
        t, f = true[r, kept], false[r, kept]
        out[r] = compute_ap(t / references[r], t / (t + f))[0]
    return out


def average_precision(detections: np.ndarray, references: int) -> float:
    """:func:`weighted_average_precision` of one sample, every box once."""
    detections = np.asarray(detections, dtype=np.float64).reshape(-1, 2)
    return float(weighted_average_precision(detections, np.ones((1, len(detections))), np.array([references]))[0])


class EndToEndScores:
    """Every figure of a set of :class:`ImageScore`, for many samples of the images at once: a sample is a row of
    counts, how often each image is in it (the patient-level bootstrap draws patients, and each image of a patient
    counts as often as its patient was drawn). ``figures(index)`` gives the figures of one sample of images."""

    def __init__(self, scores: Sequence[ImageScore], thresholds: dict[str, float], ordinal: Sequence[str] = ()):
        self.scores = list(scores)
        self.thresholds = dict(thresholds)
        self.ordinal = {g: self._rows([x.ordinal.get(g, np.zeros((0, 2))) for x in scores]) for g in ordinal}
        s = self.scores
        self.lumbar_iou = np.array([x.lumbar_iou for x in s], dtype=np.float64)
        self.lumbar_found = np.array([x.lumbar_found for x in s], dtype=np.float64)
        self.references = np.array([x.reference_discs for x in s], dtype=np.int64)
        self.reported = np.array([len(x.detections) for x in s], dtype=np.int64)
        self.matched = np.array([x.matched for x in s], dtype=np.int64)
        self.levels_labelled = np.array([x.levels_labelled for x in s], dtype=np.int64)
        self.missed = np.array([len(x.missed) for x in s], dtype=np.int64)
        self.certain = np.array([not x.levels_uncertain for x in s], dtype=np.float64)
        self.missed_flagged = np.array([sum(m["suspected"] for m in x.missed) for x in s], dtype=np.int64)
        self.levels_right = np.array([x.levels_right for x in s], dtype=np.int64)
        self.all_levels_right = np.array([x.all_levels_right for x in s], dtype=np.float64)
        self.found_levels_right = np.array([x.found_levels_right for x in s], dtype=np.float64)
        self.all_levels_right_by_centre = np.array([x.all_levels_right_by_centre for x in s], dtype=np.float64)
        self.has_confusion = np.array([x.confusion is not None for x in s], dtype=bool)
        self.detections, self.detection_image = self._rows([x.detections for x in s])
        self.gradings = {g: self._rows([x.gradings.get(g, np.zeros((0, 3))) for x in s]) for g in self.thresholds}
        size = len(CLASS_NAMES)
        confusions = np.stack([x.confusion for x in s if x.confusion is not None]) if self.has_confusion.any() \
            else np.zeros((0, size, size))
        dice, iou = (m.numpy() for m in dice_iou(torch.from_numpy(confusions)))
        self.confusions, self.case_dice, self.case_iou = confusions.reshape(len(confusions), size * size), dice, iou

    @staticmethod
    def _rows(per_image: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """All images' rows stacked, and the image each row belongs to."""
        image = np.concatenate([np.full(len(r), k) for k, r in enumerate(per_image)]) if per_image else np.zeros(0)
        width = per_image[0].shape[1] if per_image else 2
        stacked = np.concatenate(per_image) if per_image and len(image) else np.zeros((0, width))
        return stacked, image.astype(np.int64)

    def grading_rows(self, grading: str) -> np.ndarray:
        """(matched discs, 3): probability, target and level of every matched disc with the grading labelled."""
        return self.gradings[grading][0]

    def ordinal_discs(self, grading: str, index: np.ndarray | None = None) -> int:
        """Matched discs with the ordinal grading labelled among the images ``index`` (default all)."""
        rows, image = self.ordinal[grading]
        return int(np.isin(image, np.arange(len(self.scores)) if index is None else index).sum())

    def positives(self, grading: str, index: np.ndarray | None = None) -> tuple[int, int, int]:
        """Matched discs with the grading labelled among the images ``index`` (default all), the positives, and the
        distinct discs those positives are (:func:`plid.metrics.distinct_discs`: one disc on several slices once)."""
        rows, image = self.gradings[grading]
        keep = np.isin(image, np.arange(len(self.scores)) if index is None else index)
        positive = keep & (rows[:, 1] == 1)
        distinct = distinct_discs([self.scores[i].patient for i in image[positive]], rows[positive, 2].tolist())
        return int(keep.sum()), int(positive.sum()), distinct

    def __call__(self, index: np.ndarray) -> dict[str, float]:
        weights = np.bincount(np.asarray(index, dtype=np.int64), minlength=len(self.scores))[None]
        return {name: float(values[0]) for name, values in self.batch(weights).items()}

    def batch(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Every figure of each sample: ``weights`` (R, images) counts; returns ``{figure: (R,) values}``."""
        w = np.asarray(weights, dtype=np.float64)
        out: dict[str, np.ndarray] = {}
        boxed = ~np.isnan(self.lumbar_iou)
        out["lumbar_iou_median"] = _weighted_median(self.lumbar_iou[boxed], w[:, boxed])
        out["lumbar_iou_at_least_0.5"] = ratio(w[:, boxed] @ (self.lumbar_iou[boxed] >= 0.5), w[:, boxed].sum(1))
        out["no_lumbar_region"] = ratio(w @ (1 - self.lumbar_found), w.sum(1))
        tp, reported, references = w @ self.matched, w @ self.reported, w @ self.references
        out["disc_precision"] = ratio(tp, reported)
        out["disc_recall"] = ratio(tp, references)
        out["disc_f1"] = ratio(2 * tp, reported + references)
        out["disc_map50"] = weighted_average_precision(self.detections, w[:, self.detection_image], references)
        out["level_accuracy"] = ratio(w @ self.levels_right, w @ self.levels_labelled)
        out["missed_discs_flagged"] = ratio(w @ self.missed_flagged, w @ self.missed)
        # the report's own flag: how right the levels are where it says they are certain, and how often it says so
        out["level_accuracy_where_certain"] = ratio(w @ (self.levels_right * self.certain),
                                                     w @ (self.levels_labelled * self.certain))
        out["images_levels_certain"] = ratio(w @ self.certain, w.sum(1))
        levelled = ~np.isnan(self.all_levels_right)
        out["images_all_levels_right"] = ratio(w[:, levelled] @ self.all_levels_right[levelled], w[:, levelled].sum(1))
        out["images_all_levels_right_by_centre"] = ratio(w[:, levelled] @ self.all_levels_right_by_centre[levelled],
                                                         w[:, levelled].sum(1))
        found = ~np.isnan(self.found_levels_right)
        out["images_found_levels_right"] = ratio(w[:, found] @ self.found_levels_right[found], w[:, found].sum(1))
        for grading, threshold in self.thresholds.items():
            rows, image = self.gradings[grading]
            for name, values in weighted_binary_scores(rows[:, 0], rows[:, 1], w[:, image], threshold).items():
                out[f"{grading}/{name}"] = values
        from plid.labels import grading as spec

        for grading, (rows, image) in self.ordinal.items():
            g = spec(grading)
            for name, values in weighted_ordinal_scores(rows[:, 0], rows[:, 1], w[:, image], g.num_classes,
                                                        g.first).items():
                out[f"{grading}/{name}"] = values
        out.update(self._segmentation(w[:, self.has_confusion]))
        return out

    def _segmentation(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """Dice and IoU per class, per case and pooled (module docstring); no key where no image has a mask."""
        if not self.has_confusion.any():
            return {}
        size = len(CLASS_NAMES)
        pooled = torch.from_numpy((w @ self.confusions).reshape(len(w), size, size))
        pooled_dice, pooled_iou = (m.numpy() for m in dice_iou(pooled))

        def per_case(values: np.ndarray) -> np.ndarray:  # nanmean over the images of each sample, weighted
            present = ~np.isnan(values)
            return ratio(w @ np.where(present, values, 0), w @ present)

        case_dice, case_iou = per_case(self.case_dice), per_case(self.case_iou)
        out = {}
        for k, name in enumerate(CLASS_NAMES):
            if k == 0:
                continue
            out[f"dice_per_case_{name}"], out[f"dice_pooled_{name}"] = case_dice[:, k], pooled_dice[:, k]
            out[f"iou_per_case_{name}"], out[f"iou_pooled_{name}"] = case_iou[:, k], pooled_iou[:, k]
        with warnings.catch_warnings():  # nanmean of an all-NaN row is NaN, as meant; its warning is noise
            warnings.simplefilter("ignore", RuntimeWarning)
            out["dice_per_case"] = np.nanmean(case_dice[:, 1:], axis=1)
            out["dice_pooled"] = np.nanmean(pooled_dice[:, 1:], axis=1)
        return out


def graded_columns(dataset: SpineDataset) -> list[str]:
    """The gradings the folder labels (columns of discs.csv with at least one value)."""
    return [g for g in ALL_GRADINGS if g in dataset.discs.columns and dataset.discs[g].notna().any()]
