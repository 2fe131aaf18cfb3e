"""Augmentation as the paper gives it, built with albumentations, and tensor conversion."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch


def paper_augmentation(rotate: float = 30, brightness: float = 0.2, shift: float = 0.2, hflip: float = 0.5,
                       p: float = 0.5) -> A.Compose:
    """Rotation up to ``rotate`` degrees with nearest (edge-replicating) fill, brightness, horizontal flip and
    shifts up to ``shift`` of the image size. Masks follow the image with nearest-neighbour interpolation.

    Horizontal flips swap anterior and posterior; the paper uses them, so they are on by default
    (``hflip=0`` turns them off).
    """
    return A.Compose([
        A.Rotate(limit=rotate, border_mode=cv2.BORDER_REPLICATE, mask_interpolation=cv2.INTER_NEAREST, p=p),
        A.RandomBrightnessContrast(brightness_limit=brightness, contrast_limit=0.0, p=p),
        A.HorizontalFlip(p=hflip),
        A.Affine(translate_percent=(-shift, shift), border_mode=cv2.BORDER_REPLICATE,
                 mask_interpolation=cv2.INTER_NEAREST, p=p),
    ])


def augment(transform: A.Compose, **data: np.ndarray) -> dict:
    """Apply ``transform`` with a seed drawn from torch's generator.

    albumentations keeps its own generator, which ``seed_everything`` does not reach; drawing its seed from
    torch makes runs repeat for a seed, and each DataLoader worker (seeded apart by torch) augments differently.
    """
    transform.set_random_seed(int(torch.randint(0, 2**31 - 1, ())))
    return transform(**data)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) -> float32 (1, H, W), standardised per image (MR intensities have no absolute scale)."""
    x = torch.from_numpy(image).float().unsqueeze(0)
    return (x - x.mean()) / x.std().clamp_min(1.0)
