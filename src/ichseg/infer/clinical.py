"""The clinical outputs shared by every input kind: lesions as JSON and the report page.

A DICOM series, a NIfTI volume and a folder of CT-ICH-style JPG slices all end in the same
``summary.json`` lesion entries and the same self-contained ``report.html`` (and PDF), so a
reader sees one format whatever the scanner exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ichseg.infer.pipeline import Bundle

LESION_MERGE_GAP_MM = 5.0
"""Fragments of one collection less than this apart (in-plane, same or adjacent slice) are one lesion."""


def lesion_json(les: Any, subtype_thresholds: dict[str, float | None] | None = None) -> dict[str, Any]:
    """A :class:`~ichseg.report.lesions.Lesion` as its ``summary.json`` entry.

    The subtype is *named* only when its head's probability reaches the threshold the
    bundle's out-of-fold calibration found (:func:`ichseg.evaluate.oof.subtype_thresholds`:
    right at least 70 % of the time); otherwise ``subtype`` is None and only the
    probabilities are given. A bundle without that calibration names none."""
    d = les.to_dict()
    t = (subtype_thresholds or {}).get(d.get("subtype") or "")
    if t is None or (d.get("subtype_probability") or 0.0) < t:
        d["subtype_uncalibrated"] = d.get("subtype")
        d["subtype"] = None
    keep = (
        "label",
        "n_voxels",
        "largest_slice",
        "volume_ml",
        "abc2_ml",
        "slices",
        "centroid_mm",
        "max_axial_area_mm2",
        "subtype",
        "subtype_uncalibrated",
        "subtype_probability",
        "subtype_probabilities",
        "abc2_a_mm",
        "abc2_b_mm",
        "abc2_c_mm",
    )
    return {k: d[k] for k in keep if k in d}


def write_report(
    out_dir: Path,
    summary: dict[str, Any],
    brain: np.ndarray,
    masks: np.ndarray,
    pred: Any,
    found: list,
    bundle: Bundle,
    pdf: bool,
) -> None:
    """``report.html`` (and ``report.pdf``) for one predicted study: verdict, volumes, key
    slices with overlays, per-slice probabilities, the model's cross-validated figures."""
    from ichseg.report.html import key_slice_indices, write_report_html

    keys = key_slice_indices(found, pred.slice_probability)
    key_slices = [(brain[k], masks[k], f"slice {k + 1}") for k in keys]
    subtype = {h: float(p.max()) for h, p in pred.heads.items() if h not in ("hemorrhage", "fracture")}
    info: dict[str, Any] = {"name": "ichseg", "version": _version(), "model": model_name(bundle)}
    cv = bundle.meta.get("calibration", {}).get("pooled")
    if cv:
        how = "pooled out-of-fold, by patient"
        info["cv_metrics"] = {
            f"slice recall ({how})": _round(cv["slice"]["recall"]),
            f"slice precision ({how})": _round(cv["slice"]["precision"]),
            f"Dice, global ({how})": _round(cv["pixel"]["dice_global"]),
            f"scan sensitivity ({how})": _round(cv["scan"]["sensitivity"]),
            f"scan specificity ({how})": _round(cv["scan"]["specificity"]),
        }
    limits = list(summary.get("cautions") or [])
    if summary.get("slices_not_read"):
        n = len(summary["slices_not_read"])
        limits.append(f"{n} slice(s) at the bottom of the series not read: {summary['below_skull_base']['why']}")
    if limits:
        info["limitations"] = limits
    report = {**summary, "slice_threshold": bundle.pipeline.head_threshold}
    write_report_html(
        out_dir / "report.html",
        summary=report,
        key_slices=key_slices,
        slice_probs=pred.slice_probability,
        subtype_probs=subtype,
        model_info=info,
    )
    if pdf:
        from ichseg.report.pdf import write_report_pdf

        write_report_pdf(out_dir / "report.html", out_dir / "report.pdf")


def study_cautions(volume: Any) -> list[str]:
    """What the reader of this study's answer must know about the input itself, from its
    header: today, that it was acquired with contrast. Iodinated contrast makes vessels,
    dural sinuses and enhancing tissue as bright as fresh blood, and the model learned only
    from non-contrast head CT (on a real contrast-enhanced head from outside CT-ICH it
    outlined enhancing structures; docs/RESULTS.md)."""
    out = []
    agent = (getattr(volume, "extra", None) or {}).get("contrast_agent")
    if agent:
        out.append(
            f"contrast-enhanced series (ContrastBolusAgent '{agent}'): the model is for non-contrast head CT; "
            "enhancing vessels and dura can be outlined as blood"
        )
    return out


def bundle_subtype_thresholds(bundle: Bundle) -> dict[str, float | None]:
    """The subtype thresholds of the bundle's calibration ({} when it has none)."""
    return dict(bundle.meta.get("calibration", {}).get("subtype_thresholds") or {})


def _round(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def model_name(bundle: Bundle) -> str:
    """The model as a reader should see it: what it is, never a path on this machine."""
    cv = Path(str(bundle.meta.get("calibration", {}).get("cv", ""))).name
    kind = f"fold ensemble of {bundle.members} '{cv}' members" if bundle.members > 1 and cv else "single network"
    return f"{kind} (CT-ICH, {bundle.unet_config.input_size_px}-px U-Net, {bundle.unet_config.base_filters} filters)"


def study_label(volume: Any) -> str | None:
    """Who and what the study is, for the report's header: patient name and ID, study
    description and date from DICOM; the CT-ICH patient for converted CT-ICH data."""
    if volume is None:
        return None
    parts = [p for p in (volume.patient_name, f"ID {volume.patient_id}" if volume.patient_id else None) if p]
    if volume.study_description:
        parts.append(str(volume.study_description))
    return " · ".join(parts) or None


def _version() -> str:
    from ichseg import __version__

    return __version__
