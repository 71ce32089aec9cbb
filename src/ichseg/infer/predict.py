"""``ichseg predict``: slice images in, masks, overlays and a per-slice table out."""

from __future__ import annotations

import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.data.cache import read_grey_u8, resize_image_u8
from ichseg.data.context import with_context
from ichseg.data.ctich import MASK_SUFFIX, DatasetError
from ichseg.files import atomic_write_csv, atomic_write_png, atomic_write_text
from ichseg.infer.pipeline import Bundle
from ichseg.infer.shipped import shipped_record
from ichseg.report.overlay import overlay_rgb

log = logging.getLogger(__name__)
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class SliceInput:
    """One slice to predict: its brain-window file and, if found, its bone-window twin."""

    name: str
    brain: Path
    bone: Path | None


def _natural_key(path: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.stem))


def _is_mask(path: Path) -> bool:
    return MASK_SUFFIX.lower() in path.stem.lower()


def find_inputs(path: Path) -> list[SliceInput]:
    """Resolve PATH to slices: one image; a patient folder (``brain/`` and ``bone/``); a
    ``brain/`` folder (its sibling ``bone/`` is used); or any folder of images.

    ``*_HGE_Seg*`` files are ground truth and are never inputs.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_file():
        if _is_mask(path):
            raise DatasetError(f"{path}: this is a ground-truth mask ({MASK_SUFFIX}), not a CT slice")
        return [SliceInput(path.stem, path, None)]
    brain_dir, bone_dir = path, None
    if (path / "brain").is_dir():
        brain_dir, bone_dir = path / "brain", path / "bone"
    elif path.name == "brain" and (path.parent / "bone").is_dir():
        bone_dir = path.parent / "bone"
    files = sorted((f for f in brain_dir.iterdir() if f.suffix.lower() in IMAGE_EXTS and not _is_mask(f)), key=_natural_key)
    if not files:
        raise DatasetError(f"{brain_dir}: no slice images ({', '.join(sorted(IMAGE_EXTS))})")
    out = []
    for f in files:
        bone = bone_dir / f.name if bone_dir is not None and (bone_dir / f.name).exists() else None
        out.append(SliceInput(f.stem, f, bone))
    return out


def _model_input(
    slices: list[SliceInput], images: dict[Path, np.ndarray], windows: tuple[str, ...], size: int, interpolation: str
) -> np.ndarray:
    x = np.zeros((len(slices), len(windows), size, size), np.uint8)
    for i, s in enumerate(slices):
        for c, w in enumerate(windows):
            src = s.brain if w == "brain" else s.bone
            if src is None:
                log.warning("%s: no %s-window twin, using zeros", s.brain, w)
                continue
            if src not in images:
                images[src] = read_grey_u8(src)
            x[i, c] = resize_image_u8(images[src], size, interpolation)
    return x


def study_network_input(path: Path, config: Any, interpolation: str = "area") -> np.ndarray:
    """Every slice of the study at ``path`` as one network's uint8 input (N, C, S, S): its
    windows at its size, with its neighbour slices when it reads context. For callers that
    want a study's inputs without predicting (quantisation calibration, benchmarks)."""
    slices = find_inputs(path)
    x = _model_input(slices, {}, config.windows, config.input_size_px, interpolation)
    return with_context(x, [("scan", i) for i in range(len(slices))], config.context_slices)


def _write_overlay(path: Path, image_u8: np.ndarray, mask: np.ndarray) -> None:
    atomic_write_png(path, overlay_rgb(image_u8, mask))


def predict_path(bundle: Bundle, path: Path, out_dir: Path, *, write_overlays: bool = True) -> list[dict[str, Any]]:
    """Predict every slice under ``path``; writes ``masks/``, ``overlays/``,
    ``predictions.csv`` and ``predictions.json`` into ``out_dir``; returns the rows.

    A single-network bundle (the fold ensemble) segments every slice and fuses the mask
    with its slice heads (:mod:`ichseg.infer.study`); a two-stage bundle runs the U-Net
    only on slices its classifier flags. Masks are written at each source image's own size.
    """
    slices = find_inputs(path)
    out_dir = Path(out_dir)
    cfg = bundle.pipeline
    images: dict[Path, np.ndarray] = {}
    from ichseg.infer.study import predict_windows

    for s in slices:
        for f in (s.brain, s.bone):
            if f is not None and f not in images:
                images[f] = read_grey_u8(f)
    bones = [images[s.bone] if s.bone else None for s in slices]
    pred = predict_windows(bundle, [images[s.brain] for s in slices], bones)
    masks = dict(enumerate(pred.masks))
    heads_prob = np.stack([pred.heads[h] for h in bundle.heads], 1)
    pmax, verdicts, ensembled = pred.max_probability, pred.verdict, pred.segmented
    review = pred.review if len(pred.review) else np.zeros(len(slices), bool)
    cls_prob = heads_prob[:, 0]
    rows: list[dict[str, Any]] = []
    # PNG encoding releases the GIL: two writer threads halve the time a study spends writing
    writer = ThreadPoolExecutor(max_workers=2)
    pending = []
    for i, s in enumerate(slices):
        src = images.get(s.brain)
        if src is None:
            src = images[s.brain] = read_grey_u8(s.brain)
        mask = masks.get(i, np.zeros(src.shape[:2], bool))
        area = int(mask.sum())
        verdict = int(verdicts[i])
        pending.append(writer.submit(atomic_write_png, out_dir / "masks" / f"{s.name}_mask.png", mask.astype(np.uint8) * 255))
        if write_overlays:
            pending.append(writer.submit(_write_overlay, out_dir / "overlays" / f"{s.name}_overlay.png", src, mask))
        rows.append(
            {
                "slice": s.name,
                "image_path": str(s.brain),
                "classifier_probability": round(float(cls_prob[i]), 5),
                "segmented": int(ensembled[i]),
                "unet_max_probability": round(float(pmax[i]), 5),
                **{f"{h}_probability": round(float(heads_prob[i, j]), 5) for j, h in enumerate(bundle.heads) if j},
                "area_px": area,
                "image_size_px": f"{src.shape[1]}x{src.shape[0]}",
                "hemorrhage": verdict,
                "review": int(review[i]),
            }
        )

    writer.shutdown(wait=True)
    for f in pending:
        f.result()  # re-raise a failed write here, before the tables claim the study is done

    atomic_write_csv(out_dir / "predictions.csv", rows)
    summary = {
        "input": str(path),
        "slices": len(rows),
        "positive_slices": sum(r["hemorrhage"] for r in rows),
        "study_hemorrhage": int(any(r["hemorrhage"] for r in rows)),
        "review_slices": [r["slice"] for r in rows if r["review"]],
        "model": str(bundle.path),
        "shipped_model": shipped_record(bundle.path),
        "runtime": bundle.meta.get("runtime", "torch"),
        "precision": bundle.meta.get("precision", "fp32"),
        "scan_probability": round(float(cls_prob.max()), 5) if len(cls_prob) else 0.0,
        "ensemble_members": bundle.members,
        "operating_point": {
            "classifier_threshold": cfg.classifier_threshold if bundle.classifier is not None else None,
            "mask_threshold": cfg.mask_threshold,
            "min_area_px_at_512": cfg.min_area_px,
            "head_threshold": cfg.head_threshold,
            "verdict_rule": cfg.verdict_rule,
            "head_mask_threshold": cfg.head_mask_threshold,
            "head_veto_below": cfg.head_veto_below,
            "head_veto_min_area_px_at_512": cfg.head_veto_min_area_px,
            "speck_removal": cfg.speck_removal,
            "intracranial": cfg.intracranial,
        },
        "slices_detail": rows,
    }
    atomic_write_text(out_dir / "predictions.json", json.dumps(summary, indent=2) + "\n")
    brains = [images[s.brain] for s in slices]
    if len(slices) > 1 and len({b.shape for b in brains}) == 1:  # one study of equal slices: volumes and a report
        write_study_summary(out_dir, path, bundle, brains, pred, summary)
    return rows


CT_ICH_SLICE_MM = 5.0


def write_study_summary(
    out_dir: Path, path: Path, bundle: Bundle, brains: list[np.ndarray], pred: Any, detail: dict[str, Any]
) -> dict[str, Any]:
    """``summary.json`` and ``report.html`` for a folder of slice images, as for a DICOM or
    NIfTI input. JPG slices carry no geometry, so CT-ICH's is assumed and said: a 650-px
    frame of 0.35 mm pixels (:func:`ichseg.infer.volume.model_pixel_mm`), 5 mm slices."""
    from ichseg.data.convert import CT_ICH_PIXEL_SPACING_MM, ctich_id
    from ichseg.infer.clinical import LESION_MERGE_GAP_MM, bundle_subtype_thresholds, lesion_json, write_report
    from ichseg.report.lesions import lesions, total_volume_ml

    w = brains[0].shape[1]
    pixel = float(CT_ICH_PIXEL_SPACING_MM) * 650.0 / w
    spacing = (CT_ICH_SLICE_MM, pixel, pixel)
    masks = np.stack(pred.masks)
    found = lesions(masks, spacing, pred.heads, merge_gap_mm=LESION_MERGE_GAP_MM)
    n = len(brains)
    summary = {
        "input": str(path),
        "input_kind": "images",
        "study": f"CT-ICH^{ctich_id(Path(path).name)}" if Path(path).name[-3:].isdigit() else Path(path).name,
        "hemorrhage": bool(found),
        "scan_probability": detail["scan_probability"],
        "total_volume_ml": round(total_volume_ml(found), 3),
        "lesions": [lesion_json(les, bundle_subtype_thresholds(bundle)) for les in found],
        "coordinates": "voxel grid mm (slice, row, column) from slice 1",
        "geometry": f"assumed CT-ICH geometry: {pixel:.3f} mm pixels (a 650-px frame of 0.35 mm), {CT_ICH_SLICE_MM:g} mm slices",
        "slices": n,
        "positive_slices": [k + 1 for k in range(n) if pred.verdict[k]],
        "review_slices": [k + 1 for k in range(n) if len(pred.review) and pred.review[k]],
        "spacing_mm": list(spacing),
        "model": detail["model"],
        "shipped_model": detail.get("shipped_model"),
        "ensemble_members": bundle.members,
        "runtime": detail["runtime"],
        "precision": detail["precision"],
        "operating_point": detail["operating_point"],
        "not_a_medical_device": True,
    }
    write_report(out_dir, summary, np.stack(brains), masks, pred, found, bundle, pdf=False)
    summary["outputs"] = sorted(["masks/", "predictions.csv", "predictions.json", "report.html", "summary.json"])
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
