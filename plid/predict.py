"""From scans to per-disc reports with a model_dir (``python -m plid.export``).

    python -m plid.predict input=/scans/case1.dcm model_dir=/models/plid out=/reports/case1
    python -m plid.predict input=/scans model_dir=/models/plid out=/reports

Writes into ``out``: ``report.json`` (every case and every file that failed), ``overlays/<name>.png`` (boxes,
levels, probabilities, mask) and ``report.html`` (all cases on one page). A file that cannot be read is
reported and skipped; the rest go on.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

from plid.datamodules.io import ScanReadError, list_scans, read_scan
from plid.errors import UserInputError, find_user_error
from plid.pipeline.core import Pipeline
from plid.pipeline.model_dir import load_model_dir
from plid.pipeline.report import overlay, write_html, write_png
from plid.utils.io import write_json

log = logging.getLogger(__name__)


def predict_files(files: list[Path], pipeline: Pipeline, out: Path, progress: bool = True) -> dict[str, Any]:
    """Run ``pipeline`` over ``files``; writes overlays, ``report.json`` and ``report.html`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    cases, errors, used = [], [], set()
    for path in tqdm(files, desc="predict", unit="image", disable=not progress or len(files) < 2):
        try:
            scan = read_scan(path)
        except ScanReadError as error:
            log.error("%s", error)
            errors.append({"file": str(path), "error": str(error)})
            continue
        if scan.name in used:  # a.png and a.dcm in one folder
            scan.name = path.name
        used.add(scan.name)
        result = pipeline(scan)
        report = result.report
        report["overlay"] = str(write_png(out / "overlays" / f"{scan.name}.png",
                                          overlay(scan.image, report, result.mask)))
        if report["status"] != "ok":
            log.warning("%s: %s", path, report.get("message"))
        cases.append(report)
    summary = {"model_dir": str(pipeline.models.root), "cases": cases, "errors": errors}
    write_json(out / "report.json", summary)
    write_html(out / "report.html", cases, errors, title=f"plid report: {len(cases)} images")
    return summary


def predict(cfg: DictConfig) -> dict[str, Any]:
    source = cfg.get("input") or ((cfg.get("data") or {}).get("root") and Path(cfg.data.root) / "images")
    if not source:
        raise UserInputError("give input=<file or folder> (or data.root=<dataset> to predict on its images/)")
    files = list_scans(source)
    if cfg.get("max_images"):
        files = files[: int(cfg.max_images)]
    out = Path(cfg.get("out") or cfg.paths.output_dir).expanduser().resolve()
    pipeline = Pipeline(load_model_dir(cfg.model_dir), max_named_levels=int(cfg.max_named_levels),
                        conf=cfg.get("conf"))
    summary = predict_files(files, pipeline, out)
    found = sum(c["status"] == "ok" for c in summary["cases"])
    log.info("%d images: %d with a lumbar region, %d without, %d unreadable", len(files), found,
             len(summary["cases"]) - found, len(summary["errors"]))
    print(f"Report: {out / 'report.html'}")
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        predict(cfg)
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        log.error("%s", user_error)
        sys.exit(f"error: {user_error}")


if __name__ == "__main__":
    main()
