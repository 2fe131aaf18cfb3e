"""What predict writes: the overlay PNG of one image and the HTML page of a folder."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from plid.utils.io import atomic_write

# BGR colours of vertebra, disc, canal (class 1-3); background stays as it is
CLASS_COLOURS = {1: (80, 175, 255), 2: (60, 200, 60), 3: (235, 120, 40)}
LUMBAR_COLOUR = (0, 215, 255)
DISC_COLOUR = (60, 60, 255)
SUSPECTED_COLOUR = (0, 200, 255)  # a disc the detector missed, suspected from the segmentation or a gap
MIN_SIDE = 384  # smaller images are enlarged for the overlay so that labels stay legible


def overlay(image: np.ndarray, report: dict[str, Any], mask: np.ndarray | None, alpha: float = 0.4) -> np.ndarray:
    """The image with its mask blended in, the lumbar box, and each disc's box, level and probability (BGR)."""
    scale = max(1.0, MIN_SIDE / max(image.shape))
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if mask is not None:  # blended at the image's own resolution (fewer pixels), then enlarged once
        palette = np.zeros((256, 3), np.uint8)
        for k, bgr in CLASS_COLOURS.items():
            palette[k] = bgr
        labelled = mask > 0
        canvas[labelled] = (alpha * palette[mask[labelled]] + (1 - alpha) * canvas[labelled]).astype(np.uint8)
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
        probability = _probability(disc)
        if probability is not None:
            label += f" {probability:.2f}"
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


def _probability(disc: dict[str, Any]) -> float | None:
    """The classifier's probability of a disc (``herniation_probability`` or ``<grading>_probability``)."""
    return next((v for k, v in disc.items() if k.endswith("_probability")), None)


def write_png(path: str | Path, image: np.ndarray) -> Path:
    # fast compression: the default level costs more than the models on small images, for a few % of file size
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError(f"cannot encode {path} as PNG")
    with atomic_write(path, "wb") as handle:
        handle.write(encoded.tobytes())
    return Path(path)


def _disc_rows(report: dict[str, Any]) -> str:
    """One row per disc, bottom-up, the suspected missed discs among them; uncertain names marked ``?``."""
    discs = [*report.get("discs", []), *({**d, "flag": "missed_disc_suspected"} for d in
                                         report.get("missed_discs_suspected", []))]
    rows = []
    for disc in sorted(discs, key=lambda d: -(d["box"][1] + d["box"][3])):
        p, score = _probability(disc), disc.get("score")
        confidence = disc.get("level_confidence")
        flag = (disc.get("flag") or "").replace("_", " ")
        rows.append(f"<tr><td>{'' if disc['level'] is None else disc['level']}</td>"
                    f"<td>{html.escape(_level_label(disc, report))}</td>"
                    f"<td>{'' if confidence is None else f'{confidence:.2f}'}</td>"
                    f"<td>{'' if p is None else f'{p:.3f}'}</td>"
                    f"<td>{'' if score is None else f'{score:.2f}'}</td>"
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
    described = next((r["classifier"] for r in reports if r.get("classifier")), None)
    return (described or {}).get("target") or "no classifier"


def write_html(path: str | Path, reports: list[dict[str, Any]], errors: list[dict[str, str]], title: str) -> Path:
    """One page with every case: its overlay, its discs, the segmented areas; and the files that failed."""
    path = Path(path)
    cases = []
    for report in reports:
        overlay_src = os.path.relpath(report["overlay"], path.parent) if report.get("overlay") else ""
        status = "" if report["status"] == "ok" else f"<p class='warn'>{html.escape(report.get('message', ''))}</p>"
        if report.get("levels_uncertain"):
            status += f"<p class='warn'>Levels uncertain: {html.escape(report.get('levels_uncertain_reason') or '')}</p>"
        table = ("<table><tr><th>#</th><th>level</th><th>level confidence</th><th>probability</th>"
                 "<th>detector score</th><th>flag</th></tr>"
                 f"{_disc_rows(report)}</table>") if report.get("discs") else "<p>No disc found.</p>"
        cases.append(f"<section><h2>{html.escape(report['name'])}</h2><img src='{html.escape(overlay_src)}'>"
                     f"<div>{status}<p>{html.escape(report['file'])}</p>{table}{_areas(report)}</div></section>")
    failed = "".join(f"<li><b>{html.escape(e['file'])}</b>: {html.escape(e['error'])}</li>" for e in errors)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>
body{{font-family:sans-serif;margin:2em}} section{{display:flex;gap:2em;margin-bottom:2em;align-items:flex-start}}
img{{max-width:512px}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 8px}}
.warn{{color:#b00}}</style></head><body><h1>{html.escape(title)}</h1>
<p>{len(reports)} images analysed, {len(errors)} failed. Disc levels are numbered from the lowest disc up and
named from L5/S1 where the segmentation confirms it (a name marked ? is uncertain: the reason is given); probabilities
are the classifier's ({html.escape(_target(reports))}).</p>
{''.join(cases)}{f'<h2>Files that could not be read</h2><ul>{failed}</ul>' if errors else ''}</body></html>
"""
    with atomic_write(path) as handle:
        handle.write(page)
    return path
