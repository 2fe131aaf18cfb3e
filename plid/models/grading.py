"""A multi-task disc classifier: one timm backbone (as the paper's classifiers), one head per SPIDER grading.

Binary gradings (herniation, bulging, narrowing, endplates, spondylolisthesis) have a two-logit head trained with
class-weighted cross-entropy, as :class:`plid.models.classification.ClassificationModule`. Ordinal gradings
(Pfirrmann 1-5, Modic 0-3) have a cumulative-logit head (CORAL, Cao, Mirjalili & Raschka 2020): ``K - 1`` logits
``w . h + b_k`` sharing one weight vector, the biases kept in decreasing order, so that
``P(grade > k) = sigmoid(w . h + b_k)`` is monotone in ``k`` by construction; the loss is the binary
cross-entropy of each of the ``K - 1`` "grade above k" questions. A disc missing a grading (class ``-1``) is left
out of that head's loss and metrics, and still trains the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MaxMetric
from torchmetrics.functional.classification import multiclass_confusion_matrix

from plid.errors import UserInputError
from plid.labels import MISSING, Grading, gradings
from plid.metrics import binary_scores, grade_of_distribution, ordinal_cuts, ordinal_scores, youden_threshold
from plid.models.base import SpineModule
from plid.models.classification import DEFAULT_LR
from plid.models.nets import DiscClassifier, build_classifier, set_trainable
from plid.utils.figures import log_figure, save_figure

log = logging.getLogger(__name__)


class CoralHead(nn.Module):
    """``K - 1`` cumulative logits from one shared weight vector and decreasing biases
    (``b_k = b_0 - sum_{j<=k} softplus(d_j)``), so ``sigmoid(logit_k) = P(grade > k)`` never rises with k."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Linear(in_features, 1, bias=False)
        self.first_bias = nn.Parameter(torch.zeros(1))
        self.gaps = nn.Parameter(torch.zeros(num_classes - 2))

    def biases(self) -> torch.Tensor:
        return torch.cat([self.first_bias, self.first_bias - torch.cumsum(F.softplus(self.gaps), 0)])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.weight(h) + self.biases()


def cumulative_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``P(grade > k)`` for k = 0..K-2, from a CORAL head's logits (N, K-1)."""
    return torch.sigmoid(logits)


def grade_distribution(logits: torch.Tensor) -> torch.Tensor:
    """``P(grade = k)`` (N, K) from the cumulative probabilities: ``P(>k-1) - P(>k)``."""
    above = cumulative_probabilities(logits)
    ones, zeros = above.new_ones(len(above), 1), above.new_zeros(len(above), 1)
    return (torch.cat([ones, above], 1) - torch.cat([above, zeros], 1)).clamp_min(0)


def coral_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over discs of the summed binary cross-entropy of ``grade > k``, k = 0..K-2."""
    levels = (target[:, None] > torch.arange(logits.shape[1], device=target.device)).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, levels, reduction="none").sum(1).mean()


def _cuts_of_older_checkpoints(module, state_dict, prefix, *args) -> None:
    """A checkpoint written before ordinal cuts were chosen loads with the head's rule (0.5 on every question)."""
    if prefix + "thresholds" in state_dict and prefix + "cuts" not in state_dict:
        state_dict[prefix + "cuts"] = module.cuts.clone().fill_(0.5)


class GradingHeads(nn.Module):
    """The paper's dense layer (``hidden`` units, ReLU, dropout) shared by every grading, then one head each:
    two logits for a binary grading, a :class:`CoralHead` for an ordinal one. Returns ``{grading: logits}``."""

    def __init__(self, num_features: int, specs: Sequence[Grading], hidden: int = 256, dropout: float = 0.2,
                 extra_inputs: int = 0) -> None:
        super().__init__()
        self.extra_inputs = extra_inputs
        self.shared = nn.Sequential(nn.Linear(num_features + extra_inputs, hidden), nn.ReLU(inplace=True),
                                    nn.Dropout(dropout))
        self.heads = nn.ModuleDict({g.name: CoralHead(hidden, g.num_classes) if g.ordinal else nn.Linear(hidden, 2)
                                    for g in specs})

    def forward(self, features: torch.Tensor, extra: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.extra_inputs:  # the disc's measurements beside the image features (zeros: not measured)
            extra = features.new_zeros(len(features), self.extra_inputs) if extra is None else extra.to(features)
            features = torch.cat([features, extra], 1)
        h = self.shared(features)
        return {name: head(h) for name, head in self.heads.items()}


def build_grader(name: str, targets: Sequence[str], pretrained: bool = False, weights_file: str | None = None,
                 in_chans: int = 1, hidden: int = 256, dropout: float = 0.2,
                 num_classes: int | None = None, measurements: bool = False) -> DiscClassifier:
    """:func:`plid.models.nets.build_classifier`'s network with :class:`GradingHeads` as its head
    (``num_classes`` is ignored: each head has its grading's classes; it is there for the shared config). With
    ``measurements`` the heads also take the disc's measurement features
    (:data:`plid.measurements.FEATURES`)."""
    from plid.measurements import FEATURES

    net = build_classifier(name, pretrained, weights_file, in_chans, hidden, dropout)
    net.head = GradingHeads(net.head[0].in_features, gradings(targets), hidden, dropout,
                            len(FEATURES) if measurements else 0)
    return net


def grading_scores(scores: dict[str, float]) -> dict[str, float]:
    """What a binary grading logs of :func:`plid.metrics.binary_scores`: AUC, PR AUC, and at the threshold
    sensitivity, specificity, balanced accuracy, with the counts of positive and negative discs."""
    return {"auc": scores["auc"], "pr_auc": scores["pr_auc"], "sensitivity": scores["recall"],
            "specificity": scores["specificity"], "balanced_accuracy": scores["balanced_accuracy"],
            "positives": scores["tp"] + scores["fn"], "negatives": scores["tn"] + scores["fp"]}


class GradingModule(SpineModule):
    """Trains a multi-task :class:`DiscClassifier` (:func:`build_grader`), one head per grading of ``targets``.

    Logged under ``val/<grading>/...`` and ``test/<grading>/...``: binary gradings their AUC, PR AUC, and at the
    threshold chosen on validation by Youden's J, sensitivity, specificity, balanced accuracy; ordinal gradings
    balanced accuracy, quadratic-weighted ``kappa``, ``within_one`` and ``accuracy`` of the grades at the cuts
    chosen on validation (:func:`ordinal_cuts`). ``val/score`` is the mean of the binary AUCs and the ordinal
    kappas (NaN ones left out): the default monitor. The thresholds and cuts are buffers (``thresholds``, one per
    grading, 0.5 for ordinal ones; ``cuts``, one row per grading, used by the ordinal ones), so they travel with
    the checkpoint; they are set at every validation epoch, so the best checkpoint carries those of its own
    validation. After testing it writes ``confusion_matrix_<grading>_test.png`` per ordinal grading.

    Args:
        net: the network (``build_grader``), returning ``{grading: logits}``.
        targets: the gradings, in the order of the datamodule's target vectors (``data.targets``).
        optimizer / scheduler / mode / fine_tune_modules: as :class:`ClassificationModule`.
        class_weights: ``auto`` weighs each binary head's cross-entropy by ``n / (2 n_c)`` of its training discs
            (equal weights, with a warning, where a class is absent); null weighs equally. Ordinal heads are not
            weighted.
        monitor: the validation metric that selects checkpoints.
        use_measurements: the heads also take each disc's measurements from the mask (``features`` of the batch,
            :func:`plid.measurements.measurement_features`); the network must be built with
            ``measurements=True`` (the grade_* configs tie the two, and ``data.measurements``, to it).
    """

    def __init__(self, net: DiscClassifier, targets: Sequence[str], optimizer: Callable,
                 scheduler: Callable | None = None, mode: str = "full", fine_tune_modules: Sequence[str] | None = None,
                 class_weights: str | None = "auto", monitor: str = "val/score", use_measurements: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        if class_weights not in (None, "auto"):
            raise UserInputError(f"model.class_weights={class_weights!r}: a multi-task classifier takes auto or null")
        self.gradings = gradings(targets)
        if list(net.head.heads) != [g.name for g in self.gradings]:
            raise UserInputError(f"model.targets={list(targets)} but the network has heads {list(net.head.heads)}")
        if bool(net.head.extra_inputs) != use_measurements:
            raise UserInputError(f"model.use_measurements={use_measurements} but the network was built with "
                                 f"measurements={bool(net.head.extra_inputs)}: give model.net.measurements the same")
        set_trainable(net, mode, list(fine_tune_modules or []))
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.register_buffer("class_weight", torch.ones(len(self.gradings), 2), persistent=False)
        self.register_buffer("thresholds", torch.full((len(self.gradings),), 0.5))
        self.register_buffer("cuts", torch.full((len(self.gradings), max(g.num_classes for g in self.gradings) - 1),
                                                0.5))
        self.register_load_state_dict_pre_hook(_cuts_of_older_checkpoints)
        self.monitor_best = MaxMetric(nan_strategy="ignore")
        self._outputs: dict[str, list] = {"val": [], "test": []}

    @property
    def targets(self) -> list[str]:
        return [g.name for g in self.gradings]

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.net(x, features) if self.hparams.use_measurements else self.net(x)

    def batch_logits(self, batch: dict) -> dict[str, torch.Tensor]:
        return self(batch["image"], batch.get("features"))

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_targets = getattr(getattr(datamodule, "hparams", {}), "get", lambda k: None)("targets")
        if datamodule is not None and self.hparams.use_measurements and not datamodule.hparams.get("measurements"):
            raise UserInputError("model.use_measurements=true needs data.measurements=true (the grade_* configs set "
                                 "it from model.use_measurements)")
        if datamodule is not None and list(data_targets or []) != self.targets:
            raise UserInputError(f"model.targets={self.targets} but data.targets={data_targets}: they must agree "
                                 f"(model.targets follows data.targets in the grade_* configs)")
        if self.hparams.class_weights == "auto" and datamodule is not None:
            counts = datamodule.grading_class_counts()
            for k, g in enumerate(self.gradings):
                if g.ordinal:
                    continue
                n0, n1 = counts[g.name][:2]
                if min(n0, n1) == 0:
                    log.warning("%s: the training split holds %d negative and %d positive discs; its head is "
                                "trained unweighted", g.name, n0, n1)
                    continue
                self.class_weight[k] = torch.tensor([(n0 + n1) / (2 * n0), (n0 + n1) / (2 * n1)])

    def loss(self, logits: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """The sum over gradings of each head's mean loss over the discs that carry that grading."""
        # zero times every output: a batch where no disc carries a grading still back-propagates (a zero gradient)
        total = sum(out.sum() for out in logits.values()) * 0.0
        for k, g in enumerate(self.gradings):
            labelled = target[:, k] != MISSING
            if not labelled.any():
                continue
            out, t = logits[g.name][labelled], target[labelled, k]
            total = total + (coral_loss(out, t) if g.ordinal else
                             F.cross_entropy(out, t, weight=self.class_weight[k]))
        return total

    def probabilities(self, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per grading: the positive-class probability (N,) of a binary one, the grade distribution (N, K) of an
        ordinal one."""
        return {g.name: grade_distribution(logits[g.name]) if g.ordinal else logits[g.name].softmax(1)[:, 1]
                for g in self.gradings}

    def update_metrics(self, logits: dict[str, torch.Tensor], batch: dict, stage: str) -> None:
        self._outputs[stage].append(({k: v.detach().cpu() for k, v in self.probabilities(logits).items()},
                                     batch["target"].cpu()))

    def _collected(self, stage: str):
        outputs = self._outputs[stage]
        self._outputs[stage] = []
        if not outputs:
            return None
        target = torch.cat([o[1] for o in outputs])
        probs = {g.name: torch.cat([o[0][g.name] for o in outputs]) for g in self.gradings}
        return probs, target

    def scores(self, stage: str, choose_thresholds: bool) -> tuple[dict[str, dict[str, float]], dict]:
        collected = self._collected(stage)
        if collected is None:
            return {}, {}
        probs, target = collected
        scores, confusion = {}, {}
        for k, g in enumerate(self.gradings):
            labelled = target[:, k] != MISSING
            t = target[labelled, k]
            if g.ordinal:
                distribution = probs[g.name][labelled].double().numpy()
                if choose_thresholds:
                    self.cuts[k, : g.num_classes - 1] = torch.tensor(ordinal_cuts(distribution, t.numpy()))
                grades = torch.from_numpy(grade_of_distribution(distribution, self.cuts_of(k)))
                scores[g.name] = ordinal_scores(grades, t, g.num_classes)
                confusion[g.name] = multiclass_confusion_matrix(grades, t, g.num_classes)
                continue
            p = probs[g.name][labelled].float()
            if choose_thresholds:
                self.thresholds[k] = youden_threshold(p.cpu().numpy(), t.cpu().numpy())
            scores[g.name] = grading_scores(binary_scores(p, t, float(self.thresholds[k])))
            scores[g.name]["threshold"] = float(self.thresholds[k])
        return scores, confusion

    def _log_scores(self, stage: str, scores: dict[str, dict[str, float]]) -> float:
        flat = {f"{stage}/{name}/{key}": float(value) for name, values in scores.items() for key, value in values.items()}
        headline = [values["kappa"] if g.ordinal else values["auc"]
                    for g in self.gradings if (values := scores.get(g.name))]
        score = float(np.nanmean(headline)) if np.isfinite(headline).any() else float("nan")
        flat[f"{stage}/score"] = score
        self.log_dict(flat)
        return score

    def on_validation_epoch_end(self) -> None:
        scores, _ = self.scores("val", choose_thresholds=True)
        score = self._log_scores("val", scores)
        if self.hparams.monitor == "val/score":
            self.monitor_best(score)
            self.log(f"{self.hparams.monitor}_best", self.monitor_best.compute(), prog_bar=True)

    def on_test_epoch_end(self) -> None:
        scores, confusion = self.scores("test", choose_thresholds=False)
        self._log_scores("test", scores)
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self._save_confusion_figures("test", confusion)

    def _save_confusion_figures(self, stage: str, confusion: dict[str, torch.Tensor]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from torchmetrics.classification import MulticlassConfusionMatrix

        out = Path(self.trainer.default_root_dir)
        for g in self.gradings:
            if g.name not in confusion:
                continue
            labels = [str(g.grade(k)) for k in range(g.num_classes)]
            figure = MulticlassConfusionMatrix(g.num_classes).plot(val=confusion[g.name], labels=labels)[0]
            figure.axes[0].set_title(f"{g.name} ({stage}, {int(confusion[g.name].sum())} discs)")
            path = save_figure(figure, out / f"confusion_matrix_{g.name}_{stage}.png")
            log_figure(self.loggers, f"{stage}/confusion_matrix_{g.name}", figure, path, self.global_step)
            plt.close(figure)

    def cuts_of(self, k: int) -> list[float]:
        """The cuts of the ordinal grading ``k`` (its K-1 questions), as chosen on validation."""
        return [float(c) for c in self.cuts[k, : self.gradings[k].num_classes - 1]]

    def summary(self) -> dict:
        """What ``summary.json`` adds for this model: the gradings, the thresholds and the cuts chosen on
        validation."""
        return {"targets": self.targets,
                "thresholds": {g.name: float(self.thresholds[k]) for k, g in enumerate(self.gradings) if not g.ordinal},
                "cuts": {g.name: self.cuts_of(k) for k, g in enumerate(self.gradings) if g.ordinal}}

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Per grading probabilities (see :mod:`plid.ensemble.predictions`): ``probs`` is ``{grading: (N, C)}``,
        two classes for a binary grading, K grades for an ordinal one; ``target`` is (N, gradings), -1 missing."""
        probs = self.probabilities(self.batch_logits(batch))
        probs = {name: p if p.ndim == 2 else torch.stack([1 - p, p], 1) for name, p in probs.items()}
        return {"id": batch["id"], "probs": probs, "target": batch["target"], "targets": self.targets}

    def optimizer_kwargs(self) -> dict:
        return {"lr": getattr(self.optimizer_factory, "keywords", {}).get("lr") or DEFAULT_LR[self.hparams.mode]}
