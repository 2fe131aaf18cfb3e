"""Saved predictions: what every training run leaves for the ensemble.

After testing, a run writes ``predictions/val.npz`` and ``predictions/test.npz`` in its output dir, one
file per split, with the best checkpoint's outputs on every case of that split:

    ids      (N,) str       case ids: the image name (segmentation) or ``<image>:<ivd_label>`` (classification)
    probs    (N, C, ...)    float32 class probabilities (softmax), C classes; (N, C, H, W) for segmentation
    targets  (N, ...)       int64 reference labels (class indices), aligned with probs

The probabilities are those the run's metrics saw, in the float32 they were computed in: AUCs and argmax
predictions from the file are the ones in ``summary.json``. (Files of older runs hold float16, which rounds
probabilities near 0 and 1 into ties; they still load.)

Cases are in a stable order (the split's loader order); ``load_predictions`` sorts by id so that runs of
different models over the same split line up.

A multi-task classifier (``model=grade_*``, :mod:`plid.models.grading`) writes one such file per grading instead,
``predictions/<grading>/{val,test}.npz``, holding only the discs that carry that grading: ``probs`` (N, 2) for a
binary grading, (N, K) for an ordinal one (the grade distribution of its CORAL head), ``targets`` the class
index (for ``pfirrman_grade`` the grade minus 1, see :mod:`plid.labels`). Each file reads as a single-target
run's, so ``plid.ensemble`` can be pointed at one grading of several runs (not wired up yet).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch

from plid.utils.io import atomic_write

SPLITS = ("val", "test")


@dataclass
class Predictions:
    ids: np.ndarray
    probs: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def run_names(paths: list[Path], summaries: list[dict]) -> list[str]:
    """Each run's name in an ensemble (and so in a model_dir's ``ensemble_weights.json``): its model choice in
    summary.json, else its folder's name; runs of one model (folds, seeds) are told apart by their folder."""
    names = [str((summary.get("choices") or {}).get("model") or path.name) for path, summary in zip(paths, summaries)]
    return [f"{name} ({path.name})" if names.count(name) > 1 else name for name, path in zip(names, paths)]


def save_predictions(path: str | Path, predictions: Predictions) -> Path:
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        np.savez(handle, ids=predictions.ids.astype(str), probs=predictions.probs.astype(np.float32),
                 targets=predictions.targets.astype(np.int64))
    return path


def load_predictions(path: str | Path) -> Predictions:
    """A saved split, sorted by case id."""
    with np.load(Path(path), allow_pickle=False) as data:
        order = np.argsort(data["ids"], kind="stable")
        return Predictions(data["ids"][order], data["probs"][order], data["targets"][order])


def collect_predictions(outputs: list[dict]) -> Predictions | dict[str, Predictions]:
    """Concatenate ``predict_step`` outputs (dicts of id, probs, target) into one Predictions; a multi-task
    classifier's (``probs`` a dict per grading) into one Predictions per grading, without the discs missing it."""
    ids = np.concatenate([np.asarray(o["id"], dtype=str) for o in outputs])
    if isinstance(outputs[0]["probs"], dict):
        targets = torch.cat([o["target"].cpu() for o in outputs]).numpy()
        per_grading = {}
        for k, name in enumerate(outputs[0]["targets"]):
            probs = torch.cat([o["probs"][name].float().cpu() for o in outputs]).numpy()
            labelled = targets[:, k] >= 0
            per_grading[name] = Predictions(ids[labelled], probs[labelled], targets[labelled, k])
        return per_grading
    probs = torch.cat([o["probs"].float().cpu() for o in outputs]).numpy()
    targets = torch.cat([o["target"].cpu() for o in outputs]).numpy()
    return Predictions(ids, probs, targets)


def export_predictions(trainer: L.Trainer, model: L.LightningModule, datamodule, output_dir: str | Path) -> dict:
    """Predict val and test with the model's current weights and save them under ``output_dir/predictions``."""
    written = {}
    loaders = {"val": datamodule.val_dataloader, "test": datamodule.test_dataloader}
    for split in SPLITS:
        if len(datamodule.datasets.get(split, [])) == 0:
            continue
        outputs = trainer.predict(model, dataloaders=loaders[split]())
        collected = collect_predictions(outputs)
        if isinstance(collected, dict):  # a multi-task classifier: one file per grading
            written[split] = {name: str(save_predictions(Path(output_dir) / "predictions" / name / f"{split}.npz",
                                                         predictions))
                              for name, predictions in collected.items()}
            continue
        path = save_predictions(Path(output_dir) / "predictions" / f"{split}.npz", collected)
        written[split] = str(path)
    return written
