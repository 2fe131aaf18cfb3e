"""Train a model, test its best checkpoint, and write ``summary.json`` into the run's output dir
(:func:`plid.training.train`).

    python -m plid.train model=unet_resnet34                         # synthetic default
    python -m plid.train model=unet_resnet34 data=spider2d_seg       # real SPIDER slices
    python -m plid.train -m model=unet_resnet34,linknet_resnet34     # a Hydra multirun
"""

from __future__ import annotations

from plid.cli import answer_help

answer_help(__name__, "train")  # --help answered here, before the heavy imports below

import hydra
from omegaconf import DictConfig

from plid.training import train
from plid.utils.hydra import run_optimized_task


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_optimized_task(train, cfg)


if __name__ == "__main__":
    main()
