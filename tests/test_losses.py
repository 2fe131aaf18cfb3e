import math

import pytest
import torch

from plid.models.losses import DiceFocalLoss


def test_perfect_prediction_has_near_zero_loss():
    target = torch.randint(0, 4, (2, 16, 16))
    logits = torch.nn.functional.one_hot(target, 4).movedim(-1, 1).float() * 50.0
    loss = DiceFocalLoss(focal_weight=1.0, class_weights=[1, 2, 3, 4])(logits, target)
    assert loss.item() == pytest.approx(0.0, abs=1e-4)


def test_matches_hand_computed_value():
    # two pixels, two classes; logits give p = softmax([0, ln 3]) = [0.25, 0.75] at both pixels
    logits = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)]]).T.reshape(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    loss_fn = DiceFocalLoss(focal_weight=0.5, gamma=2.0, class_weights=[1.0, 3.0], smooth=0.0)
    # Dice, class 0: 2*0.25 / (0.5 + 1) = 1/3; class 1: 2*0.75 / (1.5 + 1) = 0.6
    dice_loss = 1 - (1.0 * (1 / 3) + 3.0 * 0.6) / 4.0
    # focal: pixel 0 (true 0, p=0.25): -1 * 0.75^2 * ln 0.25; pixel 1 (true 1, p=0.75): -3 * 0.25^2 * ln 0.75
    focal = (-(0.75**2) * math.log(0.25) - 3 * 0.25**2 * math.log(0.75)) / 2
    assert loss_fn(logits, target).item() == pytest.approx(dice_loss + 0.5 * focal, rel=1e-5)


def test_focal_weight_zero_is_plain_dice_and_loss_has_gradients():
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.randint(0, 4, (2, 8, 8))
    dice_only = DiceFocalLoss(focal_weight=0.0)(logits, target)
    both = DiceFocalLoss(focal_weight=1.0)(logits, target)
    assert both > dice_only > 0
    both.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
