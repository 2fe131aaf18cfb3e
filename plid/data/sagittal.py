"""How a sagittal volume becomes the slices of the spider2d contract: 8-bit, upright, anterior on the left,
square pixels. The SPIDER importer (:mod:`plid.data.spider`) and the scan readers of inference
(:mod:`plid.data.scans`) both use this code, so a new scan is read exactly as the training data were made."""

from __future__ import annotations

import cv2
import numpy as np

# index axes of every reoriented volume: columns to posterior, rows to inferior, slices to the left
ORIENTATION = "PIL"
PERCENTILES = (0.5, 99.5)


def scale_to_uint8(volume: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Intensities between the two percentiles mapped linearly to 0-255, clipped outside them."""
    low, high = np.percentile(volume, percentiles)
    if high <= low:
        return np.zeros(volume.shape, np.uint8)
    scaled = (volume.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def square_pixels(array: np.ndarray, row_spacing: float, col_spacing: float, interpolation: int) -> np.ndarray:
    """A 2D slice resampled so both pixel sides equal the finer of the two spacings."""
    if abs(row_spacing / col_spacing - 1) < 1e-3:
        return array
    target = min(row_spacing, col_spacing)
    height = max(1, round(array.shape[0] * row_spacing / target))
    width = max(1, round(array.shape[1] * col_spacing / target))
    return cv2.resize(array, (width, height), interpolation=interpolation)


def slice_window(num: int, count: int, centre: float | None = None) -> list[int]:
    """``count`` neighbouring indices of ``num`` slices centred on ``centre`` (the middle where None), shifted
    to stay inside the volume; all of them where ``count >= num``."""
    if count >= num:
        return list(range(num))
    centre = (num - 1) / 2 if centre is None else centre
    start = int(np.clip(round(centre - (count - 1) / 2), 0, num - count))
    return list(range(start, start + count))
