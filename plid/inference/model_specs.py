"""What a model_dir may describe, and how plid rebuilds it: plain data, through plid's own factories.

A model_dir is what people download and share, so loading one runs none of its code. Each network is described by
a :class:`ModuleSpec` (``model.json``: its kind, architecture name, encoder or backbone, classes, heads), checked
against these models (an unknown kind, architecture or key is refused, naming the file and the key) and rebuilt by
``segmentation_models_pytorch.create_model`` (:func:`plid.models.nets.build_segmenter`), ``timm.create_model``
(:func:`plid.models.nets.build_classifier`) and plid's heads (:func:`plid.models.grading.build_grader`). No
``_target_`` of a model_dir is ever instantiated: a model_dir written before ``model.json`` existed has its spec read
from the ``model`` node of its ``config.yaml`` by :func:`spec_from_config`, which compares each ``_target_`` as a
string with the few plid writes and refuses any other.

Detectors are rebuilt only from the ultralytics architectures plid trains (:data:`DETECTOR_SCALES`): the
architecture yaml stored with a detector must equal ultralytics' own for its scale, and the network is built from
ultralytics' yaml, never from the stored one (:func:`detector_architecture`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from plid.errors import UserInputError
from plid.labels import ALL_GRADINGS

SEGMENTER_ARCHS = ("unet", "unetplusplus", "linknet", "fpn", "pspnet", "deeplabv3", "deeplabv3plus", "manet", "pan")
DETECTOR_SCALES = ("n", "s", "m", "l", "x")  # yolov8<scale>.yaml
# the _target_ strings plid's configs write, per kind: the LightningModule and its network factory
MODULE_TARGETS = {
    "segmenter": ("plid.models.segmentation.SegmentationModule", "plid.models.nets.build_segmenter"),
    "classifier": ("plid.models.classification.ClassificationModule", "plid.models.nets.build_classifier"),
    "grader": ("plid.models.grading.GradingModule", "plid.models.grading.build_grader"),
}
# what else a run's model node holds, used only to train (losses, optimizers, schedulers): read as data, never built
TRAINING_TARGETS = {
    "loss": ("plid.models.losses.DiceFocalLoss",),
    "optimizer": ("torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD"),
    "scheduler": ("torch.optim.lr_scheduler.ReduceLROnPlateau", "torch.optim.lr_scheduler.CosineAnnealingLR",
                  "torch.optim.lr_scheduler.StepLR"),
}
TRAINING_KEYS = {"monitor", "class_weights", "class_names"}
NAME_CHARACTERS = set("abcdefghijklmnopqrstuvwxyz0123456789_.-")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _library_name(value: str) -> str:
    """A timm or smp registry name: lower-case letters, digits, ``_``, ``.`` and ``-`` only."""
    if not value or set(value) - NAME_CHARACTERS:
        raise ValueError(f"{value!r} is not a model name of timm or smp")
    return value


class SegmenterNet(_Spec):
    arch: Literal[SEGMENTER_ARCHS]  # type: ignore[valid-type]
    encoder_name: str
    in_channels: int = Field(1, ge=1, le=4)
    classes: int = Field(4, ge=2, le=64)

    def model_post_init(self, context) -> None:
        _library_name(self.encoder_name)


class ClassifierNet(_Spec):
    name: str
    in_chans: int = Field(1, ge=1, le=4)
    hidden: int = Field(256, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    num_classes: int = Field(2, ge=2)

    def model_post_init(self, context) -> None:
        _library_name(self.name)


class GraderNet(_Spec):
    name: str
    targets: list[Literal[ALL_GRADINGS]]  # type: ignore[valid-type]
    in_chans: int = Field(1, ge=1, le=4)
    hidden: int = Field(256, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    measurements: bool = False

    def model_post_init(self, context) -> None:
        _library_name(self.name)


class ModuleSpec(_Spec):
    """One network of a model_dir, as ``model.json`` holds it."""

    kind: Literal["segmenter", "classifier", "grader"]
    net: SegmenterNet | ClassifierNet | GraderNet
    channels_last: bool = False
    # a classifier's trainable parts: a frozen backbone has frozen batch norms, whose weights differ in kind
    mode: Literal["full", "fine_tune", "feature_extraction"] = "full"
    fine_tune_modules: list[str] = Field(default_factory=list)

    def model_post_init(self, context) -> None:
        expected = {"segmenter": SegmenterNet, "classifier": ClassifierNet, "grader": GraderNet}[self.kind]
        if not isinstance(self.net, expected):
            raise ValueError(f"a {self.kind} takes a net of {sorted(expected.model_fields)}")
        for module in self.fine_tune_modules:
            _library_name(module.lower())


def read_spec(path: Path) -> ModuleSpec:
    """``model.json`` checked against :class:`ModuleSpec`; a refusal names the file and the key."""
    try:
        return ModuleSpec.model_validate(json.loads(path.read_text()))
    except json.JSONDecodeError as error:
        raise UserInputError(f"{path}: not valid JSON ({error})") from error
    except ValidationError as error:
        raise UserInputError(f"{path}: not a model plid builds: {_first_problem(error)}") from error


def _first_problem(error: ValidationError) -> str:
    problem = error.errors()[0]
    where = ".".join(str(p) for p in problem["loc"]) or "(top level)"
    return f"key {where}: {problem['msg']}"


def spec_from_config(model: dict[str, Any], path: Path) -> ModuleSpec:
    """The spec of a run's composed ``model`` node (a plain dict, read from ``path``), refusing every ``_target_``
    and key plid does not write there."""
    target = model.get("_target_")
    kind = next((k for k, (module, _) in MODULE_TARGETS.items() if module == target), None)
    if kind is None:
        raise UserInputError(f"{path}: key model._target_ is {target!r}, not one of plid's models "
                             f"{sorted(m for m, _ in MODULE_TARGETS.values())}; nothing of it is run")
    net = dict(model.get("net") or {})
    if net.pop("_target_", None) != MODULE_TARGETS[kind][1]:
        raise UserInputError(f"{path}: key model.net._target_ is {model['net'].get('_target_')!r}; a {kind} is built "
                             f"by {MODULE_TARGETS[kind][1]}")
    for key, value in model.items():
        if key in ("_target_", "net", "targets", "use_measurements", "channels_last", "mode", "fine_tune_modules") \
                or key in TRAINING_KEYS:
            continue
        if key not in TRAINING_TARGETS:
            raise UserInputError(f"{path}: key model.{key} is not one plid writes")
        if value is not None and value.get("_target_") not in TRAINING_TARGETS[key]:
            raise UserInputError(f"{path}: key model.{key}._target_ is {value.get('_target_')!r}, not one of "
                                 f"{list(TRAINING_TARGETS[key])}")
    for key in ("encoder_weights", "weights_file", "pretrained"):  # initial weights: the checkpoint holds them all
        if net.pop(key, None) not in (None, False):
            raise UserInputError(f"{path}: key model.net.{key} names initial weights; a model_dir's networks are "
                                 f"built from scratch and take the checkpoint's")
    if kind == "grader":
        net.pop("num_classes", None)  # ignored by build_grader: each head has its grading's classes
    try:
        return ModuleSpec(kind=kind, net=net, channels_last=bool(model.get("channels_last", False)),
                          **({"mode": model.get("mode") or "full", "fine_tune_modules": list(
                              model.get("fine_tune_modules") or [])} if kind != "segmenter" else {}))
    except ValidationError as error:
        raise UserInputError(f"{path}: not a model plid builds: {_first_problem(error)}") from error


def build_module(spec: ModuleSpec):
    """The LightningModule of ``spec``, random weights (the caller loads the checkpoint's), built by plid's
    factories; the training-only parts (loss, optimizer) are left at their defaults."""
    net = spec.net.model_dump()
    if spec.kind == "segmenter":
        from plid.models.losses import DiceFocalLoss
        from plid.models.nets import build_segmenter
        from plid.models.segmentation import SegmentationModule

        return SegmentationModule(build_segmenter(**net), DiceFocalLoss(), optimizer=None,
                                  channels_last=spec.channels_last)
    if spec.kind == "classifier":
        from plid.models.classification import ClassificationModule
        from plid.models.nets import build_classifier

        return ClassificationModule(build_classifier(**net), optimizer=None, mode=spec.mode,
                                    fine_tune_modules=spec.fine_tune_modules, class_weights=None)
    from plid.models.grading import GradingModule, build_grader

    return GradingModule(build_grader(**net), targets=net["targets"], optimizer=None, mode=spec.mode,
                         fine_tune_modules=spec.fine_tune_modules, class_weights=None,
                         use_measurements=net["measurements"])


def detector_architecture(stored: dict[str, Any], path: Path) -> dict[str, Any]:
    """Ultralytics' own yaml of the YOLOv8 scale a detector was stored with, where the stored architecture is that
    one (class count and input channels aside); anything else is refused, naming the file."""
    from ultralytics.nn.tasks import yaml_model_load

    scale = stored.get("scale") if isinstance(stored, dict) else None
    if scale not in DETECTOR_SCALES:
        raise UserInputError(f"{path}: its architecture is not one of the YOLOv8 scales plid trains "
                             f"({', '.join(f'yolov8{s}' for s in DETECTOR_SCALES)}); nothing of it is built")
    known = json.loads(json.dumps(yaml_model_load(f"yolov8{scale}.yaml"), default=str))
    ignored = ("nc", "channels", "ch", "yaml_file")
    if {k: v for k, v in stored.items() if k not in ignored} != {k: v for k, v in known.items() if k not in ignored}:
        raise UserInputError(f"{path}: its architecture differs from ultralytics' yolov8{scale}.yaml (layers or "
                             f"modules changed); plid builds only the architectures it trains")
    if stored.get("channels", 3) != 3:
        raise UserInputError(f"{path}: a detector of {stored.get('channels')} input channels; plid's take 3")
    return known
