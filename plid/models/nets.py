"""Network factories. Every segmenter comes from ``segmentation_models_pytorch.create_model``."""

from __future__ import annotations

from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn

from plid.errors import UserInputError

# The input side each architecture needs to be a multiple of (its encoder's output stride).
INPUT_DIVISOR = {"unet": 32, "linknet": 32, "fpn": 32, "pspnet": 8, "deeplabv3plus": 16}


def build_segmenter(arch: str, encoder_name: str, encoder_weights: str | None = None, in_channels: int = 1,
                    classes: int = 4, **kwargs) -> nn.Module:
    """An smp segmenter; ``encoder_weights`` is None (from scratch), a name smp knows (``imagenet``, needs
    internet once) or the path of a local encoder state dict (works offline).

    The returned module carries ``input_divisor``, the multiple the input side must be.
    """
    arch = arch.lower()
    if arch not in INPUT_DIVISOR:
        raise UserInputError(f"unknown segmentation architecture {arch!r}; valid: {sorted(INPUT_DIVISOR)}")
    encoders = smp.encoders.get_encoder_names()
    if encoder_name not in encoders:
        raise UserInputError(f"unknown encoder {encoder_name!r}; smp knows e.g. "
                         f"{[e for e in encoders if e.startswith(('resnet', 'resnext', 'vgg'))]}")
    local = encoder_weights is not None and Path(str(encoder_weights)).expanduser().is_file()
    net = smp.create_model(arch, encoder_name=encoder_name, encoder_weights=None if local else encoder_weights,
                           in_channels=in_channels, classes=classes, **kwargs)
    if local:
        state = torch.load(Path(encoder_weights).expanduser(), map_location="cpu", weights_only=True)
        net.encoder.load_state_dict(state)
    net.input_divisor = INPUT_DIVISOR[arch]
    return net
