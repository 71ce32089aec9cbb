"""Slice- and pixel-level metrics with their definitions and empty-ground-truth policy.

Definitions (also written into every report):

- Slice level, from boolean verdicts ``pred`` and truths ``truth`` of shape (N,):
  recall = TP / (TP + FN), precision = TP / (TP + FP), specificity = TN / (TN + FP).
  A ratio whose denominator is 0 is ``None`` (undefined), never silently 0 or 1.
- Pixel level, from boolean masks of shape (N, H, W) at the evaluation size (512×512):
  *global* Dice = 2·ΣI / (ΣP + ΣT) and IoU = ΣI / (ΣP + ΣT − ΣI), sums over every evaluated
  pixel of every slice (so large bleeds weigh more); *per-slice* Dice = 2I / (P + T).
- Empty-ground-truth policy for per-slice Dice (as MONAI's ``ignore_empty=False``): a slice
  with no blood in truth and prediction scores 1.0; with none in truth but some predicted,
  0.0. ``dice_mean_positive`` averages only slices with blood in truth, so the policy does
  not affect it; ``dice_mean_all`` averages every slice and does depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

PAPER = {"recall": 0.89, "precision": 0.50, "dice": 0.60, "iou": 0.44, "tp": 62, "tn": 370, "fp": 61, "fn": 8}


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def confusion(pred: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """TP, TN, FP, FN of two boolean vectors of shape (N,)."""
    pred = np.asarray(pred, bool)
    truth = np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {truth.shape}")
    return {
        "tp": int(np.sum(pred & truth)),
        "tn": int(np.sum(~pred & ~truth)),
        "fp": int(np.sum(pred & ~truth)),
        "fn": int(np.sum(~pred & truth)),
    }


def slice_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float | int | None]:
    """Confusion counts plus recall, precision and specificity (None where undefined)."""
    c = confusion(pred, truth)
    return {
        **c,
        "recall": _ratio(c["tp"], c["tp"] + c["fn"]),
        "precision": _ratio(c["tp"], c["tp"] + c["fp"]),
        "specificity": _ratio(c["tn"], c["tn"] + c["fp"]),
    }


def scan_metrics(patient_ids: Sequence[str], pred: np.ndarray, truth: np.ndarray) -> dict[str, float | int | None]:
    """Scan (patient) level: a patient is positive if any of its slices is.

    Returns TP, TN, FP, FN, sensitivity and specificity over patients (None where undefined).
    """
    pred_p: dict[str, bool] = {}
    true_p: dict[str, bool] = {}
    for pid, p, t in zip(patient_ids, np.asarray(pred, bool), np.asarray(truth, bool), strict=True):
        pred_p[pid] = pred_p.get(pid, False) or bool(p)
        true_p[pid] = true_p.get(pid, False) or bool(t)
    ids = sorted(pred_p)
    c = confusion(np.array([pred_p[i] for i in ids]), np.array([true_p[i] for i in ids]))
    return {**c, "sensitivity": _ratio(c["tp"], c["tp"] + c["fn"]), "specificity": _ratio(c["tn"], c["tn"] + c["fp"])}


def patient_table(per_slice: Sequence[dict]) -> list[dict]:
    """One row per patient from ``per_slice.csv``'s rows (``hemorrhage``, ``verdict``,
    ``true_area_px_512``, ``pipeline_area_px_512``, ``pipeline_intersection_px_512``): its
    slices with blood and how many were called, whether the patient was called at all, and
    its Dice at 512 px. Empty-truth policy: a patient without blood has Dice None (its
    predicted pixels are its false positives, ``predicted_px``). Sorted by Dice, worst first,
    then the patients without blood."""
    acc: dict[str, dict] = {}
    for r in per_slice:
        empty = {"slices": 0, "slices_with_blood": 0, "blood_slices_called": 0, "called": False}
        a = acc.setdefault(str(r["patient_id"]), {**empty, "true_px": 0, "predicted_px": 0, "inter": 0})
        blood, verdict = bool(int(r["hemorrhage"])), bool(int(r["verdict"]))
        a["slices"] += 1
        a["slices_with_blood"] += blood
        a["blood_slices_called"] += blood and verdict
        a["called"] = a["called"] or verdict
        a["true_px"] += int(r["true_area_px_512"])
        a["predicted_px"] += int(r["pipeline_area_px_512"])
        a["inter"] += int(r["pipeline_intersection_px_512"])
    rows = []
    for pid, a in acc.items():
        inter = a.pop("inter")
        den = a["true_px"] + a["predicted_px"]
        dice = 2 * inter / den if a["true_px"] and den else None
        rows.append({"patient_id": pid, **a, "dice": None if dice is None else round(dice, 4)})
    return sorted(rows, key=lambda r: (r["dice"] is None, r["dice"] or 0.0, r["patient_id"]))


def dice_per_slice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-slice Dice of (N, H, W) boolean masks, with the empty policy above (both empty → 1)."""
    pred = np.asarray(pred, bool).reshape(len(pred), -1)
    truth = np.asarray(truth, bool).reshape(len(truth), -1)
    inter = (pred & truth).sum(1)
    denom = pred.sum(1) + truth.sum(1)
    return np.where(denom > 0, 2 * inter / np.maximum(denom, 1), 1.0)


@dataclass
class PixelAccumulator:
    """Streams (N, H, W) batches so a whole validation set never sits in memory at 512×512."""

    inter: int = 0
    pred: int = 0
    true: int = 0
    per_slice_dice: list[float] = field(default_factory=list)
    per_slice_iou: list[float] = field(default_factory=list)
    has_truth: list[bool] = field(default_factory=list)

    def add(self, pred: np.ndarray, truth: np.ndarray) -> None:
        """Add a batch of boolean masks of equal shape (N, H, W)."""
        pred = np.asarray(pred, bool)
        truth = np.asarray(truth, bool)
        if pred.shape != truth.shape:
            raise ValueError(f"shapes differ: {pred.shape} vs {truth.shape}")
        p = pred.reshape(len(pred), -1)
        t = truth.reshape(len(truth), -1)
        i = (p & t).sum(1)
        ps, ts = p.sum(1), t.sum(1)
        self.inter += int(i.sum())
        self.pred += int(ps.sum())
        self.true += int(ts.sum())
        union = ps + ts - i
        self.per_slice_dice += np.where(ps + ts > 0, 2 * i / np.maximum(ps + ts, 1), 1.0).tolist()
        self.per_slice_iou += np.where(union > 0, i / np.maximum(union, 1), 1.0).tolist()
        self.has_truth += (ts > 0).tolist()

    def result(self) -> dict[str, float | int | None]:
        """Global and mean Dice/IoU (see module docstring); None where undefined."""
        dice = np.array(self.per_slice_dice)
        iou = np.array(self.per_slice_iou)
        pos = np.array(self.has_truth, bool)
        return {
            "dice_global": _ratio(2 * self.inter, self.pred + self.true),
            "iou_global": _ratio(self.inter, self.pred + self.true - self.inter),
            "dice_mean_positive": float(dice[pos].mean()) if pos.any() else None,
            "iou_mean_positive": float(iou[pos].mean()) if pos.any() else None,
            "dice_mean_all": float(dice.mean()) if len(dice) else None,
            "slices_with_blood": int(pos.sum()),
            "pixels_true": self.true,
            "pixels_predicted": self.pred,
            "pixels_intersection": self.inter,
        }
