"""The anatomy grader: each SPIDER grading from a disc's measurements on the pipeline's own segmentation.

Pfirrmann's grades are defined by the nucleus' signal against the cerebrospinal fluid and by the disc's height,
narrowing by height, bulging and herniation by how far the disc reaches behind the vertebral walls, Modic changes
by the marrow's signal beside the endplates. :mod:`plid.measurements` measures those on the 4-class mask; this
model reads them as :data:`FEATURES` (unitless ratios, so mm and pixels alike, and the disc's level) and fits one
L2-regularised logistic model per grading with scikit-learn (balanced class weights; multinomial over the grades
of an ordinal grading). A dozen numbers per disc do not overfit 30 patients the way a crop network trained from
scratch does.

It travels as plain data (:meth:`AnatomyGrader.to_json`: feature names, medians and scales, coefficients), so a
model_dir holding it runs no code when loaded, and prediction is a few numpy products. A missing feature (no canal
at the disc's level, no vertebra below L5/S1) takes the training median.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from plid.errors import UserInputError
from plid.labels import MISSING, grading

# what the grader reads of a disc (plid.measurements.measure_disc's keys, heights over the disc's mean height)
FEATURES = ("height_index", "anterior_over_mean_height", "middle_over_mean_height", "posterior_over_mean_height",
            "protrusion_over_mean_height", "signal_ratio", "nucleus_ratio", "signal_spread", "disc_to_vertebra",
            "level")
_HEIGHTS = ("anterior_height", "middle_height", "posterior_height")
log = logging.getLogger(__name__)


def anatomy_features(measured: dict[str, Any] | None, level: int | None) -> np.ndarray:
    """A disc's :data:`FEATURES` (float64, NaN where missing; all NaN but the level for an unmeasured disc)."""
    out = np.full(len(FEATURES), np.nan)
    out[FEATURES.index("level")] = np.nan if level is None else float(level)
    if not measured:
        return out
    heights = [measured.get(k) for k in _HEIGHTS]
    mean = float(np.mean(heights)) if all(h is not None for h in heights) and np.mean(heights) > 0 else None

    def over_mean(key: str) -> float | None:
        return None if mean is None or measured.get(key) is None else float(measured[key]) / mean

    values = {"height_index": measured.get("height_index"), "anterior_over_mean_height": over_mean("anterior_height"),
              "middle_over_mean_height": over_mean("middle_height"),
              "posterior_over_mean_height": over_mean("posterior_height"),
              "protrusion_over_mean_height": over_mean("posterior_protrusion"),
              **{k: measured.get(k) for k in ("signal_ratio", "nucleus_ratio", "signal_spread", "disc_to_vertebra")}}
    for name, value in values.items():
        if value is not None and np.isfinite(float(value)):
            out[FEATURES.index(name)] = float(value)
    return out


@dataclass
class AnatomyGrader:
    """Standardisation and one logistic model per grading; probabilities as the crop network gives them (a
    binary grading's ``P(positive)`` in column 1, an ordinal grading's distribution over its grades)."""

    features: list[str]
    medians: list[float]
    means: list[float]
    scales: list[float]
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)  # grading -> classes, coef, intercept

    @classmethod
    def fit(cls, x: np.ndarray, targets: dict[str, np.ndarray], c: float = 1.0) -> AnatomyGrader:
        """Fit on discs ``x`` (n, len(FEATURES)) and each grading's class indices (``MISSING`` where unlabelled:
        left out of that grading's fit); a grading of one class has no head."""
        from sklearn.linear_model import LogisticRegression

        x = np.asarray(x, dtype=np.float64)
        medians = np.nanmedian(np.where(np.isfinite(x), x, np.nan), axis=0) if len(x) else np.zeros(x.shape[1])
        medians = np.where(np.isfinite(medians), medians, 0.0)
        filled = np.where(np.isfinite(x), x, medians)
        means, scales = filled.mean(0), filled.std(0)
        scales = np.where(scales > 1e-12, scales, 1.0)
        z = (filled - means) / scales
        grader = cls(list(FEATURES), medians.tolist(), means.tolist(), scales.tolist())
        for name, y in targets.items():
            y = np.asarray(y).astype(np.int64)
            keep = y != MISSING
            classes = np.unique(y[keep])
            if len(classes) < 2:  # nothing to learn: the grading is left to the crop network
                log.warning("anatomy grader: %s has %d class among its %d labelled discs; left out", name,
                            len(classes), int(keep.sum()))
                continue
            model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(z[keep], y[keep])
            coef, intercept = model.coef_, model.intercept_
            grader.heads[name] = {"classes": classes.tolist(), "coef": coef.tolist(), "intercept": intercept.tolist(),
                                  "discs": int(keep.sum())}
        return grader

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Per grading, (n, classes of the grading) probabilities; a grade never seen in training gets 0."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        medians = np.asarray(self.medians)
        z = (np.where(np.isfinite(x), x, medians) - np.asarray(self.means)) / np.asarray(self.scales)
        out = {}
        for name, head in self.heads.items():
            logits = z @ np.asarray(head["coef"], dtype=np.float64).T + np.asarray(head["intercept"], dtype=np.float64)
            if logits.shape[1] == 1:  # scikit-learn's two-class model: one logit for the second class
                logits = np.concatenate([np.zeros_like(logits), logits], 1)
            logits -= logits.max(1, keepdims=True)
            seen = np.exp(logits)
            seen /= seen.sum(1, keepdims=True)
            probs = np.zeros((len(x), grading(name).num_classes))
            probs[:, head["classes"]] = seen
            out[name] = probs
        return out

    def to_json(self) -> dict[str, Any]:
        return {"features": self.features, "medians": self.medians, "means": self.means, "scales": self.scales,
                "heads": self.heads}

    @classmethod
    def from_json(cls, data: Any, source: str = "anatomy.json") -> AnatomyGrader:
        """Read back :meth:`to_json`'s data, every shape checked (a damaged file is refused, naming it)."""
        try:
            grader = cls(list(data["features"]), [float(v) for v in data["medians"]], [float(v) for v in data["means"]],
                         [float(v) for v in data["scales"]], dict(data["heads"]))
        except (KeyError, TypeError, ValueError) as error:
            raise UserInputError(f"{source}: not an anatomy grader ({type(error).__name__}: {error})") from error
        if grader.features != list(FEATURES):
            raise UserInputError(f"{source}: features {grader.features} are not this plid's {list(FEATURES)}")
        n = len(FEATURES)
        if not (len(grader.medians) == len(grader.means) == len(grader.scales) == n) or \
                not all(np.isfinite(grader.medians + grader.means + grader.scales)) or min(grader.scales) <= 0:
            raise UserInputError(f"{source}: medians, means and scales must be {n} finite numbers (scales > 0)")
        for name, head in grader.heads.items():
            classes = head.get("classes") if isinstance(head, dict) else None
            try:
                coef = np.asarray(head["coef"], dtype=np.float64)
                intercept = np.asarray(head["intercept"], dtype=np.float64)
                spec = grading(name)
            except (KeyError, TypeError, ValueError) as error:
                raise UserInputError(f"{source}: heads.{name} is damaged ({error})") from error
            rows = 1 if len(classes or []) == 2 else len(classes or [])
            if not classes or any(not isinstance(k, int) or not 0 <= k < spec.num_classes for k in classes) or \
                    coef.shape != (rows, n) or intercept.shape != (rows,) or not np.isfinite(coef).all() or \
                    not np.isfinite(intercept).all():
                raise UserInputError(f"{source}: heads.{name}: classes, coef ({rows}x{n}) or intercept do not fit")
        return grader
