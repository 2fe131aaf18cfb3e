"""``evaluation.json``, what ``python -m plid.evaluate model_dir=...`` writes, as models: its JSON Schema is generated
from them into ``plid/schemas/evaluation.schema.json`` (``python -m plid.evaluation.schema`` after a change; a test
fails when the two differ), and every evaluation is checked against them before it is written.

Every figure is a :class:`Score`: its value and its patient-bootstrap interval (null where a figure is undefined,
e.g. an AUC without positives). ``groups`` holds the figures per slice (every matched disc of every image), by series
type; ``per_disc`` the same per distinct disc (patient, series, level), decided once from all its slices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from plid.reports import Provenance, check_fits, json_schema, write_json_schema

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "evaluation.schema.json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Score(_Model):
    value: float | None
    low: float | None = Field(None, description="the bootstrap interval's lower end (null: not resampled)")
    high: float | None = None


class Group(_Model):
    counts: dict[str, int | float | None] = Field(description="images, patients, discs, positives, ...")
    figures: dict[str, Score] = Field(description="e.g. level_accuracy, disc_recall, disc_bulging/auc, "
                                                  "pfirrman_grade/kappa")


class PerDisc(_Model):
    aggregation: str = Field(description="how a disc's slices are combined (mean)")
    groups: dict[str, Group]
    series: list[dict[str, Any]] = Field(description="each series once: its discs found and the levels given")


class Evaluation(_Model):
    """``evaluation.json`` of ``plid.evaluate model_dir=...``: a model_dir scored end to end on a split of a labelled
    folder (the cross-validation's ``evaluation.json``, of ``plid.evaluate`` on training runs, is another file)."""

    model_dir: str
    provenance: Provenance | None = None
    levels: str | None = Field(description="the level rule that named the discs")
    data_root: str
    split: str
    bootstrap: dict[str, Any] = Field(description="samples, seed, confidence of the patient bootstrap")
    thresholds: dict[str, float] = Field(description="each binary grading's threshold, as the reports called it")
    ordinal_gradings: list[str]
    validated: dict[str, bool | None] = Field(default_factory=dict, description="per grading: whether the model_dir "
                                              "validated it (false: the reports call no finding from it; null: "
                                              "no validation recorded)")
    skipped_gradings: dict[str, str] = Field(description="gradings decided but not labelled here, and why")
    classifier_in_sample: Any = None
    classifier: dict[str, Any] | None
    groups: dict[str, Group] = Field(description="per slice: 'all' and one group per series type")
    per_disc: PerDisc | None = None
    images: list[dict[str, Any]] = Field(description="each image's matches, misses, extras and wrong levels")
    figures: dict[str, str] = Field(description="ROC curves and reliability diagrams written beside it")
    failures: dict[str, Any] = Field(description="failures.html: images drawn and counted")


def check_evaluation(result: dict[str, Any]) -> None:
    """Raise where an evaluation does not fit :class:`Evaluation`: a bug of plid's, caught before it is written."""
    check_fits(Evaluation, result, SCHEMA_FILE)


def evaluation_schema() -> dict[str, Any]:
    return json_schema(Evaluation, "plid evaluation.json")


def write_schema(path: Path = SCHEMA_FILE) -> Path:
    return write_json_schema(evaluation_schema(), path)


if __name__ == "__main__":  # python -m plid.evaluation.schema: write the schema file again after changing the models
    print(write_schema())
