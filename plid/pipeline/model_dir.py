"""``model_dir``: one folder with everything ``python -m plid.predict`` needs, written from trained runs.

    model_dir/
      manifest.json                  what is here: files, image sizes, margins, level rule, the runs it came from
      detector_lumbar.pt             stage-1 YOLOv8: {"yaml", "state_dict", "names", "imgsz"}
      detector_ivd.pt                stage-2 YOLOv8, same format
      segmenter/config.yaml          the segmentation run's composed Hydra config (rebuilds the network)
      segmenter/model.ckpt           {"state_dict": ...} of its best checkpoint
      classifiers/<name>/config.yaml one folder per disc classifier (optional), same two files
      classifiers/<name>/model.ckpt
      ensemble_weights.json          weights per classifier name, from python -m plid.ensemble task=cls (optional)

A multi-task classifier (``model=grade_*``) is exported as one classifier whose manifest entry carries
``targets`` (its gradings, in head order) and ``thresholds`` (per binary grading, chosen on validation by
Youden's J: the run's summary.json) in place of ``target``; a model_dir holds one such classifier, not an
ensemble of them.

Every ``.pt`` / ``.ckpt`` here holds only tensors and plain values and is read with
``torch.load(weights_only=True)``: nothing in a model_dir is unpickled. Detectors are rebuilt from their
architecture yaml (a plain dict) and state dict, so the ultralytics checkpoint (a pickle) is read only once, by
the export, from the user's own training run.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from plid.errors import UserInputError
from plid.models.detection import NMS_IOU
from plid.utils.io import atomic_dir, atomic_write, write_json

MANIFEST_VERSION = 1


def _run_config(run: Path) -> DictConfig:
    path = run / ".hydra" / "config.yaml"
    if not path.is_file():
        raise UserInputError(f"{run}: no .hydra/config.yaml; give the folder of a `python -m plid.train` run")
    return OmegaConf.load(path)


def _best_checkpoint(run: Path) -> Path:
    summary = run / "summary.json"
    best = json.loads(summary.read_text()).get("best_checkpoint") if summary.is_file() else None
    if best and Path(best).is_file():
        return Path(best)
    candidates = sorted((run / "checkpoints").glob("*.ckpt")) if (run / "checkpoints").is_dir() else []
    candidates = [c for c in candidates if c.name != "last.ckpt"] or candidates
    if not candidates:
        raise UserInputError(f"{run}: no best_checkpoint in summary.json and no checkpoints/*.ckpt")
    return candidates[-1]


def _detector_weights(run: str | Path) -> Path:
    run = Path(run).expanduser().resolve()
    path = run if run.suffix == ".pt" else run / "yolo" / "weights" / "best.pt"
    if not path.is_file():
        raise UserInputError(f"{run}: no yolo/weights/best.pt; give a `python -m plid.detect` run folder or a .pt")
    return path


def export_detector(weights: Path, out: Path) -> dict[str, Any]:
    """An ultralytics checkpoint (the user's own training output) as a weights-only file."""
    from plid.models.detection import load_yolo

    model = load_yolo(str(weights), Path(tempfile.gettempdir()) / "plid-ultralytics")
    net = model.model
    imgsz = int(model.ckpt.get("train_args", {}).get("imgsz", 640))
    blob = {"yaml": _plain(net.yaml), "state_dict": {k: v.float() for k, v in net.state_dict().items()},
            "names": {int(k): str(v) for k, v in net.names.items()}, "imgsz": imgsz}
    with atomic_write(out, "wb") as handle:
        torch.save(blob, handle)
    return {"file": out.name, "imgsz": imgsz, "source": str(weights)}


def _plain(value):
    """A yaml dict made of plain Python values only (what weights_only loading accepts)."""
    return json.loads(json.dumps(value, default=str))


def export_module(run: str | Path, out: Path) -> dict[str, Any]:
    """A training run's config and best weights into ``out/{config.yaml, model.ckpt}``."""
    run = Path(run).expanduser().resolve()
    cfg = _run_config(run)
    checkpoint = _best_checkpoint(run)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "config.yaml") as handle:
        handle.write(OmegaConf.to_yaml(cfg))
    with atomic_write(out / "model.ckpt", "wb") as handle:
        torch.save({"state_dict": state}, handle)
    data = cfg.get("data", {})
    extra = {}
    if data.get("targets") is not None:  # a multi-task classifier: its gradings and validation thresholds
        from plid.gradings import grading

        extra["targets"] = [str(t) for t in data.targets]
        # the thresholds travel in the checkpoint (a buffer set at its validation epoch), as summary.json lists them
        chosen = state.get("thresholds", torch.full((len(extra["targets"]),), 0.5)).tolist()
        extra["thresholds"] = {t: round(float(v), 6) for t, v in zip(extra["targets"], chosen)
                               if not grading(t).ordinal}
    elif "target" in data:  # a classifier: what it predicts, on which crops
        if data.get("roi") == "none":
            raise UserInputError(f"{run}: a whole-image classifier (data.roi=none); predict needs one trained on disc "
                                 f"crops (data.roi=gt or detected) to give a probability per disc")
        extra["target"] = str(data.target)
    return {**extra, "model": str(cfg.model._target_), "image_size": int(data.get("image_size")),
            "roi_margin": float(data.get("roi_margin", 0.1)), "source": str(checkpoint)}


def run_name(run: str | Path) -> str:
    """A classifier's name as the ensemble names it: its model choice in summary.json, else the folder name."""
    run = Path(run).expanduser().resolve()
    summary = run / "summary.json"
    if summary.is_file():
        choice = json.loads(summary.read_text()).get("choices", {}).get("model")
        if choice:
            return str(choice)
    return run.name


def export_model_dir(out: str | Path, lumbar_run: str | Path, ivd_run: str | Path, seg_run: str | Path,
                     cls_runs: list[str | Path] | None = None, ensemble: str | Path | None = None,
                     conf: float = 0.25, iou: float = NMS_IOU, overwrite: bool = False) -> Path:
    """Write a model_dir (see the module docstring) from trained runs; written whole into a temporary folder
    beside ``out``, then renamed, so a model_dir is never half-written."""
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserInputError(f"out={out} exists and is not empty; pass overwrite=true to replace it")
    with atomic_dir(out) as tmp:
        manifest: dict[str, Any] = {"version": MANIFEST_VERSION,
                                    "detection": {"conf": conf, "iou": iou, "margin": 0.1}}
        manifest["detectors"] = {
            "lumbar": export_detector(_detector_weights(lumbar_run), tmp / "detector_lumbar.pt"),
            "ivd": export_detector(_detector_weights(ivd_run), tmp / "detector_ivd.pt"),
        }
        manifest["segmenter"] = {"dir": "segmenter", **export_module(seg_run, tmp / "segmenter")}
        classifiers = {}
        cls_runs = list(cls_runs or [])
        if len({Path(r).expanduser().resolve() for r in cls_runs}) != len(cls_runs):
            raise UserInputError(f"cls_runs names a run twice: {[str(r) for r in cls_runs]}")
        names = [run_name(r) for r in cls_runs]
        # two runs of one model (folds, seeds): told apart by their folder, as plid.ensemble names them
        names = [f"{n} ({Path(r).resolve().name})" if names.count(n) > 1 else n for n, r in zip(names, cls_runs or [])]
        for name, run in zip(names, cls_runs or []):
            folder = "classifiers/" + re.sub(r"[^\w.-]+", "_", name).strip("_")
            classifiers[name] = {"dir": folder, **export_module(run, tmp / folder)}
        if len(classifiers) > 1 and any("targets" in entry for entry in classifiers.values()):
            raise UserInputError(f"cls_runs: {[n for n, e in classifiers.items() if 'targets' in e]} grade several "
                                 f"gradings (model=grade_*): a model_dir takes one such classifier alone; an "
                                 f"ensemble of multi-task classifiers is not supported yet")
        targets = {entry.get("target") for entry in classifiers.values()}
        if len(targets) > 1:
            raise UserInputError(f"the classifiers predict different targets {sorted(map(str, targets))}; "
                                 f"export classifiers of one grading")
        manifest["classifiers"] = classifiers
        manifest["ensemble"] = None
        if ensemble is not None:
            path = Path(ensemble).expanduser()
            path = path / "ensemble_weights.json" if path.is_dir() else path
            if not path.is_file():
                raise UserInputError(f"ensemble={ensemble}: no ensemble_weights.json there")
            weights = json.loads(path.read_text())
            unknown = sorted(set(weights.get("weights", {})) - set(classifiers))
            if unknown or not classifiers:
                raise UserInputError(f"{path}: weights for {unknown or list(weights.get('weights', {}))} but the "
                                     f"classifiers given (cls_runs) are {sorted(classifiers)}; export the same runs")
            if weights.get("task", "cls") != "cls":
                raise UserInputError(f"{path}: a task={weights.get('task')} ensemble; predict combines classifiers")
            shutil.copyfile(path, tmp / "ensemble_weights.json")
            manifest["ensemble"] = {"file": "ensemble_weights.json", "source": str(path.resolve())}
        elif len(classifiers) > 1:
            raise UserInputError("several classifiers but no ensemble=...: give the ensemble_weights.json that "
                                 "combines them (python -m plid.ensemble task=cls runs=[...])")
        write_json(tmp / "manifest.json", manifest)
    return out


@dataclass
class LoadedModule:
    name: str
    net: torch.nn.Module  # the LightningModule, eval mode
    image_size: int
    roi_margin: float
    target: str | None = None  # what a classifier predicts (a discs.csv grading, e.g. disc_herniation)
    targets: list[str] | None = None  # a multi-task classifier's gradings (then target is None)
    thresholds: dict[str, float] | None = None  # its thresholds per binary grading, chosen on validation


@dataclass
class LoadedModels:
    root: Path
    manifest: dict[str, Any]
    lumbar: Any  # ultralytics YOLO
    ivd: Any
    segmenter: LoadedModule
    classifiers: list[LoadedModule] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)  # per classifier; one classifier: [1.0]


def load_detector(path: Path):
    """A YOLO model rebuilt from a weights-only export (:func:`export_detector`)."""
    from plid.models.detection import prepare_ultralytics

    prepare_ultralytics(Path(tempfile.gettempdir()) / "plid-ultralytics")
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    blob = torch.load(path, map_location="cpu", weights_only=True)
    net = DetectionModel(cfg=blob["yaml"], nc=len(blob["names"]), verbose=False)
    net.load_state_dict(blob["state_dict"])
    net.names = blob["names"]
    model = YOLO("yolov8n.yaml", task="detect")  # a shell whose network is replaced
    model.model = net.eval()
    model.imgsz = int(blob["imgsz"])
    return model


def load_module(name: str, folder: Path, entry: dict[str, Any]) -> LoadedModule:
    """A LightningModule rebuilt from its run config, with its weights (``weights_only=True``)."""
    import hydra

    cfg = OmegaConf.load(folder / "config.yaml")
    module = hydra.utils.instantiate(cfg.model, _convert_="all")
    state = torch.load(folder / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    return LoadedModule(name, module.eval(), int(entry["image_size"]), float(entry["roi_margin"]), entry.get("target"),
                        targets=entry.get("targets"), thresholds=entry.get("thresholds"))


def load_model_dir(path: str | Path) -> LoadedModels:
    root = Path(path).expanduser().resolve()
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise UserInputError(f"model_dir={root}: no manifest.json; write one with python -m plid.export")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("version") != MANIFEST_VERSION:
        raise UserInputError(f"{manifest_path}: version {manifest.get('version')}, this plid reads {MANIFEST_VERSION}")
    detectors = manifest["detectors"]
    segmenter = load_module("segmenter", root / manifest["segmenter"]["dir"], manifest["segmenter"])
    classifiers = [load_module(name, root / entry["dir"], entry) for name, entry in manifest["classifiers"].items()]
    weights = [1.0] * len(classifiers)
    if manifest.get("ensemble"):
        chosen = json.loads((root / manifest["ensemble"]["file"]).read_text())["weights"]
        weights = [float(chosen.get(c.name, 0.0)) for c in classifiers]
    return LoadedModels(root, manifest, load_detector(root / detectors["lumbar"]["file"]),
                        load_detector(root / detectors["ivd"]["file"]), segmenter, classifiers, weights)
