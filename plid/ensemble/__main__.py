"""``python -m plid.ensemble``: see plid/ensemble/run.py."""

from __future__ import annotations

from plid.cli import answer_help

answer_help(__name__, "ensemble")  # --help answered here, before the heavy imports below

import logging

import hydra
from omegaconf import DictConfig

from plid.ensemble.run import ensemble
from plid.utils.hydra import run_task

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="ensemble")
def main(cfg: DictConfig) -> float | None:
    summary = run_task(ensemble, cfg)
    return summary["val_score"]  # the searched metric of the chosen weights on val


if __name__ == "__main__":
    main()
