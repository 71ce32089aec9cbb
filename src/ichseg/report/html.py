"""A clinician's report of one study as ONE self-contained HTML file.

Everything a reader needs is inside the file: images are base64 PNG data URIs, the
per-slice plot is inline SVG, the CSS is inline, there are no scripts and no links to fetch,
so it opens the same from a USB stick, an e-mail attachment or an air-gapped workstation, and WeasyPrint turns it into a PDF
without touching the network (``ichseg.report.pdf``). All text that comes from outside
(study names, titles, model information) is HTML-escaped.

Why it is long: one self-contained document (CSS, lesion table, key-slice panels, the per-
slice plot and the limits text) whose parts share escaping and layout helpers; split, each
part would need all of them.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ichseg.credits import DATASET_CREDIT
from ichseg.files import atomic_write_text
from ichseg.report.lesions import Lesion

log = logging.getLogger(__name__)

DISCLAIMER = "Research software — not a medical device. Not for diagnostic use."


#: What a reader must know about where the numbers come from; ``model_info["limitations"]`` adds to it.
LIMITATIONS: tuple[str, ...] = (
    "Trained on 66 patients of one public dataset (CT-ICH), whose slices are 8-bit JPEG images of fixed brain and "
    "bone windows, not Hounsfield units.",
    "CT from other scanners (DICOM or NIfTI, in Hounsfield units) is converted to those windows with estimated "
    "window settings; how well the model transfers to other scanners, protocols and hospitals has not been measured.",
    "The accuracy figures below were cross-validated on the same dataset and are likely optimistic elsewhere. "
    "The model misses some bleeds and calls many normal studies positive.",
    "Volumes are measured on the predicted outline: errors in the outline are errors in the volume. ABC/2 is the "
    "bedside estimate (Kothari et al., Stroke 1996) computed from the same outline.",
    "Subtype probabilities come from slice heads of the same network; only the hemorrhage head takes part in the "
    "verdict (a slice is positive when its outline survives or that head is confident).",
)

_CSS = """
@page { size: A4; margin: 11mm 11mm 15mm 11mm;
        @bottom-left { content: "Research software — not a medical device. Not for diagnostic use.";
                       font-family: "DejaVu Sans", Arial, sans-serif; font-size: 8pt; color: #7c2d12; font-weight: bold; }
        @bottom-right { content: "page " counter(page) " of " counter(pages); font-family: "DejaVu Sans", Arial, sans-serif;
                        font-size: 8pt; color: #57606a; } }
* { box-sizing: border-box; }
body { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; color: #1b1f23; margin: 0; background: #f3f4f6;
       font-size: 14px; line-height: 1.4; }
main { max-width: 1040px; margin: 0 auto; background: #fff; padding: 18px 26px 26px 26px; }
h1 { font-size: 21px; margin: 4px 0 2px 0; }
h2 { font-size: 16px; margin: 20px 0 8px 0; border-bottom: 1px solid #d0d7de; padding-bottom: 3px; }
.meta { color: #57606a; font-size: 12.5px; margin: 0 0 10px 0; }
.disclaimer { background: #fff4e5; border: 2px solid #b45309; color: #7c2d12; font-weight: bold; padding: 8px 12px;
              border-radius: 4px; font-size: 15px; }
.verdict { margin: 12px 0 6px 0; padding: 12px 16px; border-radius: 6px; border-left: 10px solid; }
.verdict.positive { background: #fdecec; border-color: #c62828; }
.verdict.negative { background: #edf7ee; border-color: #2e7d32; }
.verdict .call { font-size: 24px; font-weight: bold; }
.verdict.positive .call { color: #b71c1c; }
.verdict.negative .call { color: #1b5e20; }
.verdict .volume { font-size: 18px; margin-top: 2px; }
.verdict .detail { color: #444; font-size: 13px; margin-top: 4px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 4px 7px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num, th.num { text-align: right; white-space: nowrap; }
.note { color: #57606a; font-size: 12px; margin: 4px 0 0 0; }
figure.key { margin: 0 0 14px 0; page-break-inside: avoid; break-inside: avoid; }
figure.key .row { font-size: 0; white-space: nowrap; }
figure.key img { width: 32.6%; height: auto; margin-right: 1%; border: 1px solid #999; background: #000; }
figure.key img:last-child { margin-right: 0; }
figure.key figcaption { margin-top: 3px; font-size: 13px; }
svg.plot { width: 100%; height: auto; }
.bar { display: inline-block; height: 11px; background: #8e24aa; vertical-align: middle; }
.bartrack { display: inline-block; width: 180px; height: 11px; background: #eee; vertical-align: middle; }
ul.limits { margin: 4px 0; padding-left: 20px; }
ul.limits li { margin: 2px 0; }
footer { margin-top: 18px; font-size: 11.5px; color: #57606a; border-top: 1px solid #d0d7de; padding-top: 6px; }
.keep { page-break-inside: avoid; break-inside: avoid; }
h2 { page-break-after: avoid; break-after: avoid; }
@media print {
  body { background: #fff; font-size: 11px; }
  main { max-width: none; padding: 0; }
  h1 { font-size: 18px; }
  h2 { font-size: 14px; margin-top: 14px; }
  table { font-size: 10px; }
  th, td { padding: 2px 4px; }
  .verdict .call { font-size: 20px; }
  .verdict .volume { font-size: 15px; }
  .disclaimer { font-size: 12.5px; }
  figure.key figcaption { font-size: 10.5px; }
  .note, footer { font-size: 9.5px; }
}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _png_data_uri(rgb_or_grey: np.ndarray) -> str:
    """PNG-encode an (H, W) or (H, W, 3) RGB uint8 image as a data URI."""
    arr = np.ascontiguousarray(rgb_or_grey)
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {arr.dtype}")
    bgr = arr[..., ::-1] if arr.ndim == 3 else arr
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr))
    if not ok:
        raise ValueError("cannot PNG-encode image")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _lesion_dict(les: Lesion | Mapping[str, Any]) -> Mapping[str, Any]:
    return les.to_dict() if isinstance(les, Lesion) else les


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def _fmt_ml(value: Any) -> str:
    """mL with 2 decimals; specks below 0.005 mL show as "< 0.01", not a misleading 0.00."""
    if value is None:
        return "—"
    v = float(value)
    return "< 0.01" if 0 < v < 0.005 else f"{v:.2f}"


def _fmt_total_ml(v: float) -> str:
    """One decimal from 1 mL up, two below, so a small bleed never reads "0.0 mL"."""
    if v <= 0:
        return "0.0"
    return f"{v:.1f}" if v >= 1 else _fmt_ml(v)


def _slice_span(slices: Sequence[int]) -> str:
    """1-based slice numbers as compact ranges: 3-5, 8."""
    s = sorted(int(v) for v in slices)
    if not s:
        return "—"
    parts, start, prev = [], s[0], s[0]
    for v in [*s[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(f"{start}" if start == prev else f"{start}–{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(parts)


def key_slice_indices(found: Sequence[Lesion], slice_probs: np.ndarray, max_slices: int = 4) -> list[int]:
    """0-based slices to show: each lesion's largest-area slice, largest lesion first, then
    (with no lesion) the slice the classifier found most suspicious, so a negative report
    still shows the reader where the model looked hardest."""
    picked: list[int] = []
    for les in found:
        k = les.largest_slice - 1
        if k not in picked:
            picked.append(k)
        if len(picked) >= max_slices:
            break
    probs = np.asarray(slice_probs, dtype=np.float64).reshape(-1)
    if not picked and probs.size:
        picked.append(int(np.argmax(probs)))
    return picked


def probability_plot_svg(slice_probs: np.ndarray, threshold: float | None, marked_slices: Sequence[int] = ()) -> str:
    """Per-slice hemorrhage probability as bars, the decision threshold as a dashed line and
    the slices with an outline (1-based) shaded behind the bars, as inline SVG.

    Hand-written SVG rather than matplotlib: importing matplotlib cost 1.2 s of a 3 s
    ``predict`` (profiled on a 30-slice study), and the picture is a handful of rectangles.
    SVG also stays sharp when the report is printed or zoomed, and needs nothing fetched."""
    probs = np.clip(np.nan_to_num(np.asarray(slice_probs, dtype=np.float64).reshape(-1)), 0.0, 1.0)
    n = probs.size
    w, h, left, right, top, bottom = 1080, 324, 64, 16, 40, 44
    pw, ph = w - left - right, h - top - bottom
    dash = 'stroke-width="1.5" stroke-dasharray="6 4"'

    def x_of(s: float) -> float:  # slice s (1-based) centre
        return left + (s - 0.4) / (n + 0.2) * pw if n else left

    def y_of(p: float) -> float:
        return top + (1.0 - p / 1.02) * ph

    step = pw / (n + 0.2) if n else pw
    out = [
        f'<svg class="plot" viewBox="0 0 {w} {h}" role="img" '
        'aria-label="hemorrhage probability per slice" font-family="DejaVu Sans, sans-serif" font-size="13">'
    ]
    marked = sorted({int(s) for s in marked_slices if 1 <= int(s) <= n})
    for s in marked:
        out.append(
            f'<rect x="{x_of(s) - step / 2:.1f}" y="{top}" width="{step:.1f}" height="{ph}" fill="#ffcdd2" fill-opacity="0.6"/>'
        )
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):  # y grid and labels
        y = y_of(v)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#000" stroke-opacity="0.12"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    above = probs >= threshold if threshold is not None else np.zeros(n, bool)
    for i, (p, hi) in enumerate(zip(probs, above, strict=True), start=1):
        y = y_of(float(p))
        out.append(
            f'<rect x="{x_of(i) - 0.4 * step:.1f}" y="{y:.1f}" width="{0.8 * step:.1f}" height="{top + ph - y:.1f}" '
            f'fill="{"#c62828" if hi else "#78909c"}"><title>slice {i}: {p:.2f}</title></rect>'
        )
    if threshold is not None:
        y = y_of(float(threshold))
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#111" {dash}/>')
    ticks = range(1, n + 1) if n <= 20 else range(1, n + 1, 2 if n <= 40 else max(1, n // 20))
    for s in ticks:
        out.append(f'<text x="{x_of(s):.1f}" y="{top + ph + 18}" text-anchor="middle">{s}</text>')
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="#333"/>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="#333"/>')
    out.append(f'<text x="{left + pw / 2:.0f}" y="{h - 6}" text-anchor="middle">slice</text>')
    out.append(f'<text transform="translate(16 {top + ph / 2:.0f}) rotate(-90)" text-anchor="middle">P(hemorrhage)</text>')
    legend = [("#78909c", "slice probability", "rect")]
    if threshold is not None:
        legend.append(("#111", f"decision threshold {threshold:.2f}", "dash"))
    if marked:
        legend.append(("#ffcdd2", "outlined blood", "rect"))
    x = left
    for colour, label, kind in legend:
        if kind == "dash":
            out.append(f'<line x1="{x}" x2="{x + 22}" y1="14" y2="14" stroke="{colour}" {dash}/>')
        else:
            out.append(f'<rect x="{x}" y="8" width="22" height="12" fill="{colour}"/>')
        out.append(f'<text x="{x + 28}" y="19">{_e(label)}</text>')
        x += 40 + 8 * len(label)
    out.append("</svg>")
    return "".join(out)


def _zoom_on_mask(image_u8: np.ndarray, mask: np.ndarray, out_px: int = 384) -> tuple[np.ndarray, np.ndarray, float]:
    """A square crop around the blood (its bounding box with a margin), enlarged to about
    ``out_px``: small bleeds are a few pixels wide on a whole-slice image."""
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    cy, cx = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
    min_side = max(64, max(h, w) / 4)  # at most ×4: more only magnifies interpolation blur
    side = int(min(max(h, w), max(min_side, 1.6 * max(np.ptp(rows) + 1, np.ptp(cols) + 1) + 24)))
    y0 = int(np.clip(round(cy - side / 2), 0, max(h - side, 0)))
    x0 = int(np.clip(round(cx - side / 2), 0, max(w - side, 0)))
    img, m = image_u8[y0 : y0 + side, x0 : x0 + side], mask[y0 : y0 + side, x0 : x0 + side]
    scale = out_px / max(img.shape)
    size = (round(img.shape[1] * scale), round(img.shape[0] * scale))
    big = cv2.resize(img, size, interpolation=cv2.INTER_CUBIC)
    big_mask = cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    return big, big_mask, max(h, w) / side


def _key_slice_html(image_u8: np.ndarray, mask: np.ndarray, title: str) -> str:
    """One key slice as a row of three panels: the CT, the CT with the predicted blood
    tinted and outlined, and the tinted view enlarged around the blood."""
    from ichseg.report.overlay import overlay_rgb

    image_u8 = np.asarray(image_u8)
    if image_u8.ndim != 2 or image_u8.dtype != np.uint8:
        raise ValueError(f"key slice images must be (H, W) uint8 brain-window slices, got {image_u8.shape} {image_u8.dtype}")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image_u8.shape:
        raise ValueError(f"key slice mask {mask.shape} does not match its image {image_u8.shape}")
    panels = [(_png_data_uri(image_u8), "CT")]
    if mask.any():
        panels.append((_png_data_uri(overlay_rgb(image_u8, mask)), "outlined"))
        big, big_mask, zoom = _zoom_on_mask(image_u8, mask)
        panels.append((_png_data_uri(overlay_rgb(big, big_mask)), "enlarged"))
        caption = (
            f"left: CT (brain window); middle: predicted blood tinted red, outlined yellow; right: the same, "
            f"enlarged ×{zoom:.1f} around the blood"
        )
    else:
        caption = "CT (brain window); no blood outlined on this slice"
    imgs = "".join(f'<img src="{uri}" alt="{_e(title)}, {alt}">' for uri, alt in panels)
    return f'<figure class="key"><div class="row">{imgs}</div><figcaption><b>{_e(title)}</b> — {caption}</figcaption></figure>'


def _lesion_table(found: Sequence[Mapping[str, Any]]) -> str:
    if not found:
        return '<p class="note">No outlined lesion.</p>'
    rows = []
    for les in found:
        subtype = les.get("subtype")
        p = les.get("subtype_probability")
        subtype_txt = "—" if subtype is None else f"{_e(subtype)} ({_fmt(p, 2)})"
        abc = f"{_fmt(les.get('abc2_a_mm'))} × {_fmt(les.get('abc2_b_mm'))} × {_fmt(les.get('abc2_c_mm'))}"
        rows.append(
            "<tr>"
            f'<td class="num">{_e(les.get("label", ""))}</td>'
            f'<td class="num">{_fmt_ml(les.get("volume_ml"))}</td>'
            f'<td class="num">{_fmt_ml(les.get("abc2_ml"))}</td>'
            f'<td class="num">{_e(abc)}</td>'
            f"<td>{_e(_slice_span(les.get('slices', ())))}</td>"
            f'<td class="num">{_e(les.get("largest_slice", "—"))}</td>'
            f'<td class="num">{_fmt(les.get("max_axial_area_mm2"), 0)}</td>'
            f"<td>{subtype_txt}</td>"
            "</tr>"
        )
    return (
        '<table class="keep"><thead><tr>'
        '<th class="num">#</th><th class="num">Volume (mL)</th><th class="num">ABC/2 (mL)</th>'
        '<th class="num">A × B × C (mm)</th><th>Slices</th><th class="num">Largest slice</th>'
        '<th class="num">Max area (mm²)</th><th>Likely subtype (p)</th>'
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        '<p class="note">Volume: voxels of the predicted outline × voxel volume. ABC/2: A = largest diameter on the '
        "slice with the largest area, B = largest diameter at right angles to A, C = slices weighted by area "
        "(1 if ≥ 75 % of the largest, ½ if 25–75 %, 0 below) × slice thickness (Kothari et al., Stroke 1996). "
        "Subtype: the most probable subtype averaged over the lesion's slices, named only where the model's "
        "cross-validation found that head right at least 70 % of the time (— otherwise). Slices are numbered from 1 in "
        "the order of the input.</p>"
    )


def _subtype_html(subtype_probs: Mapping[str, float]) -> str:
    if not subtype_probs:
        return '<p class="note">The model gave no subtype probabilities.</p>'
    rows = []
    for name, p in sorted(subtype_probs.items(), key=lambda kv: -float(kv[1])):
        pct = max(0.0, min(1.0, float(p)))
        rows.append(
            f"<tr><td>{_e(name)}</td><td class='num'>{pct:.2f}</td>"
            f"<td><span class='bartrack'><span class='bar' style='width:{pct * 180:.0f}px'></span></span></td></tr>"
        )
    return (
        '<table class="keep" style="width:auto"><thead><tr><th>Subtype</th><th class="num">Probability</th><th></th>'
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        '<p class="note">Scan-level probabilities of the slice classifier\'s subtype heads, uncalibrated; they can overlap and '
        "do not sum to 1.</p>"
    )


def _model_html(model_info: Mapping[str, Any]) -> str:
    name = model_info.get("name", "ichseg")
    version = model_info.get("version")
    head = f"<p><b>{_e(name)}</b>" + (f" version {_e(version)}" if version else "") + "</p>"
    details = [(k, v) for k, v in model_info.items() if k not in {"name", "version", "cv_metrics", "limitations"}]
    detail_html = ""
    if details:
        detail_html = (
            '<table class="keep" style="width:auto"><tbody>'
            + "".join(f"<tr><th>{_e(k.replace('_', ' '))}</th><td>{_e(v)}</td></tr>" for k, v in details)
            + "</tbody></table>"
        )
    metrics = model_info.get("cv_metrics") or {}
    metrics_html = ""
    if metrics:
        metrics_html = (
            "<p><b>Cross-validated accuracy</b> (same dataset, by patient):</p>"
            '<table class="keep" style="width:auto"><tbody>'
            + "".join(f"<tr><th>{_e(k)}</th><td class='num'>{_e(v)}</td></tr>" for k, v in metrics.items())
            + "</tbody></table>"
        )
    limits = [*LIMITATIONS, *[str(s) for s in model_info.get("limitations", ())]]
    limits_html = '<p><b>Limits</b></p><ul class="limits">' + "".join(f"<li>{_e(s)}</li>" for s in limits) + "</ul>"
    return head + detail_html + metrics_html + limits_html


def render_report_html(
    *,
    summary: Mapping[str, Any],
    key_slices: Sequence[tuple[np.ndarray, np.ndarray, str]],
    slice_probs: np.ndarray,
    subtype_probs: Mapping[str, float],
    model_info: Mapping[str, Any],
    dataset_credit: str = DATASET_CREDIT,
) -> str:
    """The report as an HTML string (see ``write_report_html``)."""
    positive = bool(summary["hemorrhage"])
    total = float(summary.get("total_volume_ml", 0.0))
    found = [_lesion_dict(les) for les in summary.get("lesions", ())]
    threshold = summary.get("slice_threshold", model_info.get("slice_threshold"))
    threshold = None if threshold is None else float(threshold)
    probs = np.asarray(slice_probs, dtype=np.float64).reshape(-1)
    marked = sorted({int(s) for les in found for s in les.get("slices", ())})
    study = summary.get("study")
    generated = summary.get("generated") or dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")

    call = "Hemorrhage detected" if positive else "No hemorrhage detected"
    n_les = len(found)
    detail = []
    if n_les:
        detail.append(f"{n_les} lesion{'s' if n_les != 1 else ''}")
    if summary.get("scan_probability") is not None:
        detail.append(f"scan probability {float(summary['scan_probability']):.2f}")
    if probs.size:
        n_above = int((probs >= threshold).sum()) if threshold is not None else None
        detail.append(f"{probs.size} slices" + (f", {n_above} above the slice threshold" if n_above is not None else ""))
    if summary.get("spacing_mm") is not None:
        sp = [float(v) for v in summary["spacing_mm"]]
        detail.append(f"voxel {sp[0]:.2f} × {sp[1]:.2f} × {sp[2]:.2f} mm (slice × row × column)")
    verdict = (
        f'<div class="verdict {"positive" if positive else "negative"}">'
        f'<div class="call">{_e(call)}</div>'
        f'<div class="volume">Total hemorrhage volume: <b>{_e(_fmt_total_ml(total))} mL</b></div>'
        f'<div class="detail">{_e("; ".join(detail))}</div></div>'
    )
    plot_svg = probability_plot_svg(probs, threshold, marked)
    figures = "".join(_key_slice_html(img, m, title) for img, m, title in key_slices)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(call)}{' — ' + _e(study) if study else ''} — ichseg report</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f'<div class="disclaimer">{_e(DISCLAIMER)}</div>',
        "<h1>Intracranial hemorrhage — automated CT analysis</h1>",
        '<p class="meta">' + (f"Study: <b>{_e(study)}</b> · " if study else "") + f"Generated {_e(generated)}</p>",
        verdict,
        "<h2>Lesions</h2>",
        _lesion_table(found),
        "<h2>Key slices</h2>",
        figures if figures else '<p class="note">No key slice.</p>',
        '<h2>Hemorrhage probability per slice</h2><div class="keep">',
        f"{plot_svg}</div>",
        '<p class="note">Bars above the dashed decision threshold (red) are slices the model flags; '
        "pink background marks slices with outlined blood.</p>",
        "<h2>Subtype probabilities</h2>",
        _subtype_html(subtype_probs),
        "<h2>About the model and its limits</h2>",
        _model_html(model_info),
        f'<div class="disclaimer" style="margin-top:14px">{_e(DISCLAIMER)}</div>',
        f"<footer>{_e(dataset_credit)}</footer>",
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report_html(
    path: Path,
    *,
    summary: Mapping[str, Any],
    key_slices: Sequence[tuple[np.ndarray, np.ndarray, str]],
    slice_probs: np.ndarray,
    subtype_probs: Mapping[str, float],
    model_info: Mapping[str, Any],
    dataset_credit: str = DATASET_CREDIT,
) -> None:
    """Write one self-contained HTML report for a clinician, atomically.

    summary: ``hemorrhage`` (bool, the verdict), ``total_volume_ml`` (float), ``lesions``
        (``Lesion`` objects or their ``to_dict()``), and optionally ``study``,
        ``scan_probability``, ``slice_threshold`` (drawn on the plot; else
        ``model_info["slice_threshold"]``), ``spacing_mm``, ``generated`` (a timestamp text).
    key_slices: (brain-window uint8 (H, W), mask bool (H, W), title) per slice to show,
        e.g. from ``key_slice_indices``; shown plain and with the blood tinted and outlined.
    slice_probs: (N,) per-slice hemorrhage probability.
    subtype_probs: scan-level probability per subtype head.
    model_info: ``name``, ``version``, ``cv_metrics`` ({label: value text}), ``limitations``
        (extra lines for the built-in list); any other key is listed as a detail.
    dataset_credit: the training data's credit, printed at the foot.
    """
    text = render_report_html(
        summary=summary,
        key_slices=key_slices,
        slice_probs=slice_probs,
        subtype_probs=subtype_probs,
        model_info=model_info,
        dataset_credit=dataset_credit,
    )
    atomic_write_text(Path(path), text)
    log.info("wrote report %s (%d key slice(s))", path, len(key_slices))
