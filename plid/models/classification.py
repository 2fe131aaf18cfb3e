"""One LightningModule for every disc classifier of the paper (timm backbones, two-layer head)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MaxMetric, Metric
from torchmetrics.classification import BinaryConfusionMatrix, BinaryROC
from torchmetrics.utilities import dim_zero_cat

from plid.errors import UserInputError
from plid.metrics import binary_confusion, binary_scores, roc_points, youden_threshold
from plid.models.base import SpineModule
from plid.models.nets import DiscClassifier, set_trainable
from plid.utils.figures import log_figure, save_figure

matplotlib.use("Agg")  # figures are written to files, never shown
log = logging.getLogger(__name__)

# Adam's learning rate per mode where the config leaves it null: the paper's 1e-3 for feature extraction and
# 1e-4 for fine-tuning; training from scratch ("full") uses 1e-3.
DEFAULT_LR = {"feature_extraction": 1e-3, "fine_tune": 1e-4, "full": 1e-3}


class StageOutputs(Metric):
    """The positive-class probabilities and 0/1 targets of a stage (gathered over processes), from which every
    score is computed at the epoch's end: the threshold-dependent ones need the threshold chosen on them first."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        self.probs.append(probs.detach().float())
        self.targets.append(targets.detach().long())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        return dim_zero_cat(self.probs), dim_zero_cat(self.targets)


class ClassificationModule(SpineModule):
    """Trains a :class:`DiscClassifier` with class-weighted cross-entropy; logs accuracy, balanced accuracy,
    specificity, precision, recall, F1, ROC AUC, PR AUC, the confusion matrix (``tn``, ``fp``, ``fn``,
    ``tp``) and the decision threshold under ``val/...`` and ``test/...``.

    The decision threshold (a case is positive where its probability is above it) is chosen at the end of every
    validation epoch on that epoch's validation probabilities, by Youden's J
    (:func:`plid.metrics.youden_threshold`; 0.5 where the split holds one class), kept as
    :attr:`threshold`, and used for that epoch's validation scores and for testing: a test run therefore
    scores the threshold of the last validation of the same weights (``plid.train`` validates the best
    checkpoint just before testing it). After testing it writes ``roc_curve_test.png`` and
    ``confusion_matrix_test.png`` into the run's folder and sends them to the loggers that take images.

    Args:
        net: the classifier, logits of shape (N, 2).
        optimizer / scheduler: partials, completed in ``configure_optimizers``. A null ``lr`` takes the paper's
            rate for ``mode`` (:data:`DEFAULT_LR`).
        mode: ``feature_extraction`` (backbone frozen), ``fine_tune`` (only ``fine_tune_modules`` of the
            backbone train) or ``full`` (everything trains: the choice when training from scratch). The head
            always trains.
        fine_tune_modules: backbone blocks that train in ``fine_tune`` mode.
        class_weights: cross-entropy weights of class 0 and 1; ``auto`` computes ``n / (2 n_c)`` from the
            training split of the trainer's datamodule; null weighs both classes equally.
        monitor: the validation metric that selects checkpoints, stops early and drives the scheduler.
            ``val/auc`` by default: it does not depend on a threshold and is not swayed by the class balance.
    """

    def __init__(self, net: DiscClassifier, optimizer: Callable, scheduler: Callable | None = None,
                 mode: str = "full", fine_tune_modules: Sequence[str] | None = None,
                 class_weights: str | Sequence[float] | None = "auto", monitor: str = "val/auc") -> None:
        super().__init__()
        # only plain values go into checkpoints, so they load with torch.load(weights_only=True);
        # the run's saved Hydra config rebuilds the network
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        if not (class_weights in (None, "auto") or (not isinstance(class_weights, str) and len(class_weights) == 2)):
            raise UserInputError(f"model.class_weights={class_weights!r}: give auto, null or two numbers [w0, w1]")
        set_trainable(net, mode, list(fine_tune_modules or []))
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        # set in setup() where class_weights is auto; not saved, so checkpoints hold network weights only
        weights = torch.ones(2) if class_weights in (None, "auto") else torch.tensor(class_weights, dtype=torch.float)
        self.register_buffer("class_weight", weights, persistent=False)
        self.outputs = nn.ModuleDict({stage: StageOutputs() for stage in ("val", "test")})
        self.monitor_best = MaxMetric(nan_strategy="ignore")
        self.class_names = ["negative", "positive"]
        self.threshold = 0.5  # chosen on each validation epoch; not saved in checkpoints (summary.json has it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if hasattr(datamodule, "class_names"):
            self.class_names = datamodule.class_names()
        if self.hparams.class_weights == "auto":
            if not hasattr(datamodule, "class_weights"):
                raise UserInputError("model.class_weights=auto needs a classification datamodule to count the "
                                     "training classes; give model.class_weights=[w0,w1] or null")
            weights = torch.tensor(datamodule.class_weights(), dtype=torch.float)
            if not torch.equal(weights.to(self.class_weight), self.class_weight):  # log once, not at every stage
                log.info("class weights from the training split: %.3f (%s), %.3f (%s)", weights[0],
                         self.class_names[0], weights[1], self.class_names[1])
            self.class_weight.copy_(weights)
        size = getattr(datamodule, "image_size", None)
        if size is not None and size < self.net.min_input_size:
            log.warning("data.image_size=%d is below this backbone's smallest input (%d px): crops are upsampled to it",
                        size, self.net.min_input_size)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, weight=self.class_weight)

    def update_metrics(self, logits: torch.Tensor, batch: dict, stage: str) -> None:
        self.outputs[stage].update(logits.softmax(1)[:, 1], batch["target"])

    def _log_scores(self, stage: str) -> tuple[dict[str, float], tuple[torch.Tensor, torch.Tensor]]:
        """Log the stage's scores (:func:`plid.metrics.binary_scores`, choosing the threshold first on val);
        returns them and the probabilities and targets they come from."""
        probs, targets = self.outputs[stage].compute()
        self.outputs[stage].reset()
        if stage == "val" and not self.trainer.sanity_checking:
            self.threshold = youden_threshold(probs.cpu().numpy(), targets.cpu().numpy())
        scores = {**binary_scores(probs, targets, self.threshold), "threshold": float(self.threshold)}
        if min(scores["tn"] + scores["fp"], scores["fn"] + scores["tp"]) == 0:
            log.warning("the %s split holds one class only (%d negative, %d positive): its AUCs are NaN", stage,
                        scores["tn"] + scores["fp"], scores["fn"] + scores["tp"])
        self.log_dict({f"{stage}/{k}": float(v) for k, v in scores.items()})
        return scores, (probs, targets)

    def on_validation_epoch_end(self) -> None:
        scores, _ = self._log_scores("val")
        self.log_monitor_best(scores)

    def on_test_epoch_end(self) -> None:
        scores, cases = self._log_scores("test")
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self._save_figures("test", scores, *cases)

    def _save_figures(self, stage: str, scores: dict[str, float], probs: torch.Tensor, targets: torch.Tensor) -> None:
        """ROC curve and confusion matrix as PNGs in the run's folder, and to the loggers that take images."""
        import matplotlib.pyplot as plt

        out = Path(self.trainer.default_root_dir)
        title = f"{self.class_names[1]} ({stage}, {len(targets)} cases)"
        figures = {
            "roc_curve": BinaryROC().plot(curve=roc_points(probs, targets))[0],
            "confusion_matrix": BinaryConfusionMatrix().plot(val=binary_confusion(probs, targets, self.threshold),
                                                             labels=self.class_names)[0],
        }
        axes = figures["roc_curve"].axes[0]
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)  # chance
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.02)
        axes.set_xlabel(f"False positive rate (ROC AUC {scores['auc']:.3f})")
        for name, figure in figures.items():
            figure.axes[0].set_title(title)
            path = save_figure(figure, out / f"{name}_{stage}.png")
            log_figure(self.loggers, f"{stage}/{name}", figure, path, self.global_step)
            plt.close(figure)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Class probabilities (N, 2), with the batch's case ids and targets (see plid.ensemble.predictions)."""
        return {"id": batch["id"], "probs": self(batch["image"]).softmax(1), "target": batch["target"]}

    def optimizer_kwargs(self) -> dict:
        # the mode's learning rate (Adam 1e-3 frozen, 1e-4 fine-tuning) unless the config gives one
        return {"lr": getattr(self.optimizer_factory, "keywords", {}).get("lr") or DEFAULT_LR[self.hparams.mode]}
