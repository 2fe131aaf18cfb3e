"""The typed report: every call made once, by a Decision, and report.json's schema generated from the models."""

from __future__ import annotations

import copy
import json

import jsonschema
import numpy as np
import pytest

from plid.metrics import grade_of_distribution
from plid.reports import SCHEMA_FILE, Decision, check_report, decision, disc_decisions, primary_grading, report_schema


def _run_report() -> dict:
    made = {"disc_herniation": Decision.binary("disc_herniation", 0.7, 0.42).model_dump(),
            "pfirrman_grade": Decision.ordinal("pfirrman_grade", [0.1, 0.2, 0.4, 0.2, 0.1], [0.5] * 4).model_dump()}
    disc = {"level": 1, "name": "L5/S1", "level_confidence": 1.0, "box": [10.0, 20.0, 40.0, 30.0], "score": 0.9,
            "flag": None, "flag_reason": None, "measurements": {"unit": "px", "height_mean": 7.5},
            "gradings": made, "slices": None}
    case = {"name": "a", "file": "a.png", "format": "image", "height": 64, "width": 64, "spacing_mm": None,
            "slice_index": None, "status": "ok", "lumbar": {"box": [0.0, 0.0, 60.0, 60.0], "score": 0.8},
            "discs": [disc], "missed_discs_suspected": [], "levels_uncertain": False,
            "levels_uncertain_reason": None, "level_anchor_found": True, "classifier": None,
            "segmentation": {"crop_box": [0, 0, 60, 60], "areas": {}}, "overlay": "overlays/a.png", "mask": None,
            "warnings": []}
    return {"model_dir": "model_dir", "levels": "anchor", "cases": [case], "skipped": [], "errors": []}


def test_the_schema_file_is_the_one_the_models_generate():
    """Run ``python -m plid.reports`` after changing a model of plid/reports.py."""
    assert json.loads(SCHEMA_FILE.read_text()) == report_schema()


def test_a_report_fits_the_schema_and_one_with_a_field_missing_or_unknown_does_not():
    report = _run_report()
    jsonschema.validate(report, report_schema())
    check_report(report)
    missing = copy.deepcopy(report)
    del missing["cases"][0]["discs"][0]["box"]
    with pytest.raises(jsonschema.ValidationError, match="box"):
        jsonschema.validate(missing, report_schema())
    with pytest.raises(RuntimeError, match="schema"):
        check_report(missing)
    unknown = copy.deepcopy(report)
    unknown["cases"][0]["discs"][0]["herniation_probability"] = 0.7  # the old flat key: no longer a field
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(unknown, report_schema())


@pytest.mark.parametrize(("probability", "positive"), [(0.42, False), (0.42004, False), (0.42006, True), (0.9, True)])
def test_a_binary_call_is_made_on_the_probability_as_written(probability, positive):
    """Positive above the threshold, on the probability report.json holds (4 decimals), so a reader who compares
    the two numbers in the file finds the call it states."""
    made = Decision.binary("disc_bulging", probability, 0.42)
    assert made.positive is positive and made.positive == (made.probability > made.threshold)
    assert made.value is positive and made.rule


def test_an_ordinal_grade_is_the_rule_of_its_distribution_and_cuts():
    distribution = np.array([0.05, 0.15, 0.5, 0.2, 0.1])
    for cuts in (None, [0.5] * 4, [0.9, 0.75, 0.25, 0.2]):
        made = Decision.ordinal("pfirrman_grade", distribution, cuts)
        assert made.grade == 1 + int(grade_of_distribution(distribution, cuts))
    # P(grade > k) = 0.95, 0.8, 0.3, 0.1: three questions above these cuts, two above 0.5
    assert Decision.ordinal("pfirrman_grade", distribution, [0.9, 0.75, 0.25, 0.2]).grade == 4
    assert Decision.ordinal("pfirrman_grade", distribution).grade == 3
    assert Decision.ordinal("modic", [0.7, 0.1, 0.1, 0.1]).grade == 0  # Modic counts from 0


@pytest.mark.parametrize("how", ["mean", "max"])
def test_an_aggregate_is_the_rule_applied_to_the_slices_values(how):
    rng = np.random.default_rng(0)
    probabilities = rng.random(5)
    slices = [Decision.binary("disc_herniation", p, 0.5) for p in probabilities] + [None]  # not found on one slice
    combined = Decision.aggregate(slices, how)
    written = [d.probability for d in slices if d is not None]
    expected = np.mean(written) if how == "mean" else np.max(written)
    assert combined.probability == pytest.approx(expected, abs=1e-4) and combined.slices == 5
    assert combined.positive == (combined.probability > 0.5) and combined.aggregation == how
    distributions = rng.dirichlet(np.ones(5), size=3)
    ordinal = Decision.aggregate([Decision.ordinal("pfirrman_grade", d, [0.4] * 4) for d in distributions], how)
    mean = np.mean([np.round(d, 4) for d in distributions], axis=0)
    assert ordinal.distribution == pytest.approx(mean, abs=1e-4) and ordinal.aggregation == "mean"
    assert ordinal.grade == 1 + int(grade_of_distribution(np.asarray(ordinal.distribution), [0.4] * 4))
    assert Decision.aggregate([None, None], how) is None


def test_slices_decided_at_different_thresholds_are_not_aggregated():
    with pytest.raises(ValueError, match="different rules"):
        Decision.aggregate([Decision.binary("disc_herniation", 0.3, 0.5), Decision.binary("disc_herniation", 0.3, 0.4)],
                           "mean")


def test_readers_get_decisions_back_and_the_primary_grading():
    disc = _run_report()["cases"][0]["discs"][0]
    decisions = disc_decisions(disc)
    assert set(decisions) == {"disc_herniation", "pfirrman_grade"} and decisions["disc_herniation"].positive
    assert decision(disc, "pfirrman_grade").grade == 3 and decision(disc, "modic") is None
    assert disc_decisions({"box": [0, 0, 1, 1]}) == {}
    assert primary_grading(["pfirrman_grade", "disc_bulging", "disc_herniation"]) == "disc_herniation"
    assert primary_grading(["pfirrman_grade", "disc_bulging"]) == "disc_bulging"
    assert primary_grading(["modic"]) == "modic" and primary_grading([]) is None


def test_a_grading_that_is_not_validated_is_shown_with_its_value_but_called_no_finding():
    from plid.inference.render import grading_summary

    weak = Decision.binary("up_endplate", 0.9, 0.3, validated=False)
    assert weak.positive and not weak.called and weak.short() == "upper EP 0.90 (not validated)"
    strong = Decision.binary("disc_bulging", 0.9, 0.3, validated=True)
    assert strong.called and strong.short() == "bulg 0.90"
    unrecorded = Decision.binary("disc_bulging", 0.9, 0.3)  # a model_dir of an older plid: stated as before
    assert unrecorded.validated is None and unrecorded.called
    pf = Decision.ordinal("pfirrman_grade", [0.1, 0.2, 0.4, 0.2, 0.1], [0.5] * 4, validated=False)
    assert not pf.called and pf.short() == "Pf 3 (not validated)"
    disc = {"gradings": {d.grading: d.model_dump() for d in (weak, strong, pf)}}
    assert grading_summary(disc, only_positive=True) == "bulg 0.90"
    assert grading_summary(disc) == "Pf 3 (not validated), upper EP 0.90 (not validated), bulg 0.90"
    # slices keep it, and are refused where they disagree on it
    kept = Decision.aggregate([weak, Decision.binary("up_endplate", 0.5, 0.3, validated=False)], "mean")
    assert kept.validated is False and kept.probability == pytest.approx(0.7)
    with pytest.raises(ValueError, match="different rules"):
        Decision.aggregate([weak, Decision.binary("up_endplate", 0.5, 0.3, validated=True)], "mean")


def test_an_ordinal_decision_names_its_most_likely_grade_beside_the_cuts_grade():
    # P(grade > 1) = 0.7 is above a cut of 0.3: the cuts say grade 2 where grade 1 is the most likely
    made = Decision.ordinal("modic", [0.3, 0.25, 0.25, 0.2], [0.3, 0.5, 0.5])
    assert made.grade == 1 and made.most_likely_grade == 0
    assert Decision.ordinal("pfirrman_grade", [0.1, 0.2, 0.4, 0.2, 0.1]).most_likely_grade == 3
