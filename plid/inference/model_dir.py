"""``model_dir``: one folder with everything ``python -m plid.predict`` needs, written from trained runs.

    model_dir/
      manifest.json                  what is here: files, image sizes, margins, decision thresholds, the runs it came from
      detector_lumbar.pt             stage-1 YOLOv8: {"yaml", "state_dict", "names", "imgsz"}
      detector_ivd.pt                stage-2 YOLOv8, same format
      segmenter/model.json           the network as plain data (plid.inference.model_specs): what is rebuilt
      segmenter/config.yaml          the segmentation run's composed Hydra config: how it was trained (never run)
      segmenter/model.ckpt           {"state_dict": ...} of its best checkpoint
      classifiers/<name>/...         one folder per disc classifier (optional), the same three files
      ensemble_weights.json          weights per classifier name, from python -m plid.ensemble task=cls (optional)
      anatomy.json                   the anatomy grader (plain numbers) and its source per grading (optional;
                                     anatomy_run=, from python -m plid.grade_anatomy)

A multi-task classifier (``model=grade_*``) is exported as one classifier whose manifest entry carries
``targets`` (its gradings, in head order), ``thresholds`` (per binary grading, chosen on validation by
Youden's J: the run's summary.json) and ``cuts`` (per ordinal grading, one per question "grade > k", chosen the
same way; absent from older model_dirs, which grade at 0.5) in place of ``target``; a model_dir holds one such
classifier, or a fold bag of them.

A **fold bag** (``cls_runs`` = runs of one model config, each on a different ``data.fold``; :mod:`plid.ensemble.folds`)
exports every run as a classifier and records ``bag`` in the manifest: the folds, and the decision thresholds and cuts
chosen on the runs' pooled out-of-fold validation predictions (with the pool's cases, positives and AUC); prediction
averages the runs' probabilities (distributions, for ordinal gradings) with equal weights and calls each binary
grading at the bag's threshold. A bag takes no ``ensemble=`` (its weights are equal by design).

Loading a model_dir runs none of its code. Every ``.pt`` / ``.ckpt`` here holds only tensors and plain values and
is read with ``torch.load(weights_only=True)``; networks are rebuilt by plid's factories from ``model.json``
(a model_dir of an older plid: from its ``config.yaml`` read as data, every ``_target_`` compared with those plid
writes), and detectors from ultralytics' own yaml of the YOLOv8 scale they were trained at
(:mod:`plid.inference.model_specs`). ``manifest.json`` lists every file's sha256, checked before anything is read; a
changed, unlisted or missing file, a path leaving the folder, an unknown kind, architecture or key is refused, naming
the file. Export reads a detector run's ``detector.pt`` (the weights-only copy ``plid.detect`` writes), never its
ultralytics ``best.pt`` (a pickle) unless ``trust_run=true``.

A model_dir loads offline on any machine: the exported configs name no initial weights (``encoder_weights``
and ``weights_file`` are null, ``pretrained`` false; what the run started from is kept in the manifest as
``initial_weights``), since the checkpoint holds every weight.

Manifest version 2 adds, per classifier, the decision ``threshold`` chosen on its validation split (its
run's ``summary.json``), the disc detector's training crop margin as ``detection.margin``, and the
ensemble's threshold in ``ensemble_weights.json``. Version 1 model_dirs load, with threshold 0.5. Version 3 is a
model_dir with a fold bag (``bag``), which a plid reading versions 1-2 only would misread.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from plid.ensemble.folds import DEFAULT_POLICY, GradingPolicy, fold_bag, is_fold_bag, validate_gradings
from plid.ensemble.predictions import run_names
from plid.errors import UserInputError
from plid.inference.model_specs import build_module, detector_architecture, read_spec, spec_from_config
from plid.inference.packages import local_model_dir
from plid.metrics import DEFAULT_THRESHOLD
from plid.models.detection import NMS_IOU
from plid.utils.io import atomic_dir, atomic_write, write_json
from plid.utils.provenance import sha256_of

MANIFEST_VERSION = 2
BAG_VERSION = 3  # a model_dir holding a fold bag
READABLE_VERSIONS = (1, 2, 3)
SPEC_FILE = "model.json"  # each network as plain data (plid.inference.model_specs)
DEFAULT_MARGIN = 0.1  # data.roi_margin's default: the disc detector's crop margin when its run cannot be read
# model config keys that name initial weights (downloaded or read from a local file when the network is built)
_INITIAL_WEIGHTS = {"encoder_weights": None, "weights_file": None, "pretrained": False}
log = logging.getLogger(__name__)


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


def detector_weights(run: str | Path) -> Path:
    """The weights of a ``python -m plid.detect`` run (``<run>/yolo/weights/best.pt``), or ``run`` itself if a .pt."""
    run = Path(run).expanduser().resolve()
    path = run if run.suffix == ".pt" else run / "yolo" / "weights" / "best.pt"
    if not path.is_file():
        raise UserInputError(f"{run}: no yolo/weights/best.pt; give a `python -m plid.detect` run folder or a .pt")
    return path


def detector_margin(run: str | Path) -> tuple[float, str]:
    """The crop margin (``data.roi_margin``) a disc detector was trained with, and where it was read: the run's
    ``summary.json`` (``roi_margin``), else its ``.hydra/config.yaml``; :data:`DEFAULT_MARGIN` with a warning
    where neither is found (a bare ``.pt`` outside its run folder)."""
    path = Path(run).expanduser().resolve()
    if path.suffix == ".pt":  # <run>/yolo/weights/best.pt; a .pt elsewhere has no run to read
        path = path.parents[2] if path.parent.name == "weights" and path.parent.parent.name == "yolo" else None
    summary = path / "summary.json" if path else Path()
    config = path / ".hydra" / "config.yaml" if path else Path()
    if summary.is_file():
        margin = json.loads(summary.read_text()).get("roi_margin")
        if margin is not None:
            return float(margin), str(summary)
    if config.is_file():
        margin = OmegaConf.load(config).get("data", {}).get("roi_margin")
        return float(DEFAULT_MARGIN if margin is None else margin), str(config)
    log.warning("%s: no summary.json or .hydra/config.yaml of the disc detector's run; its crop margin is taken to "
                "be %s (data.roi_margin's default): give the run folder to carry the trained value", run,
                DEFAULT_MARGIN)
    return DEFAULT_MARGIN, "default"


def export_detector(run: str | Path, out: Path, trust_run: bool = False) -> dict[str, Any]:
    """A ``python -m plid.detect`` run's detector as a weights-only file: its ``detector.pt`` (plain data and
    tensors, written by the run itself), read with ``weights_only=True`` and checked as a model_dir's would be. A run
    without one (an older plid's, or a bare ultralytics ``best.pt``) is refused unless ``trust_run=true``: its
    ``best.pt`` is a pickle, and unpickling it runs whatever it holds, so only a run you trained yourself."""
    from plid.models.detection import WEIGHTS_ONLY_FILE, load_yolo, weights_only_blob

    path = Path(run).expanduser().resolve()
    safe = path if path.suffix == ".pt" and path.name == WEIGHTS_ONLY_FILE else path / WEIGHTS_ONLY_FILE
    if safe.is_file():
        blob = _weights_only(safe)
        detector_architecture(blob.get("yaml"), safe)
        source = safe
    elif trust_run:
        source = detector_weights(run)
        log.warning("%s: unpickled (trust_run=true): it runs whatever code it holds; only for runs you trained", source)
        blob = weights_only_blob(load_yolo(str(source), Path(tempfile.gettempdir()) / "plid-ultralytics"))
    else:
        raise UserInputError(f"{path}: no {WEIGHTS_ONLY_FILE} (the weights-only copy plid.detect writes); its "
                             f"ultralytics best.pt is a pickle, which plid opens only for a run you trained yourself: "
                             f"pass trust_run=true to export it")
    with atomic_write(out, "wb") as handle:
        torch.save(blob, handle)
    return {"file": out.name, "imgsz": int(blob["imgsz"]), "source": str(source)}


def _plain(value):
    """A yaml dict made of plain Python values only (what weights_only loading accepts)."""
    return json.loads(json.dumps(value, default=str))


def export_module(run: str | Path, out: Path) -> dict[str, Any]:
    """A training run's config and best weights into ``out/{config.yaml, model.ckpt}``."""
    run = Path(run).expanduser().resolve()
    cfg = _run_config(run)
    initial = portable_config(cfg)
    checkpoint = _best_checkpoint(run)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    spec = spec_from_config(OmegaConf.to_container(cfg.model, resolve=True), run / ".hydra" / "config.yaml")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "config.yaml") as handle:  # provenance: how it was trained (never instantiated)
        handle.write(OmegaConf.to_yaml(cfg))
    with atomic_write(out / SPEC_FILE) as handle:  # what is rebuilt: plain data
        handle.write(spec.model_dump_json(indent=2) + "\n")
    with atomic_write(out / "model.ckpt", "wb") as handle:
        torch.save({"state_dict": state}, handle)
    data = cfg.get("data", {})
    extra = {}
    if data.get("targets") is not None:  # a multi-task classifier: its gradings and validation thresholds
        from plid.labels import grading

        extra["targets"] = [str(t) for t in data.targets]
        # the thresholds travel in the checkpoint (a buffer set at its validation epoch), as summary.json lists them
        chosen = state.get("thresholds", torch.full((len(extra["targets"]),), DEFAULT_THRESHOLD)).tolist()
        extra["thresholds"] = {t: round(float(v), 6) for t, v in zip(extra["targets"], chosen)
                               if not grading(t).ordinal}
        # and the ordinal gradings' cuts (a buffer too; a checkpoint of an older plid has none: 0.5, CORAL's rule)
        cuts = state.get("cuts")
        if cuts is not None:
            extra["cuts"] = {t: [round(float(c), 6) for c in cuts[k, : grading(t).num_classes - 1]]
                             for k, t in enumerate(extra["targets"]) if grading(t).ordinal}
    elif "target" in data:  # a classifier: what it predicts, on which crops
        if data.get("roi") == "none":
            raise UserInputError(f"{run}: a whole-image classifier (data.roi=none); predict needs one trained on disc "
                                 f"crops (data.roi=gt) to give a probability per disc")
        extra["target"] = str(data.target)
        summary = run / "summary.json"
        threshold = json.loads(summary.read_text()).get("threshold") if summary.is_file() else None
        if threshold is None:
            log.warning("%s: summary.json gives no decision threshold (a run of an older plid?): %s is used", run,
                        DEFAULT_THRESHOLD)
        extra["threshold"] = float(DEFAULT_THRESHOLD if threshold is None else threshold)
    if "target" in extra or "targets" in extra:  # the region a classifier was trained on (box before disc_crop)
        extra["disc_crop"] = str(data.get("disc_crop", "box"))
    if initial:
        extra["initial_weights"] = initial
    return {**extra, "model": str(cfg.model._target_), "image_size": int(data.get("image_size")),
            "roi_margin": float(data.get("roi_margin", 0.1)), "source": str(checkpoint)}


def portable_config(cfg: DictConfig) -> dict[str, Any]:
    """Clear, in place, every key of ``cfg.model`` that names initial weights (``encoder_weights``,
    ``weights_file`` -> null, ``pretrained`` -> false), so that rebuilding the network downloads nothing and
    reads no file: the checkpoint loaded over it holds every weight. Returns what was cleared, by dotted key."""
    cleared: dict[str, Any] = {}

    def visit(node, prefix: str) -> None:
        if isinstance(node, DictConfig):
            for key in list(node.keys()):
                value = node.get(key)
                if key in _INITIAL_WEIGHTS and value not in (None, False):
                    cleared[f"{prefix}.{key}"] = value if isinstance(value, (bool, int, float)) else str(value)
                    node[key] = _INITIAL_WEIGHTS[key]
                else:
                    visit(value, f"{prefix}.{key}")
        elif isinstance(node, ListConfig):
            for k, item in enumerate(node):
                visit(item, f"{prefix}[{k}]")

    visit(cfg.model, "model")
    return cleared


ANATOMY_FILE = "anatomy.json"


def export_anatomy(run: str | Path, out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """A ``plid.grade_anatomy`` run's grader and per-grading choice into ``out``, checked first; returns the
    manifest's ``anatomy`` entry (which source grades each grading)."""
    path = Path(run).expanduser()
    path = path / ANATOMY_FILE if path.is_dir() else path
    if not path.is_file():
        raise UserInputError(f"anatomy_run={run}: no {ANATOMY_FILE} there (python -m plid.grade_anatomy writes it)")
    data = read_anatomy(path)
    first = next(iter((manifest.get("classifiers") or {}).values()), {})
    gradings = set(first.get("targets") or ([first["target"]] if first.get("target") else []))
    crop_only = [g for g, c in data["choice"].items() if c["source"] != "anatomy" and g not in gradings]
    if crop_only:
        raise UserInputError(f"{path}: {crop_only} were chosen with the crop network, which these cls_runs do not "
                             f"grade; export the classifier runs plid.grade_anatomy was compared with")
    shutil.copyfile(path, out)
    return {"file": out.name, "source": str(path.resolve()),
            "sources": {g: c["source"] for g, c in data["choice"].items()}}


def read_anatomy(path: Path) -> dict[str, Any]:
    """``anatomy.json`` as data, its grader and choices checked (:meth:`plid.models.anatomy.AnatomyGrader.from_json`;
    thresholds and cuts in [0, 1]); a damaged file is refused, naming it."""
    from plid.models.anatomy import AnatomyGrader

    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserInputError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("choice"), dict):
        raise UserInputError(f"{path}: no choice per grading; is it plid.grade_anatomy's anatomy.json?")
    data["grader"] = AnatomyGrader.from_json(data.get("grader"), str(path))
    for name, choice in data["choice"].items():
        if not isinstance(choice, dict) or choice.get("source") not in ("crop network", "anatomy", "mean"):
            raise UserInputError(f"{path}: choice.{name}.source is not crop network, anatomy or mean")
        if choice["source"] != "crop network" and name not in data["grader"].heads:
            raise UserInputError(f"{path}: choice.{name} uses the anatomy grader, which has no head for it")
        validation = choice.get("validation") or {}
        if "threshold" in validation:
            _number(validation["threshold"], path, f"choice.{name}.validation.threshold", 0.0, 1.0)
        for k, value in enumerate(validation.get("cuts") or []):
            _number(value, path, f"choice.{name}.validation.cuts[{k}]", 0.0, 1.0)
    return data


def export_model_dir(out: str | Path, lumbar_run: str | Path, ivd_run: str | Path, seg_run: str | Path,
                     cls_runs: list[str | Path] | None = None, ensemble: str | Path | None = None,
                     conf: float = 0.25, iou: float = NMS_IOU, overwrite: bool = False,
                     trust_run: bool = False, policy: GradingPolicy = DEFAULT_POLICY,
                     anatomy_run: str | Path | None = None) -> Path:
    """Write a model_dir (see the module docstring) from trained runs; written whole into a temporary folder
    beside ``out``, then renamed, so a model_dir is never half-written."""
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserInputError(f"out={out} exists and is not empty; pass overwrite=true to replace it")
    with atomic_dir(out, "manifest.json") as tmp:
        margin, margin_source = detector_margin(ivd_run)
        manifest: dict[str, Any] = {"version": MANIFEST_VERSION,
                                    "detection": {"conf": conf, "iou": iou, "margin": margin,
                                                  "margin_source": margin_source}}
        manifest["detectors"] = {
            "lumbar": export_detector(lumbar_run, tmp / "detector_lumbar.pt", trust_run),
            "ivd": export_detector(ivd_run, tmp / "detector_ivd.pt", trust_run),
        }
        manifest["segmenter"] = {"dir": "segmenter", **export_module(seg_run, tmp / "segmenter")}
        classifiers = {}
        runs = [Path(r).expanduser().resolve() for r in cls_runs or []]
        if len(set(runs)) != len(runs):
            raise UserInputError(f"cls_runs names a run twice: {[str(r) for r in cls_runs]}")
        summaries = [json.loads((r / "summary.json").read_text()) if (r / "summary.json").is_file() else {}
                     for r in runs]
        bag = fold_bag(runs, policy) if is_fold_bag(summaries) else None
        # the names plid.ensemble gives the same runs; a bag's runs by their fold
        names = ([f"{(s.get('choices') or {}).get('model')} (fold {s['fold']})" for s in summaries] if bag is not None
                 else run_names(runs, summaries))
        if len(set(names)) != len(names):
            raise UserInputError(f"cls_runs {[str(r) for r in runs]} would be exported as {names}: two runs of one "
                                 f"model in folders of the same name; give each run a folder of its own name")
        for name, run in zip(names, runs):
            folder = "classifiers/" + re.sub(r"[^\w.-]+", "_", name).strip("_")
            classifiers[name] = {"dir": folder, **export_module(run, tmp / folder)}
        if bag is None and len(classifiers) > 1 and any("targets" in entry for entry in classifiers.values()):
            raise UserInputError(f"cls_runs: {[n for n, e in classifiers.items() if 'targets' in e]} grade several "
                                 f"gradings (model=grade_*): a model_dir takes one such classifier alone, or a fold "
                                 f"bag (one model config on different data.fold); a weighted ensemble of multi-task "
                                 f"classifiers is not supported yet")
        if bag is None and len(classifiers) == 1 and "targets" in next(iter(classifiers.values())):
            (entry,) = classifiers.values()
            saved = [runs[0] / "predictions" / t / "val.npz" for t in entry["targets"]]
            if all(path.is_file() for path in saved):
                # one multi-task run: its gradings called and validated on its own validation split, by the policy
                # a bag's pooled predictions follow
                entry["validation"] = validate_gradings(runs, entry["targets"], True, policy)
                entry["thresholds"] = {t: v["threshold"] for t, v in entry["validation"].items() if "threshold" in v}
                entry["cuts"] = {t: v["cuts"] for t, v in entry["validation"].items() if "cuts" in v}
                entry["policy"] = policy.describe()
            else:
                log.warning("%s: no saved validation predictions (%s): its gradings are called at the thresholds of "
                            "its checkpoint and stated unvalidated", runs[0], next(p for p in saved if not p.is_file()))
        targets = {entry.get("target") for entry in classifiers.values()}
        if len(targets) > 1:
            raise UserInputError(f"the classifiers predict different targets {sorted(map(str, targets))}; "
                                 f"export classifiers of one grading")
        manifest["classifiers"] = classifiers
        manifest["ensemble"] = None
        if bag is not None:
            if ensemble is not None:
                raise UserInputError(f"cls_runs are a fold bag (folds {bag.folds}), averaged with equal weights and "
                                     f"called at thresholds chosen on their pooled out-of-fold predictions; drop "
                                     f"ensemble={ensemble}")
            manifest["bag"] = bag.describe()
            manifest["version"] = BAG_VERSION  # an older plid would predict with the first run alone
        elif ensemble is not None:
            path = Path(ensemble).expanduser()
            path = path / "ensemble_weights.json" if path.is_dir() else path
            if not path.is_file():
                raise UserInputError(f"ensemble={ensemble}: no ensemble_weights.json there")
            weights = json.loads(path.read_text())
            check_ensemble_values(weights, path)
            check_ensemble_names(weights.get("weights", {}), list(classifiers), path, "the classifiers given (cls_runs)")
            if weights.get("task", "cls") != "cls":
                raise UserInputError(f"{path}: a task={weights.get('task')} ensemble; predict combines classifiers")
            if "threshold" not in weights and len(classifiers) > 1:
                log.warning("%s gives no decision threshold (written by an older plid?): predict uses %s on the "
                            "combined probability; rerun python -m plid.ensemble to choose one", path,
                            DEFAULT_THRESHOLD)
            shutil.copyfile(path, tmp / "ensemble_weights.json")
            manifest["ensemble"] = {"file": "ensemble_weights.json", "source": str(path.resolve())}
        elif len(classifiers) > 1:
            raise UserInputError("several classifiers but no ensemble=...: give the ensemble_weights.json that "
                                 "combines them (python -m plid.ensemble task=cls runs=[...])")
        if anatomy_run is not None:
            manifest["anatomy"] = export_anatomy(anatomy_run, tmp / ANATOMY_FILE, manifest)
        # every file's sha256, checked on load: a file changed since the export is refused, by name
        manifest["sha256"] = {str(f.relative_to(tmp)): sha256_of(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
        write_json(tmp / "manifest.json", manifest)
    return out


def _inside(root: Path, relative: str, manifest_path: Path, key: str) -> Path:
    """``root / relative``, refused where it leaves the model_dir (``..``, an absolute path, a link outside)."""
    path = (root / str(relative)).resolve()
    if path != root and root not in path.parents:
        raise UserInputError(f"{manifest_path}: key {key} points outside the model_dir ({relative})")
    return path


def verify_checksums(root: Path, manifest: dict[str, Any], manifest_path: Path) -> None:
    """Every file the manifest lists has its sha256 (model_dirs exported before checksums list none), and every
    weights or model file is listed: a changed, added or missing file is refused, naming it."""
    listed = manifest.get("sha256")
    if listed is None:
        log.warning("%s lists no checksums (exported by an older plid): its files are not verified", manifest_path)
        return
    for relative, expected in listed.items():
        path = _inside(root, relative, manifest_path, f"sha256.{relative}")
        if not path.is_file():
            raise UserInputError(f"{path}: listed in {manifest_path.name} but missing")
        if sha256_of(path) != expected:
            raise UserInputError(f"{path}: its sha256 differs from {manifest_path.name}'s (changed since the export); "
                                 f"refused")
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_file() and path.suffix in (".pt", ".ckpt", ".json", ".yaml") and path.name != "manifest.json" \
                and relative not in listed:
            raise UserInputError(f"{path}: not listed in {manifest_path.name}'s checksums; refused")


def check_ensemble_names(weights: dict[str, float], classifiers: list[str], source, given: str) -> None:
    """The names of ``ensemble_weights.json`` and the classifiers are the same, both ways: a classifier without a
    weight would silently count 0, and a weight without its classifier would be lost."""
    unknown = sorted(set(weights) - set(classifiers))
    unweighted = sorted(set(classifiers) - set(weights))
    if unknown or unweighted or not classifiers:
        problems = []
        if unknown:
            problems.append(f"weights for {unknown} that are not among {given}")
        if unweighted:
            problems.append(f"no weight for {unweighted}")
        if not classifiers:
            problems.append(f"weights for {sorted(weights)} but no classifier")
        raise UserInputError(f"{source}: {'; '.join(problems)}; {given} are {sorted(classifiers)}, the ensemble's "
                             f"models {sorted(weights)}: export the runs the ensemble combined (plid.ensemble names "
                             f"them by their model choice)")


def _number(value: Any, where: Path, key: str, low: float, high: float = math.inf) -> float:
    """``value`` as a finite number in [low, high], or one line naming the file and key."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high:
        bound = f"[{low:g}, {high:g}]" if math.isfinite(high) else f"at least {low:g}"
        raise UserInputError(f"{where}: {key} = {value!r} is not a finite number {bound}; refused (a damaged model_dir?)")
    return float(value)


def check_manifest_values(manifest: dict[str, Any], manifest_path: Path) -> None:
    """Every number a decision rests on in range before anything is built: thresholds and cuts in [0, 1] (a
    threshold of 7 would call every disc negative), detection conf and iou in [0, 1], margins and image sizes
    non-negative, so a damaged model_dir is refused by the key at fault instead of reporting nothing."""
    def mapping(value: Any, key: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise UserInputError(f"{manifest_path}: {key} is a {type(value).__name__}, not a mapping; refused")
        return value

    detection = mapping(manifest.get("detection"), "detection")
    for key in ("conf", "iou"):
        if key in detection:
            _number(detection[key], manifest_path, f"detection.{key}", 0.0, 1.0)
    if "margin" in detection:
        _number(detection["margin"], manifest_path, "detection.margin", 0.0)
    modules = {"segmenter": mapping(manifest.get("segmenter"), "segmenter"),
               **{f"classifiers.{n}": mapping(e, f"classifiers.{n}")
                  for n, e in mapping(manifest.get("classifiers"), "classifiers").items()}}
    for prefix, entry in modules.items():
        for key in ("image_size", "roi_margin"):
            if key in entry:
                _number(entry[key], manifest_path, f"{prefix}.{key}", 1.0 if key == "image_size" else 0.0)
        if "threshold" in entry:
            _number(entry["threshold"], manifest_path, f"{prefix}.threshold", 0.0, 1.0)
    for prefix, entry in [*modules.items(), ("bag", mapping(manifest.get("bag"), "bag"))]:
        for grading, value in mapping(entry.get("thresholds"), f"{prefix}.thresholds").items():
            _number(value, manifest_path, f"{prefix}.thresholds.{grading}", 0.0, 1.0)
        for grading, cuts in mapping(entry.get("cuts"), f"{prefix}.cuts").items():
            if not isinstance(cuts, list):
                raise UserInputError(f"{manifest_path}: {prefix}.cuts.{grading} is not a list of cuts; refused")
            for k, value in enumerate(cuts):
                _number(value, manifest_path, f"{prefix}.cuts.{grading}[{k}]", 0.0, 1.0)


def check_ensemble_values(ensemble: dict[str, Any], path: Path) -> None:
    """Weights finite and non-negative, not all 0, and the threshold in [0, 1]: a NaN weight would make every
    probability NaN and every call negative."""
    weights = ensemble.get("weights")
    if not isinstance(weights, dict):
        raise UserInputError(f"{path}: no weights (a mapping of classifier name to weight)")
    for name, value in weights.items():
        _number(value, path, f"weights.{name}", 0.0)
    if weights and not any(weights.values()):
        raise UserInputError(f"{path}: every weight is 0")
    if not math.isfinite(sum(float(v) for v in weights.values())):
        raise UserInputError(f"{path}: the weights sum to infinity")
    if "threshold" in ensemble:
        _number(ensemble["threshold"], path, "threshold", 0.0, 1.0)


@dataclass
class LoadedModule:
    name: str
    net: torch.nn.Module  # the LightningModule, eval mode
    image_size: int
    roi_margin: float
    target: str | None = None  # what a classifier predicts (a discs.csv grading, e.g. disc_herniation)
    threshold: float = DEFAULT_THRESHOLD  # a classifier's decision threshold, chosen on its validation split
    targets: list[str] | None = None  # a multi-task classifier's gradings (then target is None)
    thresholds: dict[str, float] | None = None  # its thresholds per binary grading, chosen on validation
    cuts: dict[str, list[float]] | None = None  # its cuts per ordinal grading, chosen on validation
    disc_crop: str = "box"  # a classifier's crop about each disc (data.disc_crop)


@dataclass
class LoadedModels:
    root: Path
    manifest: dict[str, Any]
    lumbar: Any  # ultralytics YOLO
    ivd: Any
    segmenter: LoadedModule
    classifiers: list[LoadedModule] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)  # per classifier; one classifier: [1.0]
    ensemble_threshold: float = DEFAULT_THRESHOLD  # on the combined probability of several classifiers
    bag: dict[str, Any] | None = None  # a fold bag's folds and pooled out-of-fold thresholds (manifest "bag")
    anatomy: dict[str, Any] | None = None  # anatomy.json: its grader and the source chosen per grading


def _weights_only(path: Path) -> dict[str, Any]:
    """A file of tensors and plain values, read with ``weights_only=True`` (a pickle of anything else is refused
    without running it)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError...
        raise UserInputError(f"{path}: not a weights-only file plid reads ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''}); nothing of it was run") from error
    if not isinstance(blob, dict):
        raise UserInputError(f"{path}: holds a {type(blob).__name__}, not the dict plid writes")
    return blob


def load_detector(path: Path):
    """A YOLO model rebuilt from a weights-only export (:func:`export_detector`): the network from ultralytics' own
    yaml of its scale (:func:`plid.inference.model_specs.detector_architecture`), the state dict from the file."""
    from plid.models.detection import prepare_ultralytics

    prepare_ultralytics(Path(tempfile.gettempdir()) / "plid-ultralytics")
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    blob = _weights_only(path)
    missing = {"yaml", "state_dict", "names", "imgsz"} - set(blob)
    if missing:
        raise UserInputError(f"{path}: no {sorted(missing)}; not a detector plid.export wrote")
    architecture = detector_architecture(blob["yaml"], path)
    names = {int(k): str(v) for k, v in blob["names"].items()}
    net = DetectionModel(cfg=architecture, nc=len(names), verbose=False)
    try:
        net.load_state_dict(blob["state_dict"])
    except RuntimeError as error:
        raise UserInputError(f"{path}: its weights do not fit its architecture ({str(error).splitlines()[0]})") from error
    net.names = names
    model = YOLO("yolov8n.yaml", task="detect")  # a shell whose network is replaced
    model.model = net.eval()
    model.imgsz = int(blob["imgsz"])
    return model


def load_module(name: str, folder: Path, entry: dict[str, Any]) -> LoadedModule:
    """A LightningModule rebuilt by plid's factories from its plain-data spec (``model.json``; a model_dir of an older
    plid: the ``model`` node of ``config.yaml``, read as data), with its weights (``weights_only=True``)."""
    spec_path = folder / SPEC_FILE
    if spec_path.is_file():
        spec = read_spec(spec_path)
    else:
        config = folder / "config.yaml"
        try:
            model = OmegaConf.to_container(OmegaConf.load(config).model, resolve=True)
        except Exception as error:  # noqa: BLE001 - a missing file, bad YAML or a dangling interpolation
            raise UserInputError(f"{config}: cannot be read as a run config ({type(error).__name__}: {error})") from error
        spec = spec_from_config(model, config)
    # the network is built from random weights only to receive the checkpoint's: the classifier's training advice
    # about freezing a backbone without initial weights is moot here
    training_advice = logging.getLogger("plid.models.nets")
    level = training_advice.level
    training_advice.setLevel(logging.ERROR)
    try:
        module = build_module(spec)
    finally:
        training_advice.setLevel(level)
    checkpoint = folder / "model.ckpt"
    state = _weights_only(checkpoint).get("state_dict")
    if not isinstance(state, dict):
        raise UserInputError(f"{checkpoint}: no state_dict")
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise UserInputError(f"{checkpoint}: its weights do not fit {spec_path.name if spec_path.is_file() else 'its config'}"
                             f" ({str(error).splitlines()[0]})") from error
    return LoadedModule(name, module.eval(), int(entry["image_size"]), float(entry["roi_margin"]), entry.get("target"),
                        float(entry.get("threshold", DEFAULT_THRESHOLD)), targets=entry.get("targets"),
                        thresholds=entry.get("thresholds"), cuts=entry.get("cuts"),
                        disc_crop=entry.get("disc_crop", "box"))


def load_model_dir(path: str | Path) -> LoadedModels:
    """The models of a model_dir folder, of a ``.zip`` of one, or of its URL (:mod:`plid.inference.packages`)."""
    root = local_model_dir(path).resolve()
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise UserInputError(f"model_dir={root}: no manifest.json; write one with python -m plid.export")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise UserInputError(f"{manifest_path}: not valid JSON ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("version") not in READABLE_VERSIONS:
        version = manifest.get("version") if isinstance(manifest, dict) else None
        raise UserInputError(f"{manifest_path}: version {version}, this plid reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))}")
    verify_checksums(root, manifest, manifest_path)  # before anything is read or built
    check_manifest_values(manifest, manifest_path)
    detectors = manifest["detectors"]
    segmenter = load_module("segmenter", _inside(root, manifest["segmenter"]["dir"], manifest_path, "segmenter.dir"),
                            manifest["segmenter"])
    classifiers = [load_module(name, _inside(root, entry["dir"], manifest_path, f"classifiers.{name}.dir"), entry)
                   for name, entry in manifest["classifiers"].items()]
    weights, threshold = [1.0] * len(classifiers), DEFAULT_THRESHOLD
    if manifest.get("ensemble"):
        path = _inside(root, manifest["ensemble"]["file"], manifest_path, "ensemble.file")
        try:
            ensemble = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise UserInputError(f"{path}: not valid JSON ({error})") from error
        check_ensemble_values(ensemble, path)
        check_ensemble_names(ensemble["weights"], [c.name for c in classifiers], path, "the model_dir's classifiers")
        weights = [float(ensemble["weights"][c.name]) for c in classifiers]
        threshold = float(ensemble.get("threshold", DEFAULT_THRESHOLD))
    bag = manifest.get("bag")
    if bag and not classifiers[0].targets:  # a single-target bag: its one pooled threshold
        threshold = float(bag["thresholds"][classifiers[0].target])
    lumbar = load_detector(_inside(root, detectors["lumbar"]["file"], manifest_path, "detectors.lumbar.file"))
    ivd = load_detector(_inside(root, detectors["ivd"]["file"], manifest_path, "detectors.ivd.file"))
    anatomy = None
    if manifest.get("anatomy"):
        anatomy = read_anatomy(_inside(root, manifest["anatomy"]["file"], manifest_path, "anatomy.file"))
    return LoadedModels(root, manifest, lumbar, ivd, segmenter, classifiers, weights, threshold, bag, anatomy)
