"""Evaluation with patient-level bootstrap intervals: a model_dir end to end, or a model config by k-fold.

    python -m plid.evaluate model_dir=models/plid data.root=/data/spider2d split=test   # the reports, scored
    python -m plid.evaluate model=unet_resnet34                      # trains every fold, then evaluates
    python -m plid.evaluate model=cls_resnet50 folds=[0,1,2]         # some folds only
    python -m plid.evaluate runs=logs/train/multiruns/<time>         # collects a finished -m data.fold=0,1,... run
    python -m plid.evaluate runs=[<grade_resnet50 run>]              # a multi-task classifier: every grading

With ``model_dir``, the inference pipeline runs on every image of the split as ``plid.predict`` runs it and
its reports are scored against the folder's labels (:mod:`plid.evaluation.end_to_end`). Otherwise the folds are
trained or collected and their saved predictions scored (:mod:`plid.evaluation.cross_validation`). This file only
chooses between the two.
"""

from __future__ import annotations

from plid.cli import answer_help

answer_help(__name__, "evaluate")  # --help answered here, before the heavy imports below

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig

from plid.ensemble.folds import GradingPolicy
from plid.evaluation.cross_validation import collect_runs, evaluate_runs, run_folds
from plid.utils.hydra import run_task
from plid.utils.io import claim_output_dir

log = logging.getLogger(__name__)


def _given_on_command_line(*keys: str) -> bool:
    """Whether one of ``keys`` (``data.root``, or a config group such as ``data``) was set on the command line."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    given = {o.lstrip("+~").split("=", 1)[0] for o in HydraConfig.get().overrides.task}
    return any(k in given for k in keys)


def evaluate_end_to_end(cfg: DictConfig, bootstrap: dict) -> dict[str, Any]:
    from plid.evaluation.end_to_end import evaluate_model_dir, labelled_folder, split_images
    from plid.inference.model_dir import load_model_dir
    from plid.inference.pipeline import Pipeline

    out = claim_output_dir(Path(cfg.paths.output_dir), "evaluation.json", cfg.get("overwrite", False))
    models = load_model_dir(cfg.model_dir)
    root = cfg.data.root if _given_on_command_line("data.root", "data") else None
    fold = cfg.data.fold if _given_on_command_line("data.fold") else None
    dataset, patients = labelled_folder(models.root, models.manifest, root, fold)
    images = split_images(dataset, patients, str(cfg.split))
    if cfg.get("max_images"):
        images = images[: int(cfg.max_images)]
    log.info("Evaluating %s on %d images of split %s of %s", models.root, len(images), cfg.split, dataset.root)
    pipeline = Pipeline(models, max_named_levels=int(cfg.max_named_levels), conf=cfg.get("conf"), iou=cfg.get("iou"),
                        levels=cfg.get("levels"), device=cfg.get("device", "auto"))
    result = evaluate_model_dir(pipeline, dataset, images, out, str(cfg.split), bootstrap,
                                max_failures=int(cfg.failures.max_images))
    from plid.evaluation.end_to_end import markdown_tables

    log.info("Evaluation written to %s\n%s", out / "evaluation.json", markdown_tables(result))
    print(f"Evaluation: {out / 'evaluation.md'}; failures: {out / 'failures.html'}")
    return result


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    output_dir = Path(cfg.paths.output_dir)
    bootstrap = {k: cfg.bootstrap[k] for k in ("samples", "seed", "confidence")}
    if cfg.get("model_dir"):
        return evaluate_end_to_end(cfg, bootstrap)
    runs_arg = cfg.get("runs")
    if runs_arg:
        runs = collect_runs(list(runs_arg) if isinstance(runs_arg, ListConfig) else runs_arg)
    else:
        runs = run_folds(cfg, output_dir)
    return evaluate_runs(runs, output_dir, bootstrap, plots=bool(cfg.get("plots", True)),
                         policy=GradingPolicy.from_config(cfg.get("gradings")))


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_task(evaluate, cfg)


if __name__ == "__main__":
    main()
