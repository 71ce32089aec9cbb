"""What every experiment shares: training one fold, and reading, tabulating and fingerprinting
the fold JSONs that cross-validation writes (``results/cv/<name>/fold<k>.json``).

These sit below the modules that use them (:mod:`.crossval` for two-stage configurations,
:mod:`.ensemble` and :mod:`.single` for fold ensembles, :mod:`.release`, :mod:`.stress`), so
that none of those needs another.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.config import RunConfig, from_dict, load_json, to_dict
from ichseg.data.splits import kfold_patients, select, split_patients
from ichseg.evaluate.bootstrap import HEADLINE
from ichseg.experiments.workflow import Prepared, index_stage, prepare, train_stage

log = logging.getLogger(__name__)


def train_fold(
    data_dir: Path,
    work_root: Path,
    config: RunConfig,
    name: str,
    fold: int,
    folds: int,
    *,
    seed: int = 0,
    progress: bool = True,
    skip_bad: bool = False,
    expected_size_px: int | None = 650,
    max_steps: int | None = None,
) -> tuple[Prepared, dict[str, list[str]]]:
    """Train one fold's networks into ``work_root/name/fold<k>/``; returns the prepared
    data (its split is the fold's training split) and the outer split.

    Always resumable: a fold killed mid-epoch continues from its last resumable state,
    a finished one returns at once. A work folder made with another configuration is an
    error rather than a silent mix of two runs.

    With ``config.cv_inner_validation`` early stopping and calibration use an inner
    validation split of the training patients; without it the networks train for a fixed
    length on every training patient and the operating point is chosen later on the
    pooled out-of-fold predictions (:mod:`ichseg.experiments.ensemble`)."""
    work_root = Path(work_root)
    records = index_stage(data_dir, work_root, skip_bad=skip_bad, expected_size_px=expected_size_px).records
    outer = kfold_patients(records, folds, seed)[fold]
    # The held-out fold is touched only by the final evaluation.
    if config.cv_inner_validation:
        inner = split_patients(select(records, outer["train"]), config.val_fraction, config.split_seed)
    else:
        inner = {"train": outer["train"], "val": []}
    work = work_root / name / f"fold{fold}"
    kw = {"skip_bad": skip_bad, "progress": progress, "expected_size_px": expected_size_px, "max_steps": max_steps}
    prep = train_split(data_dir, work_root, work, config, inner, hint="use another --name or --out", **kw)
    return prep, outer


def train_split(
    data_dir: Path,
    work_root: Path,
    work: Path,
    config: RunConfig,
    split: dict[str, list[str]],
    *,
    hint: str,
    skip_bad: bool = False,
    progress: bool = True,
    expected_size_px: int | None = 650,
    max_steps: int | None = None,
) -> Prepared:
    """Train (or resume) ``config``'s stages on ``split`` in ``work``, with the caches of
    ``work_root/cache``; a ``work`` started with another configuration is an error (``hint``
    says what to do) rather than a silent mix of two runs. A fold and the all-patient network
    of :mod:`.single` both train through here."""
    saved = work / "config.json"
    if saved.exists() and training_part(from_dict(RunConfig, load_json(saved))) != training_part(config):
        raise ValueError(f"{saved}: this run was started with another configuration ({hint})")
    prep = prepare(
        data_dir,
        work,
        config,
        skip_bad=skip_bad,
        progress=progress,
        expected_size_px=expected_size_px,
        split=split,
        cache_root=Path(work_root) / "cache",
    )
    for which in config.stages:
        train_stage(prep, which, resume=True, progress=progress, max_steps=max_steps)
    return prep


def training_part(config: RunConfig) -> dict[str, Any]:
    """What a fold's training depends on: everything but the inference-time ``pipeline``
    settings, which may change (and be re-evaluated) without retraining. Fields added to
    the config since a fold started take their defaults when its saved config is read."""
    return {k: v for k, v in to_dict(config).items() if k != "pipeline"}


def columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Per-slice rows stored column-wise (about a third of the size of a list of dicts)."""
    return {k: [r[k] for r in rows] for k in (rows[0] if rows else {})}


def rows_of(per_slice: dict[str, list[Any]] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-slice rows from either stored form (column-wise, or the older list of dicts)."""
    if isinstance(per_slice, list):
        return per_slice
    keys = list(per_slice)
    return [dict(zip(keys, vals, strict=True)) for vals in zip(*(per_slice[k] for k in keys), strict=True)]


def load_folds(cfg_dir: Path) -> list[dict[str, Any]]:
    """The fold JSONs of one configuration, in fold order."""
    return [json.loads(f.read_text()) for f in sorted(Path(cfg_dir).glob("fold*.json"))]


def is_ensemble_dir(cfg_dir: Path) -> bool:
    """True when ``cfg_dir`` holds ensemble-member folds (:mod:`ichseg.experiments.ensemble`), whose
    operating point is chosen on the pooled folds rather than inside each fold."""
    first = next(iter(sorted(Path(cfg_dir).glob("fold*.json"))), None)
    return first is not None and '"protocol"' in first.read_text()[:4000]


def stat(xs: list[float]) -> dict[str, float | None]:
    """Mean and sample sd over folds (None where undefined)."""
    a = np.array(xs, float)
    return {"mean": float(a.mean()) if len(a) else None, "sd": float(a.std(ddof=1)) if len(a) > 1 else None}


def fold_values(m: dict[str, Any]) -> dict[str, float | None]:
    return {
        "recall": m["slice"]["recall"],
        "precision": m["slice"]["precision"],
        "specificity": m["slice"]["specificity"],
        "dice_global": m["pixel"]["dice_global"],
        "iou_global": m["pixel"]["iou_global"],
        "scan_sensitivity": m["scan"]["sensitivity"],
        "scan_specificity": m["scan"]["specificity"],
    }


def mean_sd(vals: list[dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    return {k: stat([v[k] for v in vals if v[k] is not None]) for k in HEADLINE}


def fmt_stat(s: dict[str, float | None]) -> str:
    if s["mean"] is None:
        return "n/a"
    return f"{s['mean']:.3f}" + (f" ± {s['sd']:.3f}" if s["sd"] is not None else "")


def member_dir(work_root: Path, name: str, fold: int) -> Path:
    """Where fold ``fold``'s member of configuration ``name`` trains."""
    return Path(work_root) / name / f"fold{fold}" / "train" / "unet"


def load_member_folds(cfg_dir: Path) -> list[dict[str, Any]]:
    """Fold JSONs of an ensemble configuration, in fold order (per-slice rows as dicts)."""
    out = []
    for f in sorted(Path(cfg_dir).glob("fold*.json")):
        body = json.loads(f.read_text())
        if "protocol" not in body:
            raise ValueError(f"{f}: not an ensemble-member fold (run `ichseg cv` with an ensemble configuration)")
        body["rows"] = rows_of(body.pop("per_slice"))
        out.append(body)
    return out


def patient_fingerprints(records) -> dict[str, str]:
    """Per patient, a SHA-256 over its brain-window images: identifies the same scan under
    any folder name, and tells apart different scans that share a patient number."""
    from ichseg.files import sha256_file, sha256_text

    by: dict[str, list[str]] = {}
    for r in sorted(records, key=lambda r: (r.patient_id, r.slice)):
        by.setdefault(r.patient_id, []).append(sha256_file(Path(r.image_path)))
    return {pid: sha256_text(";".join(shas)) for pid, shas in by.items()}
