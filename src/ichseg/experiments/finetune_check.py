"""Does ``ichseg finetune`` recover what a new scanner costs? A site made from CT-ICH patients.

``python -m ichseg.experiments.finetune_check --data ../shared/ct-ich --work runs/finetune
--results results/finetune`` exports ``--patients`` development patients as an nnU-Net
folder in HU and passes every volume through a "new scanner" (:func:`new_scanner_hu`: a
contrast stretch about brain grey, a sharper kernel and more quantum noise: the stress
test's harmful perturbations, in HU). ``ichseg finetune`` adapts the model on part of that
site and scores its held-out patients before and after. The same held-out patients are
also scored by the base model on their original, unperturbed JPGs: what the new scanner
cost is that score minus "before", and what fine-tuning recovered is "after" minus "before".

The shipped model was trained on all 66 development patients, so every absolute figure
here is on patients its members saw (the clean one most of all); the comparison that this
measures is the cost and the recovery, on the same patients, by the same pipeline.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.files import atomic_write_text

log = logging.getLogger(__name__)

STRETCH = 1.3  # the stress test's strong contrast (×1.3 about brain grey)
ABOUT_HU = 40.0  # brain-window grey 128
SHARP_AMOUNT = 1.0  # unsharp mask, sigma 1 px
NOISE_HU = 6.0  # Gaussian, about twice CT-ICH's brain noise


def new_scanner_hu(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(slices, rows, columns) HU as another scanner would show them (module docstring)."""
    import cv2

    out = ABOUT_HU + STRETCH * (hu.astype(np.float32) - ABOUT_HU)
    for k in range(len(out)):
        blur = cv2.GaussianBlur(out[k], (0, 0), 1.0)
        out[k] = out[k] + SHARP_AMOUNT * (out[k] - blur)
    out += rng.normal(0.0, NOISE_HU, out.shape).astype(np.float32)
    return np.clip(out, -1024, 3071)


def make_site(data: Path, site: Path, patients: list[str], seed: int = 0) -> Path:
    """The perturbed nnU-Net folder of ``patients`` (kept if already made)."""
    import nibabel as nib

    from ichseg.data.export_nnunet import export_nnunet

    if (site / "dataset.json").exists() and (site / "perturbed.json").exists():
        return site
    export_nnunet(data, site, patients)
    rng = np.random.default_rng(seed)
    for f in sorted((site / "imagesTr").glob("*_0000.nii.gz")):
        img = nib.load(str(f))
        hu = np.asarray(img.get_fdata(dtype=np.float32)).transpose(2, 1, 0)
        out = new_scanner_hu(hu, rng).transpose(2, 1, 0)
        hdr = img.header.copy()
        hdr.set_data_dtype(np.int16)
        new = nib.Nifti1Image(np.round(out).astype(np.int16), img.affine, hdr)
        new.header.set_slope_inter(1.0, 0.0)
        tmp = f.with_name(f".{f.name}.tmp.nii.gz")
        nib.save(new, str(tmp))
        tmp.replace(f)
    how = {"stretch": STRETCH, "about_hu": ABOUT_HU, "sharp_amount": SHARP_AMOUNT, "noise_hu": NOISE_HU, "seed": seed}
    atomic_write_text(site / "perturbed.json", json.dumps(how, indent=1) + "\n")
    return site


def pooled_scores(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`held_out_scores` of several evaluations' metrics, from their summed counts
    (slices, scans, pixels): the halves of a swap scored as one set of patients."""

    def _ratio(num: float, den: float) -> float | None:
        return num / den if den else None

    def total(section: str, key: str) -> int:
        return sum(int(m[section][key]) for m in parts)

    sl = {k: total("slice", k) for k in ("tp", "fp", "fn", "tn")}
    sc = {k: total("scan", k) for k in ("tp", "fp", "fn", "tn")}
    inter, pred, true = (total("pixel", k) for k in ("pixels_intersection", "pixels_predicted", "pixels_true"))
    return {
        "slice_recall": _ratio(sl["tp"], sl["tp"] + sl["fn"]),
        "slice_precision": _ratio(sl["tp"], sl["tp"] + sl["fp"]),
        "dice_global": _ratio(2 * inter, pred + true),
        "iou_global": _ratio(inter, pred + true - inter),
        "scan_sensitivity": _ratio(sc["tp"], sc["tp"] + sc["fn"]),
        "scan_specificity": _ratio(sc["tn"], sc["tn"] + sc["fp"]),
    }


VARIANTS = ("plain", "rehearsal", "batchnorm", "frozen-bn", "rehearsal-frozen-bn")
RECHOSEN = "-rechosen"  # suffix of a weight-training variant: its mask threshold re-chosen after


def _variant(ft: Any, v: str) -> Any:
    """The fine-tuning schedule of variant ``v`` (see :func:`run`)."""
    core = v.removesuffix(RECHOSEN)
    if core not in VARIANTS or (core != v and core == "batchnorm"):
        raise ValueError(f"unknown variant {v!r}: one of {', '.join(VARIANTS)}, the last four also with {RECHOSEN}")
    if core == "batchnorm":
        return dataclasses.replace(ft, adapt="batchnorm")
    return dataclasses.replace(ft, freeze_batchnorm=core.endswith("frozen-bn"), rechoose_threshold=core != v)


def _score_turns(
    model: Path, records: list, turns: list[dict[str, list[str]]], outside: list[str], site: Path, data: Path,
    work: Path, ft: Any, variants: tuple[str, ...], parts: dict[str, list[dict[str, Any]]], runs: dict[str, Any],
    tag: str = "",
) -> None:  # fmt: skip
    """Fine-tune ``model`` on each turn's half of ``site`` and score the other half, adding
    the evaluations' metrics to ``parts`` (pooled later) and what ran to ``runs``."""
    from ichseg.data.splits import select
    from ichseg.evaluate.report import ensure_caches, evaluate_records
    from ichseg.experiments.finetune import finetune
    from ichseg.infer.pipeline import load_bundle

    base = load_bundle(model)
    for t, split in enumerate(turns):
        clean = ensure_caches(base, select(records, split["val"]), work / "clean-cache")
        parts["clean_jpg_base_model"].append(evaluate_records(base, clean, work / "clean-cache").metrics)
        for v in variants:
            kw = (
                {"rehearse": data, "rehearse_patients": outside, "rehearse_cache": work / "clean-cache"}
                if v.startswith("rehearsal")
                else {}
            )
            ftv = _variant(ft, v)
            r = finetune(model, site, work / f"model-{v}-{tag}{t}", ftv, work_dir=work / f"finetune-work-{v}-{tag}{t}",
                         split=split, cache_root=work / "site-cache", **kw)  # fmt: skip
            name = f"{v}-{tag}{t}"
            runs[name] = {k: r[k] for k in ("finetune_patients", "held_out_patients", "train_minutes", "rehearsal")}
            runs[name]["adapt"] = ftv.adapt  # what moved: the weights, or only the batch-norm statistics
            runs[name]["freeze_batchnorm"] = ftv.freeze_batchnorm
            metrics = r.pop("_metrics")
            if v == variants[0]:
                parts["before"].append(metrics["before"])
            parts.setdefault(f"after_{v}", []).append(metrics["after"])
            if ftv.rechoose_threshold:  # the same networks at the base point: what the re-choice alone did
                chosen = r["rechosen_threshold"]
                runs[name]["mask_threshold"] = {"base": chosen["base_mask_threshold"], "rechosen": chosen["mask_threshold"]}
                parts.setdefault(f"after_{v}_base_point", []).append(metrics["after"]["alternatives"]["base point"])


def fold_bundle(template: Path, member: Path, out: Path) -> Path:
    """A bundle of one cross-validation member (``member``: its ``last`` checkpoint) with
    ``template``'s pipeline, preprocessing and operating point: a base model that never saw
    its fold's held-out patients. Graphs and the bf16 check of the template are left out."""
    import shutil

    from ichseg.experiments.finetune import GRAPH_SUFFIXES, STALE_FILES
    from ichseg.models.weights import load_model, save_model

    if (out / "unet.safetensors").exists():
        return out
    net, ucfg, meta = load_model(member / "last")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in Path(template).iterdir():
        stale = f.name.startswith("unet.") or ".onnx" in f.name or f.suffix in GRAPH_SUFFIXES or f.name in STALE_FILES
        if f.is_file() and not stale:
            shutil.copy2(f, tmp / f.name)
    save_model(net, ucfg, tmp / "unet", {k: v for k, v in meta.items() if k not in ("storage", "config", "kind")})
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


def run(
    data: Path,
    work: Path,
    results: Path,
    n_patients: int,
    model: Path | None = None,
    *,
    variants: tuple[str, ...] = ("plain", "rehearsal"),
    folds: tuple[int, ...] = (),
    cv_results: Path | None = None,
    cv_work: Path | None = None,
    **ft_kw: Any,
) -> dict[str, Any]:
    """Both halves of the site (seeded, stratified) take turns: fine-tune on one, score the
    other, so every site patient is scored once by a model that never saw it; each variant
    ("plain": the site alone, "rehearsal": the site plus the development patients outside
    the site, as CT-ICH JPGs; "batchnorm": no training, only the batch-norm statistics
    re-estimated on the site's fine-tuning half; "frozen-bn", "rehearsal-frozen-bn": the
    weights train with every batch-norm layer's statistics kept) is pooled over the turns.

    With ``folds`` (and ``cv_results``, ``cv_work``: a cross-validation's fold JSONs and
    members), each fold's member is the base model and its held-out patients are the site:
    the clean row is then a score on patients the base never saw, not an in-sample one
    (the shipped model trained on every development patient); rehearsal draws on the
    fold's own training patients. ``model`` is then the template bundle (operating point,
    preprocessing) the members are put into."""
    from ichseg.data.ctich import build_index
    from ichseg.data.splits import select, split_patients
    from ichseg.experiments.finetune import FinetuneConfig
    from ichseg.infer.shipped import shipped_model_dir

    model = Path(model) if model is not None else shipped_model_dir("full")
    records = build_index(data).records
    everyone = sorted({r.patient_id for r in records})
    ft = FinetuneConfig(**ft_kw)
    parts: dict[str, list[dict[str, Any]]] = {"clean_jpg_base_model": [], "before": []}
    runs: dict[str, Any] = {}
    if folds:
        if cv_results is None or cv_work is None:
            raise ValueError("folds need cv_results (the fold JSONs) and cv_work (the members)")
        fold_json = {f: json.loads((Path(cv_results) / f"fold{f}.json").read_text()) for f in folds}
        pick = sorted({p for f in folds for p in fold_json[f]["val_patients"]})
        site = make_site(data, work / "site", pick)
        halves_by_fold = {}
        for f in folds:
            fj = fold_json[f]
            base = fold_bundle(model, Path(cv_work) / fj["name"] / f"fold{f}" / "train" / "unet", work / f"base-fold{f}")
            halves = split_patients(select(records, fj["val_patients"]), 0.5, seed=0)
            halves_by_fold[f] = halves
            turns = [{"train": halves["train"], "val": halves["val"]}, {"train": halves["val"], "val": halves["train"]}]
            _score_turns(base, records, turns, list(fj["train_patients"]), site, data, work, ft, variants, parts, runs,
                         tag=f"fold{f}-")  # fmt: skip
        base_name = f"cross-validation members of {fold_json[folds[0]]['name']}, folds {', '.join(map(str, folds))}"
        site_info = {"patients": pick, "halves_by_fold": halves_by_fold}
    else:
        # the site: a stratified share of the development patients, cut into two stratified halves
        pick = split_patients(records, n_patients / len(everyone), seed=7)["val"]
        halves = split_patients(select(records, pick), 0.5, seed=0)
        turns = [{"train": halves["train"], "val": halves["val"]}, {"train": halves["val"], "val": halves["train"]}]
        outside = [p for p in everyone if p not in set(pick)]  # rehearsal never sees a site patient
        site = make_site(data, work / "site", pick)
        _score_turns(model, records, turns, outside, site, data, work, ft, variants, parts, runs)
        base_name = "the shipped model" if model == shipped_model_dir("full") else model.name  # no local paths
        site_info = {"patients": pick, "halves": halves}
    site_info["perturbation"] = json.loads((site / "perturbed.json").read_text())
    result = {
        "held_out": {k: pooled_scores(v) for k, v in parts.items()},
        "held_out_patients": sorted(pick),
        "turns": runs,
        "finetune_config": dataclasses.asdict(ft),
        "site": site_info,
        "base_model": base_name,
        "clean_row_in_sample": not folds,
    }
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results / "finetune_check.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(results / "finetune_check.md", markdown(result))
    return result


LABELS = {
    "clean_jpg_base_model": "base model, original JPGs",
    "before": "base model, new scanner",
    "after_plain": "fine-tuned on the site alone, new scanner",
    "after_rehearsal": "fine-tuned with rehearsal, new scanner",
    "after_batchnorm": "batch-norm statistics of the site, no weight trained, new scanner",
    "after_frozen-bn": "fine-tuned on the site alone, batch-norm statistics kept, new scanner",
    "after_rehearsal-frozen-bn": "fine-tuned with rehearsal, batch-norm statistics kept, new scanner",
}


def label(name: str) -> str:
    """The table's words for a pooled row (``after_<variant>[-rechosen][_base_point]``)."""
    if name in LABELS:
        return LABELS[name]
    core = name.removesuffix("_base_point").removesuffix(RECHOSEN)
    if core not in LABELS:
        return name
    text = LABELS[core].removesuffix(", new scanner")
    how = "the base point" if name.endswith("_base_point") else "mask threshold re-chosen on the fine-tuning half"
    return f"{text}, {how}, new scanner"


def markdown(r: dict[str, Any]) -> str:
    h = r["held_out"]
    keys = list(h["before"])
    n = len(r["held_out_patients"])
    lines = [f"| {n} site patients, each scored by a model that never saw it | " + " | ".join(keys) + " |",
             "|" + "---|" * (len(keys) + 1)]  # fmt: skip
    for name, v in h.items():
        lines.append(f"| {label(name)} | " + " | ".join("n/a" if v[k] is None else f"{v[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="CT-ICH JPG layout")
    p.add_argument("--work", type=Path, default=Path("runs/finetune"))
    p.add_argument("--results", type=Path, default=Path("results/finetune"))
    p.add_argument("--patients", type=int, default=36, help="how many development patients make the site")
    p.add_argument("--model", type=Path, default=None, help="base bundle (default: the shipped model)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--samples-per-epoch", type=int, default=256)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument(
        "--variants",
        default="plain,rehearsal",
        help="comma-separated: " + ", ".join(VARIANTS) + f" (all but batchnorm also with {RECHOSEN})",
    )
    p.add_argument(
        "--fold",
        type=int,
        action="append",
        default=[],
        help="base = this CV fold's member, site = its held-out patients (repeatable; needs --cv)",
    )
    p.add_argument("--cv", type=Path, default=None, help="the fold JSONs of --fold (e.g. results/cv/robust-384-lite)")
    p.add_argument("--cv-work", type=Path, default=Path("runs/cv"), help="the cv --out folder holding the members")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    variants = tuple(v for v in a.variants.split(",") if v)
    r = run(
        a.data,
        a.work,
        a.results,
        a.patients,
        a.model,
        variants=variants,
        folds=tuple(a.fold),
        cv_results=a.cv,
        cv_work=a.cv_work,
        epochs=a.epochs,
        samples_per_epoch=a.samples_per_epoch,
        learning_rate=a.learning_rate,
    )
    print(markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
