"""Bootstrap confidence intervals that resample patients, not slices: slices of one
patient are strongly correlated, so resampling slices would give falsely narrow intervals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

HEADLINE = ("recall", "precision", "specificity", "dice_global", "iou_global", "scan_sensitivity", "scan_specificity")


def _summaries(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], np.ndarray]:
    """Per patient: [TP, FP, FN, TN, ΣI, ΣP, ΣT, has_blood, called_positive]."""
    by: dict[str, np.ndarray] = {}
    for r in rows:
        t, v = int(r["hemorrhage"]), int(r["verdict"])
        a = by.setdefault(str(r["patient_id"]), np.zeros(9))
        a[0] += t and v
        a[1] += (not t) and v
        a[2] += t and not v
        a[3] += (not t) and not v
        a[4] += r["pipeline_intersection_px_512"]
        a[5] += r["pipeline_area_px_512"]
        a[6] += r["true_area_px_512"]
        a[7] = max(a[7], t)
        a[8] = max(a[8], v)
    ids = sorted(by)
    return ids, np.stack([by[i] for i in ids])


def _metrics(s: np.ndarray) -> dict[str, float]:
    """Headline metrics from summed per-patient rows (NaN where undefined)."""
    tp, fp, fn, tn, inter, pred, true = s[..., :7].sum(-2).T if s.ndim == 3 else s[:, :7].sum(0)
    blood, called = s[..., 7], s[..., 8]
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "recall": tp / (tp + fn),
            "precision": tp / (tp + fp),
            "specificity": tn / (tn + fp),
            "dice_global": 2 * inter / (pred + true),
            "iou_global": inter / (pred + true - inter),
            "scan_sensitivity": (blood * called).sum(-1) / blood.sum(-1),
            "scan_specificity": ((1 - blood) * (1 - called)).sum(-1) / (1 - blood).sum(-1),
        }


def bootstrap_ci(rows: Sequence[Mapping[str, Any]], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Point estimates and percentile intervals for the headline metrics.

    ``rows`` are per-slice records with ``patient_id``, ``hemorrhage``, ``verdict`` and the
    512×512 pixel counts ``pipeline_intersection_px_512``, ``pipeline_area_px_512`` and
    ``true_area_px_512`` (as in ``per_slice.csv``). Each replicate draws as many patients
    as there are, with replacement; replicates where a metric is undefined are left out of
    that metric's interval.
    """
    ids, s = _summaries(rows)
    point = {k: float(v) for k, v in _metrics(s).items()}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(n_boot, len(ids)))
    boot = _metrics(s[draws])
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out: dict[str, Any] = {"patients": len(ids), "replicates": n_boot, "level": level}
    for k in HEADLINE:
        v = boot[k][np.isfinite(boot[k])]
        out[k] = {
            "estimate": None if np.isnan(point[k]) else point[k],
            "ci": [float(np.percentile(v, lo)), float(np.percentile(v, hi))] if len(v) else None,
        }
    return out
