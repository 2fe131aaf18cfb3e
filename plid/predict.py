"""From scans to per-disc reports with a model_dir (``python -m plid.export``).

    python -m plid.predict input=/scans/case1.dcm model_dir=/models/plid out=/reports/case1
    python -m plid.predict input=/studies/patient7 model_dir=/models/plid out=/reports     # a DICOM study
    python -m plid.predict input=/studies/patient7 model_dir=/models/plid slices=5 slice_aggregation=max

``input`` is a file, a series folder or a study folder, searched recursively; DICOM files are recognised by
content and grouped into series (:mod:`plid.data.dicom`); each series, volume or image is one case.
Writes into ``out``: ``report.json`` (every case, the series skipped and why, every file that failed),
``overlays/<case>.png`` (boxes, levels, probabilities, mask), ``masks/<case>.png`` (2D inputs) or
``masks/<case>.nii.gz`` (volumes and series, in their geometry) and ``report.html`` (all cases on one page). A
file that cannot be read is reported and skipped; the rest go on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from plid.errors import UserInputError
from plid.inference.batch import predict_inputs
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
    pipeline = Pipeline(load_model_dir(cfg.model_dir), max_named_levels=int(cfg.max_named_levels),
                        conf=cfg.get("conf"), iou=cfg.get("iou"),
                        levels=cfg.get("levels"))
    summary = predict_inputs(source, pipeline, out, slices=options, max_cases=cfg.get("max_images"))
    found = sum(c["status"] == "ok" for c in summary["cases"])
    log.info("%d cases: %d with a lumbar region, %d without; %d series skipped, %d files unreadable",
             len(summary["cases"]), found, len(summary["cases"]) - found, len(summary["skipped"]),
             len(summary["errors"]))
    print(f"Report: {out / 'report.html'}")
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    run_task(predict, cfg)


if __name__ == "__main__":
    main()
