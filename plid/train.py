"""Train a model, test its best checkpoint, and write ``summary.json`` into the run's output dir.

``summary.json`` is strict JSON: a score that is undefined (NaN, e.g. an AUC on a split without positives, the
Dice of a class absent from prediction and reference) is written ``null`` (:func:`plid.utils.io.write_json`).

    python -m plid.train model=unet_resnet34                         # synthetic default
    python -m plid.train model=unet_resnet34 data=spider2d_seg       # real SPIDER slices
    python -m plid.train -m model=unet_resnet34,linknet_resnet34     # a Hydra multirun
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from plid.ensemble.predictions import export_predictions
from plid.errors import UserInputError
from plid.utils.hydra import (
    config_choices,
    config_to_dict,
    instantiate_callbacks,
    instantiate_loggers,
    run_optimized_task,
)
from plid.utils.io import claim_output_dir, write_json

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit and test as ``cfg`` says; returns (all metrics, the objects built)."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_checkpoint(cfg.get("ckpt_path"), output_dir)

    log.info("Data <%s>", cfg.data._target_)
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")  # validates the data and the splits before any model is built
    if cfg.get("train") and hasattr(datamodule, "check_validation_classes"):
        datamodule.check_validation_classes()  # a one-class val split leaves the monitored AUC undefined
    log.info("Model <%s>", cfg.model._target_)
    model: L.LightningModule = hydra.utils.instantiate(cfg.model, _convert_="all")
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(config_to_dict(cfg))

    summary: dict[str, Any] = {
        "task": type(model).__name__,
        "choices": config_choices(),
        "data_root": str(datamodule.dataset.root),
        "fold": datamodule.hparams.get("fold"),
        "samples": {split: len(ds) for split, ds in datamodule.datasets.items()},
    }
    try:
        if cfg.get("train"):
            start = time.perf_counter()
            trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path)
            epochs = max(trainer.current_epoch, 1)
            summary.update(epochs=trainer.current_epoch,
                           seconds_per_epoch=round((time.perf_counter() - start) / epochs, 3))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None else ""
        summary["best_checkpoint"] = best or None
        if best:  # the validation scores of the checkpoint that is tested, not of the last epoch
            best_val = trainer.validate(model=model, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
            metrics.update({k: float(v) for k, v in best_val.items()})
        summary["val"] = {k: v for k, v in metrics.items() if k.startswith("val/")}
        if hasattr(model, "summary"):  # what the model adds (a multi-task classifier: targets, thresholds)
            summary.update(model.summary())
        if hasattr(model, "threshold"):  # a classifier: the decision threshold chosen on val (Youden's J), tested
            summary["threshold"] = float(model.threshold)

        if cfg.get("test"):
            if not best:
                log.warning("No best checkpoint (no ModelCheckpoint callback?): testing the current weights")
            trainer.test(model=model, datamodule=datamodule, ckpt_path=best or None)
            test_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
            metrics.update(test_metrics)
            summary["test"] = {k.split("/", 1)[1]: v for k, v in test_metrics.items()}
            # the tested (best) weights are loaded now: save their outputs for the ensemble
            summary["predictions"] = export_predictions(trainer, model, datamodule, output_dir)
    finally:
        if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
            import wandb

            wandb.finish()

    write_json(output_dir / "summary.json", summary)
    log.info("Summary written to %s", output_dir / "summary.json")
    return metrics, {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}


def resolve_checkpoint(ckpt_path: str | None, output_dir: Path) -> str | None:
    """The checkpoint to resume from; refuses to start a new run over another run's outputs.

    ``last`` means ``<output_dir>/checkpoints/last.ckpt``: rerun with the same ``hydra.run.dir`` to resume an
    interrupted run. A finished run (it wrote its ``summary.json``) is never resumed: training it again would
    replace the outputs it was tested with.
    """
    last = output_dir / "checkpoints" / "last.ckpt"
    if (output_dir / "summary.json").is_file() and (ckpt_path == "last" or last.exists()):
        raise UserInputError(f"{output_dir} holds a finished run (its summary.json is written): it is not resumed, "
                             f"so that its outputs stay those it was tested with; train into a new hydra.run.dir")
    if ckpt_path == "last":
        if not last.is_file():
            raise UserInputError(f"ckpt_path=last but {last} does not exist; pass hydra.run.dir=<the run to resume>")
        return str(last)
    if ckpt_path is None and last.exists():
        raise UserInputError(f"{output_dir} holds an interrupted run; resume it with ckpt_path=last, "
                             f"or choose a new hydra.run.dir")
    claim_output_dir(output_dir, "summary.json")
    return ckpt_path


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_optimized_task(train, cfg)


if __name__ == "__main__":
    main()
