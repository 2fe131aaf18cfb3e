"""YOLOv8 detectors (ultralytics) for the two detection stages, and the ROI cropper that chains them.

Stage 1 finds the lumbar region on the whole image; stage 2 finds the discs inside the lumbar crop. The
:class:`RoiCropper` is the one place that turns an image into its lumbar crop and disc crops: training data
for the other tasks (``python -m plid.crop``) and the inference pipeline both go through it.

ultralytics reaches for the network in several places (fonts, settings sync, integrations, pretrained
weights, the AMP check); :func:`prepare_ultralytics` closes each one, following ``STYLE.md`` "No network".
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plid.boxes import crop, enlarge_box, shift_box
from plid.errors import UserInputError
from plid.labels import LEVEL_NAMES

log = logging.getLogger(__name__)
# ultralytics' validation metric names -> this project's metric names
METRIC_NAMES = {
    "metrics/mAP50(B)": "map50",
    "metrics/mAP50-95(B)": "map50_95",
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
}


def prepare_ultralytics(config_dir: str | Path):
    """Import ultralytics with every network path closed; returns the module.

    ``config_dir`` becomes ``YOLO_CONFIG_DIR`` (its settings file and fonts) when ultralytics is not imported
    yet in this process; once it is, the directory it already uses is kept, and prepared the same way.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    os.environ.setdefault("YOLO_VERBOSE", "false")
    import sys

    if "ultralytics" not in sys.modules:
        config_dir = Path(config_dir).expanduser().resolve()
        config_dir.mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    import matplotlib
    import ultralytics
    from ultralytics.utils import USER_CONFIG_DIR

    # the dataset check asks for Arial.ttf and downloads it when missing, even with plots=False
    font = Path(USER_CONFIG_DIR) / "Arial.ttf"
    # the folder ultralytics took at import may be gone since (a test's temporary folder, a cleaned cache)
    font.parent.mkdir(parents=True, exist_ok=True)
    if not font.is_file():
        shutil.copyfile(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", font)
    # integrations (wandb, mlflow, comet, ...) and the settings sync off; this project logs through Lightning
    off = {k: False for k, v in ultralytics.settings.items() if isinstance(v, bool)}
    ultralytics.settings.update({**off, "weights_dir": str(Path(USER_CONFIG_DIR) / "weights")})
    return ultralytics


def load_yolo(model: str, config_dir: str | Path):
    """A YOLO model from a yaml name (``yolov8n.yaml``: built, random weights) or a local ``.pt`` file.

    Anything else is refused: ultralytics would take a bare ``yolov8n.pt`` as a download request.
    """
    prepare_ultralytics(config_dir)
    from ultralytics import YOLO

    if str(model).endswith((".yaml", ".yml")):
        return YOLO(model, task="detect")
    path = Path(model).expanduser()
    if not path.is_file():
        raise UserInputError(f"detector weights {model!r} not found; give the absolute path of a local .pt file "
                             f"(nothing is downloaded) or a model yaml such as yolov8n.yaml")
    return YOLO(str(path.resolve()), task="detect")


WEIGHTS_ONLY_FILE = "detector.pt"  # beside a plid.detect run's summary.json: what plid.export reads


def weights_only_blob(model) -> dict:
    """A YOLO model as plain data and tensors (what ``torch.load(weights_only=True)`` reads): its architecture
    yaml, state dict, class names and training image size."""
    import json

    net = model.model
    imgsz = int((getattr(model, "ckpt", None) or {}).get("train_args", {}).get("imgsz", getattr(model, "imgsz", 640)))
    return {"yaml": json.loads(json.dumps(net.yaml, default=str)),
            "state_dict": {k: v.float() for k, v in net.state_dict().items()},
            "names": {int(k): str(v) for k, v in net.names.items()}, "imgsz": imgsz}


def save_weights_only(weights: str | Path, out: str | Path, config_dir: str | Path) -> Path:
    """The weights-only copy of a detector this process trained (``weights``: its ultralytics ``best.pt``, a
    pickle read once here, by the run that wrote it), so that exporting the run never unpickles it."""
    import torch

    from plid.utils.io import atomic_write

    blob = weights_only_blob(load_yolo(str(weights), config_dir))
    with atomic_write(out, "wb") as handle:
        torch.save(blob, handle)
    return Path(out)


@dataclass
class DetectorSettings:
    """How a detector trains; the defaults are the paper's (SGD, lr0 0.02, momentum 0.9, batch 8, 100 epochs)."""

    model: str = "yolov8n.yaml"
    weights: str | None = None  # a local .pt to start from (its weights are copied into ``model``)
    epochs: int = 100
    imgsz: int = 640
    batch: int = 8
    workers: int = 0
    optimizer: str = "SGD"
    lr0: float = 0.02
    momentum: float = 0.9
    patience: int = 100
    device: str = "cpu"
    amp: bool = False  # the AMP check downloads yolo11n.pt on a GPU
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # any other ultralytics train argument


def train_detector(settings: DetectorSettings, data_yaml: str | Path, out_dir: str | Path,
                   on_epoch_end: Callable[[int, dict[str, float]], None] | None = None) -> Path:
    """Train one stage's detector; returns the path of its best weights (``<out_dir>/weights/best.pt``)."""
    out_dir = Path(out_dir).resolve()
    model = load_yolo(settings.model, out_dir / "ultralytics")
    if settings.weights:
        weights = Path(settings.weights).expanduser()
        if weights.suffix != ".pt" or not weights.is_file():
            raise UserInputError(f"detector.weights={settings.weights!r}: no such local .pt file (nothing is downloaded)")
        model.load(str(weights.resolve()))
    if on_epoch_end is not None:
        def _log(trainer) -> None:
            if trainer.epoch >= trainer.epochs:  # the re-validation of best.pt after the last epoch
                return
            metrics = {f"val/{name}": float(trainer.metrics[key]) for key, name in METRIC_NAMES.items()
                       if key in trainer.metrics}
            losses = trainer.label_loss_items(trainer.tloss, prefix="train")
            metrics.update({k: float(v) for k, v in losses.items()})
            on_epoch_end(trainer.epoch, metrics)

        model.add_callback("on_fit_epoch_end", _log)
    s = settings
    model.train(
        data=str(data_yaml), epochs=s.epochs, imgsz=s.imgsz, batch=s.batch, workers=s.workers, optimizer=s.optimizer,
        lr0=s.lr0, momentum=s.momentum, patience=s.patience, device=s.device, amp=s.amp, seed=s.seed,
        deterministic=True, project=str(out_dir.parent), name=out_dir.name, exist_ok=True, plots=False,
        verbose=False, **s.extra,
    )
    best = out_dir / "weights" / "best.pt"
    if not best.is_file():
        raise RuntimeError(f"ultralytics finished without writing {best}")
    return best


def evaluate_detector(weights: str | Path, data_yaml: str | Path, split: str, imgsz: int, batch: int,
                      device: str = "cpu", workers: int = 0) -> dict[str, float]:
    """mAP50, mAP50-95, precision and recall of ``weights`` on one split of ``data_yaml``.

    mAP is computed over all confidences (ultralytics' validation default, conf 0.001), as is standard;
    precision and recall are at the confidence of best F1.
    """
    weights = Path(weights).resolve()
    model = load_yolo(str(weights), weights.parent.parent / "ultralytics")
    metrics = model.val(data=str(data_yaml), split=split, imgsz=imgsz, batch=batch, device=device, workers=workers,
                        plots=False, verbose=False, project=str(weights.parent.parent), name=f"eval_{split}",
                        exist_ok=True)
    return {name: float(metrics.results_dict[key]) for key, name in METRIC_NAMES.items()}


class NoLumbarRegionFound(RuntimeError):
    """Stage 1 found no lumbar region above the confidence threshold; there is nothing to crop."""


@dataclass
class DiscCrop:
    level: int  # 1 is the lowest disc (normally L5/S1), counting upwards, as SPIDER's ivd_label
    box: tuple[float, float, float, float]  # the detected box, original-image pixels
    crop_box: tuple[int, int, int, int]  # the box enlarged by the margin and clipped: what ``image`` shows
    score: float
    image: np.ndarray
    detected_level: int | None = None  # the level a disc detector with one class per level gives it (1 = L5/S1)


@dataclass
class RoiResult:
    lumbar_box: tuple[float, float, float, float]  # the detected box, original-image pixels
    lumbar_crop_box: tuple[int, int, int, int]  # enlarged and clipped: what ``lumbar_image`` shows
    lumbar_score: float
    lumbar_image: np.ndarray
    discs: list[DiscCrop]  # bottom-up


# IoU above which NMS keeps only the more confident of two boxes. Discs do not overlap (a vertebral body lies
# between two), so two disc boxes overlapping this much are one disc found twice; ultralytics' default, 0.7,
# left such duplicates (IoU 0.5-0.7) in the reports. Stage 1 keeps its top box only, so this only acts on discs.
NMS_IOU = 0.3

# a detector: image (H, W[, 3]) uint8 -> (boxes (N, 4) in its pixels, scores (N,)[, levels (N,)]); a disc detector
# with one class per level (data.disc_classes=level) adds each box's level, 1 = L5/S1 (class 0)
Detector = Callable[[np.ndarray], tuple[np.ndarray, ...]]


class YoloDetector:
    """A YOLO model as a :data:`Detector`, at the size it was trained at unless ``imgsz`` is given.

    Per image it runs ultralytics' own steps, as ``model.predict`` does: the predictor's letterbox, the network,
    then confidence filter, NMS and boxes scaled back to the image. After the first call (``model.predict``
    itself, which builds the predictor) it calls those three steps directly: ``predict`` also sets up a source
    loader, profilers and result bookkeeping on every call, a fixed cost per image beside a small detector's
    forward (see benchmarks/pipeline.py). ``tests/test_detection.py`` checks that both give the same boxes.
    """

    def __init__(self, model: Any, conf: float = 0.25, imgsz: int | None = None, device: str = "cpu",
                 iou: float = NMS_IOU):
        self.model, self.conf, self.iou, self.device = model, float(conf), float(iou), device
        trained = getattr(model, "imgsz", None) or (getattr(model, "ckpt", None) or {}).get("train_args", {}).get("imgsz")
        self.imgsz = int(imgsz or trained or 640)
        # one class per level (names as LEVEL_NAMES): NMS across classes, one disc is one box whatever its level
        self.by_level = list((getattr(model, "names", None) or {}).values()) == list(LEVEL_NAMES)
        self._predictor = None

    @classmethod
    def from_weights(cls, weights: str | Path, conf: float = 0.25, imgsz: int | None = None, device: str = "cpu",
                     config_dir: str | Path | None = None, iou: float = NMS_IOU) -> YoloDetector:
        weights = Path(weights).expanduser().resolve()
        return cls(load_yolo(str(weights), config_dir or weights.parent / "ultralytics"), conf, imgsz, device, iou)

    def predict(self, image: np.ndarray) -> Any:
        """ultralytics' ``Results`` of ``model.predict`` on one image."""
        return self.model.predict(_bgr(image), conf=self.conf, iou=self.iou, imgsz=self.imgsz, device=self.device,
                                  agnostic_nms=self.by_level, verbose=False)[0]

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        if self._predictor is None:
            result = self.predict(image)
            self._predictor = self.model.predictor
        else:
            predictor, bgr = self._predictor, _bgr(image)
            with torch.inference_mode():
                x = predictor.preprocess([bgr])
                result = predictor.postprocess(predictor.inference(x), x, [bgr])[0]
        found = result.boxes.xyxy.cpu().numpy(), result.boxes.conf.cpu().numpy()
        return (*found, result.boxes.cls.cpu().numpy().astype(np.int64) + 1) if self.by_level else found


def _bgr(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


class RoiCropper:
    """Lumbar region, then discs inside it: the paper's two-stage cropping.

    Stage 1 runs on the whole image and its most confident box is the lumbar region; that box enlarged by
    ``margin`` (10 %) and clipped is cropped; stage 2 runs on the crop; each disc box, moved back into
    original-image coordinates, is enlarged by ``margin`` and cropped from the original image. Discs are
    ordered bottom-up (largest centre y first) and numbered from 1, as SPIDER's ``ivd_label``.
    """

    def __init__(self, lumbar: Detector, ivd: Detector, margin: float = 0.1):
        self.lumbar, self.ivd, self.margin = lumbar, ivd, margin

    @classmethod
    def from_weights(cls, lumbar: str | Path, ivd: str | Path, conf: float = 0.25, margin: float = 0.1,
                     device: str = "cpu", config_dir: str | Path | None = None, iou: float = NMS_IOU) -> RoiCropper:
        return cls(YoloDetector.from_weights(lumbar, conf, device=device, config_dir=config_dir, iou=iou),
                   YoloDetector.from_weights(ivd, conf, device=device, config_dir=config_dir, iou=iou), margin)

    def __call__(self, image: np.ndarray) -> RoiResult:
        height, width = image.shape[:2]
        boxes, scores, *_ = self.lumbar(image)
        if len(boxes) == 0:
            raise NoLumbarRegionFound("no lumbar region found: stage 1 returned no box above its confidence threshold")
        best = int(np.argmax(scores))
        lumbar_box = tuple(float(v) for v in boxes[best])
        region_box = enlarge_box(lumbar_box, self.margin, height, width)
        region = crop(image, region_box)
        disc_boxes, disc_scores, *by_level = self.ivd(region)
        disc_levels = by_level[0] if by_level else [None] * len(disc_boxes)
        discs = []
        for box, score, detected_level in zip(disc_boxes, disc_scores, disc_levels):
            box = shift_box(tuple(float(v) for v in box), region_box[0], region_box[1])
            if not (box[2] > box[0] and box[3] > box[1]):
                continue
            crop_box = enlarge_box(box, self.margin, height, width)
            discs.append(DiscCrop(0, box, crop_box, float(score), crop(image, crop_box),
                                  None if detected_level is None else int(detected_level)))
        discs.sort(key=lambda d: -(d.box[1] + d.box[3]))  # image y grows downwards: lowest disc first
        for level, disc in enumerate(discs, start=1):
            disc.level = level
        return RoiResult(lumbar_box, region_box, float(scores[best]), region, discs)
