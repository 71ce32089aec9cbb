"""Predict a CT volume in Hounsfield units (a DICOM series or a NIfTI file) and write what a
clinical reader and a PACS want: the mask on the input grid (NIfTI; DICOM SEG for DICOM
input), the volumes in mL (``summary.json``; a DICOM SR for DICOM input), a self-contained
report, beside the per-slice masks, overlays and tables that ``predict`` writes for images.

The model was trained on CT-ICH's 8-bit JPG windows, 650×650 px per slice. A volume is
therefore (1) windowed with the estimated CT-ICH window settings
(:mod:`ichseg.data.windows`), (2) resampled in-plane to the pixel size the model expects
(:data:`MODEL_PIXEL_MM`) and centred on a 650×650 frame, as CT-ICH's slices are, so a head
appears at the size the model knows, (3) predicted slice by slice with its neighbours
(:func:`ichseg.infer.study.predict_windows`), thin series as ~5 mm slabs
(:mod:`ichseg.data.slabs`), and (4) the masks are taken back through the same frame (and
slab) onto the original grid.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.data.frame import frame_for, from_frame, model_pixel_mm, to_frame
from ichseg.data.slabs import average_slabs, slab_index, slab_thickness_mm
from ichseg.files import atomic_write_csv, atomic_write_png, atomic_write_text
from ichseg.infer.clinical import (
    LESION_MERGE_GAP_MM,
    bundle_subtype_thresholds,
    lesion_json,
    study_cautions,
    study_label,
    write_report,
)
from ichseg.infer.pipeline import Bundle
from ichseg.infer.shipped import shipped_record
from ichseg.infer.study import StudyPrediction
from ichseg.io.volume import Volume

log = logging.getLogger(__name__)


def _index_to_world(volume: Volume, dicom: bool) -> np.ndarray:
    """(slice, row, column, 1) → world mm: DICOM patient LPS for DICOM input, RAS+ else."""
    perm = np.zeros((4, 4))
    perm[0, 2] = perm[1, 1] = perm[2, 0] = perm[3, 3] = 1.0  # (k, r, c) → (c, r, k)
    return (volume.affine_lps if dicom else volume.affine_ras) @ perm


def predict_volume(
    bundle: Bundle, volume: Volume, out_dir: Path, *, pdf: bool = False, head_check: bool = True
) -> dict[str, Any]:
    """Predict ``volume`` and write every output into ``out_dir``; returns the summary.
    Unless ``head_check`` is False, a volume that does not show a head CT
    (:mod:`ichseg.infer.headcheck`) raises :class:`~ichseg.infer.headcheck.NotAHeadCT`
    before anything is written."""
    from ichseg.infer.headcheck import NotAHeadCT, check_head_ct, slices_below_brain
    from ichseg.infer.study import predict_windows
    from ichseg.io.hu import hu_to_windows
    from ichseg.io.nifti import write_mask_nifti
    from ichseg.report.lesions import lesions, total_volume_ml
    from ichseg.report.overlay import overlay_rgb

    head = check_head_ct(volume.hu, volume.pixel_spacing) if head_check else None
    if head is not None and not head.is_head:
        raise NotAHeadCT(f"{volume.source}: {head.reason} (run with --no-head-check to predict anyway)")
    out_dir = Path(out_dir)
    dicom = bool(volume.files) and volume.sop_instance_uids is not None
    brain, bone = hu_to_windows(volume.hu)
    frame = frame_for(volume.hu.shape[1:], volume.pixel_spacing)
    positions = volume.slice_positions_mm()
    slab = slab_index(positions)
    slabs_info = None
    if slab.max() + 1 < len(slab):  # a thin series: the model reads ~5 mm slabs (ichseg.data.slabs)
        in_brain, in_bone = hu_to_windows(average_slabs(volume.hu, slab))
        thick = slab_thickness_mm(positions, slab)
        slabs_info = {
            "input_slice_step_mm": round(float(np.median(np.diff(positions))), 3),
            "slabs": int(slab.max() + 1),
            "slab_mm": [round(float(t), 2) for t in thick],
            "how": "HU averaged over consecutive slices into ~5 mm slabs; each slice takes its slab's mask",
        }
        log.info("%s: %d thin slices read as %d slabs of ~%.1f mm", volume.source, len(slab), slab.max() + 1, np.median(thick))
    else:
        in_brain, in_bone = brain, bone
    pred = predict_windows(bundle, [to_frame(b, frame) for b in in_brain], [to_frame(b, frame) for b in in_bone])
    if slabs_info is not None:
        pred = thin_prediction(pred, slab)
    unread, below_info = slices_below_brain(
        volume.hu, volume.pixel_spacing, superior_mm(volume), head.cranial if head is not None else ()
    )
    if unread.any():
        log.info("%s: %d slice(s) below the skull base not read", volume.source, int(unread.sum()))
        pred = unread_prediction(pred, unread)
    masks = np.stack([from_frame(m, frame) for m in pred.masks])
    found = lesions(
        masks,
        volume.spacing_mm,
        pred.heads,
        index_to_world_mm=_index_to_world(volume, dicom),
        slice_thickness_mm=volume.slice_extents_mm(),
        merge_gap_mm=LESION_MERGE_GAP_MM,
    )
    total = total_volume_ml(found)
    n = len(masks)
    names = [f"{k + 1:04d}" for k in range(n)]
    for k in range(n):  # today's per-slice outputs, on the input grid
        atomic_write_png(out_dir / "masks" / f"{names[k]}_mask.png", masks[k].astype(np.uint8) * 255)
        atomic_write_png(out_dir / "overlays" / f"{names[k]}_overlay.png", overlay_rgb(brain[k], masks[k]))
    rows = [
        {
            "slice": k + 1,
            "hemorrhage_probability": round(float(pred.slice_probability[k]), 5),
            **{f"{h}_probability": round(float(p[k]), 5) for h, p in pred.heads.items() if h != "hemorrhage"},
            "max_blood_probability": round(float(pred.max_probability[k]), 5),
            "area_px": int(masks[k].sum()),
            "area_mm2": round(float(masks[k].sum() * volume.spacing_mm[1] * volume.spacing_mm[2]), 2),
            "hemorrhage": int(pred.verdict[k]),
            "review": int(bool(len(pred.review) and pred.review[k])),
            "read": int(not unread[k]),
        }
        for k in range(n)
    ]

    atomic_write_csv(out_dir / "predictions.csv", rows)
    write_mask_nifti(masks, volume, out_dir / "mask.nii.gz")
    outputs = ["mask.nii.gz", "predictions.csv", "masks/", "overlays/"]
    if dicom:
        from pydicom import dcmread

        from ichseg.io.dicom_seg import write_measurements_sr, write_segmentation

        sources = [dcmread(f, stop_before_pixels=True) for f in volume.files or []]
        for ds in sources:  # an anonymised export may lack what the SEG must cite
            if "SOPClassUID" not in ds and volume.sop_class_uid:
                ds.SOPClassUID = volume.sop_class_uid
        missing = seg_blockers(volume, sources)
        if missing:
            log.warning("%s: the series has no %s, so no DICOM SEG or SR can cite it; not written", volume.source, missing)
        else:
            seg = write_segmentation(masks, sources, out_dir / "segmentation.dcm")
            write_measurements_sr(seg, sources, found, total, out_dir / "measurements.dcm")
            outputs += ["segmentation.dcm", "measurements.dcm"]
    summary = {
        "input": volume.source,
        "input_kind": "dicom" if dicom else "nifti",
        "study": study_label(volume),
        "hemorrhage": pred.hemorrhage,
        "scan_probability": round(pred.scan_probability, 5),
        "total_volume_ml": round(total, 3),
        "lesions": [lesion_json(les, bundle_subtype_thresholds(bundle)) for les in found],
        "coordinates": "DICOM patient LPS mm" if dicom else "RAS+ mm (NIfTI world)",
        "slices": n,
        "positive_slices": [k + 1 for k in range(n) if pred.verdict[k]],
        # the slice head suspects blood here but nothing is outlined: for a reader to check
        "review_slices": [k + 1 for k in range(n) if len(pred.review) and pred.review[k]],
        "spacing_mm": list(volume.spacing_mm),
        "series_choice": volume.extra.get("series_choice"),
        "cautions": study_cautions(volume),
        "head_check": head.reason if head is not None else "skipped (--no-head-check)",
        "slabs": slabs_info,
        # slices below the skull base (a neck-to-vertex series): no answer is given there
        "slices_not_read": [k + 1 for k in range(n) if unread[k]],
        "below_skull_base": below_info,
        "model": str(bundle.path),
        "shipped_model": shipped_record(bundle.path),
        "ensemble_members": bundle.members,
        "runtime": bundle.meta.get("runtime", "torch"),
        "precision": bundle.meta.get("precision", "fp32"),
        "operating_point": {
            "mask_threshold": bundle.pipeline.mask_threshold,
            "min_area_px_at_512": bundle.pipeline.min_area_px,
            "head_threshold": bundle.pipeline.head_threshold,
            "verdict_rule": bundle.pipeline.verdict_rule,
            "head_mask_threshold": bundle.pipeline.head_mask_threshold,
            "head_veto_below": bundle.pipeline.head_veto_below,
            "head_veto_min_area_px_at_512": bundle.pipeline.head_veto_min_area_px,
        },
        "preprocessing": {
            "windows": "HU windowed with the estimated CT-ICH brain and bone windows (ichseg.data.windows)",
            "model_pixel_mm": model_pixel_mm(),
            "frame": {"scaled_px": list(frame.scaled), "offset_px": list(frame.offset)},
            "brain_window_offset_grey": round(pred.intensity_offset, 2),
        },
        "not_a_medical_device": True,
    }
    write_report(out_dir, summary, brain, masks, pred, found, bundle, pdf)
    outputs += ["report.html"] + (["report.pdf"] if pdf else [])
    summary["outputs"] = sorted(outputs)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def seg_blockers(volume: Volume, sources: list) -> str | None:
    """What a DICOM SEG of this series could not cite (a SEG names its source series, study
    and frame of reference): "SeriesInstanceUID, FrameOfReferenceUID", or None."""
    missing = []
    if str(volume.series_uid or "").startswith("no-uid:"):
        missing.append("SeriesInstanceUID")
    for tag in ("StudyInstanceUID", "FrameOfReferenceUID"):
        if any(not ds.get(tag) for ds in sources):
            missing.append(tag)
    uids = volume.sop_instance_uids or []
    if len(set(uids)) < len(uids):
        missing.append("single-frame instances (one multi-frame instance holds the slices; a SEG of frames is not written yet)")
    return ", ".join(missing) or None


def thin_prediction(pred: StudyPrediction, slab: np.ndarray) -> StudyPrediction:
    """A prediction on slabs as one on the thin slices they were made of: each slice takes
    its slab's mask, verdict and probabilities."""
    return dataclasses.replace(
        pred,
        masks=[pred.masks[s] for s in slab],
        verdict=pred.verdict[slab],
        heads={h: p[slab] for h, p in pred.heads.items()},
        max_probability=pred.max_probability[slab],
        segmented=pred.segmented[slab] if len(pred.segmented) else pred.segmented,
        review=pred.review[slab] if len(pred.review) else pred.review,
    )


def superior_mm(volume: Volume) -> np.ndarray:
    """(N,) each slice's height towards the vertex in mm (its position along the slice
    normal, signed by which way the slice axis points: LPS +z is superior); all zeros for
    a series that is not axial (a sagittal or coronal stack has no slice below the brain)."""
    axis = volume.affine_lps[:3, 2]
    cos = float(axis[2] / (np.linalg.norm(axis) or 1.0))
    z = volume.slice_positions_mm()
    return np.sign(cos) * z if abs(cos) >= 0.5 else np.zeros_like(z)


def unread_prediction(pred: StudyPrediction, unread: np.ndarray) -> StudyPrediction:
    """``pred`` with the ``unread`` slices answered "not read": no mask, no verdict, no
    review flag, slice heads 0 (so neither the scan probability nor a subtype comes from
    them)."""
    keep = ~np.asarray(unread, bool)
    return dataclasses.replace(
        pred,
        masks=[m if keep[k] else np.zeros_like(m) for k, m in enumerate(pred.masks)],
        verdict=pred.verdict & keep,
        heads={h: np.where(keep, p, 0.0) for h, p in pred.heads.items()},
        max_probability=np.where(keep, pred.max_probability, 0.0),
        review=pred.review & keep if len(pred.review) else pred.review,
    )


def detect_input(path: Path) -> str:
    """What ``predict`` was given: "nifti" (a .nii/.nii.gz file), "dicom" (a folder whose
    files are DICOM, in any sub-folder), or "images" (slice images or CT-ICH folders)."""
    path = Path(path)
    if path.is_file() and (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        return "nifti"
    if path.is_dir() and not (path / "brain").is_dir():
        from ichseg.infer.predict import IMAGE_EXTS

        files = [f for f in path.rglob("*") if f.is_file()][:200]
        if files and not any(f.suffix.lower() in IMAGE_EXTS for f in files if f.parent == path):
            for f in files:
                try:
                    with open(f, "rb") as fh:
                        head = fh.read(132)
                except OSError:
                    continue
                if head[128:132] == b"DICM":
                    return "dicom"
            if any(f.suffix.lower() in (".dcm", ".dicom", ".ima") for f in files):
                return "dicom"  # named as DICOM but without the preamble: the reader says which file is what
            if not any(f.suffix.lower() in IMAGE_EXTS for f in files):
                names = ", ".join(f.name for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
                raise ValueError(f"{path}: neither DICOM files nor slice images among its {len(files)} file(s) ({names})")
    return "images"
