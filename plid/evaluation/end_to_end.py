"""The end-to-end evaluation of a model_dir: the inference pipeline run as ``plid.predict`` runs it on every image
of a split of a labelled folder, its reports scored against the folder's labels (:mod:`plid.evaluation.scoring`),
every figure with a patient-level bootstrap interval, overall and per series type.

    python -m plid.evaluate model_dir=models/plid data.root=/data/spider2d split=test

Writes into its folder: ``evaluation.json`` (every figure with its interval, counts, per-image details),
``evaluation.md`` (the tables), ``roc_<grading>.png`` and ``reliability_<grading>.png``, ``failures.html`` (the
images where a disc was missed, an extra box found or a level wrong, worst first, with overlays that show the
labelled discs beside the reported ones) and ``predict/`` (what ``plid.predict`` writes for those images).
"""

from __future__ import annotations

import html
import logging
import os
import urllib.parse
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from plid.datamodules.contract import LUMBAR_BOX, SpineDataset, find_problems
from plid.errors import UserInputError
from plid.evaluation.per_disc import per_disc_section
from plid.evaluation.schema import check_evaluation
from plid.evaluation.scoring import (
    EndToEndScores,
    ImageScore,
    crop_confusion,
    graded_columns,
    image_truths,
    score_image,
)
from plid.inference.batch import predict_files, resolve
from plid.inference.pipeline import Pipeline
from plid.labels import CLASS_NAMES
from plid.metrics import batched_patient_bootstrap
from plid.reports import disc_decisions
from plid.utils.io import atomic_write, json_safe, write_json
from plid.utils.provenance import provenance

log = logging.getLogger(__name__)
SPLITS = ("test", "val", "train", "all")
DETECTION_FIGURES = ("lumbar_iou_median", "lumbar_iou_at_least_0.5", "no_lumbar_region", "disc_precision",
                     "disc_recall", "disc_f1", "disc_map50")
LEVEL_FIGURES = ("level_accuracy", "images_all_levels_right", "images_found_levels_right",
                 "images_all_levels_right_by_centre", "missed_discs_flagged", "level_accuracy_where_certain",
                 "images_levels_certain")
GRADING_FIGURES = ("auc", "pr_auc", "balanced_accuracy", "sensitivity", "specificity", "brier")


def split_images(dataset: SpineDataset, patients: dict[str, list[str]], split: str) -> list[str]:
    """The images of ``split`` (``test``, ``val``, ``train`` of the fold, or ``all``), in the folder's order."""
    if split not in SPLITS:
        raise UserInputError(f"split={split!r} is not one of {SPLITS}")
    keep = set(dataset.images["patient"]) if split == "all" else set(patients[split])
    images = dataset.images.loc[dataset.images["patient"].isin(keep), "image"].astype(str).tolist()
    if not images:
        raise UserInputError(f"split={split} of {dataset.root} holds no image (patients: {len(keep)})")
    return images


def check_labelled(dataset: SpineDataset) -> None:
    """Refuse a folder with nothing to score against (no disc boxes, no lumbar boxes and no masks), or one with
    bad rows (training's data check: an image or disc listed twice would count twice, a level outside the
    contract would be scored as a level), naming the first row."""
    images = dataset.images
    lumbar = all(c in images.columns for c in LUMBAR_BOX) and images[LUMBAR_BOX].notna().all(axis=1).any()
    masks = "has_mask" in images.columns and (images["has_mask"] == 1).any()
    if len(dataset.discs) == 0 and not lumbar and not masks:
        raise UserInputError(
            f"{dataset.root} holds no labels (no discs.csv rows, no lumbar boxes in images.csv, no masks): there is "
            f"nothing to score the reports against. To get reports of unlabelled scans, run python -m plid.predict "
            f"input={dataset.root / 'images'}")
    problems = find_problems(dataset)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserInputError(f"{dataset.root}: {problems[0]}{more}; fix the labels before scoring against them")


def evaluate_model_dir(pipeline: Pipeline, dataset: SpineDataset, images: list[str], out: Path, split: str,
                       bootstrap: dict[str, Any], max_failures: int = 50, progress: bool = True) -> dict[str, Any]:
    """Predict on ``images`` of ``dataset`` with ``pipeline`` and score the reports; writes every output file."""
    check_labelled(dataset)
    truths = {t.image: t for t in image_truths(dataset, images)}
    confusions: dict[str, np.ndarray] = {}

    def score_mask(scan, result) -> None:  # masks are scored as they come, not kept
        truth = truths.get(scan.name)
        if truth is not None and truth.has_mask:
            crop_box = (result.report.get("segmentation") or {}).get("crop_box")
            confusions[scan.name] = crop_confusion(result.mask, dataset.read_mask(scan.name), crop_box)

    summary = predict_files([dataset.image_path(i) for i in images], pipeline, out / "predict", progress=progress,
                            on_result=score_mask)
    if summary["errors"]:
        raise UserInputError(f"{len(summary['errors'])} images of {dataset.root} could not be read, e.g. "
                             f"{summary['errors'][0]['error']}; fix or remove them from images.csv")
    # report.json's paths are relative to its folder: the failure pages open the files they name
    reports = {case["name"]: {**case, **{key: str(resolve(case.get(key), out / "predict")) for key in ("file", "overlay")
                                         if case.get(key)}} for case in summary["cases"]}
    labelled = graded_columns(dataset)
    # the gradings the model_dir decides, and the threshold each binary one was called at (the same on every disc)
    decided = [made for case in summary["cases"] for d in case.get("discs", []) for made in disc_decisions(d).values()]
    binary_thresholds = {made.grading: made.threshold for made in decided if made.kind == "binary"}
    predicted = sorted(binary_thresholds)
    skipped = {g: f"{dataset.root} does not label {g}" for g in predicted if g not in labelled}
    bag, in_sample = pipeline.models.bag, None
    trained_here = bag and (not bag.get("data_root") or Path(bag["data_root"]).resolve() == Path(dataset.root).resolve())
    if trained_here and split != "test":  # every patient outside the test split trained some of the bag's runs
        in_sample = (f"in sample: the fold bag's runs (folds {bag['folds']}) trained on patients of split={split}; "
                     f"its out-of-fold validation AUCs are the manifest's bag.pooled_val, and python -m plid.evaluate "
                     f"runs=[<the bag's runs>] scores the pooled out-of-fold predictions with intervals)")
        skipped.update({g: in_sample for g in predicted if g not in skipped})
    for grading, reason in skipped.items():
        log.warning("grading %s skipped: %s", grading, reason)
    thresholds = {g: float(binary_thresholds[g]) for g in predicted if g not in skipped}
    ordinal = sorted({made.grading for made in decided if made.kind == "ordinal"})
    for g in [g for g in ordinal if g not in labelled or in_sample]:
        skipped[g] = f"{dataset.root} does not label {g}" if g not in labelled else in_sample
        log.warning("grading %s skipped: %s", g, skipped[g])
    ordinal = [g for g in ordinal if g not in skipped]
    scores = []
    for image in images:
        score = score_image(reports[image], truths[image], list(thresholds), ordinal)
        score.confusion = confusions.get(image)
        scores.append(score)
    figures = EndToEndScores(scores, thresholds, ordinal)
    series = sorted({s.series for s in scores})
    groups = {"all": np.arange(len(scores))}
    if len(series) > 1:
        groups.update({name: np.flatnonzero([s.series == name for s in scores]) for name in series})
    result: dict[str, Any] = {
        "model_dir": str(pipeline.models.root), "levels": pipeline.levels, "data_root": str(dataset.root),
        "split": split,
        "bootstrap": bootstrap, "thresholds": thresholds, "ordinal_gradings": ordinal, "skipped_gradings": skipped,
        # whether each grading is stated by the reports (validated) or given as not validated (no finding called)
        "validated": {made.grading: made.validated for made in decided},
        "classifier_in_sample": in_sample,  # why the gradings are not scored on this split, or None
        "classifier": next((c["classifier"] for c in summary["cases"] if c.get("classifier")), None),
        "groups": {},
    }
    for name, index in groups.items():
        patients = [scores[i].patient for i in index]

        def statistic(counts, index=index):  # counts of the group's images -> counts of every image
            weights = np.zeros((len(counts), len(scores)))
            weights[:, index] = counts
            return figures.batch(weights)

        result["groups"][name] = {"counts": _counts(figures, index),
                                  "figures": batched_patient_bootstrap(patients, statistic, **bootstrap)}
    # one answer per distinct disc of each series, beside the per-slice figures above
    result["per_disc"] = per_disc_section(dataset, images, reports, truths, thresholds, ordinal, bootstrap)
    result["images"] = [_image_entry(s, reports[s.image], out) for s in scores]
    result["figures"] = _figures(figures, out)
    result["failures"] = write_failures(out / "failures.html", scores, reports, max_failures,
                                        result["per_disc"].get("series"))
    result["provenance"] = provenance(pipeline.models.root)
    check_evaluation(json_safe(result))
    write_json(out / "evaluation.json", result)
    with atomic_write(out / "evaluation.md") as handle:
        handle.write(markdown_tables(result))
    return result


def _counts(figures: EndToEndScores, index: np.ndarray) -> dict[str, Any]:
    counts = {
        "images": len(index), "patients": len({figures.scores[i].patient for i in index}),
        "labelled_discs": int(figures.references[index].sum()), "reported_discs": int(figures.reported[index].sum()),
        "matched_discs": int(figures.matched[index].sum()),
        "images_with_lumbar_box": int((~np.isnan(figures.lumbar_iou[index])).sum()),
        "images_without_lumbar_region": int((figures.lumbar_found[index] == 0).sum()),
        "matched_discs_with_level": int(figures.levels_labelled[index].sum()),
        "images_with_levels": int((~np.isnan(figures.all_levels_right[index])).sum()),
        "images_with_mask": int(figures.has_confusion[index].sum()),
    }
    for grading in figures.thresholds:
        discs, positives, distinct = figures.positives(grading, index)
        counts[f"{grading}/discs"], counts[f"{grading}/positives"] = discs, positives
        counts[f"{grading}/positive_discs"] = distinct
    for grading in figures.ordinal:
        counts[f"{grading}/discs"] = figures.ordinal_discs(grading, index)
    return counts


def _image_entry(score: ImageScore, report: dict[str, Any], out: Path) -> dict[str, Any]:
    return {"image": score.image, "patient": score.patient, "series": score.series, "lumbar_iou": score.lumbar_iou,
            "labelled_discs": score.reference_discs, "reported_discs": len(score.detections),
            "matched_discs": score.matched, "missed": score.missed, "extra": score.extra,
            "wrong_levels": score.wrong_levels,
            "overlay": Path(os.path.relpath(report["overlay"], out)).as_posix() if report.get("overlay") else None}


def _figures(figures: EndToEndScores, out: Path) -> dict[str, str]:
    """ROC curve and reliability diagram of each grading, over every matched disc."""
    from plid import plots

    written = {}
    for grading in figures.thresholds:
        rows = figures.grading_rows(grading)
        probability, target = rows[:, 0], rows[:, 1].astype(int)
        if len(rows) and 0 < target.sum() < len(target):
            written[f"roc_{grading}"] = Path(plots.roc_curve(probability, target, out / f"roc_{grading}.png",
                                                             f"ROC, {grading}, matched discs")).name
        if len(rows):
            written[f"reliability_{grading}"] = Path(plots.reliability_diagram(
                probability, target, out / f"reliability_{grading}.png", f"reliability, {grading}, matched discs")).name
    return written


# BGR: labelled discs the report missed, reported boxes that match no labelled disc, discs with a wrong level
MISSED_COLOUR, EXTRA_COLOUR, WRONG_COLOUR = (0, 220, 255), (255, 0, 255), (0, 0, 255)


def failure_overlay(score: ImageScore, report: dict[str, Any], image: np.ndarray) -> np.ndarray:
    """The report's overlay with what went wrong drawn on it: missed labelled discs, extra boxes, wrong levels."""
    canvas = cv2.imread(str(report["overlay"]), cv2.IMREAD_COLOR) if report.get("overlay") else None
    if canvas is None:
        canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    scale = canvas.shape[1] / image.shape[1]

    def draw(box, colour, text):
        x1, y1, x2, y2 = (int(round(v * scale)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2 - 1, y2 - 1), colour, 2)
        cv2.putText(canvas, text, (max(0, x1 - 4 - 9 * len(text)), (y1 + y2) // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, colour, 1, cv2.LINE_AA)

    for disc in score.missed:
        draw(disc["box"], MISSED_COLOUR, f"missed {disc['level'] or ''}".strip())
    for disc in score.extra:
        draw(disc["box"], EXTRA_COLOUR, "extra")
    for disc in score.wrong_levels:
        draw(disc["box"], WRONG_COLOUR, f"is {disc['reference_level']}")
    return canvas


def _series_rows(series: list[dict[str, Any]]) -> tuple[str, int]:
    """A failing series as one row: its discs missed and misnamed, decided once from all its slices (per_disc)."""
    rows = []
    for entry in series:
        discs = entry.get("discs") or []
        if entry.get("all_levels_right") or not discs:  # right, or nothing labelled to be wrong about
            continue
        missed = [str(d["ivd_label"]) for d in discs if not d.get("found")]
        misnamed = [f"{d['ivd_label']} named {d['reported_level']}" for d in discs
                    if d.get("found") and d.get("reported_level") != d["ivd_label"]]
        rows.append(f"<tr><td>{html.escape(str(entry['patient']))}</td><td>{html.escape(str(entry['series']))}</td>"
                    f"<td>{entry.get('images')}</td><td>{len(discs)}</td><td>{html.escape(', '.join(missed) or '-')}</td>"
                    f"<td>{html.escape(', '.join(misnamed) or '-')}</td></tr>")
    if not rows:
        return "", 0
    table = ("<h2>Series with a disc missed or misnamed (each series once, its discs decided from all its slices)</h2>"
             "<table><tr><th>patient</th><th>series</th><th>images</th><th>labelled discs</th><th>missed (level)</th>"
             f"<th>misnamed</th></tr>{''.join(rows)}</table>")
    return table, len(rows)


def write_failures(path: Path, scores: list[ImageScore], reports: dict[str, dict[str, Any]], max_images: int,
                   series: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``failures.html``: the series with a disc missed or misnamed, one row each (``series``: per_disc's), then the
    images with a missed disc, an extra box, a wrong level or no lumbar region, worst first (most problems), at most
    ``max_images`` of them drawn."""
    from plid.inference.render import write_png

    failed = sorted((s for s in scores if s.problems), key=lambda s: (-s.problems, s.image))
    sections = []
    for score in failed[:max_images]:
        report = reports[score.image]
        image = cv2.imread(str(report["file"]), cv2.IMREAD_GRAYSCALE)
        drawn = write_png(path.parent / "failures" / f"{score.image}.png", failure_overlay(score, report, image))
        problems = []
        if not score.lumbar_found:
            problems.append("no lumbar region found")
        if score.missed:
            problems.append(f"{len(score.missed)} labelled disc(s) missed (levels "
                            f"{', '.join(str(d['level']) for d in score.missed if d['level'] is not None) or 'unknown'})")
            boxed = sum(d["reported_at_centre"] for d in score.missed)
            if boxed:
                problems.append(f"{boxed} of them reported, with their level, centred inside the labelled box "
                                "(boxed differently: IoU under 0.5)")
        if score.extra:
            problems.append(f"{len(score.extra)} extra box(es)")
        if score.wrong_levels:
            problems.append("wrong level: " + ", ".join(f"reported {d['level']}, is {d['reference_level']}"
                                                         for d in score.wrong_levels))
        sections.append(
            f"<section><h2>{html.escape(score.image)} <small>patient {html.escape(score.patient)}, "
            f"{html.escape(score.series)}</small></h2><img src='{html.escape(urllib.parse.quote(os.path.relpath(drawn, path.parent)))}'>"
            f"<ul>{''.join(f'<li>{html.escape(p)}</li>' for p in problems)}</ul>"
            f"<p>{score.reference_discs} labelled discs, {len(score.detections)} reported, {score.matched} matched</p>"
            "</section>")
    series_table, failing_series = _series_rows(series or [])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>plid evaluation: failures</title><style>
body{{font-family:sans-serif;margin:2em}} section{{margin-bottom:2em}} img{{max-width:640px;display:block}}
td,th{{padding:0.2em 0.6em;border-bottom:1px solid #ddd;text-align:left}}
.key span{{padding:0 0.5em;font-weight:bold}}</style></head><body>
<h1>Failures: {failing_series} of {sum(bool(e.get("discs")) for e in series or [])} series with labelled discs,
{len(failed)} of {len(scores)} images</h1>
{series_table}
<p class="key">Drawn over each report's overlay: <span style="color:#ffdc00;background:#333">missed labelled disc</span>
<span style="color:#ff00ff">extra box</span> <span style="color:#ff0000">wrong level (the labelled level beside it)</span>.
Worst first (most problems){f'; the first {max_images} of {len(failed)} shown' if len(failed) > max_images else ''}.</p>
{''.join(sections) or '<p>No failure: every labelled disc found with its level, no extra box.</p>'}</body></html>
"""
    with atomic_write(path) as handle:
        handle.write(page)
    return {"page": path.name, "series": failing_series, "images": len(failed), "drawn": min(len(failed), max_images)}


def _cell(score: dict[str, float] | None) -> str:
    if score is None or score["value"] is None or np.isnan(score["value"]):
        return "n/a"
    if score["low"] is None or np.isnan(score["low"]):
        return f"{score['value']:.3f}"
    return f"{score['value']:.3f} ({score['low']:.3f}-{score['high']:.3f})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def markdown_tables(result: dict[str, Any]) -> str:
    """Tables a paper could print: detection, levels, each grading, segmentation; one row per series type."""
    groups = result["groups"]
    b = result["bootstrap"]
    lines = [f"# End-to-end evaluation: split `{result['split']}` of `{result['data_root']}`\n",
             f"model_dir `{result['model_dir']}`. {groups['all']['counts']['images']} images of "
             f"{groups['all']['counts']['patients']} patients. Every figure with its patient-level bootstrap "
             f"{b['confidence']:.0%} interval ({b['samples']} resamples of patients).\n"]
    f = {name: g["figures"] for name, g in groups.items()}
    c = {name: g["counts"] for name, g in groups.items()}
    lines += ["## Lumbar region and discs (IoU ≥ 0.5, one-to-one)\n"]
    lines += _table(["series", "images", "lumbar IoU (median)", "lumbar IoU ≥ 0.5", "no lumbar region",
                     "disc precision", "disc recall", "disc F1", "disc mAP50", "discs labelled / reported / matched"],
                    [[n, str(c[n]["images"]), *(_cell(f[n].get(k)) for k in DETECTION_FIGURES),
                      f"{c[n]['labelled_discs']} / {c[n]['reported_discs']} / {c[n]['matched_discs']}"] for n in groups])
    lines += ["\n## Levels (matched discs with a labelled `ivd_label`)\n"]
    lines += _table(["series", "level accuracy", "images with every level right",
                     "images whose found discs all have the right level",
                     "images with every level right, matched by centre (box size not judged)",
                     "missed discs flagged as suspected",
                     "level accuracy where the report says certain", "images said certain",
                     "matched discs with a level", "images with levels"],
                    [[n, *(_cell(f[n].get(k)) for k in LEVEL_FIGURES), str(c[n]["matched_discs_with_level"]),
                      str(c[n]["images_with_levels"])] for n in groups])
    for grading, threshold in result["thresholds"].items():
        lines += [f"\n## {grading} (matched discs; threshold {threshold:g})\n", *_stated(result, grading)]
        lines += _table(["series", "positives (distinct discs) / discs", "ROC AUC", "PR AUC", "balanced accuracy",
                         "sensitivity", "specificity", "Brier"],
                        [[n, f"{c[n][f'{grading}/positives']} ({c[n][f'{grading}/positive_discs']}) / "
                             f"{c[n][f'{grading}/discs']}",
                          *(_cell(f[n].get(f"{grading}/{k}")) for k in GRADING_FIGURES)] for n in groups])
    for grading in result.get("ordinal_gradings") or []:
        lines += [f"\n## {grading} (matched discs; predicted grade against the reference)\n", *_stated(result, grading)]
        lines += _table(["series", "discs", "balanced accuracy", "quadratic kappa", "within one grade", "accuracy"],
                        [[n, str(c[n][f"{grading}/discs"]),
                          *(_cell(f[n].get(f"{grading}/{k}")) for k in ("balanced_accuracy", "kappa", "within_one",
                                                                          "accuracy"))] for n in groups])
    if result.get("per_disc"):
        lines += _per_disc_tables(result, result["per_disc"], result["thresholds"], result.get("ordinal_gradings") or [])
    if result.get("classifier_in_sample"):
        lines.append(f"\nGradings not scored on this split: {result['classifier_in_sample']}.")
    for grading, reason in result["skipped_gradings"].items():
        if reason != result.get("classifier_in_sample"):
            lines.append(f"\n{grading}: not scored ({reason}).")
    if any(c[n]["images_with_mask"] for n in groups):
        classes = CLASS_NAMES[1:]
        lines += ["\n## Segmentation of the lumbar crop the pipeline chose\n",
                  "Per case: mean over images of each image's Dice (a class absent from both left out, as nnU-Net); "
                  "pooled: one confusion matrix over all pixels.\n"]
        lines += _table(["series", "images", *(f"Dice per case {k}" for k in classes), "mean",
                         *(f"Dice pooled {k}" for k in classes), "mean"],
                        [[n, str(c[n]["images_with_mask"]),
                          *(_cell(f[n].get(f"dice_per_case_{k}")) for k in classes), _cell(f[n].get("dice_per_case")),
                          *(_cell(f[n].get(f"dice_pooled_{k}")) for k in classes), _cell(f[n].get("dice_pooled"))]
                         for n in groups if c[n]["images_with_mask"]])
    return "\n".join(lines) + "\n"


def _stated(result: dict[str, Any], grading: str) -> list[str]:
    """A line saying so where the model_dir's validation put the grading under its floor."""
    if (result.get("validated") or {}).get(grading) is False:
        return ["Not validated (its validation figure is under the model_dir's floor): the reports give it with its "
                "figure and call no finding from it; the calls scored here are those it would make.\n"]
    return []


def _per_disc_tables(result: dict[str, Any], section: dict[str, Any], thresholds: dict[str, float],
                     ordinal: list[str]) -> list[str]:
    groups = section["groups"]
    f = {name: g["figures"] for name, g in groups.items()}
    c = {name: g["counts"] for name, g in groups.items()}
    lines = [f"\n## Per disc: one answer per distinct disc of a series (slices read as one case, gradings "
             f"aggregated by {section['aggregation']}; each distinct disc counted once)\n"]
    lines += _table(["series type", "series", "distinct discs labelled / matched", "disc recall", "level accuracy",
                     "series with every level right"],
                    [[n, str(c[n]["series"]), f"{c[n]['labelled_discs']} / {c[n]['matched_discs']}",
                      *(_cell(f[n].get(k)) for k in ("disc_recall", "level_accuracy", "series_all_levels_right"))]
                     for n in groups])
    for grading, threshold in thresholds.items():
        lines += [f"\n### {grading} per disc (threshold {threshold:g})\n", *_stated(result, grading)]
        lines += _table(["series type", "positive discs / discs", "ROC AUC", "balanced accuracy", "sensitivity",
                         "specificity", "called positive", "prevalence"],
                        [[n, f"{c[n][f'{grading}/positive_discs']} / {c[n][f'{grading}/discs']}",
                          *(_cell(f[n].get(f"{grading}/{k}")) for k in ("auc", "balanced_accuracy", "sensitivity",
                                                                          "specificity", "called_positive",
                                                                          "prevalence"))] for n in groups])
    for grading in ordinal:
        lines += [f"\n### {grading} per disc\n", *_stated(result, grading)]
        lines += _table(["series type", "discs", "balanced accuracy", "quadratic kappa", "within one grade",
                         "accuracy"],
                        [[n, str(c[n][f"{grading}/discs"]),
                          *(_cell(f[n].get(f"{grading}/{k}")) for k in ("balanced_accuracy", "kappa", "within_one",
                                                                          "accuracy"))] for n in groups])
    return lines


def labelled_folder(model_dir: Path, manifest: dict[str, Any], root: str | None = None, fold: int | None = None
                    ) -> tuple[SpineDataset, dict[str, list[str]]]:
    """The folder to score on and the patients of its splits.

    By default the folder the model_dir's segmenter was trained on, with that run's splits (so ``split=test``
    is the patients no model of a study trained on). With ``root``, that folder: its own ``splits.json``, or
    splits made (and kept) the way the run made them (same folds, test fraction and seed).
    """
    module = _labelled_module(model_dir, manifest, root, fold)
    return module.dataset, module.patient_splits()


def labelled_splits(model_dir: Path, manifest: dict[str, Any], root: str | None = None
                    ) -> tuple[SpineDataset, dict[str, Any]]:
    """:func:`labelled_folder`'s folder and its whole splits: ``{"test": [...], "folds": [{"train", "val"}, ...]}``."""
    module = _labelled_module(model_dir, manifest, root, None)
    module.patient_splits()
    return module.dataset, module.splits


def _labelled_module(model_dir: Path, manifest: dict[str, Any], root: str | None, fold: int | None):
    from omegaconf import OmegaConf

    from plid.datamodules.base import SpineDataModule

    data = OmegaConf.load(model_dir / manifest["segmenter"]["dir"] / "config.yaml").data
    keys = ("root", "synthetic", "splits_dir", "splits_file", "fold", "num_folds", "test_fraction", "split_seed")
    settings = {k: OmegaConf.to_container(data, resolve=True).get(k) for k in keys if k in data}
    if root is not None:
        settings.update(root=str(root), synthetic=None, splits_file=None)
    if fold is not None:
        settings["fold"] = int(fold)
    module = SpineDataModule(**{k: v for k, v in settings.items() if v is not None}, cache_dir=None)
    module.prepare_data()
    return module
