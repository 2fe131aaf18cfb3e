"""Pixel boxes ``(x1, y1, x2, y2)`` with x2/y2 exclusive, as in the spider2d data contract."""

from __future__ import annotations

import cv2
import numpy as np


def enlarge_box(box, factor: float, height: int, width: int) -> tuple[int, int, int, int]:
    """Grow ``box`` about its centre by ``factor`` of its size (0.1 = 10 %) and clip it to the image.

    The paper enlarges every detected box by 10 % before cropping so that the edges of the structure stay
    in view. The result is an integer box with at least one pixel on each side.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"box {tuple(box)} has zero or negative size")
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half_w, half_h = (x2 - x1) * (1 + factor) / 2, (y2 - y1) * (1 + factor) / 2
    # rounded first so float noise (200 * 1.1 / 2 = 110.00000000000001) does not add a pixel
    cx, cy, half_w, half_h = (round(v, 6) for v in (cx, cy, half_w, half_h))
    nx1 = int(np.clip(np.floor(cx - half_w), 0, width - 1))
    ny1 = int(np.clip(np.floor(cy - half_h), 0, height - 1))
    nx2 = int(np.clip(np.ceil(cx + half_w), nx1 + 1, width))
    ny2 = int(np.clip(np.ceil(cy + half_h), ny1 + 1, height))
    return nx1, ny1, nx2, ny2


def squared(box) -> tuple[float, float, float, float]:
    """``box`` grown along its shorter side to a square about its centre."""
    x1, y1, x2, y2 = (float(v) for v in box)
    half = max(x2 - x1, y2 - y1) / 2
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return cx - half, cy - half, cx + half, cy + half


def crop(array: np.ndarray, box) -> np.ndarray:
    """The part of a (H, W, ...) array inside an integer box."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return array[y1:y2, x1:x2]


def roi_crop(array: np.ndarray, box, margin: float, size: int, interpolation: int = cv2.INTER_AREA
             ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``box`` enlarged by ``margin`` (:func:`enlarge_box`), cut out of ``array`` and resized to ``size`` x ``size``,
    with the enlarged box: the segmenter's input, the same at training (images with ``INTER_AREA``, masks with
    ``INTER_NEAREST``) and at inference."""
    enlarged = enlarge_box(box, margin, *array.shape[:2])
    return cv2.resize(crop(array, enlarged), (size, size), interpolation=interpolation), enlarged


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The tightest box around the non-zero pixels of ``mask``, or None when it has none."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def to_yolo(boxes, height: int, width: int) -> np.ndarray:
    """Pixel boxes (N, 4) as ultralytics labels: centre x, centre y, width, height, all as fractions of the image."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([(b[:, 0] + b[:, 2]) / 2 / width, (b[:, 1] + b[:, 3]) / 2 / height,
                     (b[:, 2] - b[:, 0]) / width, (b[:, 3] - b[:, 1]) / height], axis=1)


def from_yolo(labels, height: int, width: int) -> np.ndarray:
    """Ultralytics labels (N, 4: normalised centre and size) as float pixel boxes (x1, y1, x2, y2)."""
    lb = np.asarray(labels, dtype=np.float64).reshape(-1, 4)
    cx, cy, w, h = lb[:, 0] * width, lb[:, 1] * height, lb[:, 2] * width, lb[:, 3] * height
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def shift_box(box, dx: float, dy: float) -> tuple[float, float, float, float]:
    """``box`` moved by (dx, dy): from crop to image coordinates with the crop's corner, back with its negative."""
    x1, y1, x2, y2 = box
    return x1 + dx, y1 + dy, x2 + dx, y2 + dy


def clip_box(box, height: int, width: int) -> tuple[float, float, float, float]:
    """``box`` clipped to an image of the given size."""
    x1, y1, x2, y2 = box
    return (float(np.clip(x1, 0, width)), float(np.clip(y1, 0, height)),
            float(np.clip(x2, 0, width)), float(np.clip(y2, 0, height)))


def centres_inside(boxes, containers) -> np.ndarray:
    """``(N, M)``: whether the centre of each of ``boxes`` lies inside each of ``containers`` (edges included)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    containers = np.asarray(containers, dtype=np.float64).reshape(-1, 4)
    cx, cy = ((boxes[:, 0] + boxes[:, 2]) / 2)[:, None], ((boxes[:, 1] + boxes[:, 3]) / 2)[:, None]
    return ((cx >= containers[:, 0]) & (cx <= containers[:, 2]) & (cy >= containers[:, 1]) & (cy <= containers[:, 3]))


def box_iou_matrix(a, b) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), x2/y2 exclusive (torchvision's convention:
    areas are (x2 - x1) * (y2 - y1)); plid's one box IoU, for matching reports to labels, slices to slices and
    detections to boxes."""
    import torch
    from torchvision.ops import box_iou

    a = torch.tensor(np.asarray(a, dtype=np.float64).reshape(-1, 4))
    b = torch.tensor(np.asarray(b, dtype=np.float64).reshape(-1, 4))
    return box_iou(a, b).numpy()
