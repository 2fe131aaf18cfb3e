"""What every plid LightningModule shares: the loss logged on each stage, the best value of the monitored
validation metric, and optimizers built from Hydra partials."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


class SpineModule(L.LightningModule):
    """Subclasses set ``self.optimizer_factory``, ``self.scheduler_factory``, ``self.monitor_best`` (a
    torchmetrics MaxMetric), ``hparams.monitor``, and implement ``loss(logits, target)`` and
    ``update_metrics(logits, batch, stage)``."""

    def on_train_start(self) -> None:
        self.monitor_best.reset()  # forget values seen in the sanity check

    def batch_logits(self, batch: dict):
        """The network's output on a batch (its images; a subclass may use more of the batch)."""
        return self(batch["image"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self.batch_logits(batch), batch["target"])
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["target"]))
        return loss

    def _evaluate(self, batch: dict, stage: str) -> None:
        logits = self.batch_logits(batch)
        self.log(f"{stage}/loss", self.loss(logits, batch["target"]), on_step=False, on_epoch=True,
                 batch_size=len(batch["target"]))
        self.update_metrics(logits, batch, stage)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def log_monitor_best(self, scores: dict[str, float]) -> None:
        """Track and log ``<monitor>_best`` from this validation epoch's scores."""
        self.monitor_best(scores[self.hparams.monitor.split("/", 1)[1]])
        self.log(f"{self.hparams.monitor}_best", self.monitor_best.compute(), prog_bar=True)

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Arguments added to the optimizer partial (e.g. a learning rate that depends on the mode)."""
        return {}

    def configure_optimizers(self) -> dict:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params, **self.optimizer_kwargs())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": self.hparams.monitor, "interval": "epoch"}}
