"""The shipped model: one configuration trained on every patient, with the epoch counts and
the operating point that its cross-validation chose, installed inside the package.

With no patient left out there is nothing to stop early on or to calibrate on, so both
come from the CV folds (each chose them on its own inner validation patients): the median
best epoch per stage, and the median of each fold's gate threshold, mask threshold and
minimum area. Nothing is tuned on held-out patients.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import statistics
from pathlib import Path
from typing import Any

from ichseg.config import RunConfig, save_json, to_dict
from ichseg.experiments.folds import patient_fingerprints
from ichseg.infer.shipped import BUNDLE_FILES, CLASSIFIER_FILES, PACKAGED_MODEL, default_model_dir  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

#: Where the shipped bundle lives inside the installed package.


def cv_choices(fold_dir: Path) -> dict[str, Any]:
    """Median best epochs and operating point over the fold JSONs in ``fold_dir``."""
    from ichseg.experiments.folds import load_folds

    folds = load_folds(fold_dir)
    if not folds:
        raise FileNotFoundError(f"{fold_dir}: no fold*.json (run `ichseg cv` first)")
    ops = [f["metrics"]["operating_point"] for f in folds]
    return {
        "from": str(fold_dir),
        "folds": len(folds),
        "epochs": {
            which: max(1, round(statistics.median(f["training"][which]["best_epoch"] for f in folds)))
            for which in ("classifier", "unet")
        },
        "classifier_threshold": float(statistics.median(o["classifier_threshold"] for o in ops)),
        "mask_threshold": float(statistics.median(o["mask_threshold"] for o in ops)),
        "min_area_px": round(statistics.median(o["min_area_px"] for o in ops)),
        "per_fold": [
            {
                "fold": f["fold"],
                "best_epochs": {w: f["training"][w]["best_epoch"] for w in ("classifier", "unet")},
                **{k: o[k] for k in ("classifier_threshold", "mask_threshold", "min_area_px")},
            }
            for f, o in zip(folds, ops, strict=True)
        ],
    }


def release_config(config: RunConfig, choices: dict[str, Any]) -> RunConfig:
    """``config`` with fixed epoch counts (no early stopping) and the CV operating point."""

    def fixed(t, epochs: int):
        return dataclasses.replace(t, epochs=epochs, min_epochs=epochs, val_max_negatives=0)

    return dataclasses.replace(
        config,
        train_classifier=fixed(config.train_classifier, choices["epochs"]["classifier"]),
        train_unet=fixed(config.train_unet, choices["epochs"]["unet"]),
        pipeline=dataclasses.replace(
            config.pipeline,
            classifier_threshold=choices["classifier_threshold"],
            mask_threshold=choices["mask_threshold"],
            min_area_px=choices["min_area_px"],
            gate_sensitivity=None,
            tune_operating_point=False,
        ),
    )


def train_release(
    data_dir: Path,
    work_dir: Path,
    config: RunConfig,
    fold_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    skip_bad: bool = False,
    expected_size_px: int | None = 650,
) -> Path:
    """Train both stages on every patient of ``data_dir``; returns the bundle folder."""
    from ichseg.experiments.workflow import bundle_stage, hardware, index_stage, prepare, train_stage, training_summary

    choices = cv_choices(fold_dir)
    cfg = release_config(config, choices)
    records = index_stage(data_dir, work_dir, skip_bad=skip_bad, expected_size_px=expected_size_px).records
    everyone = sorted({r.patient_id for r in records})
    prep = prepare(
        data_dir,
        work_dir,
        cfg,
        skip_bad=skip_bad,
        progress=progress,
        expected_size_px=expected_size_px,
        split={"train": everyone, "val": []},
    )
    for which in ("classifier", "unet"):
        train_stage(prep, which, resume=resume, progress=progress)
    out = bundle_stage(work_dir, cfg, checkpoint="last", prep=prep)
    body = json.loads((out / "pipeline.json").read_text())
    body["calibration"] = {"on": "cross-validation folds (median of their inner-validation choices)", **choices}
    body["trained_on"] = {
        "patients": everyone,
        "slices": len(prep.records),
        "data_checksum": prep.data_checksum,
        "patient_fingerprints": patient_fingerprints(prep.records),
    }
    body["training"] = training_summary(work_dir)
    body["hardware"] = hardware()
    save_json(body, out / "pipeline.json")
    save_json(to_dict(cfg), out / "config.json")
    for which in ("classifier", "unet"):  # kept with the weights: the Dice-per-epoch figure of `evaluate`
        shutil.copyfile(Path(work_dir) / "train" / which / "history.csv", out / f"{which}_history.csv")
    return out


def install(bundle_dir: Path, dest: Path = PACKAGED_MODEL) -> Path:
    """Copy a bundle into the package (file by file through temp names, so an interrupted
    copy never leaves a mixed bundle under the final names)."""
    dest.mkdir(parents=True, exist_ok=True)
    extras = ("config.json", "classifier_history.csv", "unet_history.csv", "cv_summary.json", "precision.json")
    names = [n for n in (*BUNDLE_FILES, *CLASSIFIER_FILES, *extras) if (Path(bundle_dir) / n).exists()]
    missing = set(BUNDLE_FILES) - set(names)
    if missing:
        raise FileNotFoundError(f"{bundle_dir}: missing {sorted(missing)}")
    for n in names:
        shutil.copyfile(Path(bundle_dir) / n, dest / f".{n}.tmp")
    # bundle files the new bundle does not have must go (a leftover classifier would make it
    # two-stage; stale graphs are rebuilt below); nothing else in ``dest`` is touched
    known = {*BUNDLE_FILES, *CLASSIFIER_FILES, *extras}
    for old in dest.iterdir():
        stale = old.name in known or old.name.endswith((".onnx", ".onnx.json"))
        if old.is_file() and stale and old.name not in names:
            old.unlink()
    for n in names:
        (dest / f".{n}.tmp").replace(dest / n)
    try:  # the ONNX graphs make `predict --runtime auto` (the default) use ONNX Runtime
        from ichseg.infer.onnx_export import export_onnx

        export_onnx(dest)
    except ImportError:
        log.warning("onnx is not installed: the bundle is installed without ONNX graphs (PyTorch only)")
    log.info("installed %s -> %s", bundle_dir, dest)
    return dest
