"""Write a model_dir for ``python -m plid.predict`` from trained runs (layout: :mod:`plid.inference.model_dir`).

    python -m plid.export lumbar_run=<detect run> ivd_run=<detect run> seg_run=<train run> \
        cls_runs='[<train run>,...]' ensemble=<ensemble run> out=models/plid
"""

from __future__ import annotations

from plid.cli import answer_help

answer_help(__name__, "export")  # --help answered here, before the heavy imports below

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from plid.ensemble.folds import GradingPolicy
from plid.inference.model_dir import export_model_dir
from plid.inference.packages import pack_model_dir
from plid.utils.hydra import run_task

log = logging.getLogger(__name__)


def export(cfg: DictConfig) -> Path:
    out = cfg.get("out") or Path(cfg.paths.output_dir) / "model_dir"
    path = export_model_dir(out, cfg.lumbar_run, cfg.ivd_run, cfg.seg_run, list(cfg.get("cls_runs") or []),
                            cfg.get("ensemble"), conf=float(cfg.conf), iou=float(cfg.iou),
                            overwrite=bool(cfg.overwrite), trust_run=bool(cfg.get("trust_run", False)),
                            policy=GradingPolicy.from_config(cfg.get("gradings")), anatomy_run=cfg.get("anatomy_run"))
    log.info("model_dir written: %s", path)
    print(f"model_dir: {path}")
    if cfg.get("zip"):
        archive = pack_model_dir(path)
        print(f"model_dir zip: {archive} (share it; model_dir={archive.name} or its https:// URL loads it)")
    return path


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    run_task(export, cfg)


if __name__ == "__main__":
    main()
