"""``data.roi=detected``: the dataset's tables with the boxes found by trained detectors instead of the
ground-truth ones, so that segmenters and classifiers train and test on what the pipeline would crop.

The :class:`~plid.models.detection.RoiCropper` runs once over every image; the result is kept in
``cache_dir`` (keyed by the dataset, the weights' contents and the settings) and reused by later runs.

- ``images.csv``: the lumbar box becomes the detected one (before the ``roi_margin`` enlargement, which the
  DataModule applies as it does to ground-truth boxes). Images where stage 1 finds no lumbar region are left
  out, with a warning and a count: they would have no crop in the pipeline either.
- ``discs.csv``: each detected disc is matched to a ground-truth disc of its image (Hungarian matching on
  IoU, at least ``min_iou``) and takes that disc's level and gradings; a detection with no match keeps
  empty labels (a valid box without gradings, as the data contract allows); ground-truth discs no detection
  matched are dropped and counted (``gt_discs_missed``, over the images that kept a lumbar region).

The counts go to the log and to ``counts.json`` beside the cached tables.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou

from plid.datamodules.contract import DISC_BOX, LUMBAR_BOX, SpineDataset
from plid.errors import UserInputError
from plid.models.detection import NMS_IOU
from plid.utils.io import atomic_write, write_json

log = logging.getLogger(__name__)


def detected_dataset(dataset: SpineDataset, lumbar: str | None = None, ivd: str | None = None, conf: float = 0.25,
                     device: str = "cpu", cache_dir: str | None = None, margin: float = 0.1,
                     min_iou: float = 0.3, iou: float = NMS_IOU) -> SpineDataset:
    """``dataset`` with the lumbar and disc boxes replaced by detected ones (see the module docstring)."""
    weights = {}
    for stage, path in (("lumbar", lumbar), ("ivd", ivd)):
        if not path or not Path(path).expanduser().is_file():
            raise UserInputError(
                f"data.roi=detected needs trained detectors: data.detector.{stage}={path!r} is not a local .pt file. "
                f"Train one with `python -m plid.detect stage={stage}` and pass its <run>/yolo/weights/best.pt")
        weights[stage] = Path(path).expanduser().resolve()
    key = hashlib.sha1(json.dumps({
        "root": str(dataset.root), "images": sorted(dataset.images["image"]), "conf": conf, "iou": iou, "margin": margin,
        "min_iou": min_iou, **{stage: _file_digest(p) for stage, p in weights.items()},
    }).encode()).hexdigest()[:16]
    cache = Path(cache_dir or dataset.root / ".detected").expanduser() / f"{dataset.root.name}-{key}"
    if (cache / "discs.csv").is_file():
        log.info("Detected boxes read from %s", cache)
        images = pd.read_csv(cache / "images.csv", dtype={"image": str, "patient": str, "series": str})
        discs = pd.read_csv(cache / "discs.csv", dtype={"image": str, "patient": str})
        return SpineDataset(dataset.root, images, discs)

    from plid.models.detection import NoLumbarRegionFound, RoiCropper

    cropper = RoiCropper.from_weights(weights["lumbar"], weights["ivd"], conf=conf, margin=margin, device=device,
                                      config_dir=cache.parent / "ultralytics", iou=iou)
    gt_discs = dataset.discs.groupby("image")
    image_rows, disc_rows = [], []
    counts = {"images": len(dataset.images), "no_lumbar_region": 0, "gt_discs_missed": 0, "unmatched_detections": 0}
    for row in dataset.images.itertuples(index=False):
        try:
            result = cropper(dataset.read_image(row.image))
        except NoLumbarRegionFound:
            counts["no_lumbar_region"] += 1
            continue
        image_rows.append({**row._asdict(), **dict(zip(LUMBAR_BOX, _pixel_box(result.lumbar_box)))})
        truth = gt_discs.get_group(row.image) if row.image in gt_discs.groups else dataset.discs.iloc[:0]
        found = np.array([d.box for d in result.discs]).reshape(-1, 4)
        pairs = match_boxes(found, truth[DISC_BOX].to_numpy(dtype=float), min_iou)
        counts["gt_discs_missed"] += len(truth) - len(pairs)
        counts["unmatched_detections"] += len(found) - len(pairs)
        for i, box in enumerate(found):
            labels = truth.iloc[pairs[i]].to_dict() if i in pairs else {"image": row.image, "patient": row.patient}
            disc_rows.append({**labels, **dict(zip(DISC_BOX, _pixel_box(box)))})
    if counts["no_lumbar_region"]:
        log.warning("roi=detected: no lumbar region found in %d of %d images; they are left out",
                    counts["no_lumbar_region"], counts["images"])
    log.info("roi=detected: %s", counts)
    images = pd.DataFrame(image_rows, columns=dataset.images.columns)
    discs = pd.DataFrame(disc_rows, columns=dataset.discs.columns)
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_write(cache / "images.csv") as f:
        images.to_csv(f, index=False)
    write_json(cache / "counts.json", {**counts, **{k: str(p) for k, p in weights.items()}})
    with atomic_write(cache / "discs.csv") as f:  # written last: its presence marks a complete cache
        discs.to_csv(f, index=False)
    return SpineDataset(dataset.root, images, discs)


def match_boxes(found: np.ndarray, truth: np.ndarray, min_iou: float) -> dict[int, int]:
    """One-to-one matching of ``found`` to ``truth`` boxes maximising IoU: {found index: truth index}."""
    if len(found) == 0 or len(truth) == 0:
        return {}
    iou = box_iou(torch.as_tensor(found, dtype=torch.float64), torch.as_tensor(truth, dtype=torch.float64)).numpy()
    rows, cols = linear_sum_assignment(-iou)
    return {int(r): int(c) for r, c in zip(rows, cols) if iou[r, c] >= min_iou}


def _pixel_box(box) -> list[int]:
    """A float box as the contract's integer pixel box (outwards, so nothing detected is cut)."""
    x1, y1, x2, y2 = box
    return [int(np.floor(x1)), int(np.floor(y1)), int(np.ceil(x2)), int(np.ceil(y2))]


def _file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()
