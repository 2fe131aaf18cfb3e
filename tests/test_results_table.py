"""The README's results table is written from saved evaluation.json files, not typed."""

from __future__ import annotations

import json

import pytest

from plid.evaluation.results_table import END, START, kept, main, table, update
from plid.utils.hydra import PROJECT_ROOT

KEPT = PROJECT_ROOT / "docs" / "results" / "spider2d_cpu"


def _score(value, low=None, high=None):
    return {"value": value, "low": low, "high": high}


def _evaluation(level: float) -> dict:
    slice_figures = {"disc_recall": _score(0.9, 0.85, 0.95), "disc_precision": _score(0.93),
                     "level_accuracy": _score(level, level - 0.05, 1.0), "images_all_levels_right": _score(0.5),
                     "dice_per_case": _score(0.87, 0.83, 0.91), "disc_bulging/auc": _score(0.81, 0.74, 1.0),
                     "pfirrman_grade/kappa": _score(0.46, 0.13, 0.86), "pfirrman_grade/balanced_accuracy": _score(0.44)}
    slice_counts = {"matched_discs_with_level": 214, "disc_bulging/positives": 104, "disc_bulging/positive_discs": 23,
                    "pfirrman_grade/discs": 214}
    disc_figures = {"level_accuracy": _score(0.97, 0.9, 1.0), "series_all_levels_right": _score(0.8),
                    "disc_bulging/auc": _score(0.8), "disc_bulging/called_positive": _score(0.4),
                    "disc_bulging/prevalence": _score(0.3), "pfirrman_grade/kappa": _score(0.5),
                    "pfirrman_grade/balanced_accuracy": _score(0.45)}
    disc_counts = {"matched_discs": 80, "labelled_discs": 90, "series_with_labelled_discs": 20,
                   "disc_bulging/positive_discs": 23, "disc_bulging/discs": 80, "pfirrman_grade/discs": 80}
    return {"split": "test", "groups": {"all": {"figures": slice_figures, "counts": slice_counts}, "t2": {}},
            "images": [{"image": "a"}], "per_disc": {"aggregation": "mean", "series": [{"patient": "p"}],
                                                     "groups": {"all": {"figures": disc_figures, "counts": disc_counts}}}}


def test_the_table_holds_each_figure_with_its_interval_and_positives():
    text = table(_evaluation(0.86), _evaluation(0.958))
    assert "| level accuracy, matched discs, per slice | 0.860 (0.81-1.00), 214 discs | 0.958 (0.91-1.00), 214 discs |" in text
    assert "| disc_bulging ROC AUC, per slice (positives, distinct) | 0.810 (0.74-1.00), 104 (23) |" in text
    assert "| series with every level right | 0.800, 20 series |" in text
    assert "disc_bulging: discs called positive / reference prevalence, per disc | 0.40 / 0.30 |" in text
    assert "pfirrman_grade balanced accuracy / quadratic kappa, per disc | 0.450 / 0.500, 80 discs |" in text


def test_a_grading_not_validated_or_graded_by_the_anatomy_grader_is_marked_so():
    evaluation = {**_evaluation(0.9), "validated": {"disc_bulging": True, "pfirrman_grade": False},
                  "classifier": {"sources": {"disc_bulging": "anatomy", "pfirrman_grade": "crop network"}}}
    text = table(_evaluation(0.9), {**kept(evaluation)})
    assert "| disc_bulging ROC AUC, per disc (positive discs / discs) | 0.800, 23 / 80 | 0.800, 23 / 80 [anatomy] |" in text
    assert "quadratic kappa, per disc | 0.450 / 0.500, 80 discs | 0.450 / 0.500, 80 discs [not validated] |" in text


def test_update_replaces_only_the_marked_block_and_kept_drops_the_lists(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\nbefore\n{START}\nold\n{END}\nafter\n")
    assert update(readme, "new\n") and readme.read_text() == f"# x\nbefore\n{START}\nnew\n{END}\nafter\n"
    assert not update(readme, "new\n")
    small = kept(_evaluation(0.9))
    assert "images" not in small and "series" not in small["per_disc"] and list(small["groups"]) == ["all"]
    (tmp_path / "val.json").write_text(json.dumps(_evaluation(0.86)))
    (tmp_path / "test.json").write_text(json.dumps(_evaluation(0.958)))
    main(["--val", str(tmp_path / "val.json"), "--test", str(tmp_path / "test.json"), "--write", str(readme),
          "--keep", str(tmp_path / "kept")])
    assert table(_evaluation(0.86), _evaluation(0.958)) in readme.read_text()
    assert json.loads((tmp_path / "kept" / "test.json").read_text()) == kept(_evaluation(0.958))
    with pytest.raises(ValueError, match="no <!-- results:start -->"):
        update(tmp_path / "kept" / "test.json", "x")


@pytest.mark.skipif(not (KEPT / "test.json").is_file(), reason=f"no saved recipe evaluation in {KEPT}")
def test_the_readme_table_is_the_table_of_the_saved_recipe_evaluation():
    val, test = (json.loads((KEPT / f"{name}.json").read_text()) for name in ("val", "test"))
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert table(val, test) in readme, "rerun: python -m plid.evaluation.results_table --val ... --write README.md"

