"""What ``plid.predict`` reports, typed: the run (``report.json``), each case (an image, or a volume or series read
as one), each disc, and each grading's :class:`Decision`.

Every call plid states is made here and only here: :meth:`Decision.binary` (positive where the probability is above
the threshold chosen on validation), :meth:`Decision.ordinal` (the grade from the distribution and its cuts) and
:meth:`Decision.aggregate` (several slices' decisions combined into one, the call made again by the same rule at
the same threshold or cuts). The pipeline, slice aggregation, the overlay, ``report.html`` and the end-to-end scorer
all read a disc's decisions from ``disc["gradings"]`` (:func:`disc_decisions`) and never decide again, so the call
a page shows is the call ``report.json`` holds.

Reports travel as the JSON they are written as (plain dicts, what ``report.json`` reads back as); the models here
are their schema. :func:`check_report` validates a run's report before it is written, and :func:`report_schema`
gives the JSON Schema (``plid/schemas/report.schema.json``, kept equal to it by a test) for readers in other
languages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from plid.errors import UserInputError
from plid.labels import grading as grading_spec
from plid.metrics import grade_of_distribution

SCHEMA_FILE = Path(__file__).with_name("schemas") / "report.schema.json"
DECIMALS = 4  # probabilities as report.json writes them; calls are made on the written value
AGGREGATIONS = ("mean", "max")
BINARY_RULE = "positive where the probability is above the threshold chosen on validation"
ORDINAL_RULE = ("grade: the lowest grade plus the number of questions 'grade > k' whose probability is above its "
                "cut (cuts chosen on validation; 0.5 each where a model_dir has none: CORAL's rule)")
# short names of the gradings for the overlay and the page
SHORT_NAMES = {"pfirrman_grade": "Pf", "modic": "Modic", "up_endplate": "upper EP", "low_endplate": "lower EP",
               "spondylolisthesis": "listh", "disc_herniation": "hern", "disc_narrowing": "narrow",
               "disc_bulging": "bulg"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Decision(_Model):
    """One grading of one disc: the model's output, the call made from it, and the rule and cut that made it."""

    grading: str = Field(description="the discs.csv column graded (disc_herniation, pfirrman_grade, ...)")
    kind: Literal["binary", "ordinal"]
    probability: float | None = Field(None, description="binary: the probability of a positive")
    threshold: float | None = Field(None, description="binary: positive above it")
    positive: bool | None = Field(None, description="binary: the call")
    distribution: list[float] | None = Field(None, description="ordinal: the probability of each grade, lowest first")
    cuts: list[float] | None = Field(None, description="ordinal: the cut of each question 'grade > k'")
    grade: int | None = Field(None, description="ordinal: the grade as discs.csv writes it (Pfirrmann 1-5, Modic 0-3)")
    most_likely_grade: int | None = Field(None, description="ordinal: the grade of highest probability in the "
                                          "distribution (the cuts' grade can differ: they are chosen for balanced "
                                          "accuracy on validation)")
    rule: str = Field(description="how the call was made")
    validated: bool | None = Field(None, description="whether the grading's validation figure reaches the model_dir's "
                                   "floor (the report's classifier.validation); false: not validated, no finding "
                                   "is called from it; null: the model_dir records no validation")
    source: str | None = Field(None, description="what gave the values: crop network, anatomy (the anatomy grader "
                               "on the disc's measurements) or mean (of both); null: the crop network of a model_dir "
                               "of an older plid")
    slices: int = Field(1, description="how many slices the values come from")
    aggregation: str | None = Field(None, description="how several slices' values were combined (mean, max)")

    @classmethod
    def binary(cls, grading: str, probability: float, threshold: float, slices: int = 1,
               aggregation: str | None = None, validated: bool | None = None, source: str | None = None) -> Decision:
        p = round(float(probability), DECIMALS)
        return cls(grading=grading, kind="binary", probability=p, threshold=float(threshold),
                   positive=bool(p > float(threshold)), rule=BINARY_RULE, validated=validated, source=source,
                   slices=slices, aggregation=aggregation)

    @classmethod
    def ordinal(cls, grading: str, distribution, cuts=None, slices: int = 1,
                aggregation: str | None = None, validated: bool | None = None, source: str | None = None) -> Decision:
        values = [round(float(v), DECIMALS) for v in np.asarray(distribution, dtype=np.float64).ravel()]
        cuts = None if cuts is None else [float(c) for c in cuts]
        index = int(grade_of_distribution(np.asarray(values), cuts))
        spec = grading_spec(grading)
        return cls(grading=grading, kind="ordinal", distribution=values, cuts=cuts, grade=spec.grade(index),
                   most_likely_grade=spec.grade(int(np.argmax(values))), rule=ORDINAL_RULE, validated=validated,
                   source=source, slices=slices, aggregation=aggregation)

    @classmethod
    def aggregate(cls, decisions: list[Decision | None], how: str) -> Decision | None:
        """One decision from several slices' (None where the disc was not found on a slice): a binary grading's
        probability is the mean or maximum (``how``), an ordinal grading's distribution the mean whatever ``how``
        says (a maximum of distributions is no distribution); the call is made again by the same rule, at the same
        threshold or cuts."""
        if how not in AGGREGATIONS:
            raise UserInputError(f"slice_aggregation={how}: choose one of {', '.join(AGGREGATIONS)}")
        found = [d for d in decisions if d is not None]
        if not found:
            return None
        first = found[0]
        if any((d.grading, d.kind, d.threshold, d.cuts, d.validated, d.source)
               != (first.grading, first.kind, first.threshold, first.cuts, first.validated, first.source)
               for d in found):
            raise ValueError(f"{first.grading}: slices decided by different rules cannot be aggregated")
        if first.kind == "binary":
            values = [d.probability for d in found]
            return cls.binary(first.grading, np.mean(values) if how == "mean" else np.max(values), first.threshold,
                              len(found), how, first.validated, first.source)
        return cls.ordinal(first.grading, np.mean([d.distribution for d in found], axis=0), first.cuts, len(found),
                           "mean", first.validated, first.source)

    @property
    def value(self) -> bool | int | None:
        """The call: positive or not (binary), the grade (ordinal)."""
        return self.positive if self.kind == "binary" else self.grade

    @property
    def called(self) -> bool:
        """Whether the page and the overlay list it among a disc's findings: a validated (or unrecorded) grading's
        ordinal grade always, its binary call where positive; a grading that is not validated never."""
        return self.validated is not False and (self.kind == "ordinal" or bool(self.positive))

    def short(self) -> str:
        """``Pf 3`` or ``hern 0.73``: the grade, or the probability, as the overlay and the page show it; marked
        ``(not validated)`` where it is not."""
        name = SHORT_NAMES.get(self.grading, self.grading)
        text = f"{name} {self.grade}" if self.kind == "ordinal" else f"{name} {self.probability:.2f}"
        return text + (" (not validated)" if self.validated is False else "")


class Measurements(_Model):
    model_config = ConfigDict(extra="allow")  # the keys of plid.measurements.measure_disc
    unit: Literal["mm", "px"]


class SliceFinding(_Model):
    """A disc of a case's chosen slice as found on one analysed slice (box and decisions null where not found)."""

    slice_index: int
    box: list[float] | None
    level: int | None = Field(None, description="the level this slice's own report gave the disc")
    name: str | None = None
    gradings: dict[str, Decision] = Field(default_factory=dict)


class DiscReport(_Model):
    level: int | None = Field(description="1 the lowest disc found, counting up (SPIDER's ivd_label)")
    name: str | None = Field(description="L5/S1, L4/L5, ...; null where the anchor is not confirmed")
    level_confidence: float | None
    box: list[float] = Field(description="x1, y1, x2, y2 in pixels of the analysed image, x2/y2 exclusive")
    box_mm: list[list[float]] | None = Field(
        None, description="the box's corners (x1, y1) and (x2, y2) in patient coordinates (DICOM LPS, mm), where the "
                          "input's geometry is known (volumes and DICOM series)")
    score: float = Field(description="the disc detector's confidence")
    flag: str | None = None
    flag_reason: str | None = None
    measurements: Measurements | None
    gradings: dict[str, Decision] = Field(default_factory=dict, description="one decision per grading")
    slices: list[SliceFinding] | None = Field(None, description="with slices>1: the disc on each analysed slice")
    slices_seen: int | None = Field(None, description="with slices>1: on how many analysed slices it was found")
    level_agreement: float | None = Field(
        None, description="with slices>1: the share of the slices that found it and gave it a level that gave this one")


class Provenance(_Model):
    """What made a report: which plid, which model_dir (the sha256 of its manifest, which lists every file's
    sha256), when."""

    plid_version: str
    commit: str | None = Field(None, description="the git commit of plid's checkout, + '-dirty' with local changes; "
                                                 "null when installed from a wheel")
    model_dir_sha256: str | None = Field(None, description="sha256 of the model_dir's manifest.json")
    created: str = Field(description="when the report was written, ISO 8601 in UTC")


class InputIdentity(_Model):
    """Which input a case is: the DICOM series and the instances of its analysed slices, or the file's sha256."""

    series_uid: str | None = None
    sop_instance_uids: list[str | None] | None = Field(None, description="the analysed slices' SOP instance UIDs, "
                                                                         "in the order of slices_analysed")
    sha256: str | None = Field(None, description="an image or volume file's sha256")


class SuspectedDisc(_Model):
    level: int | None
    name: str | None
    level_confidence: float | None
    box: list[float]
    source: str | None


class Lumbar(_Model):
    box: list[float]
    score: float


class CaseReport(_Model):
    """One case: an image, or the analysed slice(s) of a volume or series."""

    name: str
    file: str
    format: str
    height: int
    width: int
    spacing_mm: float | None
    slice_index: int | None
    status: Literal["ok", "no_lumbar_region"]
    message: str | None = None
    lumbar: Lumbar | None
    discs: list[DiscReport]
    missed_discs_suspected: list[SuspectedDisc] = Field(default_factory=list)
    levels_uncertain: bool | None = None
    levels_uncertain_reason: str | None = None
    level_anchor_found: bool | None = None
    classifier: dict[str, Any] | None = None
    segmentation: dict[str, Any] | None
    overlay: str | None = None
    mask: str | None = None
    slice_choice: dict[str, Any] | None = None
    slices_analysed: list[int] | None = None
    num_slices: int | None = None
    slice_status: dict[str, str] | None = None
    slice_aggregation: str | None = None
    patient: str | None = None
    study: dict[str, Any] | None = None
    series: dict[str, Any] | None = None
    modality: str | None = None
    input: InputIdentity | None = None
    plane: str | None = None
    warnings: list[str] = Field(default_factory=list)


class RunReport(_Model):
    """``report.json``: every case analysed, the series not analysed and the files that could not be read."""

    model_dir: str
    provenance: Provenance | None = None
    levels: str = Field(description="the level rule that named the discs")
    cases: list[CaseReport]
    skipped: list[dict[str, Any]]
    errors: list[dict[str, str]]


def disc_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per disc of every case of a ``report.json``: what ``discs.csv`` holds, for a spreadsheet or a
    statistics package (a binary grading's probability and call, an ordinal one's grade and the probability of
    each grade, the box in pixels and, where known, in mm, the measurements)."""
    rows = []
    for case in report["cases"]:
        for disc in case.get("discs") or []:
            row = {"case": case["name"], "file": case["file"], "patient": case.get("patient"),
                   "series_uid": (case.get("input") or {}).get("series_uid"), "slice_index": case.get("slice_index"),
                   "level": disc["level"], "name": disc["name"], "level_confidence": disc["level_confidence"],
                   "levels_uncertain": case.get("levels_uncertain"), "score": disc["score"],
                   **dict(zip(("x1", "y1", "x2", "y2"), disc["box"]))}
            corners = disc.get("box_mm") or [[None] * 3] * 2
            row.update({f"{axis}{k}_mm": corners[k - 1][i] for k in (1, 2) for i, axis in enumerate("LPS")})
            for key, value in (disc.get("measurements") or {}).items():
                if isinstance(value, int | float | str) or value is None:
                    row[f"measured_{key}"] = value
            for name, decision in disc_decisions(disc).items():
                if decision.kind == "binary":
                    row[f"{name}_probability"], row[f"{name}_positive"] = decision.probability, decision.positive
                else:
                    row[f"{name}_grade"] = decision.grade
                    first = grading_spec(name).first
                    row.update({f"{name}_p{first + k}": p for k, p in enumerate(decision.distribution or [])})
            rows.append(row)
    return rows


def disc_decisions(disc: dict[str, Any]) -> dict[str, Decision]:
    """A reported disc's decisions, by grading (empty for a disc no classifier graded)."""
    return {name: Decision.model_validate(value) for name, value in (disc.get("gradings") or {}).items()
            if value is not None}


def decision(disc: dict[str, Any], grading: str) -> Decision | None:
    value = (disc.get("gradings") or {}).get(grading)
    return None if value is None else Decision.model_validate(value)


def primary_grading(gradings) -> str | None:
    """The grading a page's probability column shows: herniation (the paper's) where graded, else the first binary
    grading, else the first."""
    names = list(gradings or [])
    binary = [g for g in names if not grading_spec(g).ordinal]
    if "disc_herniation" in binary:
        return "disc_herniation"
    return (binary or names or [None])[0]


def check_fits(model: type[BaseModel], data: dict[str, Any], schema_file: Path) -> None:
    """Raise where ``data`` does not fit ``model`` (an output about to be written): a bug of plid's, caught before
    the file is written."""
    try:
        model.model_validate(data)
    except ValidationError as error:
        raise RuntimeError(f"{schema_file.name.replace('.schema', '')} would not fit its schema ({schema_file.name}): "
                           f"{error}") from error


def json_schema(model: type[BaseModel], title: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) generated from ``model``."""
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = title
    return schema


def write_json_schema(schema: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema, indent=2) + "\n")
    return path


def check_report(report: dict[str, Any]) -> None:
    """Raise where a run's report does not fit :class:`RunReport`."""
    check_fits(RunReport, report, SCHEMA_FILE)


def report_schema() -> dict[str, Any]:
    """The JSON Schema of ``report.json``, generated from :class:`RunReport`."""
    return json_schema(RunReport, "plid report.json")


def write_schema(path: Path = SCHEMA_FILE) -> Path:
    return write_json_schema(report_schema(), path)


if __name__ == "__main__":  # python -m plid.reports: write the schema file again after changing the models
    print(write_schema())
