"""The fold ensemble, nnU-Net's way: the K cross-validation members *are* the shipped model.

1. ``ichseg cv`` with a configuration whose ``cv_inner_validation`` is False trains each
   fold's member for a fixed length on all of the fold's training patients, then lets it
   predict its held-out patients: ``results/cv/<name>/fold<k>.json`` keeps per slice what
   any operating point needs (:mod:`ichseg.evaluate.oof`).
2. :func:`summarize_members` pools the out-of-fold slices of all patients, chooses the
   operating point there, and scores every fold at that one point (mean ± sd over folds,
   pooled bootstrap intervals, the patients that cost the most Dice, ablations).
3. :func:`ichseg.experiments.assemble.assemble` puts the K members into one bundle whose U-Net averages their
   probabilities, with that operating point: what ``predict`` and ``evaluate`` run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ichseg.config import RunConfig, to_dict
from ichseg.data.splits import select
from ichseg.experiments.folds import columns, fmt_stat, fold_values, load_member_folds, mean_sd, member_dir, train_fold
from ichseg.files import atomic_write_text

log = logging.getLogger(__name__)


def run_member_fold(
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
    """Train (or resume) fold ``fold``'s member, predict its held-out patients, write
    ``results_dir/name/fold<k>.json``."""
    from ichseg.evaluate.oof import member_rows, metrics_at
    from ichseg.experiments.workflow import hardware, training_summary
    from ichseg.models.weights import load_model

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
    unet, ucfg, meta = load_model(member_dir(work_root, name, fold) / "last")
    held_out = select(prep.records, outer["val"])
    p = config.pipeline
    rows = member_rows(
        unet, ucfg, held_out, prep.cache_root, config.preprocess, ucfg.heads, eval_px=p.eval_size_px, tta_flip=p.tta_flip
    )
    body: dict[str, Any] = {
        "name": name,
        "fold": fold,
        "folds": folds,
        "fold_seed": seed,
        "protocol": "ensemble member: fixed-length training on all training patients; operating point chosen on the "
        "pooled out-of-fold predictions of every fold (ichseg.experiments.ensemble.summarize_members)",
        "config": to_dict(config),
        "train_patients": prep.split["train"],
        "val_patients": outer["val"],
        "data_checksum": prep.data_checksum,
        "training": training_summary(prep.work_dir),
        "hardware": hardware(),
        "member_epoch": meta.get("epoch"),
        "metrics_at_config_point": metrics_at(
            rows, p.mask_threshold, p.min_area_px, p.head_threshold, True, p.verdict_rule, p.head_mask_threshold
        ),
        "per_slice": columns(rows),
    }
    out = Path(results_dir) / name / f"fold{fold}.json"
    atomic_write_text(out, json.dumps(body, separators=(",", ":")) + "\n")
    log.info("fold %d of %s -> %s", fold, name, out)
    return out


def summarize_members(cfg_dir: Path, policy: str | None = None, rule: str = "outlined", veto: bool = True) -> dict[str, Any]:
    """The cross-validated result of an ensemble configuration (see the module docstring).

    Returns the chosen point, per-fold metrics at it with mean ± sd, the pooled metrics
    with bootstrap intervals, the five patients that cost the most Dice, inference-time
    ablations at the same point and a policy comparison."""
    import numpy as np

    from ichseg.evaluate.bootstrap import bootstrap_ci
    from ichseg.evaluate.oof import (
        bootstrap_rows,
        metrics_at,
        patient_costs,
        point_rule,
        recall_by_group,
        screen_threshold,
        subtype_thresholds,
    )
    from ichseg.evaluate.oof_grid import DEFAULT_POLICY, POLICIES, choose, grid

    policy = policy or DEFAULT_POLICY
    folds = load_member_folds(cfg_dir)
    if not folds:
        raise FileNotFoundError(f"{cfg_dir}: no fold*.json")
    pooled = [r for f in folds for r in f["rows"]]
    points = grid(pooled, rule=rule, veto=veto)
    best = choose(points, policy)
    at = point_rule(best)
    t, a, h = at[:3]
    no_veto = choose([p for p in points if p.get("head_veto_below") is None], policy) if veto else best
    fused = choose(grid(pooled, rule="fused"), policy) if rule != "fused" else best

    def per_fold(fn) -> dict[str, Any]:
        vals = [fold_values(fn(f["rows"])) for f in folds]
        return {"per_fold": vals, "stats": mean_sd(vals)}

    ablations = {
        "shipped rule": per_fold(lambda rows: metrics_at(rows, *at)),
        "no intracranial mask": per_fold(lambda rows: metrics_at(rows, t, a, h, False, *at[4:])),
        "mask only (no head)": per_fold(lambda rows: metrics_at(rows, t, a, None)),
        "untuned point (0.5, 20 px, mask only)": per_fold(lambda rows: metrics_at(rows, 0.5, 20, None)),
    }
    if veto and best.get("head_veto_below") is not None:  # the same policy without the head's veto
        name_no_veto = f"no head veto {tuple(point_rule(no_veto)[:3])}"
        ablations[name_no_veto] = per_fold(lambda rows: metrics_at(rows, *point_rule(no_veto)))
    if rule != "fused":  # the older rule, at its own best point: a head alone may call a slice
        ablations[f"fused verdict {tuple(point_rule(fused)[:3])}"] = per_fold(lambda rows: metrics_at(rows, *point_rule(fused)))
    policies = {}
    for pol in POLICIES:
        p = choose(points, pol)
        policies[pol] = {
            "point": [
                p["mask_threshold"],
                p["min_area_px"],
                p["head_threshold"],
                p.get("head_mask_threshold"),
                p.get("head_veto_below"),
                p.get("head_veto_min_area_px"),
            ],
            "pooled": fold_values(p),
            "fp_px_per_normal_patient": p["fp_px_per_normal_patient"],
        }
    minutes = [sum(t["seconds"] for t in f["training"].values()) / 60 for f in folds]
    return {
        "name": Path(cfg_dir).name,
        "folds": len(folds),
        "of": folds[0]["folds"],
        "policy": policy,
        "operating_point": {
            "mask_threshold": t,
            "min_area_px": a,
            "head_threshold": h,
            "verdict_rule": at[4],
            "head_mask_threshold": at[5],
            "head_veto_below": at[6],
            "head_veto_min_area_px": at[7],
            "screen_threshold": screen_threshold(pooled),
        },
        "pooled": {k: best[k] for k in ("slice", "scan", "pixel", "fp_px_per_normal_patient", "normal_patients")},
        "bootstrap": bootstrap_ci(bootstrap_rows(pooled, best)),
        "ablations": ablations,
        "policies": policies,
        "worst_patients": patient_costs(pooled, best)[:5],
        "by_group": recall_by_group(pooled, best),
        "train_minutes": {"mean": float(np.mean(minutes)), "per_fold": minutes},
        "slices": len(pooled),
        "patients": len({r["patient_id"] for r in pooled}),
        "subtype_auc": _pooled_auc(pooled),
        "subtype_thresholds": subtype_thresholds(pooled),
    }


def _pooled_auc(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per head, the slice ROC AUC over the pooled out-of-fold slices."""
    import numpy as np

    from ichseg.data.ctich import SUBTYPES

    if not rows or not rows[0]["heads"]:
        return {}
    from ichseg.evaluate.report import roc_auc

    index_flags = {h: np.array([r["flags"].get(h, 0) for r in rows]) for h in (*SUBTYPES, "fracture")}
    out: dict[str, float | None] = {
        "hemorrhage": roc_auc(np.array([r["heads"]["hemorrhage"] for r in rows]), np.array([r["hemorrhage"] for r in rows]))
    }
    for h, truth in index_flags.items():
        if h in rows[0]["heads"] and truth.any():
            out[h] = roc_auc(np.array([r["heads"][h] for r in rows]), truth)
    return out


def _veto_text(op: dict[str, Any]) -> str:
    if op.get("head_veto_below") is None:
        return "none"
    return f"blobs under {op['head_veto_min_area_px']} px need a head of at least {op['head_veto_below']}"


def markdown(summary: dict[str, Any]) -> str:
    """The tables of one ensemble configuration for RESULTS.md."""

    keys = ("recall", "precision", "dice_global", "iou_global", "scan_sensitivity", "scan_specificity")
    op = summary["operating_point"]
    lines = [
        f"Operating point chosen on the pooled out-of-fold slices ({summary['slices']} slices, {summary['patients']} "
        f"patients) by policy `{summary['policy']}`: mask threshold {op['mask_threshold']}, minimum blob "
        f"{op['min_area_px']} px at 512×512, head threshold {op['head_threshold']}, verdict rule "
        f"`{op.get('verdict_rule', 'fused')}` (mask threshold {op.get('head_mask_threshold')} on slices the head flags), "
        f"head's veto {_veto_text(op)}; "
        "screening threshold "
        f"{op['screen_threshold']} (the highest that sends ≥ 99.5% of out-of-fold slices with blood to the whole ensemble; "
        "None: no threshold does, every member runs on every slice).",
        "",
        "| rule (same members, same folds) | folds | slice recall | slice precision | Dice (global) | IoU (global) | "
        "scan sensitivity | scan specificity |",
        "|" + "---|" * 8,
    ]
    for name, a in summary["ablations"].items():
        st = a["stats"]
        lines.append(f"| {name} | {summary['folds']}/{summary['of']} | " + " | ".join(fmt_stat(st[k]) for k in keys) + " |")
    b = summary["bootstrap"]
    lines += [
        "",
        f"Pooled over all {b['patients']} patients with 95% patient-bootstrap intervals ({b['replicates']} resamples): "
        + "; ".join(
            f"{k.replace('_', ' ')} {b[k]['estimate']:.3f} [{b[k]['ci'][0]:.3f}, {b[k]['ci'][1]:.3f}]"
            for k in keys
            if b[k]["estimate"] is not None and b[k]["ci"]
        )
        + f"; false-positive pixels per normal patient {summary['pooled']['fp_px_per_normal_patient']:.0f}.",
        "",
        "The five patients that cost the most pooled Dice (pixels at 512×512):",
        "",
        "| patient | slices with blood / called | true px | predicted px | false-positive px | false-negative px | "
        "Dice | pooled Dice if perfect |",
        "|" + "---|" * 8,
    ]
    for p in summary["worst_patients"]:
        d = "n/a" if p["dice"] is None else f"{p['dice']:.3f}"
        lines.append(
            f"| {p['patient_id']} | {p['slices_with_blood']} / {p['called_slices']} | {p['true_px']:,} | {p['predicted_px']:,} | "
            f"{p['false_positive_px']:,} | {p['false_negative_px']:,} | {d} | +{p['dice_cost']:.3f} |"
        )
    if "by_group" in summary:
        lines += [
            "",
            "Slice recall and Dice at the shipped point by subtype (slices flagged with it) and by the patient's total "
            "bleed volume, pooled out-of-fold:",
            "",
            "| group | slices with blood | patients | found | slice recall | Dice |",
            "|---|---|---|---|---|---|",
        ]
        for kind in ("subtype", "size"):
            for g, v in summary["by_group"][kind].items():
                d = "n/a" if v["dice"] is None else f"{v['dice']:.3f}"
                lines.append(f"| {g} | {v['slices']} | {v['patients']} | {v['found']} | {v['recall']:.3f} | {d} |")
    lines += [
        "",
        "| policy | point (threshold, min px, head, head-flagged threshold, veto head, veto px) | pooled recall | "
        "precision | Dice | IoU | "
        "scan sens. | scan spec. |",
    ]
    lines.append("|" + "---|" * 8)
    for pol, v in summary["policies"].items():
        pv = v["pooled"]
        lines.append(
            f"| {pol} | {tuple(v['point'])} | " + " | ".join("n/a" if pv[k] is None else f"{pv[k]:.3f}" for k in keys) + " |"
        )
    return "\n".join(lines) + "\n"
