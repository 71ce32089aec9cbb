"""Does bf16 give the same answers as float32? The check that lets a bundle use it.

bf16 keeps 8 bits of mantissa: a probability near the mask threshold can land on the
other side, a blob can gain or lose a rim pixel. That is harmless only if it is rare, so
before ``predict --precision auto`` may run a bundle at bf16 the bundle is run both ways
on real studies, and bf16 is allowed only when

- the pooled Dice between the two precisions' masks is at least ``MIN_POOLED_DICE`` (0.99),
- and every slice gets the same verdict.

The result is written beside the weights as ``precision.json`` (with the SHA-256 of the
U-Net weights it was made for, so new weights need a new check); the per-study figures
and timings go wherever the caller asks (e.g. ``results/precision/``).

Empty-ground-truth policy: Dice between two empty masks is 1.0 (the precisions agree).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.data.cache import read_grey_u8
from ichseg.files import atomic_write_text, sha256_file
from ichseg.hardware import describe
from ichseg.infer.pipeline import PRECISION_RECORD, load_bundle
from ichseg.infer.predict import find_inputs
from ichseg.infer.study import StudyPrediction, predict_windows

log = logging.getLogger(__name__)
MIN_POOLED_DICE = 0.99


def read_study(path: Path) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """A CT-ICH-style study folder's brain windows and their bone twins (None if absent)."""
    slices = find_inputs(path)
    return [read_grey_u8(s.brain) for s in slices], [read_grey_u8(s.bone) if s.bone else None for s in slices]


def mask_agreement(a: StudyPrediction, b: StudyPrediction) -> dict[str, Any]:
    """Pixel counts (intersection, a, b), Dice, and the slices whose verdicts differ."""
    inter = sum(int((x & y).sum()) for x, y in zip(a.masks, b.masks, strict=True))
    na, nb = sum(int(x.sum()) for x in a.masks), sum(int(y.sum()) for y in b.masks)
    return {
        "intersection_px": inter,
        "fp32_px": na,
        "bf16_px": nb,
        "dice": 2 * inter / (na + nb) if na + nb else 1.0,
        "verdict_differs": [int(i) for i in np.flatnonzero(a.verdict != b.verdict)],
        "positive_slices": int(a.verdict.sum()),
        "max_head_difference": float(np.abs(a.slice_probability - b.slice_probability).max()) if len(a.verdict) else 0.0,
    }


def _timed(bundle, brain, bone, repeats: int) -> tuple[StudyPrediction, float]:
    """The prediction and its best in-process time over ``repeats`` runs (after one warm-up)."""
    pred = predict_windows(bundle, brain, bone)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        pred = predict_windows(bundle, brain, bone)
        best = min(best, time.perf_counter() - t0)
    return pred, best


def compare_precisions(
    model_dir: Path, studies: list[Path], runtime: str = "openvino", threads: int | None = None, repeats: int = 1
) -> dict[str, Any]:
    """Predict each study at float32 and at bf16 on ``runtime``; the verdict, per-study
    agreement and timings. Where this CPU cannot run bf16 the check is not passed (and says
    why): a bundle is validated on a machine that has it."""
    fp32 = load_bundle(model_dir, runtime=runtime, threads=threads, precision="fp32")
    bf16 = load_bundle(model_dir, runtime=runtime, threads=threads, precision="bf16")
    base: dict[str, Any] = {
        "runtime": fp32.meta["runtime"],
        "hardware": describe(bf16.meta["precision"], bf16.meta["precision_reason"]),
        "min_pooled_dice": MIN_POOLED_DICE,
        "unet_sha256": sha256_file(Path(model_dir) / "unet.safetensors"),
    }
    if bf16.meta["precision"] != "bf16":
        return {**base, "passed": False, "reason": f"bf16 cannot run here: {bf16.meta['precision_reason']}", "studies": {}}
    rows: dict[str, Any] = {}
    for study in studies:
        brain, bone = read_study(study)
        a, ta = _timed(fp32, brain, bone, repeats)
        b, tb = _timed(bf16, brain, bone, repeats)
        rows[Path(study).name] = {**mask_agreement(a, b), "slices": len(brain), "fp32_s": round(ta, 3), "bf16_s": round(tb, 3)}
        log.info("%s: Dice %.4f, %s", study, rows[Path(study).name]["dice"], rows[Path(study).name]["verdict_differs"])
    inter = sum(r["intersection_px"] for r in rows.values())
    total = sum(r["fp32_px"] + r["bf16_px"] for r in rows.values())
    pooled = 2 * inter / total if total else 1.0
    differs = {k: r["verdict_differs"] for k, r in rows.items() if r["verdict_differs"]}
    passed = pooled >= MIN_POOLED_DICE and not differs
    reason = (
        f"pooled Dice {pooled:.4f} (>= {MIN_POOLED_DICE}), the same verdict on every slice"
        if passed
        else f"pooled Dice {pooled:.4f} (needs >= {MIN_POOLED_DICE}); slices whose verdict differs: {differs or 'none'}"
    )
    t32, t16 = sum(r["fp32_s"] for r in rows.values()), sum(r["bf16_s"] for r in rows.values())
    return {
        **base,
        "passed": passed,
        "reason": reason,
        "pooled_dice": pooled,
        "fp32_seconds": round(t32, 3),
        "bf16_seconds": round(t16, 3),
        "speedup": round(t32 / t16, 2) if t16 else None,
        "studies": rows,
    }


def write_record(model_dir: Path, result: dict[str, Any]) -> Path:
    """``precision.json`` beside the weights: what ``load_bundle(precision="auto")`` reads.
    One entry per runtime (each runs its own bf16 kernels); a record made for other weights
    is replaced, not merged."""
    path = Path(model_dir) / PRECISION_RECORD
    record: dict[str, Any] = {"unet_sha256": result["unet_sha256"], "runtimes": {}}
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("unet_sha256") == result["unet_sha256"]:
            record["runtimes"] = old.get("runtimes", {})
    keep = ("passed", "reason", "pooled_dice", "min_pooled_dice", "speedup", "hardware")
    record["runtimes"][result["runtime"]] = {k: result.get(k) for k in keep}
    record["runtimes"][result["runtime"]]["studies"] = sorted(result["studies"])
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def spread_patients(data_dir: Path, n: int) -> list[Path]:
    """``n`` patient folders of a CT-ICH layout, spread evenly over its sorted IDs."""
    root = Path(data_dir) / "Patients_CT"
    folders = sorted(p for p in root.iterdir() if (p / "brain").is_dir()) if root.is_dir() else []
    if not folders:
        raise FileNotFoundError(f"{root}: no patient folders")
    idx = np.unique(np.linspace(0, len(folders) - 1, min(n, len(folders))).round().astype(int))
    return [folders[i] for i in idx]
