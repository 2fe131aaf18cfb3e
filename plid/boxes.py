"""Pixel boxes ``(x1, y1, x2, y2)`` with x2/y2 exclusive, as in the spider2d data contract."""

from __future__ import annotations

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
    nx1 = int(np.clip(np.floor(cx - half_w), 0, width - 1))
    ny1 = int(np.clip(np.floor(cy - half_h), 0, height - 1))
    nx2 = int(np.clip(np.ceil(cx + half_w), nx1 + 1, width))
    ny2 = int(np.clip(np.ceil(cy + half_h), ny1 + 1, height))
    return nx1, ny1, nx2, ny2


def crop(array: np.ndarray, box) -> np.ndarray:
    """The part of a (H, W, ...) array inside an integer box."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return array[y1:y2, x1:x2]


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The tightest box around the non-zero pixels of ``mask``, or None when it has none."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
