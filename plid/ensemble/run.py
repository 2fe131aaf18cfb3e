"""The paper's weighted average ensemble (WAE) over training runs: search the weights on validation, report on test.

    python -m plid.ensemble task=seg runs='[logs/train/runs/a,logs/train/runs/b]'
    python -m plid.ensemble task=seg runs='logs/train/multiruns/2026-01-01_00-00-00/*'
    python -m plid.ensemble task=cls metric=f1 runs=logs/train/multiruns/2026-01-01_00-00-00

Writes into its output dir ``ensemble_weights.json`` (the chosen weights, and for classifiers the decision
threshold of the weighted ensemble chosen on its validation probabilities: what inference reuses),
``summary.json`` (WAE, plain averaging AEM and each single model on val and test, and the search's figures)
and ``ensemble_table.{md,csv}`` (one row per model, AEM and WAE, as the paper's Tables 2 and 4). Undefined
scores (NaN) are ``null`` in the JSON files.
"""

from __future__ import annotations

import glob
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, ListConfig

from plid.ensemble.predictions import SPLITS, Predictions, load_predictions, run_names
from plid.ensemble.scoring import ClassificationScorer, SegmentationScorer
from plid.ensemble.weights import search_weights
from plid.errors import UserInputError
from plid.labels import CLASS_NAMES
from plid.metrics import CLASSIFICATION_METRICS, binary_scores, youden_threshold
from plid.utils.io import atomic_write, claim_output_dir, write_json
from plid.utils.sorting import natural_key

log = logging.getLogger(__name__)

TASKS = {"seg": 4, "cls": 2}  # task -> ndim of the saved probabilities
# classification: ROC AUC, since accuracy on a 5 % positive rate favours calling every disc negative
DEFAULT_METRIC = {"seg": "miou", "cls": "auc"}


@dataclass
class Run:
    name: str
    path: Path
    summary: dict[str, Any]
    splits: dict[str, Predictions]


def _has_predictions(path: Path) -> bool:
    return (path / "predictions" / "val.npz").is_file()


def resolve_runs(runs: str | list[str]) -> list[Path]:
    """Run dirs from paths or glob patterns; a dir without predictions that holds runs (a multirun) gives those."""
    patterns = [runs] if isinstance(runs, str) else list(runs or [])
    if not patterns:
        raise UserInputError("no runs given: pass runs='[dir1,dir2]' or a glob such as runs='logs/train/multiruns/<time>/*'")
    found: list[Path] = []
    for pattern in map(str, patterns):
        matches = sorted(glob.glob(str(Path(pattern).expanduser())), key=natural_key)
        if not matches:
            raise UserInputError(f"runs: {pattern} matches no file or folder")
        for match in map(Path, matches):
            if not match.is_dir():
                continue  # e.g. the multirun.yaml beside the job dirs
            if _has_predictions(match):
                found.append(match.resolve())
                continue
            jobs = [p.resolve() for p in sorted(match.iterdir(), key=natural_key) if p.is_dir() and _has_predictions(p)]
            if not jobs and any((match / "predictions").glob("*/val.npz")):
                raise UserInputError(f"run {match} is a multi-task classifier (model=grade_*: predictions per grading "
                                     f"in predictions/<grading>/); plid.ensemble does not combine those yet")
            if not jobs:
                raise UserInputError(f"run {match} has no predictions/val.npz (training writes it after testing: was "
                                     "the run finished, with test=true?) and holds no runs that have one")
            found.extend(jobs)
    unique = list(dict.fromkeys(found))
    if len(unique) < 2:
        raise UserInputError(f"an ensemble needs at least two runs; found {len(unique)}: {[str(p) for p in unique]}")
    return unique


def load_runs(paths: list[Path], task: str, data_root: str | None = None) -> list[Run]:
    """Each run's saved predictions, checked to cover the same cases and targets as the first run."""
    loaded = []
    for path in paths:
        summary_file = path / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        trained_on = Path(summary.get("data_root") or "").resolve()
        # the synthetic default's data.root is the cache folder that holds the generated dataset
        if data_root is not None and summary.get("data_root") and Path(data_root).resolve() not in (
                trained_on, *trained_on.parents):
            raise UserInputError(f"run {path} was trained on {summary['data_root']}, not on data.root={data_root}")
        splits = {s: load_predictions(path / "predictions" / f"{s}.npz") for s in SPLITS
                  if (path / "predictions" / f"{s}.npz").is_file()}
        for split, pred in splits.items():
            if pred.probs.ndim != TASKS[task]:
                raise UserInputError(f"run {path}: {split} probabilities have shape {pred.probs.shape}, not those of "
                                     f"task={task} ({TASKS[task]} dims); is it a run of the other task?")
        loaded.append((path, summary, splits))
    names = run_names([path for path, _, _ in loaded], [summary for _, summary, _ in loaded])
    runs = [Run(name, path, summary, splits) for name, (path, summary, splits) in zip(names, loaded)]
    reference = runs[0]
    for run in runs[1:]:
        if set(run.splits) != set(reference.splits):
            raise UserInputError(f"run {run.path} has predictions for {sorted(run.splits)}, but {reference.path} has "
                                 f"{sorted(reference.splits)}")
        for split, pred in run.splits.items():
            ref = reference.splits[split]
            if not np.array_equal(pred.ids, ref.ids):
                extra = sorted(set(pred.ids) ^ set(ref.ids))[:5]
                raise UserInputError(f"run {run.path}: its {split} cases differ from those of {reference.path} (e.g. "
                                     f"{extra}); ensemble runs of the same data, fold and split")
            if pred.probs.shape != ref.probs.shape:
                raise UserInputError(f"run {run.path}: {split} probabilities of shape {pred.probs.shape}, but "
                                     f"{ref.probs.shape} in {reference.path}; same image size and classes needed")
            if not np.array_equal(pred.targets, ref.targets):
                raise UserInputError(f"run {run.path}: its {split} targets differ from those of {reference.path} for "
                                     "the same case ids; were they trained on the same data?")
    return runs


def _scorer(task: str, pred: list[Predictions], metric: str, search: DictConfig | dict | None = None):
    probs, targets = [p.probs for p in pred], pred[0].targets
    if task == "cls":
        return ClassificationScorer(probs, targets, metric)
    search = search or {}
    return SegmentationScorer(probs, targets, metric, sample_pixels=search.get("sample_pixels"),
                              seed=search.get("seed", 0))


def _report(task: str, scorer, rows: dict[str, np.ndarray],
            thresholds: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    """Every score of each row (weight vector). Binary classification: accuracy, balanced accuracy, precision,
    recall, specificity and F1 at the row's decision threshold (``thresholds``, chosen on val), AUC as searched."""
    if task == "seg":
        c = scorer.num_classes
        names = CLASS_NAMES if c == len(CLASS_NAMES) else [f"class{k}" for k in range(c)]
        return {row: scorer.scores(vector, names) for row, vector in rows.items()}
    report = {}
    for row, vector in rows.items():
        scores = scorer.scores(vector)
        if thresholds is not None and scorer.binary:
            at = binary_scores(scorer.positive_probs(vector), scorer.targets.numpy(), thresholds[row])
            scores.update({k: at[k] for k in CLASSIFICATION_METRICS if k != "auc"}, threshold=thresholds[row])
        report[row] = scores
    return report


def _thresholds(scorer, rows: dict[str, np.ndarray]) -> dict[str, float] | None:
    """Each row's decision threshold on the class-1 probability, Youden's J on val (binary classification)."""
    if not getattr(scorer, "binary", False):
        return None
    targets = scorer.targets.numpy()
    return {row: youden_threshold(scorer.positive_probs(vector), targets) for row, vector in rows.items()}


def _table(summary: dict, split: str) -> pd.DataFrame:
    metric = summary["metric"]
    frame = pd.DataFrame(summary[split]).T
    if summary["task"] == "seg":  # Dice per class pooled over pixels (Table 4), then both foreground means
        classes = [c[len("iou_"):] for c in frame.columns if c.startswith("iou_") and c != "iou_background"]
        columns = [f"dice_{c}" for c in classes] + ["dice", "dice_per_case"]
        columns += [f"iou_{c}" for c in classes] + ["miou"]
    else:
        columns = [c for c in ("accuracy", "precision", "recall", "specificity", "f1", "auc", "threshold")
                   if c in frame.columns]
    table = frame[columns].copy()
    table.insert(0, f"val_{metric}", [summary["val"][row][metric] for row in table.index])
    table.index.name = "model"
    return table


def _markdown(table: pd.DataFrame, title: str) -> str:
    header = [table.index.name, *table.columns]
    lines = [f"{title}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in table.iterrows():
        lines.append("| " + " | ".join([str(name), *(f"{v:.4f}" for v in row)]) + " |")
    return "\n".join(lines) + "\n"


def ensemble(cfg: DictConfig) -> dict[str, Any]:
    """Search the WAE weights on val, report WAE, AEM and every model on val and test, write the outputs."""
    task = cfg.task
    if task not in TASKS:
        raise UserInputError(f"task={task!r}: one of {sorted(TASKS)}")
    metric = cfg.get("metric") or DEFAULT_METRIC[task]
    if not isinstance(cfg.search.get("max_candidates"), DictConfig):
        raise UserInputError(f"search.max_candidates={cfg.search.get('max_candidates')!r}: it is set per task, e.g. "
                             "search.max_candidates.seg=500000 search.max_candidates.cls=null (null: the whole grid)")
    output_dir = claim_output_dir(cfg.paths.output_dir, "ensemble_weights.json", cfg.get("overwrite", False))
    runs_arg = cfg.runs
    runs_arg = list(runs_arg) if isinstance(runs_arg, ListConfig) else runs_arg
    runs = load_runs(resolve_runs(runs_arg), task, (cfg.get("data") or {}).get("root"))
    names = [r.name for r in runs]
    log.info("Ensemble of %d runs: %s", len(runs), ", ".join(f"{r.name} <{r.path}>" for r in runs))

    search = cfg.search
    start = time.perf_counter()
    val = _scorer(task, [r.splits["val"] for r in runs], metric, search)
    prepared = time.perf_counter() - start
    exact = val.exact if task == "seg" else None
    result = search_weights(val, len(runs), search.step, exact_scorer=exact,
                            max_candidates=search.max_candidates[task], top_k=search.top_k)
    seconds = time.perf_counter() - start
    weights = result.weights()
    log.info("Search (%s): %d candidates in %.1f s; WAE val %s = %.4f", result.strategy, result.scored, seconds,
             metric, result.score)

    rows = {name: np.eye(len(runs), dtype=np.int64)[i] for i, name in enumerate(names)}
    rows["AEM"] = np.ones(len(runs), dtype=np.int64)
    rows["WAE"] = result.best
    thresholds = _thresholds(val, rows) if task == "cls" else None
    summary: dict[str, Any] = {
        "task": task, "metric": metric, "models": names,
        "weights": dict(zip(names, weights.tolist())),
        "runs": {r.name: str(r.path) for r in runs},
        "samples": {s: len(p) for s, p in runs[0].splits.items()},
        "search": {
            "strategy": result.strategy, "step": search.step, "unique_grid": result.unique_grid,
            "raw_grid": (result.levels + 1) ** len(runs), "scored": result.scored,
            "coarse_step": None if result.coarse_levels is None else 1 / result.coarse_levels,
            "hill_climb_rounds": result.rounds, "top_k_rescored": len(result.finalists),
            "seconds": round(seconds, 3), "seconds_preparing": round(prepared, 3),
            "candidates_per_second": round(result.scored / max(seconds, 1e-9), 1),
            # the best candidates of the search, re-scored exactly on val (seg: every pixel)
            "finalists": [{"weights": v, "score": score} for v, score in result.finalists[:5]],
        },
        "val_score": result.score,
        "val": _report(task, val, rows, thresholds),
    }
    if thresholds is not None:  # the WAE's decision threshold, chosen on its validation probabilities
        summary["threshold"] = thresholds["WAE"]
    if task == "seg":
        summary["search"]["pixels"] = {"total": val.total_pixels, "disagreement": val.disagreement_pixels,
                                       "two_class": val.pixels.pair_size, "sampled": val.sampled_pixels,
                                       "seed": search.seed}
    else:
        summary["search"]["cases"] = {"total": val.num_cases, "disagreement": int(val.open.sum()) if val.binary else None}
    if "test" in runs[0].splits:
        test = _scorer(task, [r.splits["test"] for r in runs], metric, {"sample_pixels": None})
        summary["test"] = _report(task, test, rows, thresholds)

    write_json(output_dir / "ensemble_weights.json", {
        "task": task, "metric": metric, "step": search.step,
        "formula": "sum_i w_i * probs_i / sum_i w_i",
        "weights": summary["weights"],
        "normalized_weights": dict(zip(names, (weights / weights.sum()).tolist())),
        "val_score": result.score,
        **({"threshold": summary["threshold"]} if "threshold" in summary else {}),
        "samples": summary["samples"],
        "runs": summary["runs"],
        "checkpoints": {r.name: r.summary.get("best_checkpoint") for r in runs},
    })
    write_json(output_dir / "summary.json", summary)
    split = "test" if "test" in summary else "val"
    table = _table(summary, split)
    with atomic_write(output_dir / "ensemble_table.csv") as handle:
        table.to_csv(handle, float_format="%.6g")
    title = f"WAE, AEM and single models on {split} ({summary['samples'][split]} cases); WAE weights searched on val {metric}"
    markdown = _markdown(table, title)
    with atomic_write(output_dir / "ensemble_table.md") as handle:
        handle.write(markdown)
    log.info("Weights: %s\n%s", summary["weights"], markdown)
    log.info("Outputs written to %s", output_dir)
    return summary
