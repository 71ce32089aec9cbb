"""Stress test: the cross-validation rerun on perturbed inputs.

Each fold's member predicts its own held-out patients (so every figure is on unseen
patients, as in the CV table) after the input windows were perturbed at 512×512 by the
conditions of :mod:`ichseg.evaluate.perturb`, then shrunk to the network's size as a source
image would be. Metrics are taken at the shipped operating point, pooled over all folds,
beside the unperturbed run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ichseg.evaluate.perturb import CONDITIONS, PERTURBATIONS

log = logging.getLogger(__name__)


def stress_fold(
    cfg_dir: Path,
    work_root: Path,
    data_dir: Path,
    fold: int,
    out_dir: Path,
    *,
    thresholds: tuple[float, ...],
    expected_size_px: int | None = 650,
    skip_bad: bool = False,
) -> Path:
    """One fold's member on its held-out patients under every perturbation, as per-slice
    blob tables at ``thresholds``: ``out_dir/fold<k>.json``. The unperturbed rows are the
    fold's own (its CV JSON). A fold already written at the same thresholds is reused."""
    import json

    from ichseg.config import PreprocessConfig, from_dict
    from ichseg.data.datasets import index_dataset
    from ichseg.data.splits import select
    from ichseg.evaluate.oof import member_rows
    from ichseg.experiments.folds import columns, member_dir
    from ichseg.files import atomic_write_text
    from ichseg.models.weights import load_model

    out = Path(out_dir) / f"fold{fold}.json"
    done: dict[str, Any] = {}
    if out.exists():
        cached = json.loads(out.read_text())
        if cached.get("thresholds") == list(thresholds):
            done = cached["conditions"]  # conditions added since are computed, the rest reused
    if all(f"{name}|{label}" in done for name, label, _ in CONDITIONS):
        return out
    body = json.loads((Path(cfg_dir) / f"fold{fold}.json").read_text())
    preprocess = from_dict(PreprocessConfig, body["config"]["preprocess"])
    eval_px = int(body["config"]["pipeline"]["eval_size_px"])
    records = index_dataset(data_dir, expected_size_px=expected_size_px, skip_bad=skip_bad).records
    held = select(records, body["val_patients"])
    unet, ucfg, _ = load_model(member_dir(work_root, Path(cfg_dir).name, fold) / "last")
    windows = tuple(ucfg.windows)
    conditions: dict[str, dict[str, list]] = {**done, "none|none": body["per_slice"]}
    for name, label, fn in CONDITIONS[1:]:
        if f"{name}|{label}" in conditions:
            continue
        perturb = lambda stack, rng, fn=fn, w=windows: fn(stack, w, rng)  # noqa: E731
        rows = member_rows(
            unet,
            ucfg,
            held,
            Path(work_root) / "cache",
            preprocess,
            ucfg.heads,
            thresholds=thresholds,
            perturb=perturb,
            without_intracranial=False,
            eval_px=eval_px,
        )
        conditions[f"{name}|{label}"] = columns(rows)
        log.info("stress: fold %d, %s %s done", fold, name, label)
    body_out = {"fold": fold, "thresholds": list(thresholds), "conditions": conditions}
    atomic_write_text(out, json.dumps(body_out, separators=(",", ":")) + "\n")
    return out


def run_stress(
    cfg_dir: Path,
    work_root: Path,
    data_dir: Path,
    out_dir: Path,
    *,
    policy: str | None = None,
    expected_size_px: int | None = 650,
    skip_bad: bool = False,
    folds: list[int] | None = None,
) -> dict[str, Any] | None:
    """The stress table of the fold ensemble in ``cfg_dir`` (members in ``work_root``),
    with each fold's rows cached in ``out_dir`` (:func:`stress_fold`); ``folds`` limits
    the work to those folds. None until every fold of the configuration is in."""
    import json

    from ichseg.evaluate.oof import metrics_at, point_rule
    from ichseg.experiments.ensemble import summarize_members
    from ichseg.experiments.folds import load_member_folds, rows_of
    from ichseg.experiments.workflow import hardware

    members = load_member_folds(cfg_dir)
    if len(members) < members[0]["folds"]:
        return None  # the operating point needs every fold
    summary = summarize_members(cfg_dir, policy)
    op = summary["operating_point"]
    at = point_rule(op)
    t = at[0]
    thresholds = tuple(sorted({t} | ({at[5]} if at[5] is not None else set())))
    for f in members:
        if folds is None or f["fold"] in folds:
            stress_fold(
                cfg_dir,
                work_root,
                data_dir,
                f["fold"],
                out_dir,
                thresholds=thresholds,
                expected_size_px=expected_size_px,
                skip_bad=skip_bad,
            )
    cached = sorted(Path(out_dir).glob("fold*.json"))
    if len(cached) < members[0]["folds"] or any(json.loads(c.read_text())["thresholds"] != list(thresholds) for c in cached):
        return None
    pooled: dict[str, list[dict[str, Any]]] = {}
    for path in cached:
        for key, cols in json.loads(path.read_text())["conditions"].items():
            pooled.setdefault(key, []).extend(rows_of(cols))
    base = metrics_at(pooled["none|none"], *at)
    table = []
    for name, label, _ in CONDITIONS:
        m = metrics_at(pooled[f"{name}|{label}"], *at)
        dice = m["pixel"]["dice_global"]
        table.append(
            {
                "perturbation": name,
                "level": label,
                "strength": "none" if name == "none" else ("mild" if PERTURBATIONS[name][0][0] == label else "strong"),
                "dice": dice,
                "dice_change": None
                if dice is None or base["pixel"]["dice_global"] is None
                else dice - base["pixel"]["dice_global"],
                "recall": m["slice"]["recall"],
                "precision": m["slice"]["precision"],
                "scan_sensitivity": m["scan"]["sensitivity"],
                "scan_specificity": m["scan"]["specificity"],
                "fp_px_per_normal_patient": m["fp_px_per_normal_patient"],
            }
        )
    return {
        "configuration": summary["name"],
        "operating_point": op,
        "folds": len(members),
        "patients": summary["patients"],
        "normal_patients": base["normal_patients"],
        "how": (__doc__ or "").strip().replace("\n", " "),
        "targets": "at the mild level: Dice drop <= 0.05 and < 500 false-positive px per normal patient",
        "table": table,
        "hardware": hardware(),
    }


def markdown(result: dict[str, Any]) -> str:
    """The stress table, with the target check at the mild level."""
    lines = [
        "| perturbation | level | Dice | Δ Dice | slice recall | slice precision | scan sens. | scan spec. | "
        "FP px per normal patient | mild-level target |",
        "|" + "---|" * 10,
    ]
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for r in result["table"]:
        ok = ""
        if r["strength"] == "mild":
            met = (r["dice_change"] or 0) >= -0.05 and (r["fp_px_per_normal_patient"] or 0) < 500
            ok = "met" if met else "NOT met"
        lines.append(
            f"| {r['perturbation']} | {r['level']} | {f(r['dice'])} | {'' if r['strength'] == 'none' else f(r['dice_change'])} | "
            f"{f(r['recall'])} | {f(r['precision'])} | {f(r['scan_sensitivity'])} | {f(r['scan_specificity'])} | "
            f"{r['fp_px_per_normal_patient']:.0f} | {ok} |"
        )
    return "\n".join(lines) + "\n"
