"""Running the pipeline over cases: reading ahead, choosing slices, writing overlays, masks, ``report.json`` and
``report.html``.

What ``python -m plid.predict`` (:func:`predict_inputs`: a file, a series folder or a study) and the end-to-end
evaluation (:func:`predict_files`: a list of files, ``python -m plid.evaluate model_dir=...``) both run, through
the one loop of :func:`predict_cases`, so that an evaluation scores exactly the reports a user gets.

Per case: a 2D image is analysed as it is and its mask written as ``masks/<case>.png`` (class values 0-3 at
the image's resolution). A volume or DICOM series has its slice(s) chosen (:mod:`plid.inference.slices`), each
analysed, and its mask written as ``masks/<case>.nii.gz`` in the geometry of the input (the analysed slices
labelled, the others 0), so it opens over the scan in 3D Slicer or ITK-SNAP. Every path in ``report.json``
(``file``, ``overlay``, ``mask``, ``model_dir``) is relative to the folder holding it (:func:`resolve`);
``discs.csv`` beside it holds one row per disc.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from plid.data.dicom import CaseSource, Found, Skipped, collect, discover
from plid.data.scans import Case, CaseSkipped, Scan, ScanReadError, read_case
from plid.inference.pipeline import ImageResult, Pipeline
from plid.inference.render import overlay, write_html, write_label_map, write_png
from plid.inference.slices import SliceOptions, aggregate, analysed_slices, choose_slice
from plid.reports import check_report, disc_rows
from plid.utils.io import atomic_write, publish_outputs, write_json
from plid.utils.provenance import file_sha256, provenance

log = logging.getLogger(__name__)
# what a predict run writes into ``out``, replaced together (the report last)
OUTPUTS = ("overlays", "masks", "report.html", "discs.csv", "report.json")


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
    # everything is written into a hidden folder inside ``out`` and moved in at the end (publish_outputs): a run
    # that stops midway leaves the previous outputs whole, and no overlay of an earlier run stays beside the report
    stage = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
    try:
        summary = _predict_into(found, pipeline, out, stage, options, progress, {} if timings is None else timings,
                                on_result)
        publish_outputs(stage, out, OUTPUTS)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return summary


def _predict_into(found: Found, pipeline: Pipeline, out: Path, stage: Path, options: SliceOptions, progress: bool,
                  timings: dict[str, float], on_result) -> dict[str, Any]:
    """:func:`predict_cases` with every file written under ``stage``, the report naming where it will be in ``out``."""
    cases, pending = [], []
    errors = list(found.errors)
    skipped = [s.as_dict() for s in found.skipped]
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
            try:
                report, image, mask, label_map = _analyse(case, pipeline, options, timings, on_result)
            except (CallbackError, MemoryError):
                raise  # the caller's own (the evaluation's scoring), or the machine's: not this case's problem
            except Exception as error:  # noqa: BLE001 - one case that fails is that case's error; the batch goes on
                if type(error).__name__ == "OutOfMemoryError":  # torch's (CUDA): every next case would fail too
                    raise
                log.exception("%s: analysis failed", source.path)
                errors.append({"file": str(source.path),
                               "error": f"{source.path}: analysis failed ({type(error).__name__}: {error})"})
                continue
            overlay_file = f"overlays/{case.name}.png"
            report["overlay"] = overlay_file
            writes = [writer.submit(_write_overlay, stage / overlay_file, image, report, mask)]
            if label_map is not None or mask is not None:
                mask_file = f"masks/{case.name}.nii.gz" if label_map is not None else f"masks/{case.name}.png"
                report["mask"] = mask_file
                writes.append(writer.submit(write_label_map, stage / mask_file, label_map) if label_map is not None
                              else writer.submit(write_png, stage / mask_file, mask))
            else:
                report["mask"] = None
            pending.append((source, report, writes))
            if report["status"] != "ok":
                log.warning("%s: %s", source.path, report.get("message"))
            cases.append(report)
        for source, report, writes in pending:
            for key, future in zip(("overlay", "mask"), writes):
                try:
                    future.result()
                except Exception as error:  # noqa: BLE001 - an output that cannot be written (a name too long)
                    log.error("%s: its %s cannot be written (%s)", source.path, key, error)
                    errors.append({"file": str(source.path), "error": f"{source.path}: its {key} cannot be written "
                                                                      f"({type(error).__name__}: {error})"})
                    report[key] = None
    for entry in [*cases, *skipped, *errors]:
        given, entry["file"] = str(entry["file"]), relative_to(entry["file"], out)
        for key in ("error", "reason", "message"):  # the messages name the file as the report does
            if isinstance(entry.get(key), str):
                entry[key] = entry[key].replace(given, entry["file"])
    summary = {"model_dir": relative_to(pipeline.models.root, out), "provenance": provenance(pipeline.models.root),
               "levels": pipeline.levels, "cases": cases, "skipped": skipped, "errors": errors}
    check_report(summary)
    write_discs_csv(stage / "discs.csv", summary)
    write_json(stage / "report.json", summary)
    write_html(stage / "report.html", cases, errors, title=f"plid report: {len(cases)} cases", levels=pipeline.levels,
               skipped=skipped, links_from=out)
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
        _call(on_result, scan, result)
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
        _call(on_result, scan, result)
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


class CallbackError(RuntimeError):
    """An ``on_result`` callback failed: the caller's error, raised as it is, not a case's."""


def _call(on_result, scan: Scan, result: ImageResult) -> None:
    if on_result is None:
        return
    try:
        on_result(scan, result)
    except Exception as error:
        raise CallbackError(f"on_result failed on {scan.path}: {type(error).__name__}: {error}") from error


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
        k = report.get("slice_index")
        for disc in report.get("discs") or []:
            x1, y1, x2, y2 = disc["box"]
            disc["box_mm"] = [case.volume.patient_point(k, x1, y1), case.volume.patient_point(k, x2, y2)]
    report["input"] = _identity(report, case)
    report["warnings"] = list(case.source.warnings)
    for warning in case.source.warnings:
        log.warning("%s: %s", case.name, warning)
    return report


def relative_to(path: str | Path, out: Path) -> str:
    """``path`` relative to ``out`` (report.json holds no machine path: the folder can be moved or shared with its
    inputs beside it); :func:`resolve` turns it back."""
    return Path(os.path.relpath(Path(path).expanduser().resolve(), out)).as_posix()


def resolve(path: str | None, out: Path) -> Path | None:
    """A path of report.json (``file``, ``overlay``, ``mask``), relative to the folder ``out`` holding it, as a path
    to open."""
    return None if path is None else (out / path).resolve()


def write_discs_csv(path: Path, summary: dict[str, Any]) -> Path:
    """``discs.csv``: one row per disc of every case (:func:`plid.reports.disc_rows`)."""
    import pandas as pd

    rows = disc_rows(summary)
    with atomic_write(path) as handle:
        (pd.DataFrame(rows) if rows else pd.DataFrame(columns=["case", "level", "name"])).to_csv(handle, index=False)
    return path


def _identity(report: dict[str, Any], case: Case) -> dict[str, Any]:
    """A DICOM series' UID and the SOP instance UIDs of its analysed slices (each the instance whose position along
    the slice normal is nearest the slice's), or an image or volume file's sha256."""
    source, volume = case.source, case.volume
    if source.kind != "dicom":
        return {"sha256": file_sha256(source.path)}
    identity: dict[str, Any] = {"series_uid": source.info.get("series_uid")}
    positioned = [i for i in source.instances if i.get("position") is not None]
    if volume is not None and positioned:
        normal = np.asarray(volume.oriented.GetDirection(), float).reshape(3, 3)[:, 2]
        offsets = np.array([np.dot(i["position"], normal) for i in positioned])
        analysed = report.get("slices_analysed") or [report.get("slice_index")]
        identity["sop_instance_uids"] = [positioned[int(np.argmin(np.abs(offsets - volume.slice_offset(k))))]["uid"]
                                         for k in analysed if k is not None]
    elif len(source.instances) == 1:
        identity["sop_instance_uids"] = [source.instances[0]["uid"]]
    return identity


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


def _write_overlay(path: Path, image, report: dict[str, Any], mask) -> None:
    write_png(path, overlay(image, report, mask))


