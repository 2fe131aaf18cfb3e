"""Train one YOLOv8 detection stage, test it on the held-out patients, write ``summary.json`` and the weights.

    python -m plid.detect stage=lumbar                      # lumbar region on the whole image (synthetic default)
    python -m plid.detect stage=ivd data=spider2d_det       # discs inside the lumbar crop, real SPIDER slices
"""

from __future__ import annotations

from plid.cli import answer_help

answer_help(__name__, "detect")  # --help answered here, before the heavy imports below

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from plid.models.detection import (
    WEIGHTS_ONLY_FILE,
    DetectorSettings,
    evaluate_detector,
    save_weights_only,
    train_detector,
)
from plid.utils.hydra import config_choices, config_to_dict, instantiate_loggers, run_optimized_task
from plid.utils.io import claim_output_dir, write_json

log = logging.getLogger(__name__)


def detect(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Export the stage's data, train, test; returns (metrics, the objects built)."""
    output_dir = claim_output_dir(Path(cfg.paths.output_dir).resolve(), "summary.json", cfg.get("overwrite", False))
    limit = cfg.get("trainer", {}).get("limit_train_batches")
    overrides = {"max_images_per_split": int(limit) * cfg.data.batch_size} if isinstance(limit, int) else {}
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all", **overrides)
    data_yaml = datamodule.export(output_dir / "dataset")
    d = cfg.detector
    settings = DetectorSettings(
        model=d.model, weights=d.weights, epochs=int(cfg.trainer.max_epochs), imgsz=cfg.data.image_size,
        batch=cfg.data.batch_size, workers=cfg.data.num_workers, optimizer=d.optimizer, lr0=d.lr0,
        momentum=d.momentum, patience=d.patience, device=str(d.device), amp=d.amp, seed=cfg.seed,
        extra=OmegaConf.to_container(d.extra) if d.extra else {},
    )
    loggers = instantiate_loggers(cfg.get("logger"))
    for logger in loggers:
        logger.log_hyperparams(config_to_dict(cfg))

    def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
        for logger in loggers:
            logger.log_metrics(metrics, step=epoch)

    summary: dict[str, Any] = {
        "task": f"detection_{cfg.stage}",
        "choices": config_choices(),
        "data_root": str(datamodule.dataset.root),
        "fold": datamodule.hparams.fold,
        "samples": datamodule.samples,
        "left_out": datamodule.left_out,
        "imgsz": settings.imgsz,
        # the margin of the lumbar crop the disc stage (ivd) sees: plid.export carries it into the model_dir
        "roi_margin": float(datamodule.hparams.roi_margin),
        "dataset_yaml": str(data_yaml),
    }
    metrics: dict[str, float] = {}
    weights = output_dir / "yolo" / "weights" / "best.pt"
    try:
        if cfg.get("train"):
            start = time.perf_counter()
            weights = train_detector(settings, data_yaml, output_dir / "yolo", on_epoch_end=log_epoch)
            summary.update(epochs=settings.epochs,
                           seconds_per_epoch=round((time.perf_counter() - start) / max(settings.epochs, 1), 3))
        summary["weights"] = str(weights)
        if weights.is_file():  # the weights-only copy plid.export reads, made while this run's pickle is trusted
            summary["weights_only"] = str(save_weights_only(weights, output_dir / WEIGHTS_ONLY_FILE,
                                                            Path(tempfile.gettempdir()) / "plid-ultralytics"))
        evaluate = {"imgsz": settings.imgsz, "batch": settings.batch, "device": settings.device,
                    "workers": settings.workers}
        summary["val"] = evaluate_detector(weights, data_yaml, "val", **evaluate)
        metrics.update({f"val/{k}": v for k, v in summary["val"].items()})
        if cfg.get("test"):
            if datamodule.samples.get("test", 0) == 0:
                log.warning("The test split is empty: no test metrics")
            else:
                summary["test"] = evaluate_detector(weights, data_yaml, "test", **evaluate)
                metrics.update({f"test/{k}": v for k, v in summary["test"].items()})
        for logger in loggers:
            logger.log_metrics(metrics, step=settings.epochs)
            logger.save()
    finally:
        if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
            import wandb

            wandb.finish()
    write_json(output_dir / "summary.json", summary)
    log.info("Summary written to %s: test %s", output_dir / "summary.json", summary.get("test"))
    return metrics, {"cfg": cfg, "datamodule": datamodule, "weights": weights, "summary": summary}


@hydra.main(version_base="1.3", config_path="conf", config_name="detect")
def main(cfg: DictConfig) -> float | None:
    return run_optimized_task(detect, cfg)


if __name__ == "__main__":
    main()
