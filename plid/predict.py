"""From scans to per-disc reports with a model_dir (``python -m plid.export``).

    python -m plid.predict input=/scans/case1.dcm model_dir=/models/plid out=/reports/case1
    python -m plid.predict input=/studies/patient7 model_dir=/models/plid out=/reports     # a DICOM study
    python -m plid.predict input=/studies/patient7 model_dir=/models/plid slices=5 slice_aggregation=max

``input`` is a file, a series folder or a study folder, searched recursively; DICOM files are recognised by
content and grouped into series (:mod:`plid.data.dicom`); each series, volume or image is one case.
Writes into ``out``: ``report.json`` (every case, the series skipped and why, every file that failed),
``overlays/<case>.png`` (boxes, levels, probabilities, mask), ``masks/<case>.png`` (2D inputs) or
``masks/<case>.nii.gz`` (volumes and series, in their geometry) and ``report.html`` (all cases on one page),
all moved in together at the end (a run that stops midway leaves the previous ones whole). A file that cannot be
read or analysed is reported in ``errors`` and the rest go on; the exit code is non-zero when nothing was analysed.
"""

from __future__ import annotations

from plid.cli import answer_help

answer_help(__name__, "predict")  # --help answered here, before the heavy imports below

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from plid.errors import UserInputError
from plid.inference.batch import OUTPUTS, predict_inputs
from plid.inference.model_dir import load_model_dir
from plid.inference.pipeline import Pipeline
from plid.inference.slices import SliceOptions
from plid.utils.hydra import run_task
from plid.utils.io import claim_output_dir

log = logging.getLogger(__name__)


def predict(cfg: DictConfig) -> dict[str, Any]:
    source = cfg.get("input") or ((cfg.get("data") or {}).get("root") and Path(cfg.data.root) / "images")
    if not source:
        raise UserInputError("give input=<file or folder> (or data.root=<dataset> to predict on its images/)")
    options = SliceOptions(str(cfg.get("slice") or "anatomical"), int(cfg.get("slices") or 1),
                           str(cfg.get("slice_aggregation") or "mean"))
    out = claim_output_dir(Path(cfg.get("out") or cfg.paths.output_dir).expanduser().resolve(), "report.json",
                           cfg.get("overwrite", False))
    check_output_place(out, Path(source).expanduser().resolve())
    pipeline = Pipeline(load_model_dir(cfg.model_dir), max_named_levels=int(cfg.max_named_levels),
                        conf=cfg.get("conf"), iou=cfg.get("iou"),
                        levels=cfg.get("levels"), device=cfg.get("device", "auto"))
    summary = predict_inputs(source, pipeline, out, slices=options, max_cases=cfg.get("max_images"))
    found = sum(c["status"] == "ok" for c in summary["cases"])
    log.info("%d cases: %d with a lumbar region, %d without; %d series skipped, %d files unreadable",
             len(summary["cases"]), found, len(summary["cases"]) - found, len(summary["skipped"]),
             len(summary["errors"]))
    print(f"Report: {out / 'report.html'}")
    if not summary["cases"]:
        raise UserInputError(f"input={source}: nothing was analysed ({len(summary['errors'])} files unreadable, "
                             f"{len(summary['skipped'])} series skipped); {out / 'report.json'} says why")
    return summary


def check_output_place(out: Path, source: Path) -> None:
    """``out`` outside ``input`` (the next run would read the overlays as scans), and no outputs of a predict
    run there without their ``report.json`` (plid replaces only what it wrote)."""
    if out == source or source in out.parents:
        raise UserInputError(f"out={out} lies inside input={source}: the next run would read its overlays as scans; "
                             f"write the reports elsewhere")
    if not (out / "report.json").exists():
        foreign = [name for name in OUTPUTS if (out / name).exists()]
        if foreign:
            raise UserInputError(f"out={out} holds {foreign} but no report.json: not outputs plid wrote; choose "
                                 f"another folder")


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    run_task(predict, cfg)


if __name__ == "__main__":
    main()
