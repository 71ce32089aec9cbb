"""Out-of-fold predictions of fold-ensemble members and the operating point chosen on them.

Each fold's member predicts the patients it never saw; per slice we keep what any
operating point needs afterwards, without the probability maps: the slice heads'
probabilities, the true blood area, and at every mask threshold the [area, overlap]
of each connected blob (inside the intracranial mask, and without it for the ablation).
The operating point (mask threshold, minimum blob area, head threshold, the head's veto) is
then chosen on the pooled out-of-fold slices of all patients (nnU-Net's way;
:mod:`ichseg.evaluate.oof_grid`), and every fold is scored at that one point, so the
cross-validated figures describe the one rule that ships.

Empty-ground-truth policy: as in :mod:`ichseg.evaluate.metrics`; global Dice and IoU sum
pixels over all slices (a normal slice adds only its false-positive pixels), ratios with a
zero denominator are None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.config import PreprocessConfig, UNetConfig
from ichseg.data.cache import SliceCache
from ichseg.data.ctich import SliceRecord
from ichseg.data.normalize import intracranial_masks, normalize_for
from ichseg.evaluate.metrics import scan_metrics, slice_metrics
from ichseg.infer.pipeline import segment_with_heads
from ichseg.infer.postprocess import component_table, fuse_verdict, mask_thresholds, min_areas_px, resize_mask_nearest

MASK_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)

Perturbation = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def network_input(
    records: Sequence[SliceRecord],
    cache_root: Path,
    preprocess: PreprocessConfig,
    config: UNetConfig,
    perturb: Perturbation | None = None,
    perturb_from_px: int = 512,
    seed: int = 0,
) -> np.ndarray:
    """The U-Net's uint8 input (N, C, S, S) for ``records`` from the preprocessing cache,
    normalised per patient as the config asks.

    With ``perturb`` the windows are read at ``perturb_from_px``, perturbed there (one
    generator per slice, seeded by ``seed`` and the slice's position, so reruns agree) and
    shrunk to the network's size as a source image would be: what a stress test needs."""
    s = config.input_size_px
    if perturb is None:
        x = SliceCache.at_size(cache_root, preprocess, s).load(records, config.windows, config.context_slices)[0]
    else:
        import cv2

        from ichseg.data.context import with_context

        big = SliceCache.at_size(cache_root, preprocess, perturb_from_px).load(records, config.windows, 0)[0]
        x = np.empty((len(big), big.shape[1], s, s), np.uint8)
        for i in range(len(big)):
            p = perturb(big[i], np.random.default_rng([seed, i]))
            for c in range(len(p)):
                x[i, c] = cv2.resize(p[c], (s, s), interpolation=cv2.INTER_AREA)
        x = with_context(x, [(r.patient_id, r.slice) for r in records], config.context_slices)
    return normalize_for(config, x, [r.patient_id for r in records])


def member_rows(
    unet: Any,
    config: UNetConfig,
    records: Sequence[SliceRecord],
    cache_root: Path,
    preprocess: PreprocessConfig,
    heads: Sequence[str],
    *,
    eval_px: int = 512,
    chunk: int = 16,
    thresholds: Sequence[float] = MASK_THRESHOLDS,
    perturb: Perturbation | None = None,
    without_intracranial: bool = True,
    tta_flip: bool = False,
) -> list[dict[str, Any]]:
    """Per-slice out-of-fold rows of one member (see the module docstring); blobs are
    tabled at each of ``thresholds``, also without the intracranial mask unless
    ``without_intracranial`` is False (the stress test needs only the shipped rule).
    ``tta_flip`` averages the member over each slice and its mirror, as a bundle with
    ``PipelineConfig.tta_flip`` predicts, so the rows are what that bundle would see."""
    x = network_input(records, cache_root, preprocess, config, perturb, perturb_from_px=eval_px)
    inside_small = intracranial_masks(x, config.windows, config.context_slices)
    truth_cache = SliceCache.at_size(cache_root, preprocess, eval_px)
    rows: list[dict[str, Any]] = []
    for i in range(0, len(records), chunk):
        part = records[i : i + chunk]
        _, truth = truth_cache.load(part, ())
        probs, head_p = segment_with_heads(unet, x[i : i + len(part)], eval_px, tta_flip=tta_flip)
        for j, r in enumerate(part):
            inside = resize_mask_nearest(inside_small[i + j], (eval_px, eval_px))
            comps, comps_all = {}, {}
            for t in thresholds:
                above = probs[j] >= t
                comps[str(t)] = component_table(above & inside, truth[j])
                comps_all[str(t)] = component_table(above, truth[j]) if without_intracranial else []
            rows.append(
                {
                    "patient_id": r.patient_id,
                    "slice": r.slice,
                    "hemorrhage": int(r.hemorrhage),
                    "true_area_px_512": int(truth[j].sum()),
                    "max_probability": round(float(probs[j].max()), 4),
                    "heads": {h: round(float(head_p[j, k]), 5) for k, h in enumerate(heads)} if head_p is not None else {},
                    "flags": {h: int(getattr(r, h)) for h in heads if h != "hemorrhage"},
                    "components": comps,
                    "components_no_intracranial": comps_all,
                }
            )
    return rows


def slice_outcomes(
    rows: Sequence[dict[str, Any]],
    mask_threshold: float,
    min_area_px: int,
    head_threshold: float | None,
    intracranial: bool = True,
    rule: str = "fused",
    head_mask_threshold: float | None = None,
    head_veto_below: float | None = None,
    head_veto_min_area_px: int | None = None,
) -> dict[str, np.ndarray]:
    """Per slice at one operating point: verdict, kept area and overlap (px at 512×512).
    ``rule``, ``head_mask_threshold`` and the head's veto as in
    :class:`ichseg.config.PipelineConfig` ("outlined": only a kept blob calls a slice; the
    head lowers the mask threshold to ``head_mask_threshold`` on the slices it flags; on
    slices whose head is below ``head_veto_below`` a blob needs ``head_veto_min_area_px``).
    This is the reference the fast grid (:mod:`ichseg.evaluate.oof_grid`) is tested against."""
    key = "components" if intracranial else "components_no_intracranial"
    head = np.array([r["heads"].get("hemorrhage", 0.0) for r in rows]) if rows and rows[0]["heads"] else None
    t = mask_thresholds(head, len(rows), mask_threshold, head_threshold, head_mask_threshold, rule)
    min_area = min_areas_px(head, len(rows), min_area_px, head_veto_below, head_veto_min_area_px)
    comps = [r[key][str(float(tk))] for r, tk in zip(rows, t, strict=True)]
    area = np.array([sum(c[0] for c in cs if c[0] >= m) for cs, m in zip(comps, min_area, strict=True)], np.int64)
    inter = np.array([sum(c[1] for c in cs if c[0] >= m) for cs, m in zip(comps, min_area, strict=True)], np.int64)
    verdict = fuse_verdict(area, head, head_threshold, rule)
    return {"verdict": verdict, "area": area, "inter": inter}


def metrics_at(
    rows: Sequence[dict[str, Any]],
    mask_threshold: float,
    min_area_px: int,
    head_threshold: float | None,
    intracranial: bool = True,
    rule: str = "fused",
    head_mask_threshold: float | None = None,
    head_veto_below: float | None = None,
    head_veto_min_area_px: int | None = None,
) -> dict[str, Any]:
    """Slice, scan and pixel metrics of ``rows`` at one operating point, plus the false-
    positive pixels per normal patient (the stress test's count)."""
    o = slice_outcomes(
        rows,
        mask_threshold,
        min_area_px,
        head_threshold,
        intracranial,
        rule,
        head_mask_threshold,
        head_veto_below,
        head_veto_min_area_px,
    )
    truth = np.array([bool(r["hemorrhage"]) for r in rows])
    true_area = np.array([r["true_area_px_512"] for r in rows], np.int64)
    return outcome_metrics([r["patient_id"] for r in rows], truth, true_area, o)


def outcome_metrics(
    patient_ids: Sequence[str], truth: np.ndarray, true_area: np.ndarray, o: dict[str, np.ndarray]
) -> dict[str, Any]:
    """The metrics of :func:`metrics_at` from per-slice outcomes (verdict, area, inter)."""
    inter, pred, true = int(o["inter"].sum()), int(o["area"].sum()), int(true_area.sum())
    names, code = np.unique(np.array(patient_ids, dtype=str), return_inverse=True)
    bleeding = np.bincount(code, weights=truth, minlength=len(names)) > 0
    area_by_patient = np.bincount(code, weights=o["area"], minlength=len(names))
    normal = names[~bleeding].tolist()
    fp_normal = area_by_patient[~bleeding]
    return {
        "slice": slice_metrics(o["verdict"], truth),
        "scan": scan_metrics(patient_ids, o["verdict"], truth),
        "pixel": pixel_metrics(inter, pred, true),
        "fp_px_per_normal_patient": float(np.mean(fp_normal)) if len(fp_normal) else None,
        "normal_patients": len(normal),
    }


def pixel_metrics(inter: int, pred: int, true: int) -> dict[str, Any]:
    """Global Dice and IoU from pixel sums (None with a zero denominator), and the sums."""
    return {
        "dice_global": 2 * inter / (pred + true) if pred + true else None,
        "iou_global": inter / (pred + true - inter) if pred + true - inter else None,
        "pixels_true": true,
        "pixels_predicted": pred,
        "pixels_intersection": inter,
    }


def point_rule(
    point: dict[str, Any],
) -> tuple[float, int, float | None, bool, str, float | None, float | None, int | None]:
    """The positional arguments of :func:`metrics_at` for a grid point or a stored
    operating point (points made before the "outlined" rule existed are "fused", before the
    head's veto, without it)."""
    veto_area = point.get("head_veto_min_area_px")
    return (
        float(point["mask_threshold"]),
        int(point["min_area_px"]),
        point["head_threshold"],
        True,
        point.get("verdict_rule", "fused"),
        point.get("head_mask_threshold"),
        point.get("head_veto_below"),
        None if veto_area is None else int(veto_area),
    )


SCREEN_THRESHOLDS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)


def screen_threshold(rows: Sequence[dict[str, Any]], sensitivity: float = 0.995) -> float | None:
    """The highest screening threshold that still sends at least ``sensitivity`` of the
    slices with blood to the whole ensemble: a slice is sent when one member's highest
    blood probability or its hemorrhage head reaches the threshold, measured on members'
    out-of-fold slices. None (no screening: every member on every slice) when no
    threshold of the grid reaches it."""
    pos = [r for r in rows if r["hemorrhage"]]
    if not pos:
        return None
    best = None
    for t in SCREEN_THRESHOLDS:
        sent = sum(1 for r in pos if r["max_probability"] >= t or r["heads"].get("hemorrhage", 0.0) >= t)
        if sent >= sensitivity * len(pos):
            best = t
    return best


def bootstrap_rows(rows: Sequence[dict[str, Any]], point: dict[str, Any], intracranial: bool = True) -> list[dict[str, Any]]:
    """Per-slice rows in the form :func:`ichseg.evaluate.bootstrap.bootstrap_ci` reads."""
    t, a, h, _, *rest = point_rule(point)
    o = slice_outcomes(rows, t, a, h, intracranial, *rest)
    return [
        {
            "patient_id": r["patient_id"],
            "slice": r["slice"],
            "hemorrhage": r["hemorrhage"],
            "verdict": int(o["verdict"][k]),
            "pipeline_intersection_px_512": int(o["inter"][k]),
            "pipeline_area_px_512": int(o["area"][k]),
            "true_area_px_512": r["true_area_px_512"],
        }
        for k, r in enumerate(rows)
    ]


def patient_costs(rows: Sequence[dict[str, Any]], point: dict[str, Any]) -> list[dict[str, Any]]:
    """Per patient at one point: true, false-positive and false-negative pixels, slice
    counts, and how much global Dice the pool would gain if this patient were perfect
    (the ranking of "who costs the most Dice")."""
    o = slice_outcomes(rows, *point_rule(point))
    pids = np.array([r["patient_id"] for r in rows])
    true_area = np.array([r["true_area_px_512"] for r in rows], np.int64)
    truth = np.array([bool(r["hemorrhage"]) for r in rows])
    inter_all, pred_all, true_all = int(o["inter"].sum()), int(o["area"].sum()), int(true_area.sum())
    dice_all = 2 * inter_all / max(pred_all + true_all, 1)
    out = []
    for p in sorted(set(pids.tolist())):
        m = pids == p
        i, a, t = int(o["inter"][m].sum()), int(o["area"][m].sum()), int(true_area[m].sum())
        perfect = 2 * (inter_all - i + t) / max(pred_all - a + t + true_all, 1)
        out.append(
            {
                "patient_id": p,
                "slices": int(m.sum()),
                "slices_with_blood": int(truth[m].sum()),
                "called_slices": int(o["verdict"][m].sum()),
                "true_px": t,
                "predicted_px": a,
                "false_positive_px": a - i,
                "false_negative_px": t - i,
                "dice": 2 * i / (a + t) if a + t else None,
                "dice_cost": perfect - dice_all,
            }
        )
    return sorted(out, key=lambda r: -r["dice_cost"])


SIZE_BINS_ML = ((0.0, 1.0, "< 1 mL"), (1.0, 5.0, "1-5 mL"), (5.0, float("inf"), "> 5 mL"))
CT_ICH_SLICE_MM = 5.0  # CT-ICH's slice thickness


def px512_to_ml(area_px_512: float, frame_px: int = 650, pixel_mm: float | None = None) -> float:
    """Blood pixels counted at 512×512 as millilitres: a CT-ICH frame is ``frame_px`` pixels
    of ``pixel_mm`` (the converter's 0.35 mm), 5 mm thick."""
    if pixel_mm is None:
        from ichseg.data.convert import CT_ICH_PIXEL_SPACING_MM

        pixel_mm = float(CT_ICH_PIXEL_SPACING_MM)
    side_mm = frame_px * pixel_mm / 512
    return area_px_512 * side_mm * side_mm * CT_ICH_SLICE_MM / 1000.0


def recall_by_group(rows: Sequence[dict[str, Any]], point: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Slice recall and Dice at ``point`` per subtype (the slices the CSV flags with it)
    and per patient bleed size (the patient's total true blood volume: < 1, 1-5, > 5 mL).

    A slice counts for every subtype it is flagged with. Dice is global over the group's
    slices with blood (their false positives included); a group without slices is absent.
    Empty-ground-truth policy: normal slices are in no group."""
    from ichseg.data.ctich import SUBTYPES

    o = slice_outcomes(rows, *point_rule(point))
    pos = np.array([bool(r["hemorrhage"]) for r in rows])
    true_area = np.array([r["true_area_px_512"] for r in rows], np.int64)
    pids = np.array([r["patient_id"] for r in rows])

    def group(m: np.ndarray) -> dict[str, Any]:
        m = m & pos
        i, a, t = int(o["inter"][m].sum()), int(o["area"][m].sum()), int(true_area[m].sum())
        return {
            "slices": int(m.sum()),
            "patients": len(set(pids[m].tolist())),
            "found": int(o["verdict"][m].sum()),
            "recall": float(o["verdict"][m].mean()),
            "dice": 2 * i / (a + t) if a + t else None,
        }

    subtypes = {}
    for h in SUBTYPES:
        m = np.array([bool(r["flags"].get(h, 0)) for r in rows])
        if (m & pos).any():
            subtypes[h] = group(m)
    ml = {p: px512_to_ml(true_area[pids == p].sum()) for p in set(pids.tolist())}
    sizes = {}
    for lo, hi, label in SIZE_BINS_ML:
        m = np.array([lo <= ml[p] < hi for p in pids])
        if (m & pos).any():
            sizes[label] = group(m)
    return {"subtype": subtypes, "size": sizes}


SUBTYPE_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def subtype_thresholds(rows: Sequence[dict[str, Any]], min_precision: float = 0.7, min_slices: int = 5) -> dict[str, Any]:
    """Per subtype head, the lowest probability at which naming the subtype is right at
    least ``min_precision`` of the time on the pooled out-of-fold slices with blood (its
    flag in the CSV is the truth); None when no threshold is, or when fewer than
    ``min_slices`` slices are called at it: the subtype is then never named, only its
    probability reported."""
    from ichseg.data.ctich import SUBTYPES

    pos = [r for r in rows if r["hemorrhage"] and r["heads"]]
    out: dict[str, Any] = {}
    for h in SUBTYPES:
        if not pos or h not in pos[0]["heads"]:
            continue
        p = np.array([r["heads"][h] for r in pos])
        y = np.array([bool(r["flags"].get(h, 0)) for r in pos])
        out[h] = None
        for t in SUBTYPE_THRESHOLDS:
            called = p >= t
            if called.sum() >= min_slices and y[called].mean() >= min_precision:
                out[h] = t
                break
    return out
