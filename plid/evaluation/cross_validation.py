"""Cross-validation of training runs: every fold of a model config trained (or a finished multirun collected), each
run's saved val and test predictions scored with patient-level bootstrap intervals, the fold bag's pooled
out-of-fold decision, tables in the shape of the paper's Tables 2 and 4, and the figures beside them.

What ``python -m plid.evaluate model=...`` or ``runs=...`` runs (see :mod:`plid.evaluate`). Writes into the run's
folder ``evaluation.json`` (per fold and overall: mean, standard deviation over folds, bootstrap 95 % intervals over
patients), ``evaluation.md`` and figures: ``training_curves.png``, ``roc_val.png`` and ``confusion_val.png``
(classifiers), ``segmentation_grid.png`` (segmenters). A multi-task classifier's runs (``model=grade_*``) are scored
per grading, each on the discs that carry it: a binary grading as a classifier (at the run's threshold for it, chosen
on validation), an ordinal one by its grades (balanced accuracy, quadratic-weighted kappa, within one grade), with
``roc_val_<grading>.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from plid.datamodules import splits as splits_lib
from plid.datamodules.contract import load_dataset
from plid.ensemble.folds import DEFAULT_POLICY, GradingPolicy, bag_mean, is_fold_bag, out_of_fold, pooled_decision
from plid.ensemble.predictions import Predictions, load_predictions
from plid.errors import UserInputError
from plid.labels import CLASS_NAMES, grading
from plid.metrics import (
    CLASSIFICATION_METRICS,
    DEFAULT_THRESHOLD,
    binary_scores,
    case_segmentation_scores,
    confusions_per_case,
    distinct_discs,
    fold_summary,
    grade_of_distribution,
    ordinal_scores,
    patient_bootstrap,
    predicted_classes,
)
from plid.utils.io import atomic_write, write_json
from plid.utils.sorting import natural_key

log = logging.getLogger(__name__)
# the segmentation figures of the tables (paper Table 4): dice / dice_<class> pooled over the pixels of all cases
# (dice_pooled), dice_per_case: nnU-Net's per-case mean (plid.metrics)
SEGMENTATION_TABLE = ("dice", "dice_per_case", "miou", "miou_fg", *(f"dice_{c}" for c in CLASS_NAMES[1:]),
                      *(f"dice_per_case_{c}" for c in CLASS_NAMES[1:]), *(f"iou_{c}" for c in CLASS_NAMES[1:]))
ORDINAL_TABLE = ("balanced_accuracy", "kappa", "within_one", "accuracy")
TABLES = {"cls": CLASSIFICATION_METRICS, "seg": SEGMENTATION_TABLE, "ordinal": ORDINAL_TABLE}


def fold_plan(cfg: DictConfig, folds: list[int]) -> dict[int, dict[str, list[str]]]:
    """Train/val/test patients of each fold from the data config's splits; refuses overlapping val sets."""
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.patient_splits()
    plan = {k: splits_lib.fold_patients(datamodule.splits, k) for k in folds}
    check_disjoint_folds(plan)
    return plan


def check_disjoint_folds(plan: dict[int, dict[str, list[str]]]) -> None:
    """No patient in two folds' validation sets, nor in a val set and the test set."""
    seen: dict[str, int] = {}
    for k, parts in plan.items():
        for patient in parts["val"]:
            if patient in seen:
                raise UserInputError(f"patient {patient} is in the validation sets of folds {seen[patient]} and {k}")
            seen[patient] = k
        leaked = set(parts["val"]) & set(parts["test"])
        if leaked:
            raise UserInputError(f"fold {k}: patients {sorted(leaked)[:5]} are in both val and test")


def run_folds(cfg: DictConfig, output_dir: Path) -> list[Path]:
    """Train and test one run per fold into ``output_dir/fold_<k>`` (each with its .hydra/config.yaml)."""
    from plid.training import train

    folds = list(cfg.folds) if cfg.get("folds") is not None else list(range(int(cfg.data.num_folds)))
    plan = fold_plan(cfg, folds)
    runs = []
    for k in folds:
        log.info("Fold %d: %d train, %d val, %d test patients", k, *(len(plan[k][s]) for s in ("train", "val", "test")))
        fold_cfg = cfg.copy()
        run = output_dir / f"fold_{k}"
        with open_dict(fold_cfg):
            fold_cfg.data.fold = k
            fold_cfg.paths.output_dir = str(run)
            for key in ("runs", "folds", "bootstrap", "plots"):
                fold_cfg.pop(key, None)
        (run / ".hydra").mkdir(parents=True, exist_ok=True)
        with atomic_write(run / ".hydra" / "config.yaml") as handle:
            handle.write(OmegaConf.to_yaml(fold_cfg))
        train(fold_cfg)
        runs.append(run)
    return runs


def collect_runs(runs: str | list[str]) -> list[Path]:
    """Run folders (with summary.json) from a list, a glob, or a multirun folder holding one per job."""
    items = [runs] if isinstance(runs, str) else list(runs)
    found: list[Path] = []
    for item in items:
        path = Path(str(item)).expanduser()
        matches = sorted(Path().glob(str(item)) if not path.is_absolute() else Path("/").glob(str(path)[1:]))
        for match in matches or [path]:
            if (match / "summary.json").is_file():
                found.append(match.resolve())
            elif match.is_dir():
                found += sorted((p.resolve() for p in match.iterdir() if (p / "summary.json").is_file()),
                                key=lambda p: natural_key(p.name))
    if not found:
        raise UserInputError(f"runs={runs}: no run folder with a summary.json there")
    return found


def _task(summary: dict) -> str:
    task = summary.get("task", "")
    if summary.get("targets"):  # a multi-task classifier (model=grade_*)
        return "grade"
    if "Segmentation" in task:
        return "seg"
    if "Classification" in task:
        return "cls"
    raise UserInputError(f"task {task!r}: evaluate reads segmentation and classification runs")


def split_scores(task: str, predictions: Predictions, patient_of: dict[str, str], bootstrap: dict,
                 threshold: float | np.ndarray = DEFAULT_THRESHOLD) -> dict:
    """Every metric of one split with its patient-level bootstrap interval; a classifier's cases are called positive
    above ``threshold`` (its run's, chosen on validation; one per case for pooled folds), an ordinal grading's
    grade is the saved distribution's at the cuts given as ``threshold`` (K-1 values, or a row per case)."""
    images = [str(i).split(":")[0] for i in predictions.ids]
    missing = sorted({i for i in images if i not in patient_of})
    if missing:
        raise UserInputError(f"cases {missing[:3]} are not images of the run's dataset; was it trained on another one?")
    patients = [patient_of[i] for i in images]
    if task == "cls":
        positive, targets = predictions.probs[:, 1].astype(np.float64), predictions.targets
        thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64), positive.shape)

        def statistic(index):
            scores = binary_scores(positive[index], targets[index], thresholds[index])
            return {name: scores[name] for name in CLASSIFICATION_METRICS}
    elif task == "ordinal":
        grades = grade_of_distribution(predictions.probs, threshold)
        targets, num_classes = predictions.targets, predictions.probs.shape[1]

        def statistic(index):
            scores = ordinal_scores(grades[index], targets[index], num_classes)
            return {name: scores[name] for name in ORDINAL_TABLE}
    else:
        probs = torch.from_numpy(predictions.probs.astype(np.float32))
        confusions = confusions_per_case(predicted_classes(probs), torch.from_numpy(predictions.targets),
                                         probs.shape[1]).numpy()

        def statistic(index):
            scores = case_segmentation_scores(confusions[index], CLASS_NAMES)
            return {name: scores[name] for name in SEGMENTATION_TABLE}
    scores = patient_bootstrap(patients, statistic, **bootstrap)
    counted = {}
    if task == "cls":  # positive crops, and the distinct discs they show (case ids are <image>:<ivd_label>)
        positive = np.flatnonzero(predictions.targets == 1)
        levels = [_case_level(predictions.ids[i]) for i in positive]
        counted = {"positives": len(positive),
                   "positive_discs": distinct_discs([patients[i] for i in positive], levels)}
    return {"cases": len(predictions), "patients": len(set(patients)), **counted, "metrics": scores}


def _case_level(case_id) -> int | None:
    """The ``ivd_label`` of a disc crop's case id ``<image>:<ivd_label>`` (None where the disc has none)."""
    _, _, level = str(case_id).partition(":")
    return int(level) if level.isdigit() else None


def chosen_on_validation(summary: dict, name: str) -> float | list[float]:
    """A multi-task run's decision for grading ``name``, as its summary.json states it: a binary grading's threshold,
    an ordinal grading's cuts (0.5 each for a run of an older plid, CORAL's rule)."""
    if grading(name).ordinal:
        return [float(c) for c in (summary.get("cuts") or {}).get(name, [0.5] * (grading(name).num_classes - 1))]
    return float((summary.get("thresholds") or {}).get(name, DEFAULT_THRESHOLD))


def evaluate_runs(runs: list[Path], output_dir: Path, bootstrap: dict, plots: bool = True,
                  policy: GradingPolicy = DEFAULT_POLICY) -> dict[str, Any]:
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    tasks = {_task(s) for s in summaries}
    if len(tasks) != 1:
        raise UserInputError(f"runs mix tasks {sorted(tasks)}; evaluate one model config at a time")
    task = tasks.pop()
    roots = {s.get("data_root") for s in summaries}
    if len(roots) != 1:
        raise UserInputError(f"runs were trained on different datasets: {sorted(map(str, roots))}")
    dataset = load_dataset(roots.pop())
    patient_of = dict(zip(dataset.images["image"].astype(str), dataset.images["patient"].astype(str)))
    result: dict[str, Any] = {"task": task, "model": summaries[0].get("choices", {}).get("model"),
                              "data_root": str(dataset.root), "bootstrap": bootstrap,
                              "gradings_policy": policy.describe()}
    if task == "grade":
        targets = {tuple(s["targets"]) for s in summaries}
        if len(targets) != 1:
            raise UserInputError(f"runs learn different gradings {sorted(targets)}; evaluate one model config at a time")
        result["gradings"], val_sets = {}, {}
        for name in targets.pop():
            kind = "ordinal" if grading(name).ordinal else "cls"
            scores, val_sets[name] = score_runs(
                kind, runs, summaries, patient_of, bootstrap, Path("predictions") / name,
                lambda summary, name=name: chosen_on_validation(summary, name), policy)
            result["gradings"][name] = {"kind": kind, **scores}
    else:
        scores, val_sets = score_runs(task, runs, summaries, patient_of, bootstrap, Path("predictions"),
                                      lambda summary: float(summary.get("threshold") or DEFAULT_THRESHOLD), policy)
        result.update(scores)
    write_json(output_dir / "evaluation.json", result)
    with atomic_write(output_dir / "evaluation.md") as handle:
        handle.write(markdown_tables(result))
    if plots:
        folds = [summary.get("fold") for summary in summaries]
        result["figures"] = make_figures(result, dict(zip(folds, runs)), val_sets, dataset, output_dir)
        write_json(output_dir / "evaluation.json", result)
    log.info("Evaluation written to %s\n%s", output_dir / "evaluation.json", markdown_tables(result))
    return result


def score_runs(task: str, runs: list[Path], summaries: list[dict], patient_of: dict[str, str], bootstrap: dict,
               predictions_dir: Path, threshold_of, policy: GradingPolicy = DEFAULT_POLICY
               ) -> tuple[dict[str, Any], dict[int, Predictions]]:
    """Per fold (val and test) and overall (mean ± std over folds, pooled out-of-fold val) scores of the runs'
    saved predictions under ``<run>/<predictions_dir>``, a classifier's at each run's ``threshold_of(summary)`` (an
    ordinal grading's cuts); and each fold's validation predictions."""
    folds, val_sets, thresholds = [], {}, {}
    decided = {"cls": "threshold", "ordinal": "cuts"}.get(task)
    for run, summary in zip(runs, summaries):
        entry: dict[str, Any] = {"fold": summary.get("fold"), "run": str(run)}
        if decided:  # each fold's classifier at its own threshold (cuts), chosen on its validation split
            entry[decided] = thresholds[entry["fold"]] = threshold_of(summary)
        for split in ("val", "test"):
            path = run / predictions_dir / f"{split}.npz"
            if path.is_file():
                predictions = load_predictions(path)
                entry[split] = split_scores(task, predictions, patient_of, bootstrap, entry.get(decided, DEFAULT_THRESHOLD))
                if split == "val":
                    val_sets[entry["fold"]] = predictions
        folds.append(entry)
    fold_ids = [f["fold"] for f in folds]
    if len(set(fold_ids)) != len(fold_ids):
        raise UserInputError(f"runs hold folds {fold_ids}: a fold appears twice")
    val_patients = {k: sorted({patient_of[str(i).split(':')[0]] for i in p.ids}) for k, p in val_sets.items()}
    check_disjoint_folds({k: {"val": v, "test": []} for k, v in val_patients.items()})
    overall: dict[str, Any] = {}
    for split in ("val", "test"):
        per_fold = [{k: v["value"] for k, v in f[split]["metrics"].items()} for f in folds if split in f]
        if per_fold:
            overall[f"{split}_mean_std"] = fold_summary(per_fold)
    if val_sets:
        # out-of-fold predictions: with every fold present, each non-test patient once
        val_runs = {f["fold"]: Path(f["run"]) for f in folds if f["fold"] in val_sets}
        pooled = out_of_fold([val_runs[k] for k in val_sets], list(val_sets.values()))
        per_case = np.concatenate([np.array([thresholds.get(k, DEFAULT_THRESHOLD)] * len(p.ids), dtype=np.float64)
                                   for k, p in val_sets.items()])
        overall["val_pooled"] = split_scores(task, pooled, patient_of, bootstrap, per_case)
        if decided and len(val_sets) > 1:
            # each fold's val called at the threshold (cuts) the bag's rule chooses on the other folds' val: the
            # rule scored on discs that did not choose it, where val_pooled's own-fold choices flatter it
            others = {k: out_of_fold([val_runs[j] for j in val_sets if j != k],
                                     [q for j, q in val_sets.items() if j != k]) for k in val_sets}
            crossed = np.concatenate([np.array([pooled_decision(others[k], task == "ordinal", policy)] * len(p.ids),
                                               dtype=np.float64) for k, p in val_sets.items()])
            overall["val_cross_fitted"] = split_scores(task, pooled, patient_of, bootstrap, crossed)
        tests = [run / predictions_dir / "test.npz" for run in runs]
        if is_fold_bag(summaries) and all(path.is_file() for path in tests):
            # the runs as the fold bag plid.export makes of them: test probabilities averaged, a classifier called
            # at the threshold (an ordinal grading at the cuts) chosen on the pooled out-of-fold predictions
            bag = bag_mean([load_predictions(path) for path in tests])
            threshold = pooled_decision(pooled, task == "ordinal", policy) if decided else DEFAULT_THRESHOLD
            overall["test_bag"] = {**split_scores(task, bag, patient_of, bootstrap, threshold),
                                   **({decided: threshold} if decided else {})}
    return {"folds": folds, "overall": overall}, val_sets


def _cell(score: dict[str, float]) -> str:
    if np.isnan(score["value"]):
        return "n/a"
    if np.isnan(score["low"]):
        return f"{score['value']:.3f}"
    return f"{score['value']:.3f} ({score['low']:.3f}-{score['high']:.3f})"


def _mean_std(summary: dict[str, float]) -> str:
    if np.isnan(summary["mean"]):
        return "n/a"
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}" if not np.isnan(summary["std"]) else f"{summary['mean']:.3f}"


def markdown_tables(result: dict[str, Any]) -> str:
    """Rows: each fold on val (with its 95 % CI), mean ± std over folds, pooled out-of-fold val with its CI, and the
    same for the test set, with the fold bag (the folds' mean probabilities, a classifier at the threshold chosen on
    the pooled out-of-fold predictions); columns: the paper's metrics (Table 2 for classifiers, Table 4 for segmenters); a
    multi-task classifier's tables one per grading."""
    titles = {"cls": "classification (paper Table 2)", "seg": "segmentation (paper Table 4)",
              "grade": "every grading of a multi-task classifier"}
    lines = [f"# Cross-validation of {result.get('model') or 'the model'}: {titles[result['task']]}\n",
             f"Patient-level bootstrap 95 % intervals in brackets ({result['bootstrap']['samples']} resamples of "
             "patients); mean ± standard deviation over folds.\n"]
    if result["task"] == "grade":
        for name, scores in result["gradings"].items():
            lines += [f"\n## {name}\n", *_split_tables(scores, TABLES[scores["kind"]], level="###")]
    else:
        lines += _split_tables(result, TABLES[result["task"]], level="##")
    return "\n".join(lines) + "\n"


def _split_tables(scores: dict[str, Any], metrics, level: str) -> list[str]:
    lines = []
    for split in ("val", "test"):
        rows = [(f"fold {f['fold']}", [_cell(f[split]["metrics"][m]) for m in metrics]) for f in scores["folds"]
                if split in f]
        if not rows:
            continue
        overall = scores["overall"]
        rows.append(("mean ± std", [_mean_std(overall[f"{split}_mean_std"][m]) for m in metrics]))
        if split == "val" and "val_pooled" in overall:
            rows.append(("pooled out-of-fold", [_cell(overall["val_pooled"]["metrics"][m]) for m in metrics]))
        if split == "val" and "val_cross_fitted" in overall:
            rows.append(("pooled, each fold at the other folds' choice",
                         [_cell(overall["val_cross_fitted"]["metrics"][m]) for m in metrics]))
        if split == "test" and "test_bag" in overall:  # the folds' mean, as a model_dir's fold bag predicts
            rows.append(("fold bag (mean)", [_cell(overall["test_bag"]["metrics"][m]) for m in metrics]))
        counts = "; ".join(f"fold {f['fold']}: {f[split]['cases']} cases of {f[split]['patients']} patients"
                           + (f", {f[split]['positives']} positive ({f[split]['positive_discs']} distinct discs)"
                              if "positives" in f[split] else "")
                           for f in scores["folds"] if split in f)
        lines += [f"\n{level} {split}\n", f"{counts}\n", "| | " + " | ".join(metrics) + " |",
                  "|---" * (len(metrics) + 1) + "|"]
        lines += ["| " + name + " | " + " | ".join(cells) + " |" for name, cells in rows]
    return lines


def make_figures(result: dict[str, Any], runs: dict[int, Path], val_sets: dict, dataset, output_dir: Path
                 ) -> dict[str, str]:
    """Training curves of every fold's run (``runs``: fold -> run folder) and the figures of ``result["task"]``
    from the folds' validation predictions (``val_sets``: fold -> predictions; per grading for a multi-task one)."""
    from plid import plots

    task, figures = result["task"], {}
    monitored = {"cls": "val/auc", "seg": "val/dice", "grade": "val/score"}[task]
    logs = {f"fold {k}": run / "csv" / "metrics.csv" for k, run in runs.items()}
    curves = plots.training_curves(logs, output_dir / "training_curves.png", ["train/loss", "val/loss", monitored])
    if curves:
        figures["training_curves"] = str(curves)
    if task == "grade":  # a ROC curve of each binary grading, out-of-fold val
        for name, scores in result["gradings"].items():
            if scores["kind"] == "cls" and val_sets[name]:
                positive, targets = _pooled_binary(val_sets[name])
                figures[f"roc_{name}"] = str(plots.roc_curve(positive, targets, output_dir / f"roc_val_{name}.png",
                                                             f"ROC {name}, out-of-fold val"))
        return figures
    pooled = list(val_sets.values())
    if task == "cls":
        positive, targets = _pooled_binary(val_sets)
        figures["roc"] = str(plots.roc_curve(positive, targets, output_dir / "roc_val.png", "ROC, out-of-fold val"))
        # each fold's val called at that fold's threshold, as val_pooled's table calls it
        chosen = {f["fold"]: f.get("threshold", DEFAULT_THRESHOLD) for f in result["folds"]}
        called_at = np.concatenate([np.full(len(p.ids), chosen[k], dtype=np.float64) for k, p in val_sets.items()])
        figures["confusion"] = str(plots.confusion_matrix(positive, targets, output_dir / "confusion_val.png",
                                                          called_at))
        return figures
    # the paper's Figure 6: some validation cases of the first fold, image / ground truth / prediction
    first = pooled[0]
    first_run = next(iter(runs.values()))
    cfg = OmegaConf.load(first_run / ".hydra" / "config.yaml") if (first_run / ".hydra" / "config.yaml").is_file() \
        else None
    images = _network_inputs(dataset, first.ids[:6], cfg)
    if images is not None:
        figures["segmentation_grid"] = str(plots.segmentation_grid(
            images, first.targets[:6], first.probs[:6].argmax(1), [str(i) for i in first.ids[:6]],
            output_dir / "segmentation_grid.png"))
    return figures


def _pooled_binary(val_sets: dict[int, Predictions]) -> tuple[np.ndarray, np.ndarray]:
    """Positive-class probabilities and targets of every fold's validation cases, one after the other."""
    return (np.concatenate([p.probs[:, 1] for p in val_sets.values()]).astype(float),
            np.concatenate([p.targets for p in val_sets.values()]))


def _network_inputs(dataset, ids, cfg) -> list[np.ndarray] | None:
    """The images the segmenter saw (lumbar crop as in training, resized), or None where that is not known."""
    from plid.datamodules.segmentation import load_roi

    if cfg is None:
        return None
    rows = dataset.images.set_index("image")
    out = []
    for case in ids:
        row = rows.loc[str(case)]
        row = type("Row", (), {"image": str(case), **row.to_dict()})
        image, _ = load_roi(dataset, row, cfg.data.get("roi", "gt"), int(cfg.data.image_size),
                            float(cfg.data.get("roi_margin", 0.1)))
        out.append(image)
    return out
