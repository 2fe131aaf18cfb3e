"""The README's results table, written from the ``evaluation.json`` files the runs saved, so that a figure on a page
is the figure of a file.

    python -m plid.evaluation.results_table --val <val evaluation.json> --test <test evaluation.json> \
        [--write README.md] [--keep docs/results/spider2d_cpu]

Each row is one figure of ``groups.all`` (per slice: every matched disc of every image) or ``per_disc.groups.all``
(per distinct disc: each (patient, series, level) once, decided from all its slices), val beside test, with the
patient-bootstrap interval and the positives counted. ``--write`` replaces the block between the README's
``<!-- results:start -->`` and ``<!-- results:end -->`` markers; ``--keep`` saves the two files' figures (their
``groups.all`` and ``per_disc``, without the per-image lists) where the README's table says they came from.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

START, END = "<!-- results:start -->", "<!-- results:end -->"
BINARY = ("disc_herniation", "disc_bulging", "disc_narrowing", "spondylolisthesis", "up_endplate", "low_endplate")
ORDINAL = ("pfirrman_grade", "modic")
KEPT = ("model_dir", "levels", "data_root", "split", "bootstrap", "thresholds", "ordinal_gradings", "validated",
        "provenance")


def _cell(score: dict[str, Any] | None, digits: int = 3) -> str:
    if not score or score.get("value") is None:
        return "n/a"
    value = f"{score['value']:.{digits}f}"
    if score.get("low") is None or score.get("high") is None:
        return value
    return f"{value} ({score['low']:.2f}-{score['high']:.2f})"


def _slice(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    group = result["groups"]["all"]
    return group["figures"], group["counts"]


def _disc(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    group = ((result.get("per_disc") or {}).get("groups") or {}).get("all") or {"figures": {}, "counts": {}}
    return group["figures"], group["counts"]


def _stated(result: dict[str, Any], grading: str) -> str:
    """`` [not validated]`` where the model_dir's validation put the grading under its floor (reports call no finding
    from it; the calls counted are those it would make), `` [source]`` where the anatomy grader or the mean grades it."""
    notes = []
    source = (result.get("sources") or (result.get("classifier") or {}).get("sources") or {}).get(grading)
    if source and source != "crop network":
        notes.append(source)
    if (result.get("validated") or {}).get(grading) is False:
        notes.append("not validated")
    return f" [{', '.join(notes)}]" if notes else ""


def rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(figure, cell) of one evaluation: per slice, then per distinct disc, then each grading both ways; a cell is
    marked where its grading is not validated or not graded by the crop network (:func:`_stated`)."""
    sf, sc = _slice(result)
    df, dc = _disc(result)
    out = [
        ("disc recall / precision, per slice", f"{_cell(sf.get('disc_recall'))} / {_cell(sf.get('disc_precision'))}"),
        ("level accuracy, matched discs, per slice", f"{_cell(sf.get('level_accuracy'))}, "
                                                      f"{sc.get('matched_discs_with_level', 'n/a')} discs"),
        ("level accuracy, per distinct disc", f"{_cell(df.get('level_accuracy'))}, {dc.get('matched_discs', 'n/a')} "
                                              f"of {dc.get('labelled_discs', 'n/a')} discs"),
        ("images with every level right (IoU 0.5)", _cell(sf.get("images_all_levels_right"))),
        ("series with every level right", f"{_cell(df.get('series_all_levels_right'))}, "
                                          f"{dc.get('series_with_labelled_discs', 'n/a')} series"),
        ("Dice per case, mean foreground", _cell(sf.get("dice_per_case"))),
    ]
    for grading in BINARY:
        if f"{grading}/auc" not in sf:
            continue
        note = _stated(result, grading)
        out.append((f"{grading} ROC AUC, per slice (positives, distinct)",
                    f"{_cell(sf.get(f'{grading}/auc'))}, {sc.get(f'{grading}/positives')} "
                    f"({sc.get(f'{grading}/positive_discs')}){note}"))
        out.append((f"{grading} ROC AUC, per disc (positive discs / discs)",
                    f"{_cell(df.get(f'{grading}/auc'))}, {dc.get(f'{grading}/positive_discs')} / "
                    f"{dc.get(f'{grading}/discs')}{note}"))
        out.append((f"{grading}: discs called positive / reference prevalence, per disc",
                    f"{_cell(df.get(f'{grading}/called_positive'), 2)} / {_cell(df.get(f'{grading}/prevalence'), 2)}"
                    f"{note}"))
    for grading in ORDINAL:
        if f"{grading}/kappa" not in sf:
            continue
        for where, figures, counts in (("per slice", sf, sc), ("per disc", df, dc)):
            out.append((f"{grading} balanced accuracy / quadratic kappa, {where}",
                        f"{_cell(figures.get(f'{grading}/balanced_accuracy'))} / "
                        f"{_cell(figures.get(f'{grading}/kappa'))}, {counts.get(f'{grading}/discs')} discs"
                        f"{_stated(result, grading)}"))
    return out


def table(val: dict[str, Any], test: dict[str, Any]) -> str:
    """The markdown table: one row per figure, val beside test."""
    left, right = dict(rows(val)), dict(rows(test))
    names = [name for name, _ in rows(test)] + [name for name, _ in rows(val) if name not in right]
    lines = ["| figure | val (chose checkpoints, thresholds, cuts) | test (never used to choose) |", "|---|---|---|"]
    lines += [f"| {name} | {left.get(name, 'n/a')} | {right.get(name, 'n/a')} |" for name in names]
    return "\n".join(lines) + "\n"


def update(readme: Path, block: str) -> bool:
    """Replace the block between the markers of ``readme``; True when the file changed."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme}: no {START} ... {END} block to replace")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{block}{END}{tail}"
    if new != text:
        readme.write_text(new)
    return new != text


def kept(result: dict[str, Any]) -> dict[str, Any]:
    """An evaluation's figures without its per-image and per-series lists (a small file to keep in the repository),
    its paths made portable: the data folder relative to the checkout, the model_dir a placeholder (it is named by
    its manifest's sha256 in ``provenance``)."""
    out = {key: result[key] for key in KEPT if key in result}
    if (result.get("classifier") or {}).get("sources"):
        out["sources"] = result["classifier"]["sources"]
    if "model_dir" in out:
        out["model_dir"] = "<model_dir>"
    if out.get("data_root"):
        checkout = Path(__file__).resolve().parents[2]
        out["data_root"] = Path(os.path.relpath(Path(out["data_root"]).resolve(), checkout)).as_posix()
    out["groups"] = {"all": result["groups"]["all"]}
    if result.get("per_disc"):
        out["per_disc"] = {k: v for k, v in result["per_disc"].items() if k != "series"}
        out["per_disc"]["groups"] = {"all": result["per_disc"]["groups"]["all"]}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m plid.evaluation.results_table", description=__doc__.split("\n")[0])
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--write", type=Path, default=None, help="a markdown file with the results markers")
    parser.add_argument("--keep", type=Path, default=None, help="a folder: save the figures as val.json, test.json")
    args = parser.parse_args(argv)
    val, test = json.loads(args.val.read_text()), json.loads(args.test.read_text())
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        for name, result in (("val", val), ("test", test)):
            (args.keep / f"{name}.json").write_text(json.dumps(kept(result), indent=1) + "\n")
    block = table(val, test)
    if args.write is not None:
        print(f"{args.write}: {'updated' if update(args.write, block) else 'unchanged'}")
    else:
        print(block, end="")


if __name__ == "__main__":
    main()
