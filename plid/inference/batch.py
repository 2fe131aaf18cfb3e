"""Running the pipeline over cases: reading ahead, choosing slices, writing overlays, masks, ``report.json`` and
``report.html``.

What ``python -m plid.predict`` (:func:`predict_inputs`: a file, a series folder or a study) and the end-to-end
evaluation (:func:`predict_files`: a list of files, ``python -m plid.evaluate model_dir=...``) both run, through
the one loop of :func:`predict_cases`, so that an evaluation scores exactly the reports a user gets.

Per case: a 2D image is analysed as it is and its mask written as ``masks/<case>.png`` (class values 0-3 at
the image's resolution). A volume or DICOM series has its slice(s) chosen (:mod:`plid.inference.slices`), each
analysed, and its mask written as ``masks/<case>.nii.gz`` in the geometry of the input (the analysed slices
labelled, the others 0), so it opens over the scan in 3D Slicer or ITK-SNAP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from plid.data.dicom import CaseSource, Found, Skipped, collect, discover
from plid.data.scans import Case, CaseSkipped, Scan, ScanReadError, read_case
from plid.inference.pipeline import ImageResult, Pipeline
from plid.inference.render import overlay, write_html, write_label_map, write_png
from plid.inference.slices import SliceOptions, aggregate, analysed_slices, choose_slice
from plid.reports import check_report
from plid.utils.io import write_json

log = logging.getLogger(__name__)


def predict_files(files: list[Path], pipeline: Pipeline, out: Path, progress: bool = True,
                  timings: dict[str, float] | None = None,
                  on_result: Callable[[Scan, ImageResult], None] | None = None,
                  slices: SliceOptions | None = None) -> dict[str, Any]:
    """Run ``pipeline`` over ``files`` (each image or volume one case, DICOM files grouped into series); see
    :func:`predict_cases`."""
    return predict_cases(collect([Path(f) for f in files]), pipeline, out, progress, timings, on_result, slices)


def predict_inputs(source: str | Path, pipeline: Pipeline, out: Path, progress: bool = True,
                   timings: dict[str, float] | None = None,
                   on_result: Callable[[Scan, ImageResult], None] | None = None,
                   slices: SliceOptions | None = None, max_cases: int | None = None) -> dict[str, Any]:
    """Run ``pipeline`` over every case under ``source`` (a file, a series folder or a study folder, searched
    recursively); see :func:`predict_cases`."""
    found = discover(source)
    if max_cases:
        found.cases = found.cases[: int(max_cases)]
    return predict_cases(found, pipeline, out, progress, timings, on_result, slices)


def predict_cases(found: Found, pipeline: Pipeline, out: Path, progress: bool = True,
                  timings: dict[str, float] | None = None,
                  on_result: Callable[[Scan, ImageResult], None] | None = None,
                  slices: SliceOptions | None = None) -> dict[str, Any]:
    """Run ``pipeline`` over ``found.cases``; writes overlays, masks, ``report.json`` and ``report.html`` into
    ``out`` and returns what ``report.json`` holds: ``cases`` (one report per case analysed), ``skipped`` (series
    not analysed, with ``reason``) and ``errors`` (files that could not be read).

    The next case is read, and overlays and masks are written, in background threads while the models work on
    the current one (OpenCV, pydicom's and SimpleITK's decoders release the GIL). ``timings``, when given,
    receives the seconds spent waiting for a case to be read, choosing slices and in the pipeline. ``on_result``,
    when given, is called with each analysed image (every analysed slice of a volume) and its
    :class:`ImageResult` (the end-to-end evaluation scores the mask there).
    """
    options = slices or SliceOptions()
    out.mkdir(parents=True, exist_ok=True)
    cases, pending = [], []
    errors = list(found.errors)
    skipped = [s.as_dict() for s in found.skipped]
    timings = {} if timings is None else timings
    clock = time.perf_counter
    with ThreadPoolExecutor(max_workers=1) as reader, ThreadPoolExecutor(max_workers=1) as writer:
        read = _read_ahead(found.cases, reader)
        for source in tqdm(found.cases, desc="predict", unit="case", disable=not progress or len(found.cases) < 2):
            start = clock()
            case = next(read)
            timings["read"] = timings.get("read", 0.0) + clock() - start
            for error in source.errors:
                log.error("%s", error["error"])
            errors.extend(source.errors)
            if isinstance(case, ScanReadError):
                log.error("%s", case)
                errors.append({"file": str(source.path), "error": str(case)})
                continue
            if isinstance(case, CaseSkipped):
                log.warning("%s (%s): %s", source.name, source.path, case)
                skipped.append(Skipped(source.name, source.path, str(case), source.info).as_dict())
                continue
            report, image, mask, label_map = _analyse(case, pipeline, options, timings, on_result)
            report["overlay"] = str(out / "overlays" / f"{case.name}.png")
            pending.append(writer.submit(_write_overlay, report["overlay"], image, report, mask))
            if label_map is not None:
                report["mask"] = str(out / "masks" / f"{case.name}.nii.gz")
                pending.append(writer.submit(write_label_map, report["mask"], label_map))
            elif mask is not None:
                report["mask"] = str(out / "masks" / f"{case.name}.png")
                pending.append(writer.submit(write_png, report["mask"], mask))
            else:
                report["mask"] = None
            if report["status"] != "ok":
                log.warning("%s: %s", source.path, report.get("message"))
            cases.append(report)
        for future in pending:
            future.result()  # an overlay that failed to write is an error of this run, not of one file
    summary = {"model_dir": str(pipeline.models.root), "levels": pipeline.levels, "cases": cases, "skipped": skipped,
               "errors": errors}
    check_report(summary)
    write_json(out / "report.json", summary)
    write_html(out / "report.html", cases, errors, title=f"plid report: {len(cases)} cases", levels=pipeline.levels,
               skipped=skipped)
    return summary


def _analyse(case: Case, pipeline: Pipeline, options: SliceOptions, timings: dict[str, float],
             on_result: Callable[[Scan, ImageResult], None] | None):
    """One case through the pipeline: its report, the image and mask of its overlay, and (volumes) its label
    map in the input's geometry."""
    clock = time.perf_counter
    volume = case.volume
    if volume is None:
        scan = case.scan()
        start = clock()
        result = pipeline(scan)
        timings["pipeline"] = timings.get("pipeline", 0.0) + clock() - start
        if on_result is not None:
            on_result(scan, result)
        return _describe(result.report, case), scan.image, result.mask, None
    start = clock()
    chosen, choice = choose_slice(volume, pipeline.cropper.lumbar, options.slice)
    timings["slice_choice"] = timings.get("slice_choice", 0.0) + clock() - start
    indices = analysed_slices(volume.num_slices, chosen, options.slices)
    reports, masks, image, mask = {}, {}, None, None
    for k in indices:
        scan = case.scan(k)
        start = clock()
        result = pipeline(scan)
        timings["pipeline"] = timings.get("pipeline", 0.0) + clock() - start
        if on_result is not None:
            on_result(scan, result)
        reports[k] = result.report
        if result.mask is not None:
            masks[k] = result.mask
        if k == chosen:
            image, mask = scan.image, result.mask
    report = aggregate(reports, chosen, options.aggregation) if len(indices) > 1 else reports[chosen]
    report["slice_choice"] = choice
    report["slices_analysed"] = indices
    report["num_slices"] = volume.num_slices
    if len(indices) > 1:
        report["slice_status"] = {str(k): reports[k]["status"] for k in indices}
    return _describe(report, case), image, mask, volume.label_map(masks)


def _describe(report: dict[str, Any], case: Case) -> dict[str, Any]:
    """Study, series, modality and warnings of a case, beside what the pipeline reported."""
    info = case.source.info
    if info:
        report["patient"] = info.get("patient")
        report["study"] = info.get("study")
        report["series"] = {"number": info.get("series_number"), "description": info.get("series_description"),
                            "uid": info.get("series_uid"), "files": len(case.source.files) or None}
        report["modality"] = info.get("modality")
    if case.volume is not None:
        report["plane"] = info.get("plane", "sagittal")
    report["warnings"] = list(case.source.warnings)
    for warning in case.source.warnings:
        log.warning("%s: %s", case.name, warning)
    return report


def _read_ahead(sources: list[CaseSource], reader: ThreadPoolExecutor) -> Iterator[Case | ScanReadError | CaseSkipped]:
    """Each case read (or why it cannot be, or is not analysed), in order, with the next one read in ``reader``
    meanwhile: one case ahead, so a large study is never held in memory."""
    upcoming = reader.submit(_read, sources[0]) if sources else None
    for k in range(len(sources)):
        current = upcoming
        if k + 1 < len(sources):
            upcoming = reader.submit(_read, sources[k + 1])
        yield current.result()


def _read(source: CaseSource) -> Case | ScanReadError | CaseSkipped:
    try:
        return read_case(source)
    except (ScanReadError, CaseSkipped) as error:
        return error


def _write_overlay(path: str, image, report: dict[str, Any], mask) -> None:
    write_png(path, overlay(image, report, mask))


