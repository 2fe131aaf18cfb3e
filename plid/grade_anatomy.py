"""Fit the anatomy grader (:mod:`plid.models.anatomy`) on a model_dir's own segmentation, and choose per grading
between it, the crop network and their mean on pooled out-of-fold validation:

    python -m plid.grade_anatomy model_dir=<plid.export's model_dir>
    python -m plid.export ... anatomy_run=<this run's folder>     # the model_dir, now grading with it

For every image of the non-test patients of the model_dir's folder (``data.root=`` for another), the model_dir's
lumbar detector and segmenter run as at prediction, and each labelled disc box is measured on the predicted mask
(renders without reference masks get masks too). For each fold of ``folds`` (default: the fold bag's), the grader
is fitted on the other non-test patients and predicts that fold's validation patients: the pooled out-of-fold
predictions, of the same patients the crop network's fold bag was validated on.

The rule, written before any test figure is seen: on the discs both have out-of-fold predictions for, each
grading's source is the one of highest pooled figure (ROC AUC for a binary grading, quadratic kappa at its cuts for
an ordinal one) among the crop network, the anatomy grader and their mean (probabilities or distributions
averaged); a tie keeps the crop network. The chosen source's threshold or cuts, and whether it is validated, come
from the same predictions by the model_dir's grading policy (:class:`plid.ensemble.folds.GradingPolicy`). The
grader written is then fitted on every non-test patient.

Caveat: the segmenter trained on the training patients' masks, so their predicted masks are better than a new
patient's (the t2_SPACE slices; renders have no reference mask and were never segmented in training).
"""

from __future__ import annotations

from plid.cli import answer_help

answer_help(__name__, "grade_anatomy")  # --help answered here, before the heavy imports below

import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from plid.ensemble.folds import GradingPolicy, grading_validation, out_of_fold, pooled_predictions
from plid.ensemble.predictions import Predictions
from plid.errors import UserInputError
from plid.evaluation.end_to_end import labelled_splits
from plid.inference.model_dir import load_model_dir
from plid.inference.pipeline import Pipeline
from plid.labels import ALL_GRADINGS, MISSING, grading
from plid.measurements import measure_discs
from plid.models.anatomy import AnatomyGrader, anatomy_features
from plid.utils.hydra import run_task
from plid.utils.io import atomic_write, write_json

log = logging.getLogger(__name__)
ANATOMY_FILE = "anatomy.json"
SOURCES = ("crop network", "anatomy", "mean")


def measure_labelled_discs(pipeline: Pipeline, dataset, images: list[str]) -> dict[str, Any]:
    """Each labelled disc (a level) of ``images`` measured on the pipeline's own mask: its case id
    (``<image>:<ivd_label>``, as the crop network's), patient, features and class index per grading."""
    ids, patients, rows, skipped = [], [], [], []
    labels: dict[str, list[int]] = {}
    present = [g for g in ALL_GRADINGS if g in dataset.discs.columns]
    for name in images:
        discs = dataset.discs[(dataset.discs["image"] == name) & dataset.discs["ivd_label"].notna()]
        if discs.empty:
            continue
        image = dataset.read_image(name)
        boxes, scores, *_ = pipeline.cropper.lumbar(image)
        if len(boxes) == 0:
            skipped.append(name)
            continue
        mask, _ = pipeline.segment(image, tuple(float(v) for v in boxes[int(np.argmax(scores))]), None)
        measured = measure_discs(mask, discs[["x1", "y1", "x2", "y2"]].to_numpy(float).tolist(), image)
        patient = str(dataset.images.loc[dataset.images["image"] == name, "patient"].iloc[0])
        for (_, disc), values in zip(discs.iterrows(), measured):
            level = int(disc["ivd_label"])
            ids.append(f"{name}:{level}")
            patients.append(patient)
            rows.append(anatomy_features(values, level))
            for g in present:
                labels.setdefault(g, []).append(grading(g).index(disc[g]))
    if not rows:
        raise UserInputError(f"{dataset.root}: no labelled disc found on the non-test images (lumbar regions found "
                             f"on {len(images) - len(skipped)} of {len(images)})")
    return {"ids": np.array(ids), "patients": np.array(patients), "x": np.stack(rows),
            "labels": {g: np.array(v, np.int64) for g, v in labels.items()}, "no_lumbar_region": skipped}


def out_of_fold_anatomy(discs: dict[str, Any], splits: dict[str, Any], folds: list[int], c: float
                        ) -> dict[str, Predictions]:
    """Per grading, the anatomy grader's predictions of each fold's validation patients by a grader fitted on
    the other non-test patients, pooled; a grading some fold's training discs hold one class of is left out."""
    pooled: dict[str, list[Predictions]] = {g: [] for g in discs["labels"]}
    for k in folds:
        val = np.isin(discs["patients"], splits["folds"][k]["val"])
        grader = AnatomyGrader.fit(discs["x"][~val], {g: y[~val] for g, y in discs["labels"].items()}, c)
        predicted = grader.predict(discs["x"][val])
        for g, y in discs["labels"].items():
            if g not in predicted:
                pooled.pop(g, None)
            elif g in pooled:
                keep = y[val] != MISSING
                pooled[g].append(Predictions(discs["ids"][val][keep], predicted[g][keep], y[val][keep]))
    return {g: Predictions(np.concatenate([p.ids for p in v]), np.concatenate([p.probs for p in v]),
                           np.concatenate([p.targets for p in v])) for g, v in pooled.items()}


def _figure(entry: dict[str, Any]) -> float:
    value = entry.get(entry["metric"])
    return float(value) if value is not None and np.isfinite(value) else -np.inf


def choose_sources(anatomy: dict[str, Predictions], crop: dict[str, Predictions], policy: GradingPolicy
                   ) -> dict[str, dict[str, Any]]:
    """Per grading the source of highest pooled out-of-fold figure on the discs both predicted (module docstring),
    with each source's validation entry (``candidates``) and the chosen one's (``validation``); without the crop network's predictions,
    the anatomy grader alone is scored (and chosen)."""
    chosen = {}
    for g, ours in anatomy.items():
        ordinal = grading(g).ordinal
        candidates: dict[str, Predictions] = {}
        theirs = crop.get(g)
        if theirs is not None:
            common, mine, other = np.intersect1d(ours.ids, theirs.ids, return_indices=True)
            if len(common):
                candidates["crop network"] = Predictions(common, theirs.probs[other], theirs.targets[other])
                candidates["anatomy"] = Predictions(common, ours.probs[mine], ours.targets[mine])
                candidates["mean"] = Predictions(common, (theirs.probs[other] + ours.probs[mine]) / 2,
                                                 ours.targets[mine])
        if not candidates:
            candidates["anatomy"] = ours
        entries = {source: grading_validation(p, g, ordinal, policy) for source, p in candidates.items()}
        best = max(entries, key=lambda s: (_figure(entries[s]), s == "crop network"))
        # every source's choice and figures, so that a reader (or a comparison) can take another
        chosen[g] = {"source": best, "cases": len(candidates[best]), "candidates": entries,
                     "validation": entries[best]}
        log.info("%s: %s (%s)", g, best, ", ".join(f"{s} {e[e['metric']]:.3f}" for s, e in entries.items()))
    return chosen


def crop_out_of_fold(models) -> dict[str, Predictions]:
    """The crop network's pooled out-of-fold predictions per grading, read from the fold bag's runs where they are
    on this machine (empty otherwise: a model_dir from elsewhere, or no bag)."""
    bag = models.bag or {}
    runs = [Path(r) for r in bag.get("runs") or []]
    if len(runs) < 2 or not all((r / "summary.json").is_file() for r in runs):
        log.warning("the crop network's out-of-fold predictions are not here (no fold bag, or its runs elsewhere): "
                    "the anatomy grader is chosen alone")
        return {}
    targets = list(models.classifiers[0].targets or [models.classifiers[0].target])
    multi = bool(models.classifiers[0].targets)
    return {g: out_of_fold(runs, pooled_predictions(runs, g if multi else "")) for g in targets}


def grade_anatomy(cfg: DictConfig) -> Path:
    out = Path(cfg.get("out") or cfg.paths.output_dir)
    models = load_model_dir(cfg.model_dir)
    pipeline = Pipeline(models, device=cfg.get("device", "cpu"))
    dataset, splits = labelled_splits(models.root, models.manifest, cfg.data.get("root"))
    folds = [int(k) for k in (cfg.get("folds") or (models.bag or {}).get("folds") or range(len(splits["folds"])))]
    if any(not 0 <= k < len(splits["folds"]) for k in folds) or len(folds) < 2:
        raise UserInputError(f"folds={folds}: give two or more of the splits' folds 0-{len(splits['folds']) - 1}")
    test = set(splits["test"])
    images = [str(n) for n, p in zip(dataset.images["image"], dataset.images["patient"]) if str(p) not in test]
    discs = measure_labelled_discs(pipeline, dataset, images)
    log.info("%d labelled discs of %d non-test images measured (no lumbar region on %d)", len(discs["ids"]),
             len(images), len(discs["no_lumbar_region"]))
    policy = GradingPolicy.from_config(cfg.get("gradings"))
    anatomy = out_of_fold_anatomy(discs, splits, folds, float(cfg.c))
    chosen = choose_sources(anatomy, crop_out_of_fold(models) if models.classifiers else {}, policy)
    grader = AnatomyGrader.fit(discs["x"], discs["labels"], float(cfg.c))
    result = {"grader": grader.to_json(), "choice": chosen, "policy": policy.describe(), "folds": folds,
              "selection": "pooled out-of-fold", "discs": len(discs["ids"]), "images": len(images),
              "no_lumbar_region": discs["no_lumbar_region"], "data_root": str(dataset.root),
              "model_dir": str(models.root)}
    path = write_json(out / ANATOMY_FILE, result)
    lines = ["| grading | chosen | " + " | ".join(SOURCES) + " |", "|---|---|" + "---|" * len(SOURCES)]
    for g, entry in chosen.items():
        figures = {s: e.get(e["metric"]) for s, e in entry["candidates"].items()}
        cells = [f"{figures[s]:.3f}" if figures.get(s) is not None and np.isfinite(figures[s]) else "–"
                 for s in SOURCES]
        lines.append(f"| {g} ({entry['validation']['metric']}) | {entry['source']} | " + " | ".join(cells) + " |")
    with atomic_write(out / "anatomy.md") as handle:
        handle.write("Pooled out-of-fold validation, per grading:\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"anatomy grader: {path}")
    return path


@hydra.main(version_base="1.3", config_path="conf", config_name="grade_anatomy")
def main(cfg: DictConfig) -> None:
    run_task(grade_anatomy, cfg)


if __name__ == "__main__":
    main()
