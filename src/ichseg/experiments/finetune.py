"""``ichseg finetune``: adapt a model bundle to a site's own labelled scans.

A hospital whose scanner the model has not seen labels a few dozen of its own studies
(any layout :mod:`ichseg.data.datasets` reads). Its patients are split (stratified, by
seed) into a fine-tuning part and a held-out part; every U-Net of the bundle (each fold
member of an ensemble) continues training from its weights on the fine-tuning part for a
fixed short schedule at a lower learning rate; nothing is selected on the held-out
patients, which are scored before and after with the same pipeline and operating point.
The result is a bundle like any other; its ``pipeline.json`` and ``unet.json`` record the
base model (path and weights checksum), the data checksum, the split and the schedule.

**Rehearsal** (``rehearse=``, e.g. the public CT-ICH data the model was trained on): a few
dozen patients fine-tuned on alone pull the networks towards that site's handful of bleeds
and away from the shapes the base model learned, which shows as outlines that shrink even
where false alarms go away (measured: ``ichseg.experiments.finetune_check``). Mixing the
base data into every epoch (a random ``rehearsal_ratio`` × as many of its slices as the
site has, positives kept in proportion) keeps what the model knew while it adapts to the
new scanner; the site's slices are all used.

**Batch-norm statistics only** (``adapt="batchnorm"``, for experiments, not offered by the
CLI): no weight is trained; each member's batch-norm running statistics are re-estimated on
the site's fine-tuning slices (:mod:`ichseg.train.bn_adapt`), labels unused. Measured on the
shipped network it wrecks the outlines (Dice 0.69 → 0.13 on the simulated scanner,
docs/RESULTS.md): its statistics were learnt on blood-centred training crops, which whole
site slices do not resemble, so the site's own statistics are not the ones it needs.

The operating point is the base bundle's: a few dozen patients are too few to choose one
on without tuning to them. With ``rechoose_threshold`` one setting of it, the mask
threshold, is chosen again after fine-tuning on the fine-tuning patients' slices by the base
bundle's policy (:mod:`ichseg.evaluate.rechoose`); the held-out patients are scored at the
re-chosen point and, for comparison, at the base one (``after_base_point``).

Exported ONNX/OpenVINO graphs and the bf16 check are not carried over (they hold or
describe the old weights); ``ichseg export --onnx`` and ``ichseg check-precision`` make
new ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.config import RunConfig, TrainConfig, from_dict, load_json, to_dict
from ichseg.data.splits import select
from ichseg.files import atomic_write_text, sha256_file
from ichseg.train.loop import Arrays

log = logging.getLogger(__name__)

GRAPH_SUFFIXES = (".onnx", ".xml", ".bin")
# what describes the old weights: the graphs' sidecars and the bf16 check (ichseg check-precision)
STALE_FILES = ("precision.json",)


@dataclass(frozen=True)
class FinetuneConfig:
    """The fine-tuning schedule: short, fixed, gentle (10× below a training's rate)."""

    epochs: int = 4
    samples_per_epoch: int = 256
    learning_rate: float = 1e-4
    held_out_fraction: float = 0.3
    seed: int = 0
    precision: str = "auto"
    rehearsal_ratio: float = 1.0  # rehearsal slices per site slice (with ``rehearse=``)
    # What moves: "weights" (the schedule above trains every weight), or "batchnorm" (only
    # the batch-norm statistics, re-estimated on the site's fine-tuning slices with no
    # label used and no weight trained: ichseg.train.bn_adapt)
    adapt: str = "weights"
    # With adapt="weights": keep every batch-norm layer's statistics (TrainConfig.freeze_batchnorm)
    freeze_batchnorm: bool = False
    # Choose the mask threshold again on the fine-tuning patients (module docstring)
    rechoose_threshold: bool = False


def _train_config(base: dict[str, Any] | None, ft: FinetuneConfig, member: int) -> TrainConfig:
    """The member's own training recipe (crops, augmentation, sampling) with the schedule
    replaced; a bundle without one gets the defaults."""
    cfg = from_dict(TrainConfig, base) if base else TrainConfig()
    return dataclasses.replace(
        cfg,
        epochs=ft.epochs,
        samples_per_epoch=ft.samples_per_epoch,
        learning_rate=ft.learning_rate,
        patience=10**6,
        seed=ft.seed + member,
        precision=ft.precision,
        freeze_batchnorm=ft.freeze_batchnorm,
        resume_every_steps=max(1, cfg.resume_every_steps),
    )


def concat_arrays(a: Arrays, b: Arrays) -> Arrays:
    """Two in-memory splits as one (same size, windows and heads)."""
    targets = None if a.targets is None or b.targets is None else np.concatenate([a.targets, b.targets])
    return Arrays(
        np.concatenate([a.images, b.images]), np.concatenate([a.masks, b.masks]), np.concatenate([a.labels, b.labels]), targets
    )


def rehearsal_subset(data: Arrays, n_slices: int, seed: int) -> Arrays:
    """A random ``n_slices`` of ``data`` (all of it when it has fewer), with its share of
    positive slices kept: a stratified draw, so rehearsal neither floods nor starves the
    sampler of bleeds."""
    n = len(data.labels)
    if n_slices >= n:
        return data
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(data.labels != 0), np.flatnonzero(data.labels == 0)
    k_pos = round(n_slices * len(pos) / n)
    keep = np.sort(np.concatenate([rng.choice(pos, k_pos, replace=False), rng.choice(neg, n_slices - k_pos, replace=False)]))
    return data.take(keep)


def claim_work(work: Path, run: dict[str, Any]) -> None:
    """Record what ``work``'s members are trained for, or refuse a work folder started for
    another run. Members resume from ``work/members/<k>``; without this check a rerun with
    another schedule, base model, data or split into the same ``--work`` silently reused the
    old members (a 16-epoch check once reported a 4-epoch run's networks)."""
    path = work / "finetune-run.json"
    body = json.loads(json.dumps(run))  # what JSON keeps (tuples as lists), for the comparison
    if path.exists():
        saved = load_json(path)
        if saved != body:
            changed = sorted(k for k in body.keys() | saved.keys() if body.get(k) != saved.get(k))
            raise ValueError(
                f"{path}: this work folder holds a fine-tuning started with another {', '.join(changed)}; "
                "give another --work or delete it"
            )
        return
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(body, indent=1) + "\n")


def held_out_scores(metrics: dict[str, Any]) -> dict[str, Any]:
    p = metrics
    return {
        "slice_recall": p["slice"]["recall"],
        "slice_precision": p["slice"]["precision"],
        "dice_global": p["pixel"]["dice_global"],
        "iou_global": p["pixel"].get("iou_global"),
        "scan_sensitivity": p["scan"]["sensitivity"],
        "scan_specificity": p["scan"]["specificity"],
    }


def finetune(
    model_dir: Path,
    data_dir: Path,
    out_dir: Path,
    ft: FinetuneConfig | None = None,
    *,
    work_dir: Path | None = None,
    skip_bad: bool = False,
    progress: bool = False,
    expected_size_px: int | None = 650,
    split: dict[str, list[str]] | None = None,
    rehearse: Path | None = None,
    rehearse_patients: list[str] | None = None,
    rehearse_cache: Path | None = None,
    cache_root: Path | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model_dir`` on ``data_dir`` into the bundle ``out_dir`` (see the module
    docstring); returns (and writes as ``out_dir/finetune.json``) the before/after scores.

    ``split`` ({"train": fine-tuning patients, "val": held-out patients}) replaces the
    seeded stratified split (a check that swaps the halves passes its own); ``rehearse``
    is a dataset whose slices are mixed into the fine-tuning set (module docstring), limited
    to ``rehearse_patients`` when given (a check keeps its held-out patients out of it) and
    preprocessed into ``rehearse_cache`` (default: inside the work folder); ``cache_root``
    is where the site's own slices are preprocessed (default: inside the work folder; runs
    on one site may share it)."""
    from ichseg.evaluate.report import ensure_caches, evaluate_records
    from ichseg.experiments.workflow import git_commit, hardware, load_arrays, prepare
    from ichseg.infer.pipeline import load_bundle
    from ichseg.models.weights import load_model, save_ensemble, save_model
    from ichseg.train.loop import train_model

    ft = ft or FinetuneConfig()
    if ft.adapt not in ("weights", "batchnorm"):  # before any preparation or evaluation is spent
        raise ValueError(f"adapt must be 'weights' or 'batchnorm', not {ft.adapt!r}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    work = Path(work_dir) if work_dir is not None else out_dir.parent / f".{out_dir.name}-work"
    base = load_bundle(model_dir)
    if ft.rechoose_threshold and base.classifier is not None:
        raise ValueError(f"{model_dir}: re-choosing the mask threshold needs a bundle whose U-Net has the slice heads")
    module, ucfg, umeta = load_model(model_dir / "unet")
    members = list(module.members) if hasattr(module, "members") else [module]
    # prepare() indexes the site and splits it by these two (split_patients, stratified)
    run = RunConfig(
        unet=ucfg,
        preprocess=base.preprocess,
        pipeline=base.pipeline,
        stages=("unet",),
        val_fraction=ft.held_out_fraction,
        split_seed=ft.seed,
    )
    prep = prepare(data_dir, work, run, skip_bad=skip_bad, progress=progress, expected_size_px=expected_size_px, split=split,
                   cache_root=cache_root)  # fmt: skip
    split = prep.split
    if not split["val"] or not split["train"]:
        raise ValueError(f"{data_dir}: too few patients to hold some out ({len(split['train']) + len(split['val'])})")
    held = ensure_caches(base, select(prep.records, split["val"]), prep.cache_root, skip_bad=skip_bad)
    t0 = time.perf_counter()
    before_metrics = evaluate_records(base, held, prep.cache_root).metrics
    before = held_out_scores(before_metrics)
    log.info("before fine-tuning, on %d held-out patients: %s", len(split["val"]), before)
    size, windows, heads = ucfg.input_size_px, tuple(ucfg.windows), tuple(ucfg.heads or ("hemorrhage",))
    train = load_arrays(prep, "train", size, windows, ucfg.context_slices, heads, ucfg)
    empty = load_arrays(
        dataclasses.replace(prep, split={"train": split["train"], "val": []}),
        "val",
        size,
        windows,
        ucfg.context_slices,
        heads,
        ucfg,
    )  # fmt: skip  (nothing is selected on the held-out patients)
    if rehearse is not None and ft.adapt != "weights":
        log.warning("rehearsal is for training weights; with adapt=%s it is not used", ft.adapt)
    rehearsal: dict[str, Any] | None = None
    if rehearse is not None and ft.adapt == "weights":
        from ichseg.data.datasets import index_dataset

        everyone = sorted(
            {r.patient_id for r in index_dataset(rehearse, expected_size_px=expected_size_px, skip_bad=skip_bad).records}
        )
        rsplit = {"train": [p for p in everyone if rehearse_patients is None or p in set(rehearse_patients)], "val": []}
        if not rsplit["train"]:
            raise ValueError(f"{rehearse}: none of the rehearsal patients asked for is there")
        rprep = prepare(rehearse, work / "rehearsal", run, skip_bad=skip_bad, progress=progress,
                        expected_size_px=expected_size_px, split=rsplit, cache_root=rehearse_cache)  # fmt: skip
        rdata = load_arrays(rprep, "train", size, windows, ucfg.context_slices, heads, ucfg)
        rdata = rehearsal_subset(rdata, round(ft.rehearsal_ratio * len(train.labels)), ft.seed)
        rehearsal = {"data": str(Path(rehearse).resolve()), "data_checksum": rprep.data_checksum,
                     "slices": len(rdata.labels), "positive_slices": int((rdata.labels != 0).sum()),
                     "patients": rsplit["train"], "site_slices": len(train.labels)}  # fmt: skip
        log.info("rehearsal: %d slices of %s beside the site's %d", len(rdata.labels), rehearse, len(train.labels))
        train = concat_arrays(train, rdata)
    claim_work(work, {
        "base_unet_sha256": sha256_file(model_dir / "unet.safetensors"),
        "data_checksum": prep.data_checksum,
        "split": split,
        "finetune_config": to_dict(ft),
        "rehearsal": None if rehearsal is None else {k: rehearsal[k] for k in ("data_checksum", "patients", "slices")},
    })  # fmt: skip
    tuned, minutes = [], []
    for k, m in enumerate(members):
        if ft.adapt == "batchnorm":  # the site's slices only (no rehearsal is mixed in), no labels
            from ichseg.train.bn_adapt import adapt_batchnorm_stats

            t_bn = time.perf_counter()
            tuned.append(adapt_batchnorm_stats(m, train.images))
            minutes.append(round((time.perf_counter() - t_bn) / 60, 2))
            continue
        cfg = _train_config(umeta.get("train_config"), ft, k)
        r = train_model(ucfg, cfg, train, empty, work / "members" / str(k), resume=True, progress=progress,
                        init_state={n: t.float() for n, t in m.state_dict().items()})  # fmt: skip
        net, _, _ = load_model(work / "members" / str(k) / "last")
        tuned.append(net)
        minutes.append(round(r.seconds / 60, 2))
    provenance = {
        "finetuned_from": str(model_dir.resolve()),
        "base_unet_sha256": sha256_file(model_dir / "unet.safetensors"),
        "data": str(Path(data_dir).resolve()),
        "data_checksum": prep.data_checksum,
        "finetune_patients": split["train"],
        "held_out_patients": split["val"],
        "finetune_config": to_dict(ft),
        "rehearsal": rehearsal,
        "git_commit": git_commit(),
        "hardware": hardware(),
    }
    tmp = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in model_dir.iterdir():
        stale = f.name.startswith("unet.") or ".onnx" in f.name or f.suffix in GRAPH_SUFFIXES or f.name in STALE_FILES
        if f.is_file() and not stale:
            shutil.copy2(f, tmp / f.name)
    meta = {k: v for k, v in umeta.items() if k not in ("members", "storage", "config", "kind")} | provenance
    if len(tuned) > 1:
        save_ensemble(tuned, ucfg, tmp / "unet", meta, fp16=umeta.get("storage") == "float16")
    else:
        save_model(tuned[0], ucfg, tmp / "unet", meta)
    body = load_json(tmp / "pipeline.json")
    rechosen = None
    if ft.rechoose_threshold:
        rechosen = _rechoose(load_bundle(tmp), model_dir, select(prep.records, split["train"]), prep.cache_root, skip_bad)
        body["pipeline"] = to_dict(rechosen.pop("pipeline"))
        provenance["rechosen_threshold"] = rechosen
    body["finetune"] = provenance
    for key in ("onnx", "graphs", "exports"):
        body.pop(key, None)
    atomic_write_text(tmp / "pipeline.json", json.dumps(body, indent=1) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.replace(out_dir)
    alternatives = {"base point": base.pipeline} if rechosen is not None else None
    after_metrics = evaluate_records(load_bundle(out_dir), held, prep.cache_root, alternatives=alternatives).metrics
    after = held_out_scores(after_metrics)
    held_out = {"before": before, "after": after}
    if rechosen is not None:
        held_out["after_base_point"] = held_out_scores(after_metrics["alternatives"]["base point"])
    result = {
        **provenance,
        "held_out": held_out,
        "members": len(tuned),
        "train_minutes": minutes,
        "seconds": round(time.perf_counter() - t0, 1),
        "operating_point": (
            "the base bundle's (not re-tuned)" if rechosen is None
            else f"the base bundle's, mask threshold re-chosen on the fine-tuning patients: {rechosen['mask_threshold']}"
        ),
    }  # fmt: skip
    atomic_write_text(out_dir / "finetune.json", json.dumps(result, indent=1) + "\n")
    # the evaluations' full metrics (counts included) for callers that pool several runs
    return result | {"_metrics": {"before": before_metrics, "after": after_metrics}}


def _rechoose(bundle: Any, model_dir: Path, records: list, cache_root: Path, skip_bad: bool) -> dict[str, Any]:
    """The fine-tuned ``bundle``'s mask threshold chosen again on ``records`` (the
    fine-tuning patients) by the base bundle's policy; returns the new pipeline under
    "pipeline" and what was chosen, from what, for the run's JSON."""
    from ichseg.evaluate.oof import member_rows
    from ichseg.evaluate.oof_grid import DEFAULT_POLICY
    from ichseg.evaluate.rechoose import rechoose_mask_threshold
    from ichseg.evaluate.report import ensure_caches

    summary = Path(model_dir) / "cv_summary.json"
    policy = load_json(summary).get("policy", DEFAULT_POLICY) if summary.exists() else DEFAULT_POLICY
    recs = ensure_caches(bundle, records, cache_root, skip_bad=skip_bad)
    p = bundle.pipeline
    rows = member_rows(bundle.unet, bundle.unet_config, recs, cache_root, bundle.preprocess, bundle.heads,
                       eval_px=p.eval_size_px, without_intracranial=False, tta_flip=p.tta_flip)  # fmt: skip
    new, candidates = rechoose_mask_threshold(rows, p, policy)
    log.info("mask threshold re-chosen on %d fine-tuning slices: %s -> %s", len(rows), p.mask_threshold, new.mask_threshold)
    keep = ("mask_threshold", "head_mask_threshold", "score", "slice", "scan", "pixel", "fp_px_per_normal_patient")
    return {
        "pipeline": new,
        "policy": policy,
        "base_mask_threshold": p.mask_threshold,
        "mask_threshold": new.mask_threshold,
        "head_mask_threshold": new.head_mask_threshold,
        "chosen_on": f"{len({r['patient_id'] for r in rows})} fine-tuning patients, {len(rows)} slices (in sample)",
        "candidates": [{k: c.get(k) for k in keep} for c in candidates],
    }
