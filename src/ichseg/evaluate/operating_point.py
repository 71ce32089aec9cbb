"""Choosing the U-Net's operating point (mask threshold, minimum blob area) on validation
patients, so the numbers reported on held-out patients were not tuned on them.

The slice verdict and the mask both depend on the probability threshold and on the area
below which a predicted mask is called a speck. Both are chosen jointly on a small grid by
a policy (:data:`POLICIES`); the default maximises ``F2(slice verdict) + global Dice``: F2
weighs recall twice as much as precision (a missed bleed costs more than a false alarm),
and the Dice term keeps the outline honest. Cross-validation folds store the grid on
their inner validation and held-out patients, so policies can be compared without
retraining (:func:`ichseg.experiments.crossval.policy_table`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ichseg.config import PipelineConfig

MASK_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_AREAS_PX_512 = (1, 10, 20, 40, 80, 160, 320, 640)


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
    parts = []
    for probs, truth in chunks:
        p = probs.reshape(len(probs), -1)
        t = np.asarray(truth, bool).reshape(len(truth), -1)
        areas = np.stack([(p >= th).sum(1) for th in thresholds], 1)
        inter = np.stack([((p >= th) & t).sum(1) for th in thresholds], 1)
        parts.append(ThresholdStats(tuple(thresholds), areas, inter, t.sum(1)))
    return concatenate_stats(parts)


def concatenate_stats(parts: list[ThresholdStats]) -> ThresholdStats:
    """One table from per-chunk tables of the same thresholds, slices in order."""
    if not parts:
        raise ValueError("no slices to choose an operating point on")
    return ThresholdStats(
        parts[0].thresholds,
        np.concatenate([g.areas for g in parts]),
        np.concatenate([g.inter for g in parts]),
        np.concatenate([g.true_areas for g in parts]),
    )


def f_beta(tp: int, fp: int, fn: int, beta: float = 2.0) -> float:
    """F-beta from counts; 0 when there are no true positives."""
    b2 = beta * beta
    den = (1 + b2) * tp + b2 * fn + fp
    return (1 + b2) * tp / den if den and tp else 0.0


def grid_rows(
    stats: ThresholdStats,
    gate_pass: np.ndarray,
    labels: np.ndarray,
    min_areas_px: tuple[int, ...] = MIN_AREAS_PX_512,
    patient_ids: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Slice counts, global Dice/IoU (and scan counts, given ``patient_ids``) of the pipeline
    at every (mask threshold, min area) pair.

    ``gate_pass`` (N,) bool is the classifier gate, ``labels`` (N,) the slice truth. A slice
    is called positive when it passes the gate and its mask has ≥ min area pixels; the
    pipeline mask is empty elsewhere, as at inference.
    """
    from ichseg.evaluate.metrics import scan_metrics

    gate_pass = np.asarray(gate_pass, bool)
    labels = np.asarray(labels, bool)
    total_true = int(stats.true_areas.sum())
    rows: list[dict[str, Any]] = []
    for j, th in enumerate(stats.thresholds):
        for a in min_areas_px:
            call = gate_pass & (stats.areas[:, j] >= max(a, 1))
            tp, fp = int((call & labels).sum()), int((call & ~labels).sum())
            fn, tn = int((~call & labels).sum()), int((~call & ~labels).sum())
            inter, pred = int(stats.inter[call, j].sum()), int(stats.areas[call, j].sum())
            row = {
                "mask_threshold": th,
                "min_area_px": int(a),
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "tn": tn,
                "recall": tp / (tp + fn) if tp + fn else None,
                "precision": tp / (tp + fp) if tp + fp else None,
                "dice": 2 * inter / (pred + total_true) if pred + total_true else 1.0,
                "iou": inter / (pred + total_true - inter) if pred + total_true - inter else 1.0,
            }
            if patient_ids is not None:
                sc = scan_metrics(patient_ids, call, labels)
                row["scan_sensitivity"], row["scan_specificity"] = sc["sensitivity"], sc["specificity"]
            rows.append(row)
    return rows


def _score(row: dict[str, Any], policy: str) -> float:
    if policy == "f2_dice":  # recall weighed 2× precision, plus the outline's quality
        return f_beta(row["tp"], row["fp"], row["fn"], 2.0) + row["dice"]
    if policy == "f1_dice":
        return f_beta(row["tp"], row["fp"], row["fn"], 1.0) + row["dice"]
    if policy.startswith("recall") and policy.endswith("_dice"):  # e.g. recall90_dice
        floor = int(policy[len("recall") : -len("_dice")]) / 100
        # below the recall floor only recall counts, so the most sensitive point wins
        return row["dice"] + 2 if (row["recall"] or 0) >= floor else (row["recall"] or 0)
    raise ValueError(f"unknown operating-point policy {policy!r} (choose from {', '.join(POLICIES)})")


POLICIES = ("f2_dice", "f1_dice", "recall90_dice")


def select_row(rows: list[dict[str, Any]], policy: str = "f2_dice") -> dict[str, Any]:
    """The grid row a policy picks: ``f2_dice`` maximises F2 + Dice, ``f1_dice`` F1 + Dice,
    ``recallNN_dice`` the Dice among points with slice recall ≥ NN % (else the highest
    recall). Ties go to the first row (lowest threshold, then smallest area)."""
    return max(rows, key=lambda r: _score(r, policy))


def choose_operating_point(
    stats: ThresholdStats,
    gate_pass: np.ndarray,
    labels: np.ndarray,
    min_areas_px: tuple[int, ...] = MIN_AREAS_PX_512,
    policy: str = "f2_dice",
) -> tuple[float, int, list[dict[str, Any]]]:
    """(mask threshold, min area in px at the evaluation size, the whole grid as rows)."""
    rows = grid_rows(stats, gate_pass, labels, min_areas_px)
    best = select_row(rows, policy)
    return float(best["mask_threshold"]), int(best["min_area_px"]), rows


def with_operating_point(config: PipelineConfig, mask_threshold: float, min_area_px: int) -> PipelineConfig:
    """``config`` with the chosen operating point (tuning switched off: it is now fixed)."""
    return dataclasses.replace(config, mask_threshold=mask_threshold, min_area_px=min_area_px)
