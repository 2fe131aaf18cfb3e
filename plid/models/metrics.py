"""Scores derived from a confusion matrix, so that Dice and IoU per class come from one pass over the pixels."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from plid.datamodules.contract import CLASS_NAMES


def segmentation_scores(confusion: torch.Tensor, class_names: Sequence[str] = CLASS_NAMES) -> dict[str, float]:
    """Per-class Dice and IoU, mean foreground Dice (``dice``), mIoU with (``miou``) and without background
    (``miou_fg``). ``confusion[i, j]`` counts pixels of true class i predicted as j. A class absent from both
    reference and prediction scores NaN and is left out of the means (nanmean), as in nnU-Net.
    """
    confusion = confusion.double()
    tp = confusion.diag()
    fp = confusion.sum(0) - tp
    fn = confusion.sum(1) - tp
    dice = 2 * tp / (2 * tp + fp + fn)  # 0/0 -> NaN for absent classes
    iou = tp / (tp + fp + fn)
    scores = {}
    for k, name in enumerate(class_names):
        scores[f"dice_{name}"] = float(dice[k])
        scores[f"iou_{name}"] = float(iou[k])
    scores["dice"] = float(dice[1:].nanmean())
    scores["miou"] = float(iou.nanmean())
    scores["miou_fg"] = float(iou[1:].nanmean())
    return scores
