"""Measurements of each disc from the 4-class mask (0 background, 1 vertebra, 2 disc, 3 canal; anterior on the
left, head up), in mm where the pixel spacing is known and in pixels otherwise.

For each disc box the disc is the connected region of disc pixels with most pixels inside the box. Its long axis
(the principal axis of its pixels, pointing posteriorly) and the normal to it (pointing up) give the disc's own
frame, so that a tilted (lordotic) disc is measured as an upright one:

- ``anterior_height``, ``middle_height``, ``posterior_height``: the extent of the disc along the normal at 10 %,
  50 % and 90 % of its length from its anterior end (a one-pixel strip across the disc).
- ``upper_vertebra_height``, ``lower_vertebra_height``: the run of vertebra pixels along the normal through the
  disc's centre, above and below it (a gap of background between disc and vertebra, as SPIDER's masks leave
  at the endplates, is crossed up to half the disc's middle height or 6 px); null where there is none (the
  sacrum below L5/S1 is often unlabelled).
- ``height_index``: the mean of the three disc heights over the mean height of the adjacent vertebral bodies
  found (a disc height index in the sense of Farfan's, unitless).
- ``posterior_protrusion``: how far the disc reaches behind the line of the posterior walls of the adjacent
  vertebral bodies, along the disc's axis (positive behind the line). Each wall is where the run of vertebra
  pixels, walked posteriorly from the body's centre line at 10-30 % of the body's height from the endplate,
  ends (at the canal or the background, so the posterior elements behind the canal do not count).
- ``signal_ratio``: the mean image intensity of the disc over that of the canal at its level (canal pixels
  behind the disc's centre within the disc's extent along the normal): a proxy of the nucleus' T2 signal, which
  Pfirrmann's grades follow. Needs the image; null without canal pixels at that level.
- ``nucleus_ratio``: the 90th percentile of the disc's intensities over the canal's mean (the bright nucleus of a
  healthy disc, where the mean mixes it with the dark annulus); ``signal_spread``: the standard deviation of the
  disc's intensities over the canal's mean (a grey, homogeneous degenerate disc has little); null as
  ``signal_ratio``.
- ``disc_to_vertebra``: the disc's mean intensity over that of the vertebra pixels above and below it within
  the disc's length and two disc heights (the marrow's signal, which Modic changes alter); null without them.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

VERTEBRA, DISC, CANAL = 1, 2, 3
SIGNALS = ("signal_ratio", "nucleus_ratio", "signal_spread", "disc_to_vertebra")  # intensity ratios; need the image
FRACTIONS = {"anterior_height": 0.1, "middle_height": 0.5, "posterior_height": 0.9}
MAX_GAP_PX = 6.0
STEP = 0.5  # ray-marching step, pixels


def _inside(mask: np.ndarray, point: np.ndarray) -> bool:
    x, y = int(round(point[0])), int(round(point[1]))
    return 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1]


def _at(mask: np.ndarray, point: np.ndarray) -> int:
    return int(mask[int(round(point[1])), int(round(point[0]))]) if _inside(mask, point) else -1


def _run(mask: np.ndarray, start: np.ndarray, direction: np.ndarray, value: int, max_gap: float = 0.0,
         skip: int | None = None) -> tuple[float, float] | None:
    """Along ``start + t * direction``: skip pixels of class ``skip``, then up to ``max_gap`` px of others, then
    the run of class ``value``; returns (t where the run starts, its length) or None."""
    t = 0.0
    while skip is not None and _at(mask, start + t * direction) == skip:
        t += STEP
    gap_end = t + max_gap
    while _at(mask, start + t * direction) not in (value, -1) and t <= gap_end:
        t += STEP
    if _at(mask, start + t * direction) != value:
        return None
    begin = t
    while _at(mask, start + t * direction) == value:
        t += STEP
    return begin, t - begin


def disc_frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre, long axis (pointing posteriorly, +x) and normal (pointing up, -y) of a disc's pixel coordinates."""
    centre = points.mean(0)
    if len(points) < 2:
        return centre, np.array([1.0, 0.0]), np.array([0.0, -1.0])
    values, vectors = np.linalg.eigh(np.cov((points - centre).T))
    axis = vectors[:, int(np.argmax(values))]
    axis = axis if axis[0] >= 0 else -axis
    return centre, axis, np.array([axis[1], -axis[0]])


def _disc_component(labels: np.ndarray, count: int, box, shape) -> int | None:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1 = max(x1, 0), max(y1, 0)
    x2, y2 = min(x2, shape[1]), min(y2, shape[0])
    if x2 <= x1 or y2 <= y1 or count <= 1:
        return None
    inside = np.bincount(labels[y1:y2, x1:x2].ravel(), minlength=count)
    inside[0] = 0
    return int(np.argmax(inside)) if inside.max() > 0 else None


def _wall(mask: np.ndarray, centre: np.ndarray, axis: np.ndarray, normal: np.ndarray, begin: float,
          height: float, sign: float) -> float | None:
    """The posterior wall of a vertebral body, as a coordinate along ``axis`` from the disc centre: the median
    end of vertebra runs walked posteriorly at 10, 20 and 30 % of the body height from the endplate."""
    ends = []
    for fraction in (0.1, 0.2, 0.3):
        start = centre + sign * normal * (begin + fraction * height)
        if _at(mask, start) != VERTEBRA:
            continue
        run = _run(mask, start, axis, VERTEBRA)
        if run is not None:
            ends.append(float(np.dot(start + (run[0] + run[1] - STEP) * axis - centre, axis)))
    return float(np.median(ends)) if ends else None


def measure_disc(mask: np.ndarray, disc: np.ndarray, image: np.ndarray | None = None) -> dict[str, float | None]:
    """The measurements (module docstring) of one disc, ``disc`` a boolean map of its pixels, in pixels."""
    ys, xs = np.nonzero(disc)
    points = np.stack([xs, ys], 1).astype(np.float64)
    centre, axis, normal = disc_frame(points)
    u, v = (points - centre) @ axis, (points - centre) @ normal
    out: dict[str, float | None] = {}
    length = u.max() - u.min()
    for name, fraction in FRACTIONS.items():
        at = u.min() + fraction * length
        strip = np.abs(u - at) <= 0.5
        if not strip.any():
            strip = np.abs(u - at) <= np.abs(u - at).min() + 0.5
        out[name] = float(v[strip].max() - v[strip].min() + 1)
    walls, heights = [], []
    for key, sign in (("upper_vertebra_height", 1.0), ("lower_vertebra_height", -1.0)):
        run = _run(mask, centre, sign * normal, VERTEBRA, max(MAX_GAP_PX, out["middle_height"] / 2), skip=DISC)
        out[key] = None if run is None else float(run[1])
        if run is not None:
            heights.append(run[1])
            wall = _wall(mask, centre, axis, normal, *run, sign)
            if wall is not None:
                walls.append(wall)
    disc_height = np.mean([out[k] for k in FRACTIONS])
    out["height_index"] = float(disc_height / np.mean(heights)) if heights else None
    # pixel centres on both sides: the disc's posterior-most pixel against the walls' last vertebra pixels
    out["posterior_protrusion"] = float(u.max() - np.mean(walls)) if walls else None
    for key in SIGNALS:
        out[key] = None
    if image is not None:
        disc_values = image[ys, xs].astype(np.float64)
        cy, cx = np.nonzero(mask == CANAL)
        canal = np.stack([cx, cy], 1).astype(np.float64)
        if len(canal):
            cu, cv = (canal - centre) @ axis, (canal - centre) @ normal
            level = (cu > 0) & (cv >= v.min()) & (cv <= v.max())
            if level.any():
                canal_mean = float(image[cy[level], cx[level]].astype(np.float64).mean())
                if canal_mean > 0:
                    out["signal_ratio"] = float(disc_values.mean()) / canal_mean
                    out["nucleus_ratio"] = float(np.percentile(disc_values, 90)) / canal_mean
                    out["signal_spread"] = float(disc_values.std()) / canal_mean
        vy, vx = np.nonzero(mask == VERTEBRA)
        bone = np.stack([vx, vy], 1).astype(np.float64)
        if len(bone):
            bu, bv = (bone - centre) @ axis, (bone - centre) @ normal
            reach = 2.0 * out["middle_height"]
            near = (bu >= u.min()) & (bu <= u.max()) & (np.abs(bv) <= np.abs(v).max() + reach)
            bone_mean = float(image[vy[near], vx[near]].astype(np.float64).mean()) if near.any() else 0.0
            if bone_mean > 0:
                out["disc_to_vertebra"] = float(disc_values.mean()) / bone_mean
    return out


# what model.use_measurements gives the grading heads: unitless (the same in mm and pixels), 0 where missing
FEATURES = ("height_index", "anterior_over_mean_height", "posterior_over_mean_height",
            "protrusion_over_mean_height", "signal_ratio", "measured")


def measurement_features(measured: dict[str, Any] | None) -> np.ndarray:
    """A disc's measurements as the :data:`FEATURES` vector (float32): the height index, the anterior and
    posterior heights and the posterior protrusion over the mean disc height, the signal ratio, and 1 where the
    disc was measured (all 0 where it was not, a value 0 where it is missing)."""
    out = np.zeros(len(FEATURES), np.float32)
    if not measured:
        return out
    mean = np.mean([measured.get(k) or 0.0 for k in FRACTIONS])
    values = [measured.get("height_index"),
              None if not mean or measured.get("anterior_height") is None else measured["anterior_height"] / mean,
              None if not mean or measured.get("posterior_height") is None else measured["posterior_height"] / mean,
              None if not mean or measured.get("posterior_protrusion") is None else measured["posterior_protrusion"] / mean,
              measured.get("signal_ratio"), 1.0]
    for k, value in enumerate(values):
        out[k] = 0.0 if value is None or not np.isfinite(value) else float(value)
    return out


LENGTHS = ("anterior_height", "middle_height", "posterior_height", "upper_vertebra_height", "lower_vertebra_height",
           "posterior_protrusion")


def measure_discs(mask: np.ndarray | None, boxes: list, image: np.ndarray | None = None,
                  spacing_mm: float | None = None) -> list[dict[str, Any] | None]:
    """The measurements of each disc box (image coordinates) on a whole-image class mask: lengths in mm where
    ``spacing_mm`` (isotropic, in-plane) is given, else in pixels (``unit`` says which); None for a box with
    no disc pixels in it."""
    if mask is None:
        return [None] * len(boxes)
    count, labels = cv2.connectedComponents((mask == DISC).astype(np.uint8), connectivity=8)
    scale = 1.0 if spacing_mm is None else float(spacing_mm)
    results: list[dict[str, Any] | None] = []
    for box in boxes:
        component = _disc_component(labels, count, box, mask.shape)
        if component is None:
            results.append(None)
            continue
        values = measure_disc(mask, labels == component, image)
        entry: dict[str, Any] = {"unit": "px" if spacing_mm is None else "mm"}
        for key, value in values.items():
            if value is not None and key in LENGTHS:
                value *= scale
            entry[key] = None if value is None else round(float(value), 3)
        results.append(entry)
    return results
