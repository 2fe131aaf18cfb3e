"""Running the pipeline over a list of files: reading ahead, writing overlays, ``report.json`` and ``report.html``.

What ``python -m plid.predict`` and the end-to-end evaluation (``python -m plid.evaluate model_dir=...``) both
run, so that an evaluation scores exactly the reports a user gets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from plid.datamodules.io import Scan, ScanReadError, read_scan
from plid.pipeline.core import ImageResult, Pipeline
from plid.pipeline.report import overlay, write_html, write_png
from plid.utils.io import write_json

log = logging.getLogger(__name__)


def predict_files(files: list[Path], pipeline: Pipeline, out: Path, progress: bool = True,
                  timings: dict[str, float] | None = None,
                  on_result: Callable[[Scan, ImageResult], None] | None = None) -> dict[str, Any]:
    """Run ``pipeline`` over ``files``; writes overlays, ``report.json`` and ``report.html`` into ``out``.

    The next file is read, and overlays are drawn and written, in background threads while the models work on
    the current image (OpenCV, pydicom's and SimpleITK's decoders release the GIL). ``timings``, when given,
    receives the seconds spent waiting for a file to be read and in the pipeline. ``on_result``, when given, is
    called with each scan and its :class:`ImageResult` (the end-to-end evaluation scores the mask there).
    """
    out.mkdir(parents=True, exist_ok=True)
    cases, errors, used, pending = [], [], set(), []
    timings = {} if timings is None else timings
    clock = time.perf_counter
    with ThreadPoolExecutor(max_workers=1) as reader, ThreadPoolExecutor(max_workers=1) as writer:
        scans = _read_ahead(files, reader)
        for path in tqdm(files, desc="predict", unit="image", disable=not progress or len(files) < 2):
            start = clock()
            scan = next(scans)
            timings["read"] = timings.get("read", 0.0) + clock() - start
            if isinstance(scan, ScanReadError):
                log.error("%s", scan)
                errors.append({"file": str(path), "error": str(scan)})
                continue
            if scan.name in used:  # a.png and a.dcm in one folder
                scan.name = path.name
            used.add(scan.name)
            start = clock()
            result = pipeline(scan)
            timings["pipeline"] = timings.get("pipeline", 0.0) + clock() - start
            if on_result is not None:
                on_result(scan, result)
            report = result.report
            report["overlay"] = str(out / "overlays" / f"{scan.name}.png")
            pending.append(writer.submit(_write_overlay, report["overlay"], scan.image, report, result.mask))
            if report["status"] != "ok":
                log.warning("%s: %s", path, report.get("message"))
            cases.append(report)
        for future in pending:
            future.result()  # an overlay that failed to write is an error of this run, not of one file
    summary = {"model_dir": str(pipeline.models.root), "cases": cases, "errors": errors}
    write_json(out / "report.json", summary)
    write_html(out / "report.html", cases, errors, title=f"plid report: {len(cases)} images")
    return summary


def _read_ahead(files: list[Path], reader: ThreadPoolExecutor) -> Iterator[Scan | ScanReadError]:
    """Each file's scan (or why it cannot be read), in order, with the next file read in ``reader`` meanwhile:
    one file ahead, so a large folder is never held in memory."""
    upcoming = reader.submit(_read, files[0]) if files else None
    for k in range(len(files)):
        current = upcoming
        if k + 1 < len(files):
            upcoming = reader.submit(_read, files[k + 1])
        yield current.result()


def _read(path: Path) -> Scan | ScanReadError:
    try:
        return read_scan(path)
    except ScanReadError as error:
        return error


def _write_overlay(path: str, image, report: dict[str, Any], mask) -> None:
    write_png(path, overlay(image, report, mask))
