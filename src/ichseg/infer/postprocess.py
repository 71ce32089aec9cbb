"""From blood probabilities to masks and verdicts: pure numpy/OpenCV functions shared by
prediction, evaluation and the out-of-fold choice of the operating point, so the rule that
is tuned is the rule that ships.

The rule (``PipelineConfig`` with ``speck_removal="component"``):

1. ``probability >= mask_threshold`` inside the intracranial mask (nothing outside the
   skull is blood);
2. connected components (8-connectivity) smaller than ``min_area_px`` pixels at 512×512
   are removed one by one, so a speck beside a real bleed goes and the bleed stays;
3. ``verdict_rule="fused"``: a slice is called positive when anything is left, **or**
   when the network's slice head says ``hemorrhage >= head_threshold`` (a confident head
   is not vetoed by an unsure outline, nor the outline by an unsure head);
   ``verdict_rule="outlined"``: a slice is positive only when something is left, so no
   verdict says "blood" with nothing drawn; the head instead lowers the mask threshold to
   ``head_mask_threshold`` on the slices it flags, and a flagged slice with no blob even
   then is listed for review (:func:`review_flags`);
4. the head's veto (``head_veto_below``, ``head_veto_min_area_px``): on slices the head
   doubts, a blob must be larger to stay (:func:`min_areas_px`), which removes most
   false alarms on normal heads, the small specks on slices with a low head.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Components smaller than this (px at 512×512) are never stored for the out-of-fold grid.
MIN_STORED_COMPONENT_PX = 5


def resize_mask_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool (H, W) mask at another (H, W) size, nearest neighbour."""
    if mask.shape == tuple(size):
        return mask
    return cv2.resize(mask.astype(np.uint8), size[::-1], interpolation=cv2.INTER_NEAREST).astype(bool)


def keep_components(mask: np.ndarray, min_area_px: float) -> np.ndarray:
    """``mask`` (H, W) bool without its 8-connected components smaller than ``min_area_px``."""
    if min_area_px <= 1 or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area_px
    return keep[labels]


def component_table(mask: np.ndarray, truth: np.ndarray | None = None) -> list[list[int]]:
    """[area, overlap with ``truth``] of each 8-connected component of ``mask`` (H, W)
    with at least ``MIN_STORED_COMPONENT_PX`` pixels: what the operating-point grid needs
    to apply any minimum area afterwards without the probabilities."""
    if not mask.any():
        return []
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    inter = np.bincount(labels[truth], minlength=n) if truth is not None else np.zeros(n, int)
    return [
        [int(stats[k, cv2.CC_STAT_AREA]), int(inter[k])]
        for k in range(1, n)
        if stats[k, cv2.CC_STAT_AREA] >= MIN_STORED_COMPONENT_PX
    ]


VERDICT_RULES = ("fused", "outlined")


def fuse_verdict(
    mask_area_px: np.ndarray, head_probability: np.ndarray | None, head_threshold: float | None, rule: str = "fused"
) -> np.ndarray:
    """Slice verdicts (N,) from what is left of each mask and, if given, the slice head:
    "fused": positive when the mask is non-empty or the head is at least
    ``head_threshold``; "outlined": positive when the mask is non-empty."""
    if rule not in VERDICT_RULES:
        raise ValueError(f"unknown verdict_rule {rule!r} ({', '.join(VERDICT_RULES)})")
    verdict = np.asarray(mask_area_px) > 0
    if rule == "fused" and head_threshold is not None and head_probability is not None:
        verdict = verdict | (np.asarray(head_probability) >= head_threshold)
    return verdict


def mask_thresholds(
    head_probability: np.ndarray | None,
    n: int,
    mask_threshold: float,
    head_threshold: float | None,
    head_mask_threshold: float | None,
    rule: str,
) -> np.ndarray:
    """(N,) the mask threshold of each slice: ``mask_threshold``, or under "outlined" the
    lower ``head_mask_threshold`` where the head reaches ``head_threshold``."""
    out = np.full(n, float(mask_threshold))
    if rule == "outlined" and head_threshold is not None and head_mask_threshold is not None and head_probability is not None:
        out[np.asarray(head_probability) >= head_threshold] = float(head_mask_threshold)
    return out


def min_areas_px(
    head_probability: np.ndarray | None,
    n: int,
    min_area_px: float,
    veto_below: float | None = None,
    veto_min_area_px: float | None = None,
) -> np.ndarray:
    """(N,) the minimum blob area of each slice (px at 512×512): ``min_area_px``, raised to
    ``veto_min_area_px`` where the hemorrhage head is below ``veto_below`` (the head's veto
    on small blobs; no veto without a head or with either value None)."""
    out = np.full(n, float(min_area_px))
    if veto_below is not None and veto_min_area_px is not None and head_probability is not None:
        low = np.asarray(head_probability) < veto_below
        out[low] = np.maximum(out[low], float(veto_min_area_px))
    return out


def review_flags(
    mask_area_px: np.ndarray, head_probability: np.ndarray | None, head_threshold: float | None, rule: str
) -> np.ndarray:
    """(N,) slices the head flags but nothing is outlined on, under "outlined" (under
    "fused" those are positive slices, so none is for review)."""
    area = np.asarray(mask_area_px)
    if rule != "outlined" or head_threshold is None or head_probability is None:
        return np.zeros(len(area), bool)
    return (np.asarray(head_probability) >= head_threshold) & (area == 0)
