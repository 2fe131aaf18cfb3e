"""One LightningModule for every segmenter of the paper."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from plid.errors import UserInputError
from plid.labels import CLASS_NAMES
from plid.metrics import CaseDice, predicted_classes, segmentation_scores
from plid.models.base import SpineModule


class SegmentationModule(SpineModule):
    """Trains ``net`` (any smp model) with ``loss``; logs per-class Dice and IoU, mIoU and the best value
    of ``monitor`` under ``val/...`` and ``test/...``. Dice comes pooled over the split's pixels (``dice``,
    ``dice_<class>``, also as ``dice_pooled``, ``dice_pooled_<class>``) and per case, nnU-Net's way
    (``dice_per_case``, ``dice_per_case_<class>``): see :mod:`plid.metrics`.

    Args:
        net: the network, logits of shape (N, classes, H, W).
        loss: called as ``loss(logits, target)`` with a (N, H, W) long target.
        optimizer / scheduler: partials, completed in ``configure_optimizers``.
        monitor: the validation metric that selects checkpoints and drives the scheduler.
        channels_last: keep weights and inputs in channels-last memory order, which oneDNN (CPU) and cuDNN
            convolutions run faster (see benchmarks/inference.py); the numbers are the same.
    """

    def __init__(self, net: nn.Module, loss: nn.Module, optimizer: Callable, scheduler: Callable | None = None,
                 monitor: str = "val/dice", class_names: Sequence[str] = CLASS_NAMES, channels_last: bool = True) -> None:
        super().__init__()
        # only plain values go into checkpoints, so they load with torch.load(weights_only=True);
        # the run's saved Hydra config rebuilds the network
        self.save_hyperparameters(logger=False, ignore=["net", "loss", "optimizer", "scheduler"])
        self.net, self.loss = net.to(memory_format=torch.channels_last) if channels_last else net, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.class_names = list(class_names)
        self.confusion = nn.ModuleDict({
            stage: MulticlassConfusionMatrix(len(self.class_names)) for stage in ("val", "test")
        })
        self.case_dice = nn.ModuleDict({stage: CaseDice(len(self.class_names)) for stage in ("val", "test")})
        self.monitor_best = MaxMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def setup(self, stage: str) -> None:
        divisor = getattr(self.net, "input_divisor", 1)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        size = getattr(datamodule, "image_size", None)
        if size is not None and size % divisor:
            raise UserInputError(f"data.image_size={size} does not suit this architecture: its input side must be a "
                             f"multiple of {divisor}; try {max(divisor, round(size / divisor) * divisor)}")

    def update_metrics(self, logits: torch.Tensor, batch: dict, stage: str) -> None:
        predicted = predicted_classes(logits)
        self.confusion[stage].update(predicted, batch["target"])
        self.case_dice[stage].update(predicted, batch["target"])

    def _log_scores(self, stage: str) -> dict[str, float]:
        scores = segmentation_scores(self.confusion[stage].compute(), self.class_names,
                                     case_dice=self.case_dice[stage].compute())
        self.confusion[stage].reset()
        self.case_dice[stage].reset()
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items()}, prog_bar=False)
        return scores

    def on_validation_epoch_end(self) -> None:
        self.log_monitor_best(self._log_scores("val"))

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Class probabilities per pixel, with the batch's case ids and targets (see plid.ensemble.predictions)."""
        return {"id": batch["id"], "probs": self(batch["image"]).softmax(1), "target": batch["target"]}
