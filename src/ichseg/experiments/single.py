"""One network for the price of one, with a cross-validated rule.

A fold ensemble's K members cost K networks per slice. The alternative shipped here is the
rule the cross-validation measured itself: *train one network of the configuration, for
its fixed length, on every patient available*. Each CV member is exactly that rule applied
to its fold's training patients, so the members' out-of-fold scores (pooled, and per fold)
are a held-out estimate of this network's rule, and its operating point is chosen on those
same pooled out-of-fold probabilities (the same single-network scale, unlike an ensemble's
averaged probabilities). What differs is only the number of training patients (all of them
against K-1 folds of them), which can only help.

The network trains into ``work_root/<name>/all/train/unet/`` (resumable, like a fold) and
reuses the CV's preprocessed caches under ``work_root/cache``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ichseg.config import RunConfig, from_dict
from ichseg.credits import DATASET_CREDIT
from ichseg.experiments.assemble import chosen_pipeline, commit, write_bundle_json
from ichseg.experiments.ensemble import summarize_members
from ichseg.experiments.folds import load_member_folds, train_split

log = logging.getLogger(__name__)


def single_dir(work_root: Path, name: str) -> Path:
    """Where configuration ``name``'s all-patient network trains."""
    return Path(work_root) / name / "all"


def release_single(
    data_dir: Path,
    work_root: Path,
    cfg_dir: Path,
    out_dir: Path,
    *,
    policy: str | None = None,
    progress: bool = True,
    skip_bad: bool = False,
    expected_size_px: int | None = 650,
    max_steps: int | None = None,
) -> Path:
    """Train (or resume) one network of ``cfg_dir``'s configuration on every patient of
    ``data_dir`` and write it as a bundle at the pooled out-of-fold operating point.

    The patients must be the ones the folds held out between them: a point chosen on other
    patients' out-of-fold rows would not describe this network."""
    from ichseg.experiments.workflow import index_stage, training_summary
    from ichseg.models.weights import load_model, save_model

    folds = load_member_folds(cfg_dir)
    if not folds:
        raise FileNotFoundError(f"{cfg_dir}: no fold*.json (run `ichseg cv` first)")
    if len(folds) < folds[0]["folds"]:
        log.warning(
            "%s: %d of %d folds: the operating point comes from part of the patients", cfg_dir, len(folds), folds[0]["folds"]
        )
    config = from_dict(RunConfig, folds[0]["config"])
    name = Path(cfg_dir).name
    work_root = Path(work_root)
    records = index_stage(data_dir, work_root, skip_bad=skip_bad, expected_size_px=expected_size_px).records
    everyone = sorted({r.patient_id for r in records})
    held_out = sorted({p for f in folds for p in f["val_patients"]})
    if len(folds) == folds[0]["folds"] and everyone != held_out:
        raise ValueError(f"{data_dir}: its patients are not the ones {cfg_dir}'s folds held out")
    work = single_dir(work_root, name)
    kw = {"skip_bad": skip_bad, "progress": progress, "expected_size_px": expected_size_px, "max_steps": max_steps}
    prep = train_split(data_dir, work_root, work, config, {"train": everyone, "val": []}, hint="use another --cv-work", **kw)
    model, ucfg, meta = load_model(work / "train" / "unet" / "last")
    summary = summarize_members(cfg_dir, policy)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    provenance: dict[str, Any] = {
        "git_commit": commit(),
        "data_checksum": prep.data_checksum,
        "epoch": meta.get("epoch"),
        "train_config": meta.get("train_config"),
        "train_hardware": meta.get("train_hardware"),
        "trained_on": "every patient of the development data (the rule its CV folds measured)",
        "dataset_credit": DATASET_CREDIT,
    }
    save_model(model, ucfg, out_dir / "unet", provenance)
    write_bundle_json(
        out_dir,
        config,
        chosen_pipeline(config, summary, screening=False),
        cfg_dir,
        summary,
        ensemble={"members": 1, "single": True, "cv_folds": [f["fold"] for f in folds]},
        patients=everyone,
        data_checksum=prep.data_checksum,
        training={"all": training_summary(work).get("unet", {})},
        data_dir=data_dir,
        expected_size_px=expected_size_px,
    )
    log.info("single network of %s (%d patients) -> %s", name, len(everyone), out_dir)
    return out_dir
