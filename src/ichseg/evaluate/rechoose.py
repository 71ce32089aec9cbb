"""Re-choose one setting of a bundle's operating point, the mask threshold, on a few patients.

After ``ichseg finetune`` the networks' probabilities are no longer those the base bundle's
operating point was chosen on: measured on CT-ICH folds made into a "new scanner", fine-tuning
made the networks call more blood rather than outline it better, so the kept point was then
too permissive (docs/RESULTS.md, issue 19). A site has a few dozen labelled patients, far too
few to choose the whole point again (mask threshold × minimum area × head threshold × the
head's veto is thousands of candidates), so only the mask threshold moves, over the
thresholds the rows store; the minimum area, verdict rule, head threshold and the head's veto
stay the base's. A head mask threshold above the new mask threshold is lowered to it (the
head only ever *lowers* the threshold on the slices it flags).

The candidates are ranked by the base's policy (:func:`ichseg.evaluate.oof_grid.score`), so
that under ``scan_safe_*`` a threshold that misses a bleeding patient of these rows loses to
every one that does not. The rows are usually of the very patients the networks were just
fine-tuned on, so what this buys must be checked on others
(:mod:`ichseg.experiments.finetune_check`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ichseg.config import PipelineConfig
from ichseg.evaluate.oof import MASK_THRESHOLDS
from ichseg.evaluate.oof_grid import DEFAULT_POLICY, OutcomeTable, score


def with_mask_threshold(pipeline: PipelineConfig, mask_threshold: float) -> PipelineConfig:
    """``pipeline`` at another mask threshold, its head mask threshold kept at or below it."""
    low = pipeline.head_mask_threshold
    return dataclasses.replace(
        pipeline,
        mask_threshold=float(mask_threshold),
        head_mask_threshold=None if low is None else min(float(low), float(mask_threshold)),
    )


def _point(p: PipelineConfig) -> tuple[Any, ...]:
    return (p.mask_threshold, p.min_area_px, p.head_threshold, p.verdict_rule, p.head_mask_threshold,
            p.head_veto_below, p.head_veto_min_area_px)  # fmt: skip


def rechoose_mask_threshold(
    rows: Sequence[dict[str, Any]],
    pipeline: PipelineConfig,
    policy: str | None = None,
    thresholds: Sequence[float] = MASK_THRESHOLDS,
) -> tuple[PipelineConfig, list[dict[str, Any]]]:
    """The mask threshold ``policy`` (default: :data:`DEFAULT_POLICY`) ranks best on
    ``rows`` (:func:`ichseg.evaluate.oof.member_rows`), the rest of ``pipeline`` kept, and
    every candidate's metrics and score (for the run's JSON). Ties keep the base threshold,
    then the lower one. Raises ValueError on no rows: there is nothing to choose on."""
    if not rows:
        raise ValueError("no slices to re-choose the mask threshold on")
    policy = policy or DEFAULT_POLICY
    table = OutcomeTable(rows, pipeline.intracranial, min_areas=[pipeline.min_area_px])
    candidates = []
    for t in thresholds:
        p = with_mask_threshold(pipeline, t)
        m = table.metrics(*_point(p))
        candidates.append({"mask_threshold": float(t), "head_mask_threshold": p.head_mask_threshold,
                           "score": round(score(m, policy), 6), **m})  # fmt: skip
    base = float(pipeline.mask_threshold)
    best = max(candidates, key=lambda c: (c["score"], c["mask_threshold"] == base, -c["mask_threshold"]))
    return with_mask_threshold(pipeline, best["mask_threshold"]), candidates
