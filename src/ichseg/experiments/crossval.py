"""K-fold cross-validation by patient: one JSON per fold and configuration, kept in the
repository, so the CV table can be rebuilt (and bootstrapped) without retraining."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.config import PipelineConfig, RunConfig, to_dict
from ichseg.data.splits import select
from ichseg.evaluate.bootstrap import bootstrap_ci
from ichseg.experiments.folds import (
    columns,
    fmt_stat,
    fold_values,
    is_ensemble_dir,
    load_folds,
    mean_sd,
    rows_of,
    stat,
    train_fold,
)
from ichseg.experiments.workflow import bundle_stage, hardware, training_summary
from ichseg.files import atomic_write_text

log = logging.getLogger(__name__)


def run_fold(
    data_dir: Path,
    work_root: Path,
    config: RunConfig,
    name: str,
    fold: int,
    folds: int,
    results_dir: Path,
    *,
    seed: int = 0,
    progress: bool = True,
    skip_bad: bool = False,
    expected_size_px: int | None = 650,
) -> Path:
    """Train both stages on the other folds, evaluate on this one, write ``results_dir/name/fold<k>.json``.
    A configuration without inner validation is a fold-ensemble member
    (:func:`ichseg.experiments.ensemble.run_member_fold`), which ``ichseg cv`` runs instead."""
    if not config.cv_inner_validation:
        raise ValueError(f"{name}: a fold-ensemble configuration (no inner validation): its folds run as ensemble members")
    from ichseg.evaluate.report import ensure_caches, evaluate_records
    from ichseg.infer.pipeline import load_bundle

    prep, outer = train_fold(
        data_dir,
        work_root,
        config,
        name,
        fold,
        folds,
        seed=seed,
        progress=progress,
        skip_bad=skip_bad,
        expected_size_px=expected_size_px,
    )
    inner, work, cache_root = prep.split, prep.work_dir, prep.cache_root
    bundle = load_bundle(bundle_stage(work, config, prep=prep))
    val = ensure_caches(bundle, select(prep.records, outer["val"]), cache_root, skip_bad=skip_bad)
    tuned = config.pipeline.tune_operating_point
    ev = evaluate_records(
        bundle, val, cache_root, progress=progress, alternatives=ablation_variants(config, bundle.pipeline), operating_grid=tuned
    )
    grids = {}
    if tuned:
        grids = {"inner_val": bundle.meta["calibration"]["grid"], "held_out": ev.metrics.pop("operating_grid")}
    body: dict[str, Any] = {
        "name": name,
        "fold": fold,
        "folds": folds,
        "fold_seed": seed,
        "config": to_dict(config),
        "train_patients": inner["train"],
        "inner_val_patients": inner["val"],
        "val_patients": outer["val"],
        "data_checksum": prep.data_checksum,
        "training": training_summary(work),
        "hardware": hardware(),
        "metrics": {k: v for k, v in ev.metrics.items() if k not in ("definitions", "paper")},
        "per_slice": columns(ev.per_slice),
    }
    if grids:  # lets operating-point policies be compared without retraining (policy_table)
        body["operating_grid"] = {k: columns(v) for k, v in grids.items()}
    out = Path(results_dir) / name / f"fold{fold}.json"
    atomic_write_text(out, json.dumps(body, indent=1) + "\n")
    log.info("fold %d of %s -> %s", fold, name, out)
    return out


def ablation_variants(config: RunConfig, tuned: PipelineConfig) -> dict[str, PipelineConfig]:
    """Inference-time ablations scored on the same fold from the same models: the
    operating point before tuning, and the U-Net without test-time augmentation."""
    out = {}
    if config.pipeline.tune_operating_point:
        default = PipelineConfig()
        out["untuned_operating_point"] = dataclasses.replace(
            tuned, mask_threshold=default.mask_threshold, min_area_px=default.min_area_px
        )
    if tuned.tta_flip:
        out["no_tta"] = dataclasses.replace(tuned, tta_flip=False)
    return out


def summarize(results_dir: Path) -> dict[str, dict[str, Any]]:
    """Per configuration: mean and sd over folds, pooled bootstrap intervals, training time."""
    out: dict[str, dict[str, Any]] = {}
    for cfg_dir in sorted(p for p in Path(results_dir).iterdir() if p.is_dir() and not is_ensemble_dir(p)):
        folds = load_folds(cfg_dir)
        if not folds:
            continue
        stats = mean_sd([fold_values(f["metrics"]) for f in folds])
        minutes = [sum(t["seconds"] for t in f["training"].values()) / 60 for f in folds]
        rows = [r for f in folds for r in rows_of(f["per_slice"])]
        out[cfg_dir.name] = {
            "folds": len(folds),
            "of": folds[0]["folds"],
            "stats": stats,
            "bootstrap": bootstrap_ci(rows),
            "train_minutes_mean": float(np.mean(minutes)),
            "slices": len(rows),
            "subtype_auc": _subtype_auc(folds),
        }
        # inference-time ablations stored in every fold: same models, other settings
        alts = set.intersection(*(set(f["metrics"].get("alternatives", {})) for f in folds))
        for alt in sorted(alts):
            avals = [fold_values(f["metrics"]["alternatives"][alt]) for f in folds]
            out[f"{cfg_dir.name} ({alt.replace('_', ' ')})"] = {
                **out[cfg_dir.name],
                "stats": mean_sd(avals),
                "bootstrap": None,
            }
    return out


def _subtype_auc(folds: list[dict[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Per head: mean and sd of the per-fold slice AUC over the folds where it is defined
    (a fold without, say, intraventricular slices has no AUC for it)."""
    out = {}
    for head in folds[0]["metrics"].get("subtype_auc", {}):
        xs = [f["metrics"]["subtype_auc"][head] for f in folds if f["metrics"]["subtype_auc"].get(head) is not None]
        out[head] = {**stat(xs), "folds": len(xs)}
    return out


def markdown(summary: dict[str, dict[str, Any]]) -> str:
    """The CV table: mean ± sd over folds per configuration."""

    head = (
        "| configuration | folds | slice recall | slice precision | Dice (global) | IoU (global) | scan sensitivity | "
        "scan specificity | training min/fold |"
    )
    lines = [head, "|" + "---|" * 9]
    for name, s in summary.items():
        st = s["stats"]
        lines.append(
            f"| {name} | {s['folds']}/{s['of']} | "
            + " | ".join(
                fmt_stat(st[k])
                for k in ("recall", "precision", "dice_global", "iou_global", "scan_sensitivity", "scan_specificity")
            )
            + f" | {s['train_minutes_mean']:.1f} |"
        )
    keys = ("recall", "precision", "dice_global", "iou_global", "scan_sensitivity", "scan_specificity")
    boot = {n: s["bootstrap"] for n, s in summary.items() if s.get("bootstrap")}
    if boot:
        lines += [
            "",
            "95% bootstrap intervals: the held-out predictions of all folds pooled (each patient predicted once, by "
            "the fold that did not train on it), patients resampled with replacement:",
            "",
            "| configuration | patients | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
            "|" + "---|" * (len(keys) + 2),
        ]
        for name, b in boot.items():
            cells = [
                "n/a" if b[k]["estimate"] is None else f"{b[k]['estimate']:.3f} [{b[k]['ci'][0]:.3f}, {b[k]['ci'][1]:.3f}]"
                for k in keys
            ]
            lines.append(f"| {name} | {b['patients']} | " + " | ".join(cells) + " |")
    with_auc = {n: s["subtype_auc"] for n, s in summary.items() if s.get("subtype_auc") and s.get("bootstrap")}
    if with_auc:
        heads = list(next(iter(with_auc.values())))
        lines += [
            "",
            "Per-slice ROC AUC of the classifier's subtype and fracture heads (mean ± sd over the folds where the "
            "held-out patients have both classes; that number of folds in brackets):",
            "",
            "| configuration | " + " | ".join(heads) + " |",
            "|" + "---|" * (len(heads) + 1),
        ]
        for name, auc in with_auc.items():
            cells = ["n/a" if auc[h]["mean"] is None else f"{fmt_stat(auc[h])} ({auc[h]['folds']})" for h in heads]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def policy_table(results_dir: Path, policies: tuple[str, ...] | None = None) -> str:
    """Operating-point policies compared on the held-out folds without retraining: each fold
    picks its point on its inner validation grid; the table reports the held-out metrics
    at that point (mean ± sd over folds). Needs folds written with ``operating_grid``."""
    from ichseg.evaluate.operating_point import POLICIES, select_row

    policies = policies or POLICIES
    keys = ("recall", "precision", "dice", "iou", "scan_sensitivity", "scan_specificity")
    lines = [
        "| configuration | policy | folds | slice recall | slice precision | Dice (global) | IoU (global) | scan sensitivity | "
        "scan specificity | chosen (threshold, min area) per fold |",
        "|" + "---|" * 10,
    ]
    for cfg_dir in sorted(p for p in Path(results_dir).iterdir() if p.is_dir() and not is_ensemble_dir(p)):
        folds = load_folds(cfg_dir)
        folds = [f for f in folds if "operating_grid" in f]
        if not folds:
            continue
        for policy in policies:
            vals, chosen = [], []
            for f in folds:
                pick = select_row(rows_of(f["operating_grid"]["inner_val"]), policy)
                held = next(
                    r
                    for r in rows_of(f["operating_grid"]["held_out"])
                    if r["mask_threshold"] == pick["mask_threshold"] and r["min_area_px"] == pick["min_area_px"]
                )
                vals.append(held)
                chosen.append(f"({pick['mask_threshold']:g}, {pick['min_area_px']})")
            cells = [fmt_stat(stat([v[k] for v in vals if v[k] is not None])) for k in keys]
            lines.append(f"| {cfg_dir.name} | {policy} | {len(folds)} | " + " | ".join(cells) + f" | {' '.join(chosen)} |")
    return "\n".join(lines) + "\n"
