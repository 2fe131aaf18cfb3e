"""Network factories. Every segmenter comes from ``segmentation_models_pytorch.create_model``, every classifier
from ``timm.create_model``."""

from __future__ import annotations

import logging
from pathlib import Path

import segmentation_models_pytorch as smp
import timm
import torch
from timm.utils import freeze, unfreeze
from torch import nn

from plid.errors import UserInputError

log = logging.getLogger(__name__)

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


# Backbones whose features collapse below this input side (timm's InceptionV3 needs 75 px): smaller inputs are
# upsampled to it inside the network, so that every backbone takes the same crops (debug=smoke uses 64 px).
MIN_INPUT_SIZE = {"inception_v3": 75}
TRAINING_MODES = ("feature_extraction", "fine_tune", "full")


class DiscClassifier(nn.Module):
    """A timm backbone's globally average-pooled features, then the paper's head: a dense layer of ``hidden``
    units with ReLU, dropout, and a dense layer of ``num_classes`` logits.

    ``backbone`` is a timm model without its classifier; only its ``forward_features`` is used.
    """

    def __init__(self, backbone: nn.Module, num_features: int, hidden: int = 256, dropout: float = 0.2,
                 num_classes: int = 2, min_input_size: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        self.min_input_size = min_input_size
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``x``; ``extra`` (N, F) inputs go to heads that take them (the grading heads' measurements)."""
        if min(x.shape[-2:]) < self.min_input_size:
            scale = self.min_input_size / min(x.shape[-2:])
            size = [max(self.min_input_size, round(s * scale)) for s in x.shape[-2:]]
            x = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        features = self.pool(self.backbone.forward_features(x))
        return self.head(features) if extra is None else self.head(features, extra)


def build_classifier(name: str, pretrained: bool = False, weights_file: str | None = None, in_chans: int = 1,
                     hidden: int = 256, dropout: float = 0.2, num_classes: int = 2) -> DiscClassifier:
    """A :class:`DiscClassifier` on ``timm.create_model(name)``.

    Weights: random by default; ``pretrained=True`` takes timm's ImageNet weights (downloads once);
    ``weights_file`` loads a local timm checkpoint of the backbone (e.g. ``model.safetensors`` of its Hub
    repository), offline. timm adapts the first convolution to ``in_chans`` (summing RGB for one channel)
    and drops the ImageNet classifier.
    """
    if not timm.is_model(name):
        raise UserInputError(f"unknown timm model {name!r}; the paper's backbones are vgg16, vgg19, resnet50, "
                             f"inception_v3, legacy_xception, densenet121 (timm.list_models() lists all)")
    overlay = None
    if weights_file is not None:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise UserInputError(f"model.net.weights_file={weights_file}: no such file")
        pretrained, overlay = True, {"file": str(path.resolve())}
    backbone = timm.create_model(name, pretrained=pretrained, pretrained_cfg_overlay=overlay, in_chans=in_chans,
                                 num_classes=0)
    if hasattr(backbone, "pre_logits"):
        # VGG's fc6/fc7 (7x7 convolutions, 120 M parameters) are the ImageNet top that the paper replaces by its
        # own head, as Keras' include_top=False does
        backbone.pre_logits = nn.Identity()
    net = DiscClassifier(backbone, backbone.feature_info[-1]["num_chs"], hidden, dropout, num_classes,
                         MIN_INPUT_SIZE.get(name, 1))
    net.pretrained = bool(pretrained)  # freezing a random backbone is worth a warning
    return net


def set_trainable(net: DiscClassifier, mode: str, fine_tune_modules: list[str] | None = None) -> None:
    """Freeze the backbone as ``mode`` says; the head always trains.

    ``feature_extraction`` freezes the whole backbone, ``fine_tune`` all of it but ``fine_tune_modules``
    (names of backbone submodules, e.g. ``[layer4]``), ``full`` nothing. Frozen batch norm layers become
    ``FrozenBatchNorm2d`` (``timm.utils.freeze``), so their running statistics stay as loaded too.
    """
    if mode not in TRAINING_MODES:
        raise UserInputError(f"model.mode={mode!r} is not one of {TRAINING_MODES}")
    if mode == "full":
        return
    if not getattr(net, "pretrained", True):
        log.warning("model.mode=%s freezes a backbone that starts from random weights: only the unfrozen part "
                    "learns. Give model.net.pretrained=true or model.net.weights_file=..., or model.mode=full", mode)
    freeze(net.backbone)
    if mode == "fine_tune":
        if not fine_tune_modules:
            raise UserInputError("model.mode=fine_tune needs model.fine_tune_modules, the backbone blocks to train")
        names = dict(net.backbone.named_modules())
        unknown = [m for m in fine_tune_modules if m not in names]
        if unknown:
            blocks = [n for n, m in net.backbone.named_modules() if n.count(".") <= 1 and next(m.parameters(), None) is not None]
            raise UserInputError(f"model.fine_tune_modules: {unknown} are not modules of the backbone; "
                                 f"its blocks: {blocks}")
        unfreeze(net.backbone, list(fine_tune_modules))
