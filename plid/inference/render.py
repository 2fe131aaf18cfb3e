"""What predict writes: the overlay PNG and mask of each case, and the HTML page of a run.

The page opens with a summary table (one row per disc: case, level, the classifier's probability and flags),
then the cases grouped by study and series (images and volume files without a study last), the series that were
skipped with their reasons, and the files that could not be read.

With a multi-task classifier every grading of a disc is listed compactly (:func:`grading_summary`: ``Pf 3``,
``Modic 0``, ``hern 0.12``...) in a ``gradings`` column, and the overlay labels each disc with its ordinal grades
and the binary gradings at or above their thresholds.
"""

from __future__ import annotations

import html
import os
import urllib.parse
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from plid.inference.levels import LEVEL_METHODS
from plid.labels import CLASS_COLOURS
from plid.reports import SHORT_NAMES, Decision, disc_decisions, primary_grading
from plid.utils.io import atomic_write

# plid's class colours as OpenCV draws them (BGR); background (class 0) stays as it is
CLASS_BGR = np.asarray(CLASS_COLOURS, dtype=np.uint8)[:, ::-1]
LUMBAR_COLOUR = (0, 215, 255)
DISC_COLOUR = (60, 60, 255)
SUSPECTED_COLOUR = (0, 200, 255)  # a disc the detector missed, suspected from the segmentation, a gap or the lumbar region
MIN_SIDE = 384  # smaller images are enlarged for the overlay so that labels stay legible


def overlay(image: np.ndarray, report: dict[str, Any], mask: np.ndarray | None, alpha: float = 0.4) -> np.ndarray:
    """The image with its mask blended in, the lumbar box, and each disc's box, level and probability (BGR)."""
    scale = max(1.0, MIN_SIDE / max(image.shape))
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if mask is not None:  # blended at the image's own resolution (fewer pixels), then enlarged once
        labelled = mask > 0
        canvas[labelled] = (alpha * CLASS_BGR[mask[labelled]] + (1 - alpha) * canvas[labelled]).astype(np.uint8)
    canvas = cv2.resize(canvas, size, interpolation=cv2.INTER_LINEAR)
    thickness = max(1, round(scale))

    def rect(box, bgr):
        x1, y1, x2, y2 = (int(round(v * scale)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2 - 1, y2 - 1), bgr, thickness)
        return x1, y1, x2, y2

    if report.get("lumbar"):
        rect(report["lumbar"]["box"], LUMBAR_COLOUR)
    for disc in report.get("missed_discs_suspected", []):
        x1, y1, x2, y2 = rect(disc["box"], SUSPECTED_COLOUR)
        cv2.putText(canvas, f"missed? {_level_label(disc, report)}", (x2 + 4, (y1 + y2) // 2 + 5),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, SUSPECTED_COLOUR, 1, cv2.LINE_AA)
    for disc in report.get("discs", []):
        x1, y1, x2, y2 = rect(disc["box"], DISC_COLOUR)
        label = _level_label(disc, report)
        decisions = disc_decisions(disc)
        if len(decisions) > 1:  # a multi-task classifier: the grades, and the binary gradings called positive
            label += " " + grading_summary(disc, only_positive=True).replace(", ", " ")
        elif decisions and next(iter(decisions.values())).probability is not None:
            label += f" {next(iter(decisions.values())).probability:.2f}"
        cv2.putText(canvas, label, (x2 + 4, (y1 + y2) // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255),
                    2, cv2.LINE_AA)
        cv2.putText(canvas, label, (x2 + 4, (y1 + y2) // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, DISC_COLOUR, 1,
                    cv2.LINE_AA)
    if report.get("status") != "ok":
        cv2.putText(canvas, "no lumbar region found", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 255), 2)
    return canvas


def _level_label(disc: dict[str, Any], report: dict[str, Any]) -> str:
    """A disc's name (or number), marked ``?`` where the image's levels are uncertain; a flagged box says why it
    has no level."""
    if disc.get("level") is None:
        return {"duplicate": "duplicate", "not_a_disc_suspected": "not a disc?"}.get(disc.get("flag"), "?")
    label = disc.get("name") or f"#{disc['level']}"
    return label + ("?" if report.get("levels_uncertain") else "")


def _primary(disc: dict[str, Any]) -> Decision | None:
    """The decision of the page's probability column: herniation, else the first binary grading."""
    decisions = disc_decisions(disc)
    found = decisions.get(primary_grading(decisions)) if decisions else None
    return found if found is not None and found.kind == "binary" else None


def _probability_cell(disc: dict[str, Any]) -> str:
    """The probability column: ``0.734``, marked where the grading is not validated (no finding is called)."""
    primary = _primary(disc)
    if primary is None:
        return ""
    return f"{primary.probability:.3f}" + (" (not validated)" if primary.validated is False else "")


def grading_summary(disc: dict[str, Any], only_positive: bool = False) -> str:
    """Every grading of a disc in one line (``Pf 3, Modic 0, hern 0.12, ...``), ordinal grades first; with
    ``only_positive`` the ordinal grades and the binary gradings its decisions call positive."""
    decisions = sorted(disc_decisions(disc).values(), key=lambda d: d.kind != "ordinal")
    return ", ".join(d.short() for d in decisions if d.called or not only_positive)


def write_png(path: str | Path, image: np.ndarray) -> Path:
    # fast compression: the default level costs more time than the models on small images and saves little space
    # (see benchmarks/pipeline.py)
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError(f"cannot encode {path} as PNG")
    with atomic_write(path, "wb") as handle:
        handle.write(encoded.tobytes())
    return Path(path)


def write_label_map(path: str | Path, label_map) -> Path:
    """A SimpleITK label map (NIfTI by the suffix of ``path``), compressed, written atomically."""
    import SimpleITK as sitk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a short temporary name: a case name near the 255-byte limit must leave room for it
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    partial = path.with_name(f".partial-{os.getpid()}-{path.name[: len(path.name) - len(suffix)][:40]}{suffix}")
    sitk.WriteImage(label_map, str(partial), True)
    os.replace(partial, path)
    return path


def _flags(report: dict[str, Any], disc: dict[str, Any] | None) -> list[str]:
    flags = list(report.get("warnings") or [])
    if disc is None:
        return [report.get("message") or report["status"], *flags]
    for made in reversed([d for d in disc_decisions(disc).values() if d.kind == "binary" and d.called]):
        flags.insert(0, f"probability > {made.threshold:.2f} ({SHORT_NAMES.get(made.grading, made.grading)})")
    if disc.get("flag"):
        flags.append(disc["flag"].replace("_", " "))
    elif disc.get("name") is None:
        flags.append("level not named: " + (report.get("levels_uncertain_reason") or "too many discs found"))
    elif report.get("levels_uncertain"):
        flags.append("level uncertain: " + (report.get("levels_uncertain_reason") or ""))
    seen = [s for s in disc.get("slices") or [] if s["box"] is not None]
    if disc.get("slices") and len(seen) < len(disc["slices"]):
        flags.append(f"found in {len(seen)} of {len(disc['slices'])} slices")
    return flags


def _per_slice(disc: dict[str, Any]) -> str:
    """The primary grading's probability on each analysed slice (– where the disc was not found there)."""
    primary = _primary(disc)
    if not disc.get("slices") or primary is None:
        return ""
    values = [(s.get("gradings") or {}).get(primary.grading) for s in disc["slices"]]
    return " / ".join("–" if v is None else f"{v['probability']:.3f}" for v in values)


def _summary(reports: list[dict[str, Any]]) -> str:
    rows = []
    multi = any(d.get("slices") for r in reports for d in r.get("discs", []))
    graded = any(len(d.get("gradings") or {}) > 1 for r in reports for d in r.get("discs", []))
    for report in reports:
        anchor = html.escape(_anchor(report))
        name = f"<a href='#{anchor}'>{html.escape(report['name'])}</a>"
        if not report.get("discs"):
            rows.append(f"<tr class='warn'><td>{name}</td><td>–</td><td></td>{'<td></td>' if multi else ''}"
                        f"{'<td></td>' if graded else ''}"
                        f"<td>{html.escape('; '.join(_flags(report, None)))}</td></tr>")
            continue
        for disc in report["discs"]:
            flags = _flags(report, disc)
            cls = " class='flag'" if flags and flags[0].startswith("probability") else ""
            level = _level_label(disc, report)
            rows.append(f"<tr{cls}><td>{name}</td><td>{html.escape(level)}</td>"
                        f"<td>{_probability_cell(disc)}</td>"
                        f"{f'<td>{_per_slice(disc)}</td>' if multi else ''}"
                        f"{f'<td>{html.escape(grading_summary(disc))}</td>' if graded else ''}"
                        f"<td>{html.escape('; '.join(flags))}</td></tr>")
    head = "<tr><th>case</th><th>level</th><th>probability</th>" + ("<th>per slice</th>" if multi else "") + \
        ("<th>gradings</th>" if graded else "") + "<th>flags</th></tr>"
    return f"<table class='summary'>{head}{''.join(rows)}</table>"


def _anchor(report: dict[str, Any]) -> str:
    return "case-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in report["name"])


def _disc_rows(report: dict[str, Any]) -> str:
    """One row per disc, bottom-up, the suspected missed discs among them; uncertain names marked ``?``."""
    discs = [*report.get("discs", []), *({**d, "flag": "missed_disc_suspected"} for d in
                                         report.get("missed_discs_suspected", []))]
    rows = []
    graded = any(len(d.get("gradings") or {}) > 1 for d in report.get("discs", []))
    for disc in sorted(discs, key=lambda d: -(d["box"][1] + d["box"][3])):
        score = disc.get("score")
        confidence = disc.get("level_confidence")
        flag = (disc.get("flag") or "").replace("_", " ")
        rows.append(f"<tr><td>{'' if disc['level'] is None else disc['level']}</td>"
                    f"<td>{html.escape(_level_label(disc, report))}</td>"
                    f"<td>{'' if confidence is None else f'{confidence:.2f}'}</td>"
                    f"<td>{_probability_cell(disc)}</td><td>{_per_slice(disc)}</td>"
                    f"<td>{'' if score is None else f'{score:.2f}'}</td>"
                    f"{f'<td>{html.escape(grading_summary(disc))}</td>' if graded else ''}"
                    f"<td class='warn'>{html.escape(flag)}</td></tr>")
    return "".join(rows)


def _areas(report: dict[str, Any]) -> str:
    segmentation = report.get("segmentation")
    if not segmentation:
        return ""
    parts = []
    for name, area in segmentation["areas"].items():
        mm2 = f" ({area['mm2']:.0f} mm²)" if area["mm2"] is not None else ""
        parts.append(f"{name} {area['pixels']} px{mm2}")
    return "<p>Areas: " + ", ".join(parts) + "</p>"


def _target(reports: list[dict[str, Any]]) -> str:
    described = next((r["classifier"] for r in reports if r.get("classifier")), None) or {}
    if described.get("targets"):
        return "herniation; every grading in the gradings column: " + ", ".join(described["targets"])
    return described.get("target") or "no disc classified"  # no classifier, or no disc found to classify


def _series_line(report: dict[str, Any]) -> str:
    series = report.get("series") or {}
    parts = []
    if series:
        parts.append(f"series {series.get('number')} {series.get('description') or ''}".strip())
    if report.get("modality"):
        parts.append(report["modality"])
    if report.get("slices_analysed") is not None:
        choice = report.get("slice_choice") or {}
        parts.append(f"slice {report.get('slice_index')} of {report.get('num_slices')} ({choice.get('method')})")
        if len(report["slices_analysed"]) > 1:
            parts.append(f"slices {report['slices_analysed']} aggregated by {report.get('slice_aggregation')}")
    return " · ".join(html.escape(str(p)) for p in parts)


def _link(target: str, folder: Path) -> str:
    """A link from a page in ``folder`` to the file ``target``: relative, URL-encoded (``#`` and ``?`` in a case
    name would otherwise cut the link), then HTML-escaped."""
    return html.escape(urllib.parse.quote(Path(os.path.relpath(folder / target, folder)).as_posix()))


def _case(report: dict[str, Any], folder: Path) -> str:
    overlay_src = _link(report["overlay"], folder) if report.get("overlay") else ""
    status = "" if report["status"] == "ok" else f"<p class='warn'>{html.escape(report.get('message', ''))}</p>"
    if report.get("levels_uncertain"):
        status += f"<p class='warn'>Levels uncertain: {html.escape(report.get('levels_uncertain_reason') or '')}</p>"
    warnings = "".join(f"<p class='warn'>{html.escape(w)}</p>" for w in report.get("warnings") or [])
    graded = "<th>gradings</th>" if any(len(d.get("gradings") or {}) > 1 for d in report.get("discs", [])) else ""
    table = ("<table><tr><th>#</th><th>level</th><th>level confidence</th><th>probability</th><th>per slice</th>"
             f"<th>detector score</th>{graded}<th>flag</th></tr>"
             f"{_disc_rows(report)}</table>") if report.get("discs") else "<p>No disc found.</p>"
    mask = ""
    if report.get("mask"):
        mask_name = Path(os.path.relpath(folder / report["mask"], folder)).as_posix()
        mask = f"<p>Mask: <a href='{_link(report['mask'], folder)}'>{html.escape(mask_name)}</a></p>"
    return (f"<section id='{html.escape(_anchor(report))}'><div><h3>{html.escape(report['name'])}</h3>"
            f"<img src='{overlay_src}'></div><div><p>{_series_line(report)}</p>{warnings}{status}"
            f"<p class='file'>{html.escape(report['file'])}</p>{table}{_areas(report)}{mask}</div></section>")


def _study_title(study: dict[str, Any] | None, patient: str | None) -> str:
    if not study:
        return "Images and volume files"
    uid = study.get("uid") or ""
    parts = [study.get("description") or "study", study.get("date") or "", f"patient {patient}" if patient else "",
             f"study …{uid[-8:]}" if uid else ""]  # two studies of one day and description stay apart
    return " · ".join(p for p in parts if p)


def write_html(path: str | Path, reports: list[dict[str, Any]], errors: list[dict[str, str]], title: str,
               levels: str, skipped: list[dict[str, Any]] | None = None, links_from: Path | None = None) -> Path:
    """One page: the summary table, every case grouped by study and series (overlay, discs, areas, mask), the
    series skipped with their reasons, and the files that failed; ``levels`` is the level rule the reports used.
    Links are relative to ``links_from``, the folder the page is moved to (default: where it is written)."""
    path = Path(path)
    where = Path(links_from) if links_from is not None else path.parent
    skipped = skipped or []
    groups: dict[str, dict[str, Any]] = {}

    def group(study, patient):
        key = (study or {}).get("uid") or ""
        return groups.setdefault(key, {"title": _study_title(study, patient), "cases": [], "skipped": []})

    for report in reports:
        group(report.get("study"), report.get("patient"))["cases"].append(report)
    for entry in skipped:
        group(entry.get("study"), entry.get("patient"))["skipped"].append(entry)
    sections, in_order = [], []
    for key in sorted(groups, key=lambda k: (k == "", groups[k]["title"])):
        entry = groups[key]
        cases = sorted(entry["cases"], key=lambda r: ((r.get("series") or {}).get("number") or 0, r["name"]))
        in_order.extend(cases)
        skipped_items = "".join(
            f"<li><b>{html.escape(s['series'])}</b> ({html.escape(s['file'])}): {html.escape(s['reason'])}</li>"
            for s in entry["skipped"])
        sections.append(f"<h2>{html.escape(entry['title'])}</h2>{''.join(_case(r, where) for r in cases)}"
                        + (f"<h4>Series not analysed</h4><ul class='skipped'>{skipped_items}</ul>"
                           if skipped_items else ""))
    failed = "".join(f"<li><b>{html.escape(e['file'])}</b>: {html.escape(e['error'])}</li>" for e in errors)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>
body{{font-family:sans-serif;margin:2em}} section{{display:flex;gap:2em;margin-bottom:2em;align-items:flex-start}}
img{{max-width:512px}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 8px}}
.warn{{color:#b00}} tr.flag td{{background:#fde2e2}} .file{{color:#666;font-size:90%}}
h2{{border-bottom:2px solid #444;margin-top:1.5em}}</style></head><body><h1>{html.escape(title)}</h1>
<p>Cases analysed: {len(reports)}; series not analysed: {len(skipped)}; files that could not be read:
{len(errors)}. Disc levels are numbered from the lowest disc up and named from L5/S1 {LEVEL_METHODS[levels]}
(levels={levels}; a name marked ? is uncertain: the reason is given); probabilities are the classifier's
({html.escape(_target(reports))}).</p>
<h2>Summary</h2>{_summary(in_order)}
{''.join(sections)}{f'<h2>Files that could not be read</h2><ul>{failed}</ul>' if errors else ''}</body></html>
"""
    with atomic_write(path) as handle:
        handle.write(page)
    return path
