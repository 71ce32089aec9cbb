"""A fold ensemble's bundle: its K members (or one network, :mod:`.single`) with the operating
point chosen on the pooled out-of-fold rows of its cross-validation, in the folder that
``predict`` and ``evaluate`` load. :func:`recalibrate` chooses that point again without
touching the weights."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from ichseg.config import RunConfig, from_dict, save_json, to_dict
from ichseg.credits import DATASET_CREDIT
from ichseg.experiments.ensemble import summarize_members
from ichseg.experiments.folds import load_member_folds, member_dir
from ichseg.files import atomic_write_text

log = logging.getLogger(__name__)


def assemble(
    cfg_dir: Path,
    work_root: Path,
    out_dir: Path,
    *,
    data_dir: Path | None = None,
    expected_size_px: int | None = 650,
    fp16: bool = True,
    policy: str | None = None,
) -> Path:
    """One bundle from the K members of ``cfg_dir``'s folds (weights from
    ``work_root/<name>/fold<k>/train/unet/last``) with the pooled out-of-fold operating
    point; returns ``out_dir``. With ``data_dir`` the training patients' image
    fingerprints are recorded, so ``evaluate`` can tell when it is shown them again."""
    from ichseg.models.weights import load_model, save_ensemble

    summary = summarize_members(cfg_dir, policy)
    folds = load_member_folds(cfg_dir)
    config = from_dict(RunConfig, folds[0]["config"])
    members, metas = [], []
    for f in folds:
        m, ucfg, meta = load_model(member_dir(work_root, summary["name"], f["fold"]) / "last")
        members.append(m)
        metas.append({"fold": f["fold"], "epoch": meta.get("epoch"), "train_patients": f["train_patients"]})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_ensemble(
        members,
        ucfg,
        out_dir / "unet",
        {
            "members_meta": metas,
            "git_commit": commit(),
            "data_checksum": folds[0]["data_checksum"],
            "train_config": meta.get("train_config"),
            "dataset_credit": DATASET_CREDIT,
        },
        fp16=fp16,
    )
    everyone = sorted({p for f in folds for p in f["val_patients"]})
    write_bundle_json(
        out_dir,
        config,
        chosen_pipeline(config, summary),
        cfg_dir,
        summary,
        ensemble={"members": len(members), "folds": [m["fold"] for m in metas], "fp16_storage": fp16},
        patients=everyone,
        data_checksum=folds[0]["data_checksum"],
        training={f"fold{f['fold']}": f["training"].get("unet", {}) for f in folds},
        data_dir=data_dir,
        expected_size_px=expected_size_px,
    )
    return out_dir


def write_bundle_json(
    out_dir: Path,
    config: RunConfig,
    pipeline: Any,
    cfg_dir: Path,
    summary: dict[str, Any],
    *,
    ensemble: dict[str, Any],
    patients: list[str],
    data_checksum: str,
    training: dict[str, Any],
    data_dir: Path | None = None,
    expected_size_px: int | None = 650,
) -> None:
    """``pipeline.json``, ``config.json`` and ``cv_summary.json`` of a bundle whose
    operating point comes from the pooled out-of-fold rows of ``cfg_dir``."""
    from ichseg.experiments.workflow import hardware

    trained_on: dict[str, Any] = {"patients": patients, "data_checksum": data_checksum}
    if data_dir is not None:
        from ichseg.data.datasets import index_dataset
        from ichseg.experiments.folds import patient_fingerprints

        records = [r for r in index_dataset(data_dir, expected_size_px=expected_size_px).records if r.patient_id in patients]
        trained_on["patient_fingerprints"] = patient_fingerprints(records)
    body = {
        "pipeline": to_dict(pipeline),
        "preprocess": to_dict(config.preprocess),
        "calibration": _calibration(cfg_dir, summary),
        "ensemble": ensemble,
        "trained_on": trained_on,
        "training": training,
        "hardware": hardware(),
    }
    save_json(body, Path(out_dir) / "pipeline.json")
    save_json(to_dict(config), Path(out_dir) / "config.json")
    atomic_write_text(Path(out_dir) / "cv_summary.json", json.dumps(summary, indent=1) + "\n")


def chosen_pipeline(config: RunConfig, summary: dict[str, Any], *, screening: bool = True):
    """The configuration's pipeline at the operating point chosen on the pooled folds
    (``screening`` False for a single network: there is no first member to screen with)."""
    op = summary["operating_point"]
    return dataclasses.replace(
        config.pipeline,
        mask_threshold=float(op["mask_threshold"]),
        min_area_px=int(op["min_area_px"]),
        head_threshold=op["head_threshold"],
        verdict_rule=op["verdict_rule"],
        head_mask_threshold=op["head_mask_threshold"],
        head_veto_below=op.get("head_veto_below"),
        head_veto_min_area_px=op.get("head_veto_min_area_px"),
        screen_threshold=op["screen_threshold"] if screening else None,
        gate_sensitivity=None,
        tune_operating_point=False,
    )


def _calibration(cfg_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "on": "pooled out-of-fold predictions of the cross-validation members",
        "policy": summary["policy"],
        "cv": str(cfg_dir),
        "pooled": summary["pooled"],
        # a lesion's subtype is named only at or above its head's threshold (evaluate.oof.subtype_thresholds)
        "subtype_thresholds": summary.get("subtype_thresholds", {}),
    }


def recalibrate(model_dir: Path, cfg_dir: Path, policy: str | None = None) -> dict[str, Any]:
    """Choose an assembled fold-ensemble bundle's operating point again from its folds'
    out-of-fold rows (e.g. under a new verdict rule): ``pipeline.json`` and
    ``cv_summary.json`` are rewritten, the weights are not touched. The folds must be the
    bundle's own (same configuration name and folds)."""
    model_dir = Path(model_dir)
    body = json.loads((model_dir / "pipeline.json").read_text())
    made_from = Path(body.get("calibration", {}).get("cv", "")).name
    if made_from != Path(cfg_dir).name:
        raise ValueError(f"{model_dir}: assembled from {made_from or 'unknown folds'!r}, not {Path(cfg_dir).name!r}")
    folds = load_member_folds(cfg_dir)
    ens = body.get("ensemble", {})
    made_of = ens.get("cv_folds", ens.get("folds", []))  # a single network names the folds that chose its point
    if sorted(f["fold"] for f in folds) != sorted(made_of):
        raise ValueError(f"{cfg_dir}: its folds are not the ones the bundle was made from ({made_of})")
    summary = summarize_members(cfg_dir, policy)
    config = from_dict(RunConfig, folds[0]["config"])
    body["pipeline"] = to_dict(chosen_pipeline(config, summary, screening=not ens.get("single")))
    body["calibration"] = _calibration(cfg_dir, summary)
    save_json(body, model_dir / "pipeline.json")
    atomic_write_text(model_dir / "cv_summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def commit() -> str:
    from ichseg.experiments.workflow import git_commit

    return git_commit()
