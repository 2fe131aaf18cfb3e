"""The inference pipeline: one image in, a per-disc report out.

Per image: the lumbar region (stage-1 detector), the discs inside it (stage-2 detector) numbered bottom-up,
a herniation probability per disc (one classifier, the weighted average of several with the ensemble's
weights, or the mean of a fold bag's runs) and the call it gives at the decision threshold chosen on validation
(``herniation_positive``: probability above the threshold; the classifier's own, the ensemble's, or the bag's chosen
on its pooled out-of-fold predictions), and the
4-class segmentation of the lumbar crop with the area of each class.

A multi-task classifier (``model=grade_*``) gives every grading it learnt per disc instead: a binary grading as
``<grading>_probability`` (``herniation_probability`` for ``disc_herniation``), an ordinal one as
``<grading>_grade`` (the grade as discs.csv writes it, e.g. Pfirrmann 1-5) and ``<grading>_distribution`` (the
probability of each grade, lowest first); each binary grading also has ``<name>_positive`` (``herniation_positive``,
``disc_bulging_positive``), its probability above the grading's threshold chosen on validation.

Every disc also carries ``measurements`` from the segmentation (:mod:`plid.measurements`: disc heights,
height index, posterior protrusion, disc-to-canal signal ratio; in mm where the spacing is known), or null where
the mask has no disc pixels in its box.

Levels (:mod:`plid.inference.levels`): the detector's discs checked against the segmentation (boxes on vertebral
bodies, discs the detector missed, gaps, duplicates), numbered from 1, the lowest (as SPIDER's ``ivd_label``), and
named from L5/S1 up only where the anchor is confirmed: by default where a disc detector with one class per level
puts L5/S1 (``levels="detector"``), or, for a one-class disc detector, at the lumbar region's lower edge
(``"anchor"``); ``levels="count"`` counts up from the lowest disc found as the first plid did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from plid.boxes import roi_crop
from plid.data.scans import Scan
from plid.datamodules.classification import load_disc_crop
from plid.datamodules.transforms import to_tensor
from plid.ensemble.combine import weighted_average
from plid.errors import UserInputError
from plid.inference.levels import LEVEL_RULES, assign_levels
from plid.inference.model_dir import LoadedModels
from plid.labels import CLASS_NAMES, LEVEL_NAMES, grading
from plid.measurements import measure_discs
from plid.metrics import DEFAULT_THRESHOLD, predicted_classes
from plid.models.detection import NMS_IOU, NoLumbarRegionFound, RoiCropper, YoloDetector
from plid.models.grading import grade_distribution
from plid.reports import Decision, DiscReport
from plid.utils.devices import resolve_device, ultralytics_device


@dataclass
class ImageResult:
    report: dict[str, Any]
    mask: np.ndarray | None = None  # (H, W) uint8 classes over the whole image (0 outside the lumbar crop)
    timings: dict[str, float] = field(default_factory=dict)


class Pipeline:
    """Detectors, segmenter and classifiers of a model_dir, applied to one :class:`Scan` at a time."""

    def __init__(self, models: LoadedModels, max_named_levels: int = len(LEVEL_NAMES), conf: float | None = None,
                 cropper: RoiCropper | None = None, iou: float | None = None, levels: str | None = None,
                 device: str | None = "auto"):
        self.models = models
        self._validation: dict[str, dict[str, Any]] | None = None  # grading_validation(), read once
        # device=auto: CUDA where there is one; the networks move there, images and crops follow them
        self.device = resolve_device(device)
        for module in (models.segmenter, *models.classifiers):
            module.net.to(self.device)
        detection = models.manifest.get("detection", {})
        conf = float(detection.get("conf", 0.25) if conf is None else conf)
        iou = float(detection.get("iou", NMS_IOU) if iou is None else iou)
        margin = float(detection.get("margin", 0.1))
        on = ultralytics_device(self.device)
        self.cropper = cropper or RoiCropper(YoloDetector(models.lumbar, conf, iou=iou, device=on),
                                             YoloDetector(models.ivd, conf, iou=iou, device=on), margin)
        self.max_named_levels = max_named_levels
        self.by_level = bool(getattr(self.cropper.ivd, "by_level", False))  # the disc detector names levels
        # unless asked, a disc detector with one class per level names the levels (the rule both SPIDER presets
        # chose on val), a one-class one leaves them to the anchor
        self.levels = levels or ("detector" if self.by_level else "anchor")
        if self.levels not in LEVEL_RULES:  # before any scan is read, not at the first one
            raise UserInputError(f"levels={self.levels!r} is not one of {', '.join(LEVEL_RULES)}")
        if LEVEL_RULES[self.levels].needs_level_classes and not self.by_level:
            raise UserInputError(f"levels={self.levels} needs a disc detector with one class per level (plid.detect "
                                 "stage=ivd data.disc_classes=level); this model_dir's has one class")

    @torch.inference_mode()
    def __call__(self, scan: Scan) -> ImageResult:
        image = scan.image
        height, width = image.shape
        report: dict[str, Any] = {
            "name": scan.name, "file": str(scan.path), "format": scan.format, "height": height, "width": width,
            "spacing_mm": scan.spacing_mm, "slice_index": scan.slice_index, "status": "ok",
        }
        try:
            roi = self.cropper(image)
        except NoLumbarRegionFound as error:
            report.update(status="no_lumbar_region", message=str(error), lumbar=None, discs=[], segmentation=None)
            return ImageResult(report)
        report["lumbar"] = {"box": _box(roi.lumbar_box), "score": round(roi.lumbar_score, 4)}
        mask, segmentation = self.segment(image, roi.lumbar_box, scan.spacing_mm)
        levels = assign_levels([d.box for d in roi.discs], [d.score for d in roi.discs], mask, self.levels,
                               self.max_named_levels, lumbar_box=roi.lumbar_box,
                               detected_levels=[d.detected_level for d in roi.discs] if self.by_level else None)
        detected = levels.detected()
        measurements = measure_discs(mask, [d.box for d in detected], image, scan.spacing_mm)
        decisions = self.disc_gradings(image, [d.box for d in detected], measurements, [d.level for d in detected])
        report["discs"] = [
            DiscReport(level=disc.level, name=disc.name, level_confidence=disc.level_confidence, box=_box(disc.box),
                       score=round(disc.score, 4), flag=disc.flag, flag_reason=disc.reason if disc.flag else None,
                       measurements=measured, gradings=graded).model_dump(mode="json", exclude_none=False)
            for disc, graded, measured in zip(detected, decisions, measurements)
        ]
        report["missed_discs_suspected"] = [
            {"level": d.level, "name": d.name, "level_confidence": d.level_confidence, "box": _box(d.box),
             "source": d.reason} for d in levels.suspected()]
        report.update(levels.describe())
        report["classifier"] = self.classifier_description()
        report["segmentation"] = segmentation
        return ImageResult(report, mask)

    def gradings(self) -> list[str] | None:
        """A multi-task classifier's gradings; None for a single-target classifier or none."""
        classifiers = self.models.classifiers
        return list(classifiers[0].targets) if classifiers and classifiers[0].targets else None

    def graded(self) -> list[str]:
        """Every grading a disc's report decides: a multi-task classifier's, or a single-target classifier's one
        (``disc_herniation`` for the paper's); none without a classifier."""
        if self.gradings():
            return self.gradings()
        classifiers = self.models.classifiers
        return [classifiers[0].target or "disc_herniation"] if classifiers else []

    def decision_threshold(self) -> float:
        """The threshold applied to the combined per-disc probability (positive above it): the classifier's own
        (chosen on its validation split) with one classifier, the ensemble's (chosen on the ensemble's
        validation probabilities) with several, a fold bag's (chosen on its pooled out-of-fold predictions); 0.5
        for a model_dir written before thresholds were chosen."""
        classifiers = self.models.classifiers
        if len(classifiers) == 1:
            return float(classifiers[0].threshold)
        return float(self.models.ensemble_threshold)

    def classifier_description(self) -> dict[str, Any] | None:
        classifiers = self.models.classifiers
        if not classifiers:
            return None
        described = {"target": classifiers[0].target, "models": [c.name for c in classifiers],
                     "weights": self.models.weights,
                     "combination": "weighted average" if len(classifiers) > 1 else "single model",
                     "threshold": self.decision_threshold()}
        if self.gradings():
            described["targets"] = self.gradings()
            described["thresholds"] = self.grading_thresholds()
            described["cuts"] = self.grading_cuts()
        if self.grading_validation():
            described["validation"] = self.grading_validation()
        if self.models.anatomy:
            described["sources"] = {g: self.source(g) for g in (*self.graded(), *self._anatomy_only())}
        if self.models.bag:
            described["combination"] = f"mean of a fold bag (folds {self.models.bag['folds']})"
            described["selection"] = self.models.bag["selection"]
        return described

    def grading_thresholds(self) -> dict[str, float]:
        """A multi-task classifier's threshold per binary grading: chosen on its validation split, or for a fold
        bag on the bag's pooled out-of-fold predictions."""
        if self.models.bag:
            return {t: float(v) for t, v in self.models.bag["thresholds"].items()}
        if not self.models.classifiers:
            return {}
        return {t: float(v) for t, v in (self.models.classifiers[0].thresholds or {}).items()}

    def grading_validation(self) -> dict[str, dict[str, Any]]:
        """Each grading's validation figures and whether it is validated (:class:`plid.ensemble.folds.GradingPolicy`):
        a fold bag's pooled out-of-fold, a single multi-task classifier's own validation split; empty for a model_dir
        of an older plid (its decisions then say ``validated: null``). Read from the manifest once."""
        if self._validation is None:
            self._validation = self._read_validation()
        return self._validation

    def _read_validation(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        if self.models.bag:
            found = dict(self.models.bag.get("pooled_val") or {})
        elif len(self.models.classifiers) == 1:
            entry = (self.models.manifest.get("classifiers") or {}).get(self.models.classifiers[0].name) or {}
            found = dict(entry.get("validation") or {})
        for name, choice in ((self.models.anatomy or {}).get("choice") or {}).items():
            if choice["source"] != "crop network":  # the anatomy grader's, or the mean's, figures
                found[name] = {**choice["validation"], "source": choice["source"]}
        return found

    def validated(self, name: str) -> bool | None:
        """Whether grading ``name`` is validated; None where the model_dir records no validation of it."""
        value = (self.grading_validation().get(name) or {}).get("validated")
        return None if value is None else bool(value)

    def grading_cuts(self) -> dict[str, list[float]]:
        """A multi-task classifier's cuts per ordinal grading (one per question "grade > k"), chosen as its
        thresholds are; a grading without them (a model_dir of an older plid) is graded at 0.5 (CORAL's rule)."""
        if not self.models.bag and not self.models.classifiers:
            return {}
        cuts = self.models.bag.get("cuts") if self.models.bag else self.models.classifiers[0].cuts
        return {t: [float(c) for c in v] for t, v in (cuts or {}).items()}

    def source(self, name: str) -> str:
        """What grades ``name``: the crop network, the anatomy grader or their mean, as plid.grade_anatomy chose
        on pooled out-of-fold validation (the crop network where the model_dir holds no anatomy grader)."""
        choice = ((self.models.anatomy or {}).get("choice") or {}).get(name)
        return choice["source"] if choice else "crop network"

    def disc_gradings(self, image: np.ndarray, boxes: list, measurements: list | None = None,
                      levels: list | None = None) -> list[dict[str, Decision]]:
        """Each disc box's :class:`Decision` per grading, from its source (:meth:`source`): the crop network's
        probabilities (the single-target classifier's or the ensemble's at its threshold, or every grading of a
        multi-task classifier, which takes the discs' ``measurements`` too where it was trained with them:
        ``model.use_measurements``), the anatomy grader's on the discs' ``measurements`` and ``levels``, or their
        mean, each called at the threshold or cuts chosen for that source."""
        names = [*self.graded(), *(g for g in self._anatomy_only())]
        if not boxes or not names:
            return [{} for _ in boxes]
        crop = self._crop_probabilities(image, boxes, measurements)
        anatomy = {}
        if self.models.anatomy:
            from plid.models.anatomy import anatomy_features

            measured, levels = measurements or [None] * len(boxes), levels or [None] * len(boxes)
            anatomy = self.models.anatomy["grader"].predict(
                np.stack([anatomy_features(m, level) for m, level in zip(measured, levels)]))
        thresholds, cuts = self.grading_thresholds(), self.grading_cuts()
        decisions: list[dict[str, Decision]] = [{} for _ in boxes]
        for name in names:
            source, validated = self.source(name), self.validated(name)
            probs = {"crop network": crop.get(name), "anatomy": anatomy.get(name)}.get(source)
            if source == "mean":
                probs = (crop[name] + anatomy[name]) / 2
            if source == "crop network":
                threshold = thresholds.get(name, DEFAULT_THRESHOLD) if self.gradings() else self.decision_threshold()
                cut = cuts.get(name)
            else:
                chosen = self.models.anatomy["choice"][name]["validation"]
                threshold, cut = chosen.get("threshold", DEFAULT_THRESHOLD), chosen.get("cuts")
            for i, row in enumerate(decisions):
                row[name] = (Decision.ordinal(name, probs[i], cut, validated=validated, source=source)
                             if grading(name).ordinal else
                             Decision.binary(name, probs[i, 1], threshold, validated=validated, source=source))
        return decisions

    def _anatomy_only(self) -> list[str]:
        """Gradings the anatomy grader decides that the crop network does not grade."""
        choice = (self.models.anatomy or {}).get("choice") or {}
        return [g for g, c in choice.items() if c["source"] == "anatomy" and g not in self.graded()]

    def _crop_probabilities(self, image: np.ndarray, boxes: list, measurements: list | None
                            ) -> dict[str, np.ndarray]:
        """The crop network's (n, classes) probabilities per grading: a fold bag's runs or an ensemble's
        classifiers averaged with their weights."""
        if not self.models.classifiers:
            return {}
        if not self.gradings():
            (name,) = self.graded()
            p = np.asarray(self.herniation(image, boxes), dtype=np.float64)
            return {name: np.stack([1 - p, p], 1)}
        probabilities: dict[str, list[torch.Tensor]] = {name: [] for name in self.gradings()}
        for classifier in self.models.classifiers:
            crops = self._crops(classifier, image, boxes).to(self.device)
            if getattr(getattr(classifier.net, "hparams", {}), "get", lambda k: False)("use_measurements"):
                from plid.measurements import measurement_features

                features = np.stack([measurement_features(m) for m in (measurements or [None] * len(boxes))])
                logits = classifier.net(crops, torch.from_numpy(features).to(self.device))
            else:
                logits = classifier.net(crops)
            for name in self.gradings():
                probabilities[name].append(grade_distribution(logits[name]) if grading(name).ordinal
                                           else logits[name].softmax(1))
        # a fold bag: its runs' mean
        return {name: weighted_average(values, self.models.weights).cpu().double().numpy()
                for name, values in probabilities.items()}

    @staticmethod
    def _crops(classifier, image: np.ndarray, boxes: list) -> torch.Tensor:
        crops = [load_disc_crop(image, box, classifier.image_size, classifier.roi_margin, classifier.disc_crop)
                 for box in boxes]
        return torch.stack([to_tensor(c) for c in crops])

    def herniation(self, image: np.ndarray, boxes: list) -> list[float | None]:
        """Probability of herniation per disc box: one classifier, or the weighted average of several."""
        if not boxes or not self.models.classifiers:
            return [None] * len(boxes)
        probs, weights = [], []
        for classifier, weight in zip(self.models.classifiers, self.models.weights):
            if weight == 0:  # the ensemble left it out: no need to run it
                continue
            weights.append(weight)
            probs.append(classifier.net(self._crops(classifier, image, boxes).to(self.device)).softmax(1)[:, 1])
        return weighted_average(probs, weights).cpu().tolist()

    def segment(self, image: np.ndarray, lumbar_box, spacing_mm: float | None) -> tuple[np.ndarray, dict[str, Any]]:
        """The segmenter on the lumbar box enlarged by its training margin; classes at the image's resolution."""
        segmenter = self.models.segmenter
        resized, box = roi_crop(image, lumbar_box, segmenter.roi_margin, segmenter.image_size)
        probs = segmenter.net(to_tensor(resized)[None].to(self.device)).softmax(1)
        region_shape = (box[3] - box[1], box[2] - box[0])
        probs = F.interpolate(probs, size=region_shape, mode="bilinear", align_corners=False)
        region_mask = predicted_classes(probs)[0].cpu().numpy().astype(np.uint8)
        mask = np.zeros(image.shape, np.uint8)
        mask[box[1]:box[3], box[0]:box[2]] = region_mask
        counts = np.bincount(region_mask.ravel(), minlength=len(CLASS_NAMES))
        areas = {}
        for k, name in enumerate(CLASS_NAMES):
            if k == 0:
                continue
            areas[name] = {"pixels": int(counts[k]),
                           "mm2": None if spacing_mm is None else round(float(counts[k]) * spacing_mm**2, 2)}
        return mask, {"crop_box": list(box), "areas": areas}


def _box(box) -> list[float]:
    return [round(float(v), 2) for v in box]


