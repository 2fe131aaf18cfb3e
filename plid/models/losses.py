"""The paper's segmentation loss: Dice + lambda * Focal, both class-weighted (its equations 2-4)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DiceFocalLoss(nn.Module):
    """``L = (1 - weighted soft Dice) + focal_weight * weighted focal loss`` over softmax probabilities.

    Dice is computed per class over the whole batch (not per image), so a class absent from one image does
    not pull the loss; a class absent from the whole batch and from the prediction scores Dice 1.

    The focal term is the softmax (multiclass) focal loss ``-alpha_c (1 - p_t)^gamma log p_t`` of Lin et al.,
    not smp's per-class sigmoid variant: the four classes are mutually exclusive, so one softmax is the
    right model, and its ``alpha_c`` is the same class weight the Dice term uses.

    Args:
        focal_weight: lambda, the weight of the focal term (0 gives plain Dice).
        gamma: focal exponent.
        class_weights: one weight per class (background first) or None for equal weights.
    """

    def __init__(self, focal_weight: float = 1.0, gamma: float = 2.0, class_weights: Sequence[float] | None = None,
                 smooth: float = 1e-5) -> None:
        super().__init__()
        self.focal_weight, self.gamma, self.smooth = focal_weight, gamma, smooth
        weights = torch.as_tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        weights = self.class_weights if self.class_weights is not None else logits.new_ones(num_classes)
        log_probs = F.log_softmax(logits.float(), dim=1)
        probs = log_probs.exp()
        one_hot = F.one_hot(target, num_classes).movedim(-1, 1).to(probs.dtype)

        dims = (0, *range(2, logits.ndim))
        intersection = (probs * one_hot).sum(dims)
        cardinality = probs.sum(dims) + one_hot.sum(dims)
        dice = (2 * intersection + self.smooth) / (cardinality + self.smooth)
        dice_loss = 1 - (weights * dice).sum() / weights.sum()

        log_pt = log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
        focal = -weights[target] * (1 - log_pt.exp()) ** self.gamma * log_pt
        return dice_loss + self.focal_weight * focal.mean()
