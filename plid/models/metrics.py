"""Scores derived from a confusion matrix, so that Dice and IoU per class come from one pass over the pixels.

Two Dice definitions are reported, named for what they are:

- ``dice_pooled`` (and ``dice``, the same number, the key monitors and configs use): one confusion matrix summed
  over every pixel of every case of the split, then Dice per class; large structures and large images weigh
  more. It is what a metric accumulated over batches computes (torchmetrics, Keras metrics), what checkpoints
  are selected on (``val/dice``) and the definition of plid's Table 4 figures; ``dice_<class>`` is its
  per-class value.
- ``dice_per_case`` (as nnU-Net): Dice per case and class, NaN where the class is absent from both prediction
  and reference, the mean over cases ignoring NaN (nanmean) per class (``dice_per_case_<class>``), and the
  mean of those over the foreground classes. Each image weighs the same, so a small, missed structure counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from plid.labels import CLASS_NAMES

SEGMENTATION_METRICS = ("dice", "miou", "miou_fg")


def predicted_classes(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The argmax over the class dimension of logits or probabilities (the first class on a tie, as argmax).

    ``max(dim).indices`` rather than ``argmax(dim)``: on CPU, torch's argmax over a non-last dimension is ~8 times
    slower on one thread (69 ms against 8.5 ms for a (8, 4, 256, 256) batch; ``benchmarks/inference.py``).
    """
    return scores.max(dim).indices


def dice_iou(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class Dice and IoU from ``confusion[..., i, j]`` (pixels of true class i predicted as j), with any
    leading batch dimensions; 0/0 gives NaN for a class absent from both reference and prediction."""
    confusion = confusion.double()
    tp = confusion.diagonal(dim1=-2, dim2=-1)
    fp = confusion.sum(-2) - tp
    fn = confusion.sum(-1) - tp
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def segmentation_metric(confusion: torch.Tensor, name: str) -> torch.Tensor:
    """``dice`` (mean foreground Dice), ``miou`` or ``miou_fg`` of each confusion matrix in a (..., C, C) batch."""
    dice, iou = dice_iou(confusion)
    if name == "dice":
        return dice[..., 1:].nanmean(-1)
    if name == "miou":
        return iou.nanmean(-1)
    if name == "miou_fg":
        return iou[..., 1:].nanmean(-1)
    raise ValueError(f"unknown segmentation metric {name!r}; one of {SEGMENTATION_METRICS}")


def confusions_per_case(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, C, C) confusion matrices, one per case, of (N, ...) predicted and reference classes."""
    n = len(target)
    cell = (torch.arange(n, device=target.device)[:, None] * num_classes * num_classes
            + target.reshape(n, -1).long() * num_classes + predicted.reshape(n, -1).long())
    return torch.bincount(cell.reshape(-1), minlength=n * num_classes**2).reshape(n, num_classes, num_classes)


def per_case_dice(confusions: torch.Tensor) -> torch.Tensor:
    """(C,) mean over cases of each class's Dice per case, from (N, C, C) matrices; a case where a class is absent
    from both prediction and reference is left out of that class's mean (NaN, as nnU-Net), and a class absent
    from every case is NaN."""
    return dice_iou(confusions)[0].nanmean(0)


class CaseDice(Metric):
    """Per-case Dice accumulated over batches (sums and counts of the defined per-case values, per class), so
    that :func:`per_case_dice` of a whole split is computed without keeping its masks."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("total", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        dice = dice_iou(confusions_per_case(predicted, target, self.num_classes))[0]
        defined = ~dice.isnan()
        self.total += dice.nan_to_num(0.0).sum(0)
        self.count += defined.sum(0)

    def compute(self) -> torch.Tensor:
        return self.total / self.count  # NaN (0/0) for a class absent from every case


def segmentation_scores(confusion: torch.Tensor, class_names: Sequence[str] = CLASS_NAMES,
                        case_dice: torch.Tensor | None = None) -> dict[str, float]:
    """Per-class Dice and IoU of the pooled ``confusion`` (``confusion[i, j]`` counts pixels of true class i
    predicted as j, over all cases), mean foreground Dice (``dice``, also ``dice_pooled``), mIoU with (``miou``)
    and without background (``miou_fg``); a class absent from both reference and prediction scores NaN and is
    left out of the means (nanmean). With ``case_dice`` (:func:`per_case_dice`, per class), also
    ``dice_per_case_<class>`` and their foreground mean ``dice_per_case`` (see the module docstring).
    """
    dice, iou = dice_iou(confusion)
    scores = {}
    for k, name in enumerate(class_names):
        scores[f"dice_{name}"] = float(dice[k])
        scores[f"iou_{name}"] = float(iou[k])
    for name in SEGMENTATION_METRICS:
        scores[name] = float(segmentation_metric(confusion, name))
    scores["dice_pooled"] = scores["dice"]
    for k, name in enumerate(class_names):
        scores[f"dice_pooled_{name}"] = float(dice[k])
    if case_dice is not None:
        case_dice = torch.as_tensor(case_dice, dtype=torch.float64)
        for k, name in enumerate(class_names):
            scores[f"dice_per_case_{name}"] = float(case_dice[k])
        scores["dice_per_case"] = float(case_dice[1:].nanmean())
    return scores
