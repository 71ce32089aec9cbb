"""Evaluate a model bundle on indexed slices: metrics.json, a Markdown table beside the
paper's numbers, per-slice CSV and figures. Pixel metrics are always at 512×512."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.metrics import compute_roc_auc

from ichseg.config import ClassifierConfig, PipelineConfig, UNetConfig
from ichseg.credits import DATASET_CREDIT
from ichseg.data.cache import SliceCache
from ichseg.data.ctich import SUBTYPES, SliceRecord
from ichseg.data.normalize import intracranial_masks, normalize_for
from ichseg.evaluate import metrics as M
from ichseg.evaluate.bootstrap import bootstrap_ci
from ichseg.evaluate.definitions import definitions
from ichseg.evaluate.figures import plot_confusion, plot_examples
from ichseg.files import atomic_write_csv, atomic_write_text
from ichseg.infer.pipeline import (
    Bundle,
    classify,
    masks_from_probs,
    pipeline_verdict,
    segment,
    segment_bundle,
    segment_with_heads,
)
from ichseg.infer.postprocess import fuse_verdict, resize_mask_nearest

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    per_slice: list[dict[str, Any]]


def ensure_caches(
    bundle: Bundle, records: Sequence[SliceRecord], cache_root: Path, *, skip_bad: bool = False, progress: bool = False
) -> list[SliceRecord]:
    """Preprocess records at every size the bundle and the 512×512 evaluation need."""
    nets = [bundle.unet_config] + ([bundle.classifier_config] if bundle.classifier_config is not None else [])
    sizes = sorted({n.input_size_px for n in nets} | {bundle.pipeline.eval_size_px})
    recs = list(records)
    for s in sizes:
        recs = _cache(bundle, cache_root, s).build(recs, bundle.windows, skip_bad=skip_bad, progress=progress)
    return recs


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """ROC AUC (MONAI); None when the truth has only one class, where AUC is undefined."""
    truth = np.asarray(truth).astype(bool)
    if truth.all() or not truth.any():
        return None
    import torch

    return float(compute_roc_auc(torch.from_numpy(np.asarray(scores, np.float32)), torch.from_numpy(truth.astype(np.float32))))


def _cache(bundle: Bundle, root: Path, size: int) -> SliceCache:
    return SliceCache.at_size(root, bundle.preprocess, size)


def model_input(
    bundle: Bundle, cache_root: Path, cfg: UNetConfig | ClassifierConfig, records: Sequence[SliceRecord]
) -> np.ndarray:
    """Cached uint8 inputs for one stage, with its 2.5D neighbours (from ``records``),
    normalised per patient as the stage's config asks."""
    x = _cache(bundle, cache_root, cfg.input_size_px).load(records, cfg.windows, cfg.context_slices)[0]
    return normalize_for(cfg, x, [r.patient_id for r in records])


def evaluate_records(
    bundle: Bundle,
    records: Sequence[SliceRecord],
    cache_root: Path,
    *,
    chunk: int = 64,
    progress: bool = False,
    alternatives: dict[str, PipelineConfig] | None = None,
    operating_grid: bool = False,
) -> Evaluation:
    """Run both stages on every record and compute all variants' metrics.

    ``alternatives`` are other pipeline settings (operating point, TTA) scored on the same
    slices from the same models, under ``metrics["alternatives"][name]``: ablations that
    cost one more inference pass at most, not a retraining. ``operating_grid`` adds the
    pipeline's metrics at every (mask threshold, min area) of the tuning grid under
    ``metrics["operating_grid"]``, from the same probabilities."""
    from ichseg.evaluate.operating_point import ThresholdStats, concatenate_stats, grid_rows, threshold_stats

    grid_parts: list[ThresholdStats] = []
    alternatives = alternatives or {}
    alt_probs_needed = {a.tta_flip for a in alternatives.values()} - {bundle.pipeline.tta_flip}
    alt_acc = {k: M.PixelAccumulator() for k in alternatives}
    alt_area = {k: np.zeros(len(records), int) for k in alternatives}
    cfg = bundle.pipeline
    ev = cfg.eval_size_px
    unet_in = model_input(bundle, cache_root, bundle.unet_config, records)
    single = bundle.classifier is None  # the U-Net's heads give the slice probabilities
    ucfg = bundle.unet_config
    inside_small = intracranial_masks(unet_in, ucfg.windows, ucfg.context_slices) if cfg.intracranial else None
    if single:
        heads_prob = np.zeros((len(records), len(bundle.heads)), np.float32)
    else:
        assert bundle.classifier_config is not None
        heads_prob = classify(bundle.classifier, model_input(bundle, cache_root, bundle.classifier_config, records))
    cls_prob = heads_prob[:, 0]
    truth_slice = np.array([bool(r.hemorrhage) for r in records])
    acc_unet, acc_pipe = M.PixelAccumulator(), M.PixelAccumulator()
    areas = np.zeros(len(records), int)
    pmax = np.zeros(len(records), np.float32)
    dice_pipe = np.zeros(len(records))
    true_areas = np.zeros(len(records), int)
    inter_pipe = np.zeros(len(records), int)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), desc="evaluate", unit="slice")
    for i in range(0, len(records), chunk):
        part = records[i : i + chunk]
        _, truth = _cache(bundle, cache_root, ev).load(part, ())
        sl = slice(i, i + len(part))
        inside = None
        if inside_small is not None:
            inside = np.stack([resize_mask_nearest(m, (ev, ev)) for m in inside_small[sl]])
        probs, head_p, _ = segment_bundle(bundle, unet_in[sl], ev)
        if single:
            assert head_p is not None
            heads_prob[sl] = head_p
        head_sl = cls_prob[sl] if single else None  # the fused rule's head lowers the threshold under "outlined"
        masks = masks_from_probs(probs, cfg, inside=inside, head=head_sl)
        areas[sl] = masks.reshape(len(part), -1).sum(1)
        pmax[sl] = probs.reshape(len(part), -1).max(1)
        true_areas[sl] = truth.reshape(len(part), -1).sum(1)
        gated = _verdict(single, cls_prob[sl], areas[sl], cfg)
        pipe_masks = masks & gated[:, None, None]
        if operating_grid:
            grid_parts.append(threshold_stats([(probs, truth)]))
        other = {t: segment(bundle.unet, unet_in[sl], ev, tta_flip=t) for t in alt_probs_needed}
        for name, alt in alternatives.items():
            m = masks_from_probs(other.get(alt.tta_flip, probs), alt, inside=inside, head=head_sl)
            alt_area[name][sl] = m.reshape(len(part), -1).sum(1)
            alt_acc[name].add(m & _verdict(single, cls_prob[sl], alt_area[name][sl], alt)[:, None, None], truth)
        acc_unet.add(masks, truth)
        acc_pipe.add(pipe_masks, truth)
        dice_pipe[sl] = M.dice_per_slice(pipe_masks, truth)
        inter_pipe[sl] = (pipe_masks & truth).reshape(len(part), -1).sum(1)
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()
    seg_pos = areas > 0
    verdict = _verdict(single, cls_prob, areas, cfg)
    cls_verdict = cls_prob >= (cfg.head_threshold or 0.5) if single else cls_prob >= cfg.classifier_threshold
    auc = roc_auc(cls_prob, truth_slice)
    heads = list(bundle.heads)
    subtype_auc = {
        name: roc_auc(heads_prob[:, heads.index(name)], np.array([getattr(r, name) for r in records])) if name in heads else None
        for name in (*SUBTYPES, "fracture")
    }
    metrics: dict[str, Any] = {
        "slices": len(records),
        "patients": len({r.patient_id for r in records}),
        "slice": M.slice_metrics(verdict, truth_slice),
        "scan": M.scan_metrics([r.patient_id for r in records], verdict, truth_slice),
        "pixel": acc_pipe.result(),
        "variants": {
            "unet_only": {"slice": M.slice_metrics(seg_pos, truth_slice), "pixel": acc_unet.result()},
            "classifier": {"slice": M.slice_metrics(cls_verdict, truth_slice), "roc_auc": auc},
        },
        "subtype_auc": subtype_auc,
        "operating_point": dataclasses.asdict(cfg),
        "ensemble_members": bundle.members,
        "resolution": {
            "classifier_input_px": (bundle.classifier_config or bundle.unet_config).input_size_px,
            "unet_input_px": bundle.unet_config.input_size_px,
            "unet_base_filters": bundle.unet_config.base_filters,
            "metrics_px": ev,
        },
        "definitions": definitions(cfg, two_stage=not single, members=bundle.members),
        "paper": M.PAPER,
        "model": str(bundle.path),
        "dataset_credit": DATASET_CREDIT,
    }
    per_slice = [
        {
            "patient_id": r.patient_id,
            "slice": r.slice,
            "hemorrhage": int(truth_slice[k]),
            "classifier_probability": round(float(cls_prob[k]), 5),
            "unet_max_probability": round(float(pmax[k]), 5),
            "predicted_area_px_512": int(areas[k]),
            "true_area_px_512": int(true_areas[k]),
            "verdict": int(verdict[k]),
            "dice_512": round(float(dice_pipe[k]), 5),
            "pipeline_area_px_512": int(areas[k]) if verdict[k] else 0,
            "pipeline_intersection_px_512": int(inter_pipe[k]),
        }
        for k, r in enumerate(records)
    ]
    metrics["bootstrap"] = bootstrap_ci(per_slice)
    if grid_parts:
        metrics["operating_grid"] = grid_rows(
            concatenate_stats(grid_parts),
            cls_prob >= cfg.classifier_threshold,
            truth_slice,
            patient_ids=[r.patient_id for r in records],
        )
    if alternatives:
        pids = [r.patient_id for r in records]
        metrics["alternatives"] = {}
        for name, alt in alternatives.items():
            v = _verdict(single, cls_prob, alt_area[name], alt)
            metrics["alternatives"][name] = {
                "operating_point": dataclasses.asdict(alt),
                "slice": M.slice_metrics(v, truth_slice),
                "scan": M.scan_metrics(pids, v, truth_slice),
                "pixel": alt_acc[name].result(),
            }
    return Evaluation(metrics, per_slice)


def _verdict(single: bool, cls_prob: np.ndarray, areas: np.ndarray, cfg: PipelineConfig) -> np.ndarray:
    """Slice verdicts: fused mask-or-head for a single network, classifier-gated otherwise."""
    if single:
        return fuse_verdict(areas, cls_prob, cfg.head_threshold, cfg.verdict_rule)
    return pipeline_verdict(cls_prob, areas > 0, cfg)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown_table(metrics: dict[str, Any], title: str = "ichseg") -> str:
    """The paper's table with our measured column(s) beside it."""
    p = M.PAPER
    cols = [
        ("pipeline", metrics["slice"], metrics["pixel"]),
        ("U-Net only", metrics["variants"]["unet_only"]["slice"], metrics["variants"]["unet_only"]["pixel"]),
    ]
    head = "| metric | paper | " + " | ".join(f"{title}: {c[0]}" for c in cols) + " |"
    lines = [head, "|---|---|" + "---|" * len(cols)]
    rows = [
        ("slice recall", "recall", "slice"),
        ("slice precision", "precision", "slice"),
        ("slice specificity", "specificity", "slice"),
        ("Dice (global, 512×512)", "dice_global", "pixel"),
        ("IoU (global, 512×512)", "iou_global", "pixel"),
        ("Dice (mean over slices with blood)", "dice_mean_positive", "pixel"),
        ("TP", "tp", "slice"),
        ("TN", "tn", "slice"),
        ("FP", "fp", "slice"),
        ("FN", "fn", "slice"),
    ]
    paper_key = {"dice_global": "dice", "iou_global": "iou"}
    for label, key, level in rows:
        pv = p.get(paper_key.get(key, key))
        vals = [_fmt((c[1] if level == "slice" else c[2]).get(key)) for c in cols]
        lines.append(f"| {label} | {_fmt(pv) if pv is not None else '—'} | " + " | ".join(vals) + " |")
    lines.append(f"| slices evaluated | ~500 | {metrics['slices']} | {metrics['slices']} |")
    sc = metrics.get("scan")
    if sc:
        lines.append(
            f"\nScan level (a patient is positive if any slice is), pipeline: sensitivity {_fmt(sc['sensitivity'])}, "
            f"specificity {_fmt(sc['specificity'])} (TP {sc['tp']}, TN {sc['tn']}, FP {sc['fp']}, FN {sc['fn']} "
            f"of {metrics['patients']} patients)."
        )
    bs = metrics.get("bootstrap")
    if bs:
        parts = [
            f"{k} {_fmt(v['estimate'])} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]"
            for k, v in bs.items()
            if isinstance(v, dict) and v.get("ci")
        ]
        lines.append(
            f"\n95% bootstrap intervals (pipeline; {bs['replicates']} resamples of the {bs['patients']} patients): "
            + "; ".join(parts)
            + "."
        )
    return "\n".join(lines) + "\n"


def patients_line(rows: list[dict]) -> str:
    """One paragraph on the bleeding patients (patients.csv): how many were called, which
    were not, the five lowest Dice."""
    bleeding = [r for r in rows if r["slices_with_blood"]]
    if not bleeding:
        return ""
    missed = [r["patient_id"] for r in bleeding if not r["called"]]
    worst = ", ".join(f"{r['patient_id']} {r['dice']:.2f}" for r in bleeding[:5])
    return (
        f"\nBleeding patients called: {len(bleeding) - len(missed)} of {len(bleeding)}"
        + (f" (not called: {', '.join(missed)})" if missed else "")
        + f"; lowest patient Dice: {worst} (patients.csv).\n"
    )


def write_report(ev: Evaluation, out_dir: Path, title: str = "ichseg") -> None:
    """metrics.json, metrics.md, per_slice.csv and the confusion-matrix figure."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "metrics.json", json.dumps(ev.metrics, indent=2) + "\n")
    m = ev.metrics
    res = m["resolution"]
    context = (
        f"Classifier input {res['classifier_input_px']}×{res['classifier_input_px']}; U-Net input "
        f"{res['unet_input_px']}×{res['unet_input_px']} with {res['unet_base_filters']} base filters; "
        f"metrics at {res['metrics_px']}×{res['metrics_px']}.\n\n"
    )
    if "training" in m:
        context += (
            "Training: "
            + "; ".join(
                f"{k} {v['seconds'] / 60:.1f} min, {v['epochs_run']} epochs (best {v['best_epoch']}, validation "
                f"{v['val_score']} {v['best_val_score']})"
                for k, v in m["training"].items()
            )
            + ".\n\n"
        )
    if "hardware" in m:
        hw = m["hardware"]
        context += f"Hardware: {hw['cpu']}, {hw['logical_cores']} logical cores, torch {hw['torch']}, GPU: {hw['gpu']}.\n\n"
    patients = M.patient_table(ev.per_slice) if ev.per_slice else []
    md = (
        f"# Evaluation\n\n{m['slices']} slices from {m['patients']} patients ({m.get('evaluated_part', 'all')}).\n\n"
        + context
        + markdown_table(ev.metrics, title)
        + patients_line(patients)
        + "\n## Definitions\n\n"
        + "".join(f"- **{k}**: {v if isinstance(v, str) else json.dumps(v)}\n" for k, v in m["definitions"].items())
        + f"\n{DATASET_CREDIT}\n"
    )
    atomic_write_text(out_dir / "metrics.md", md)

    atomic_write_csv(out_dir / "per_slice.csv", ev.per_slice, None if ev.per_slice else ["patient_id"])
    atomic_write_csv(out_dir / "patients.csv", patients, None if patients else ["patient_id"])
    plot_confusion({k: ev.metrics["slice"][k] for k in ("tp", "tn", "fp", "fn")}, out_dir / "confusion_matrix.png")


def example_figure(bundle: Bundle, records: Sequence[SliceRecord], cache_root: Path, path: Path, title: str, n: int = 4) -> None:
    """(CT, truth, pipeline prediction) for ``n`` positive slices spread over the records."""
    pos = [r for r in records if r.hemorrhage]
    if not pos:
        pos = list(records)
    picks = [pos[int(k)] for k in np.linspace(0, len(pos) - 1, min(n, len(pos))).round()]
    ev = bundle.pipeline.eval_size_px
    ct, truth = _cache(bundle, cache_root, ev).load(picks, ("brain",))
    # neighbours come from the picked slices' whole scans
    scans = [r for r in records if r.patient_id in {p.patient_id for p in picks}]
    rows = [scans.index(p) for p in picks]
    x = model_input(bundle, cache_root, bundle.unet_config, scans)[rows]
    ucfg, cfg = bundle.unet_config, bundle.pipeline
    probs, head_p = segment_with_heads(bundle.unet, x, ev, tta_flip=cfg.tta_flip)
    inside = None
    if cfg.intracranial:
        inside = np.stack([resize_mask_nearest(m, (ev, ev)) for m in intracranial_masks(x, ucfg.windows, ucfg.context_slices)])
    masks = masks_from_probs(probs, cfg, inside=inside)
    if bundle.classifier is None:
        assert head_p is not None
        cls = head_p[:, 0]
    else:
        assert bundle.classifier_config is not None
        cls = classify(bundle.classifier, model_input(bundle, cache_root, bundle.classifier_config, scans)[rows])[:, 0]
    masks &= _verdict(bundle.classifier is None, cls, masks.reshape(len(picks), -1).sum(1), cfg)[:, None, None]
    dice = M.dice_per_slice(masks, truth)
    rows = [
        (ct[k, 0], truth[k], masks[k], f"patient {r.patient_id} slice {r.slice}\nDice {dice[k]:.2f}") for k, r in enumerate(picks)
    ]
    plot_examples(rows, path, title)
