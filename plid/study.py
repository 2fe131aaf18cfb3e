"""The whole study end to end, each step a command a user could type (``make run`` calls this):

1. ``python -m plid.detect stage=lumbar``, then ``stage=ivd`` starting from the lumbar weights: the two
   YOLOv8 detectors
2. ``python -m plid.train model=<classifier>`` for each classifier, then ``python -m plid.ensemble task=cls``
   (where this plid has classifiers and the ensemble); with ``classifiers.folds``, one classifier trained on each
   of those folds on a fixed schedule, scored by ``python -m plid.evaluate runs=[...]`` (pooled out-of-fold val,
   the fold bag on test) and exported as a fold bag (:mod:`plid.ensemble.folds`)
3. ``python -m plid.train model=<segmenter>``
4. ``python -m plid.export``: the model_dir; with ``anatomy: true``, then ``python -m plid.grade_anatomy`` on it and
   ``python -m plid.export ... anatomy_run=...`` again: the anatomy grader where it was chosen
5. ``python -m plid.predict`` on held-out test images, written as PNG, DICOM and NIfTI
6. ``python -m plid.evaluate model_dir=... split=<split>`` for each split of ``evaluate`` (none by default;
   ``experiment=spider2d_cpu``: val and test, side by side)

Every step runs in ``<run dir>/<step>/`` with its own log (``<step>.out``); ``study.json`` records the commands,
their folders and durations. The defaults (tiny images, few epochs) make it a demonstration that runs in
minutes on a CPU; ``experiment=spider2d_cpu`` is the real-data recipe for 2 CPU cores, ``experiment=spider2d_gpu``
the paper's schedules on a GPU (``device: gpu``).
"""

from __future__ import annotations

from plid.cli import answer_help

answer_help(__name__, "study")  # --help answered here, before the heavy imports below

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
from omegaconf import DictConfig

from plid.errors import UserInputError
from plid.utils.hydra import PROJECT_ROOT, run_task
from plid.utils.io import write_json

log = logging.getLogger(__name__)


class Study:
    def __init__(self, cfg: DictConfig, out: Path, debug: str | None):
        self.cfg, self.out = cfg, out
        self.common = [f"paths.data_dir={cfg.paths.data_dir}"]
        if debug:
            self.common.append(f"debug={debug}")
        self.steps: list[dict[str, Any]] = []

    def data(self, task: str) -> list[str]:
        """Data overrides of a step: the synthetic default, or the real-data config pointed at data.root."""
        root = self.cfg.data.get("root")
        return [f"data=spider2d_{task}", f"data.root={root}"] if root else []

    def run(self, step: str, module: str, *args: str, hydra_run: bool = True) -> Path:
        folder = self.out / step
        command = [sys.executable, "-m", module, *args, *self.common]
        if hydra_run:
            command.append(f"hydra.run.dir={folder}")
        print(f"[study] {step}: python -m {module} {' '.join(args)}", flush=True)
        start = time.perf_counter()
        with open(self.out / f"{step}.out", "w") as output:
            code = subprocess.call(command, cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT)
        seconds = round(time.perf_counter() - start, 1)
        self.steps.append({"step": step, "command": command, "folder": str(folder), "seconds": seconds,
                           "returncode": code})
        write_json(self.out / "study.json", {"steps": self.steps})
        if code != 0:
            tail = (self.out / f"{step}.out").read_text().strip().splitlines()[-5:]
            raise RuntimeError(f"step {step} failed (exit {code}); see {self.out / f'{step}.out'}:\n" + "\n".join(tail))
        print(f"[study] {step}: done in {seconds:.0f} s", flush=True)
        return folder


def write_samples(seg_run: Path, out: Path, count: int) -> Path:
    """``count`` (at least 3) test images of the segmentation run's dataset: the second written as DICOM, the third
    as a NIfTI volume, the others as PNG; with fewer test images than that, images are used again."""
    from plid.data.samples import write_dicom, write_volume

    summary = json.loads((seg_run / "summary.json").read_text())
    root = Path(summary["data_root"])
    with np.load(seg_run / "predictions" / "test.npz", allow_pickle=False) as data:
        names = sorted(set(str(i).split(":")[0] for i in data["ids"]))
    if not names:
        raise UserInputError(f"{seg_run}: no test image to predict on")
    out.mkdir(parents=True, exist_ok=True)
    for k in range(max(count, 3)):
        name = names[k % len(names)]
        image = cv2.imread(str(root / "images" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        stem = name if k < len(names) else f"{name}_{k}"
        if k == 1:
            write_dicom(image, out / f"{stem}.dcm")
        elif k == 2:
            write_volume(image, out / f"{stem}.nii.gz")
        else:
            cv2.imwrite(str(out / f"{stem}.png"), image)
    return out


def check_config(cfg: DictConfig) -> tuple[list[str], list[int]]:
    """The classifiers and folds a study trains; a UserInputError for settings no step could honour."""
    models = list(cfg.classifiers.models or [])
    folds = [int(k) for k in cfg.classifiers.get("folds") or []]
    if folds and (len(models) != 1 or len(set(folds)) != len(folds) or len(folds) < 2):
        raise UserInputError(f"classifiers.folds={folds} makes a fold bag of one classifier from two or more different "
                             f"folds; classifiers.models={models} (a weighted ensemble of fold bags is not supported)")
    if cfg.get("levels") == "detector" and cfg.detector.get("disc_classes", "disc") != "level":
        raise UserInputError("levels=detector names levels from a disc detector with one class per level: set "
                             "detector.disc_classes=level")
    return models, folds


def study(cfg: DictConfig) -> Path:
    from hydra.core.hydra_config import HydraConfig

    out = Path(cfg.paths.output_dir).resolve()
    debug = HydraConfig.get().runtime.choices.get("debug") if HydraConfig.initialized() else None
    d, c, g = cfg.detector, cfg.classifiers, cfg.segmenter
    models, folds = check_config(cfg)  # before any step runs
    s = Study(cfg, out, debug)
    start = time.perf_counter()
    gpu = cfg.get("device", "cpu") == "gpu"
    on_device = {"plid.detect": ["detector.device=0"] if gpu else [], "plid.train": ["trainer=gpu"] if gpu else []}

    def sizes(image_size: int, epochs: int, epochs_key: str = "trainer.max_epochs") -> list[str]:
        # debug=smoke keeps its own tiny sizes and single epoch
        return [] if debug else [f"data.image_size={image_size}", f"{epochs_key}={epochs}"]

    lumbar = s.run("detect_lumbar", "plid.detect", "stage=lumbar", *sizes(d.image_size, d.epochs.lumbar, "detector.epochs"),
                   *s.data("det"), *on_device["plid.detect"])
    # the disc stage starts from the lumbar detector's weights: it learns the same images' features far faster
    # than from scratch (on the phantoms at 128 px: disc test mAP50 0.72 from scratch in 100 epochs, 0.82-0.96
    # from the lumbar weights in 60-100)
    lumbar_weights = json.loads((lumbar / "summary.json").read_text())["weights"]
    ivd = s.run("detect_ivd", "plid.detect", "stage=ivd", *sizes(d.image_size, d.epochs.ivd, "detector.epochs"),
                f"detector.weights={lumbar_weights}", f"data.disc_classes={d.get('disc_classes', 'disc')}",
                *s.data("det"), *on_device["plid.detect"])

    cls_runs, ensemble = [], None
    for name in models:
        if not folds:
            cls_runs.append(s.run(f"train_{name}", "plid.train", f"model={name}", *sizes(c.image_size, c.epochs),
                                  *s.data("cls"), *on_device["plid.train"]))
            continue
        # a fold bag: one run per fold on a fixed schedule (no checkpoint chosen on the fold's few positives); the
        # export chooses its thresholds on their pooled out-of-fold predictions (plid.ensemble.folds)
        for k in folds:
            cls_runs.append(s.run(f"train_{name}_fold{k}", "plid.train", f"model={name}", f"data.fold={k}",
                                  "callbacks=fixed_schedule", *sizes(c.image_size, c.epochs), *s.data("cls"),
                                  *on_device["plid.train"]))
    if folds:
        s.run("evaluate_classifier_folds", "plid.evaluate", f"runs=[{','.join(map(str, cls_runs))}]")
    elif len(cls_runs) > 1:
        ensemble = s.run("ensemble", "plid.ensemble", "task=cls", f"runs=[{','.join(map(str, cls_runs))}]")

    seg = s.run("train_segmenter", "plid.train", f"model={g.model}", *sizes(g.image_size, g.epochs), *s.data("seg"),
                *on_device["plid.train"])
    model_dir = out / "model_dir"
    export = [f"lumbar_run={lumbar}", f"ivd_run={ivd}", f"seg_run={seg}", f"out={model_dir}"]
    if cls_runs:
        export.append(f"cls_runs=[{','.join(map(str, cls_runs))}]")
    if ensemble is not None:
        export.append(f"ensemble={ensemble}")
    s.run("export", "plid.export", *export)
    if cfg.get("anatomy"):
        # the anatomy grader on the model_dir's own segmentation, chosen per grading against the crop network on
        # pooled out-of-fold validation, then exported into the model_dir beside it
        anatomy = s.run("grade_anatomy", "plid.grade_anatomy", f"model_dir={model_dir}",
                        *([f"data.root={cfg.data.root}"] if cfg.data.get("root") else []))
        s.run("export_with_anatomy", "plid.export", *export, f"anatomy_run={anatomy}", "overwrite=true")
    samples = write_samples(seg, out / "samples", int(cfg.samples))
    report = out / "predict"
    # every sample (debug=smoke would keep two): one of each format
    levels = f"levels={cfg.get('levels') or 'null'}"
    s.run("predict", "plid.predict", f"input={samples}", f"model_dir={model_dir}", f"out={report}", "max_images=null",
          levels)
    evaluations = {}
    for split in cfg.get("evaluate") or []:
        folder = s.run(f"evaluate_{split}", "plid.evaluate", f"model_dir={model_dir}", f"split={split}", levels,
                       *([f"data.root={cfg.data.root}"] if cfg.data.get("root") else []))
        evaluations[split] = str(folder / "evaluation.md")
    write_json(out / "study.json", {"steps": s.steps, "seconds": round(time.perf_counter() - start, 1),
                                    "model_dir": str(model_dir), "report": str(report / "report.html"),
                                    "evaluations": evaluations})
    print(f"[study] finished in {time.perf_counter() - start:.0f} s; model_dir: {model_dir}")
    print(f"[study] HTML report: {report / 'report.html'}")
    return report / "report.html"


@hydra.main(version_base="1.3", config_path="conf", config_name="study")
def main(cfg: DictConfig) -> None:
    run_task(study, cfg)


if __name__ == "__main__":
    main()
