"""The operating-point grid on out-of-fold slices, and the policies that pick a point from it.

A point is (mask threshold, minimum blob area, head threshold) and, under the "outlined"
verdict rule, the lower mask threshold on slices the head flags; with ``veto=True`` also the
head's veto on small blobs (on slices whose hemorrhage head is below ``head_veto_below``, a
blob needs ``head_veto_min_area_px``). Why the veto: on the robust-384 out-of-fold slices,
the false-positive slices of normal patients had a median head of 0.07 against 0.73 on slices
with blood, and their blobs a median 59 px; a speck that the head doubts is most often noise.

Scoring twenty thousand points with :func:`ichseg.evaluate.oof.metrics_at` (a Python loop
over every slice's blobs per point) takes minutes; :class:`OutcomeTable` sums each slice's
blobs once per (stored mask threshold, candidate minimum area), after which a point is a few
numpy gathers. Its metrics equal :func:`metrics_at`'s exactly (tests/test_oof.py), which
stays the reference.

Policies (:data:`POLICIES`): ``f2_dice``/``f1_dice`` rank a point by the F-beta of its slice
verdicts plus global Dice; ``scan_safe_*`` do the same among points that miss no bleeding
patient; ``scan_safe_f2_dice_spec`` adds the scan specificity, so that a false alarm on a
normal patient costs something (without it, the grid's best point called 17 of 29 normal
patients bleeding, which no emergency team keeps trusting).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from ichseg.config import PipelineConfig
from ichseg.evaluate.metrics import confusion, slice_metrics
from ichseg.evaluate.oof import MASK_THRESHOLDS, pixel_metrics
from ichseg.infer.postprocess import fuse_verdict, mask_thresholds, min_areas_px

MIN_AREAS_PX_512 = (5, 10, 20, 40, 80, 160, 320)
HEAD_THRESHOLDS: tuple[float | None, ...] = (None, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
VETO_HEAD_BELOW = (0.05, 0.1, 0.15, 0.2, 0.3)
VETO_MIN_AREAS_PX_512 = (80, 160, 320, 640)
POLICIES = ("scan_safe_f2_dice", "scan_safe_f2_dice_spec", "scan_safe_f1_dice", "f2_dice", "f1_dice")
DEFAULT_POLICY = "scan_safe_f2_dice"


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


class OutcomeTable:
    """The out-of-fold rows of :func:`ichseg.evaluate.oof.member_rows`, summed once so that
    any operating point's outcomes are array lookups.

    ``area[t, a, n]`` / ``inter[t, a, n]``: the pixels (at 512×512) of slice ``n``'s blobs of
    at least ``self.min_areas[a]`` px at mask threshold ``self.thresholds[t]``, and their
    overlap with the truth."""

    def __init__(self, rows: Sequence[dict[str, Any]], intracranial: bool = True, min_areas: Sequence[int] = ()) -> None:
        key = "components" if intracranial else "components_no_intracranial"
        self.thresholds = tuple(float(t) for t in MASK_THRESHOLDS)
        self.min_areas = tuple(sorted({*MIN_AREAS_PX_512, *VETO_MIN_AREAS_PX_512, *(int(a) for a in min_areas)}))
        n = len(rows)
        self.area = np.zeros((len(self.thresholds), len(self.min_areas), n), np.int64)
        self.inter = np.zeros_like(self.area)
        cuts = np.array(self.min_areas)
        for j, r in enumerate(rows):
            for i, t in enumerate(self.thresholds):
                blobs = r[key].get(str(t))
                if not blobs:
                    continue
                c = np.array(blobs, np.int64)
                c = c[np.argsort(c[:, 0])]
                # blobs of at least cut px: those from searchsorted onward (sorted by area)
                first = np.searchsorted(c[:, 0], cuts, side="left")
                tail_area = np.concatenate([np.cumsum(c[::-1, 0])[::-1], [0]])
                tail_inter = np.concatenate([np.cumsum(c[::-1, 1])[::-1], [0]])
                self.area[i, :, j] = tail_area[first]
                self.inter[i, :, j] = tail_inter[first]
        self.head = np.array([r["heads"].get("hemorrhage", 0.0) for r in rows]) if rows and rows[0]["heads"] else None
        self.truth = np.array([bool(r["hemorrhage"]) for r in rows])
        self.true_area = np.array([r["true_area_px_512"] for r in rows], np.int64)
        names, self.code = np.unique(np.array([r["patient_id"] for r in rows], dtype=str), return_inverse=True)
        self.patients = len(names)
        self.bleeding = np.bincount(self.code, weights=self.truth, minlength=self.patients) > 0
        self._cols = np.arange(n)

    def outcomes(
        self,
        mask_threshold: float,
        min_area_px: int,
        head_threshold: float | None,
        rule: str = "fused",
        head_mask_threshold: float | None = None,
        head_veto_below: float | None = None,
        head_veto_min_area_px: int | None = None,
    ) -> dict[str, np.ndarray]:
        """As :func:`ichseg.evaluate.oof.slice_outcomes` (same rule, same arrays)."""
        n = len(self.truth)
        t = mask_thresholds(self.head, n, mask_threshold, head_threshold, head_mask_threshold, rule)
        m = min_areas_px(self.head, n, min_area_px, head_veto_below, head_veto_min_area_px)
        ti = np.searchsorted(np.array(self.thresholds), np.round(t, 6))
        ai = np.searchsorted(self.min_areas, m)
        if (ti >= len(self.thresholds)).any() or not np.allclose(np.array(self.thresholds)[ti], t):
            raise ValueError(f"mask threshold not stored in the out-of-fold rows: {sorted(set(t.tolist()))}")
        if (ai >= len(self.min_areas)).any() or not np.array_equal(np.array(self.min_areas)[ai], m):
            raise ValueError(f"minimum area not in the table: {sorted(set(m.tolist()))}")
        area = self.area[ti, ai, self._cols]
        inter = self.inter[ti, ai, self._cols]
        return {"verdict": fuse_verdict(area, self.head, head_threshold, rule), "area": area, "inter": inter}

    def metrics(self, *point: Any) -> dict[str, Any]:
        """As :func:`ichseg.evaluate.oof.metrics_at` (arguments of :meth:`outcomes`)."""
        o = self.outcomes(*point)
        inter, pred, true = int(o["inter"].sum()), int(o["area"].sum()), int(self.true_area.sum())
        called = np.bincount(self.code, weights=o["verdict"], minlength=self.patients) > 0
        c = confusion(called, self.bleeding)
        fp_normal = np.bincount(self.code, weights=o["area"], minlength=self.patients)[~self.bleeding]
        return {
            "slice": slice_metrics(o["verdict"], self.truth),
            "scan": {**c, "sensitivity": _ratio(c["tp"], c["tp"] + c["fn"]), "specificity": _ratio(c["tn"], c["tn"] + c["fp"])},
            "pixel": pixel_metrics(inter, pred, true),
            "fp_px_per_normal_patient": float(np.mean(fp_normal)) if len(fp_normal) else None,
            "normal_patients": int((~self.bleeding).sum()),
        }


def grid(
    rows: Sequence[dict[str, Any]], intracranial: bool = True, rule: str = "fused", veto: bool = False
) -> list[dict[str, Any]]:
    """Metrics at every point of the grid: (mask threshold, min area, head threshold); for
    the "outlined" rule every lower mask threshold on the slices the head flags; with
    ``veto`` every head's veto (:data:`VETO_HEAD_BELOW` × :data:`VETO_MIN_AREAS_PX_512`
    larger than the point's minimum area) besides none."""
    table = OutcomeTable(rows, intracranial)
    out = []
    for t, a, h in itertools.product(MASK_THRESHOLDS, MIN_AREAS_PX_512, HEAD_THRESHOLDS):
        lows: tuple[float | None, ...] = (None,)
        if rule == "outlined" and h is not None:
            lows = tuple(x for x in MASK_THRESHOLDS if x <= t)
        vetoes: list[tuple[float | None, int | None]] = [(None, None)]
        if veto:
            vetoes += [(b, va) for b, va in itertools.product(VETO_HEAD_BELOW, VETO_MIN_AREAS_PX_512) if va > a]
        for low, (vb, va) in itertools.product(lows, vetoes):
            point: dict[str, Any] = {"mask_threshold": t, "min_area_px": a, "head_threshold": h}
            if rule == "outlined":
                point |= {"verdict_rule": rule, "head_mask_threshold": low}
            if veto:
                point |= {"head_veto_below": vb, "head_veto_min_area_px": va}
            out.append(point | table.metrics(t, a, h, rule, low, vb, va))
    return out


def _f_beta(s: dict[str, Any], beta: float) -> float:
    tp, fp, fn = s["tp"], s["fp"], s["fn"]
    b2 = beta * beta
    den = (1 + b2) * tp + b2 * fn + fp
    return (1 + b2) * tp / den if den and tp else 0.0


def score(point: dict[str, Any], policy: str) -> float:
    """How a policy ranks one grid point (see the module docstring): every point that
    misses a bleeding patient ranks below every one that does not, under ``scan_safe_*``."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r} ({', '.join(POLICIES)})")
    beta = 2.0 if "f2" in policy else 1.0
    value = _f_beta(point["slice"], beta) + (point["pixel"]["dice_global"] or 0.0)
    if policy.endswith("_spec"):
        value += point["scan"]["specificity"] or 0.0
    if policy.startswith("scan_safe") and (point["scan"]["sensitivity"] or 0.0) < 1.0:
        value -= 10.0
    return value


def choose(points: list[dict[str, Any]], policy: str = DEFAULT_POLICY) -> dict[str, Any]:
    """The grid point a policy picks; ties go to the first (lower thresholds, smaller areas,
    no veto)."""
    return max(points, key=lambda p: score(p, policy))


def operating_point(point: dict[str, Any], base: PipelineConfig) -> PipelineConfig:
    """``base`` with a chosen grid point's thresholds, verdict rule and head's veto."""
    low = point.get("head_mask_threshold")
    veto_below, veto_area = point.get("head_veto_below"), point.get("head_veto_min_area_px")
    return dataclasses.replace(
        base,
        mask_threshold=float(point["mask_threshold"]),
        min_area_px=int(point["min_area_px"]),
        head_threshold=None if point["head_threshold"] is None else float(point["head_threshold"]),
        verdict_rule=point.get("verdict_rule", "fused"),
        head_mask_threshold=None if low is None else float(low),
        head_veto_below=None if veto_below is None else float(veto_below),
        head_veto_min_area_px=None if veto_area is None else int(veto_area),
    )
