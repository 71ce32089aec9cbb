"""Choosing the U-Net's operating point (mask threshold, minimum blob area) on validation
patients, so the numbers reported on held-out patients were not tuned on them.

The slice verdict and the mask both depend on the probability threshold and on the area
below which a predicted mask is called a speck. Both are chosen jointly on a small grid by
maximising ``F2(slice verdict) + global Dice``: F2 weighs recall twice as much as
precision (a missed bleed costs more than a false alarm), and the Dice term keeps the
outline honest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ichseg.config import PipelineConfig

MASK_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_AREAS_PX_512 = (1, 10, 20, 40, 80, 160, 320)


@dataclass
class ThresholdStats:
    """Per slice and threshold: predicted area ``areas`` (N, T) and overlap with the truth
    ``inter`` (N, T); ``true_areas`` (N,); all in pixels at the evaluation size."""

    thresholds: tuple[float, ...]
    areas: np.ndarray
    inter: np.ndarray
    true_areas: np.ndarray


def threshold_stats(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]], thresholds: tuple[float, ...] = MASK_THRESHOLDS
) -> ThresholdStats:
    """Stream ``(probs (n, H, W) float, truth (n, H, W) bool)`` chunks into per-threshold counts."""
    areas, inter, true = [], [], []
    for probs, truth in chunks:
        p = probs.reshape(len(probs), -1)
        t = np.asarray(truth, bool).reshape(len(truth), -1)
        areas.append(np.stack([(p >= th).sum(1) for th in thresholds], 1))
        inter.append(np.stack([((p >= th) & t).sum(1) for th in thresholds], 1))
        true.append(t.sum(1))
    if not areas:
        raise ValueError("no slices to choose an operating point on")
    return ThresholdStats(tuple(thresholds), np.concatenate(areas), np.concatenate(inter), np.concatenate(true))


def f_beta(tp: int, fp: int, fn: int, beta: float = 2.0) -> float:
    """F-beta from counts; 0 when there are no true positives."""
    b2 = beta * beta
    den = (1 + b2) * tp + b2 * fn + fp
    return (1 + b2) * tp / den if den and tp else 0.0


def choose_operating_point(
    stats: ThresholdStats,
    gate_pass: np.ndarray,
    labels: np.ndarray,
    min_areas_px: tuple[int, ...] = MIN_AREAS_PX_512,
    beta: float = 2.0,
) -> tuple[float, int, list[dict[str, Any]]]:
    """(mask threshold, min area in px at the evaluation size, the whole grid as rows).

    ``gate_pass`` (N,) bool is the classifier gate, ``labels`` (N,) the slice truth. A slice
    is called positive when it passes the gate and its mask has ≥ min area pixels; the
    pipeline mask is empty elsewhere, as at inference. Ties go to the first grid point.
    """
    gate_pass = np.asarray(gate_pass, bool)
    labels = np.asarray(labels, bool)
    total_true = int(stats.true_areas.sum())
    rows: list[dict[str, Any]] = []
    for j, th in enumerate(stats.thresholds):
        for a in min_areas_px:
            call = gate_pass & (stats.areas[:, j] >= max(a, 1))
            tp, fp, fn = int((call & labels).sum()), int((call & ~labels).sum()), int((~call & labels).sum())
            inter, pred = int(stats.inter[call, j].sum()), int(stats.areas[call, j].sum())
            dice = 2 * inter / (pred + total_true) if pred + total_true else 1.0
            f2 = f_beta(tp, fp, fn, beta)
            rows.append(
                {
                    "mask_threshold": th,
                    "min_area_px": int(a),
                    "tp": tp,
                    "fp": fp,
                    "fn": fn,
                    "f2": f2,
                    "dice": dice,
                    "score": f2 + dice,
                }
            )
    best = max(rows, key=lambda r: r["score"])  # max keeps the first of equal scores
    return float(best["mask_threshold"]), int(best["min_area_px"]), rows


def with_operating_point(config: PipelineConfig, mask_threshold: float, min_area_px: int) -> PipelineConfig:
    """``config`` with the chosen operating point (tuning switched off: it is now fixed)."""
    return dataclasses.replace(config, mask_threshold=mask_threshold, min_area_px=min_area_px)
