"""Configurations side by side on the same held-out folds, at one operating point.

A configuration whose CV is unfinished has no pooled point of its own, and a point chosen
on one fold flatters it. This compares the fold JSONs of several configurations on the
folds they all have, each scored at the *same* point (by default the one the first
configuration's pooled folds chose), so a difference is the networks', not the points'.

``python -m ichseg.experiments.compare --cv results/cv/robust-384 --cv results/cv/robust-384-rim
--out results/compare/rim.md`` prints and writes one row per configuration: slice recall and
precision, Dice and IoU, scan sensitivity and specificity, false-positive pixels per normal
patient, and recall per subtype and by bleed size. ``--own-points`` scores each configuration
at the point its own rows of the shared folds choose instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ichseg.files import atomic_write_text


def common_rows(cfg_dirs: list[Path], folds: list[int] | None = None) -> tuple[list[int], dict[str, list[dict[str, Any]]]]:
    """The folds every configuration has (or ``folds``), and each one's pooled rows on them;
    the held-out patients must agree fold by fold."""
    from ichseg.experiments.folds import load_member_folds

    loaded = {Path(d).name: {f["fold"]: f for f in load_member_folds(Path(d))} for d in cfg_dirs}
    shared = sorted(set.intersection(*(set(v) for v in loaded.values())))
    if folds:
        shared = [k for k in shared if k in folds]
    if not shared:
        raise ValueError(f"no fold shared by {', '.join(loaded)}")
    for k in shared:
        patients = {name: tuple(sorted(v[k]["val_patients"])) for name, v in loaded.items()}
        if len(set(patients.values())) > 1:
            raise ValueError(f"fold {k}: the configurations held out different patients")
    return shared, {name: [r for k in shared for r in v[k]["rows"]] for name, v in loaded.items()}


def scored(rows: list[dict[str, Any]], point: dict[str, Any]) -> dict[str, Any]:
    """One configuration's metrics at ``point``, with recall per subtype and bleed size."""
    from ichseg.evaluate.oof import metrics_at, point_rule, recall_by_group

    return {**metrics_at(rows, *point_rule(point)), "groups": recall_by_group(rows, point)}


def compare(cfg_dirs: list[Path], point: dict[str, Any], folds: list[int] | None = None) -> dict[str, Any]:
    """Metrics of each configuration at ``point`` on their shared folds."""
    shared, rows = common_rows(cfg_dirs, folds)
    return {"folds": shared, "point": point, "configurations": {name: scored(r, point) for name, r in rows.items()}}


def compare_own_points(cfg_dirs: list[Path], folds: list[int] | None = None, policy: str | None = None) -> dict[str, Any]:
    """Metrics of each configuration at its *own* point, chosen by ``policy`` on its rows of
    the shared folds: every configuration is flattered alike (each point is chosen on the
    patients it is scored on), so a change that only moves the calibration, e.g. a loss
    weighting that raises every probability, is not penalised for sitting off another's point."""
    from ichseg.evaluate.oof_grid import DEFAULT_POLICY, choose, grid

    policy = policy or DEFAULT_POLICY
    shared, rows = common_rows(cfg_dirs, folds)
    out = {}
    for name, r in rows.items():
        point = choose(grid(r, rule="outlined", veto=True), policy)
        out[name] = {**scored(r, point), "point": point}
    return {"folds": shared, "point": None, "policy": policy, "configurations": out}


def point_text(p: dict[str, Any]) -> str:
    veto = ""
    if p.get("head_veto_below") is not None:
        veto = f", veto: blobs < {p['head_veto_min_area_px']} px need head ≥ {p['head_veto_below']}"
    return (
        f"mask {p['mask_threshold']}, {p['min_area_px']} px, head {p['head_threshold']} → "
        f"{p.get('head_mask_threshold')}, rule {p.get('verdict_rule', 'fused')}{veto}"
    )


def table_md(result: dict[str, Any]) -> str:
    p = result["point"]
    folds = ", ".join(map(str, result["folds"]))
    if p is None:
        head = f"Folds {folds}, each configuration at its own point ({result['policy']} on these folds' rows).\n\n"
    else:
        head = f"Folds {folds}, one point for all: {point_text(p)}.\n\n"
    subtypes = sorted({s for c in result["configurations"].values() for s in c["groups"]["subtype"]})
    cols = ["slice recall", "precision", "Dice", "IoU", "scan sens.", "scan spec.", "FP px per normal patient"]
    cols = (["point"] if p is None else []) + cols
    confs = result["configurations"].values()
    sizes = [z for z in ("< 1 mL", "1-5 mL", "> 5 mL") if any(z in c["groups"].get("size", {}) for c in confs)]
    lines = [
        "| configuration | " + " | ".join(cols + [f"{s} recall" for s in subtypes] + [f"patients {z}" for z in sizes]) + " |",
        "|---|" + "---|" * (len(cols) + len(subtypes) + len(sizes)),
    ]

    def f(v: float | None) -> str:
        return "" if v is None else f"{v:.3f}"

    for name, c in result["configurations"].items():
        g = c["groups"]["subtype"]
        cells = ([point_text(c["point"])] if p is None else []) + [
            f(c["slice"]["recall"]), f(c["slice"]["precision"]), f(c["pixel"]["dice_global"]), f(c["pixel"]["iou_global"]),
            f(c["scan"]["sensitivity"]), f(c["scan"]["specificity"]), f"{c['fp_px_per_normal_patient']:.0f}",
            *[f"{g[s]['found']}/{g[s]['slices']}" if s in g else "" for s in subtypes],
            *[f"{z_['found']}/{z_['slices']}" if (z_ := c["groups"]["size"].get(z)) else "" for z in sizes],
        ]  # fmt: skip
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from ichseg.experiments.ensemble import summarize_members

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cv", type=Path, action="append", required=True, help="a configuration's fold JSONs (repeat)")
    p.add_argument("--fold", type=int, action="append", default=None, help="only these folds (repeatable)")
    p.add_argument("--point-from", type=Path, default=None, help="whose pooled point (default: the first --cv)")
    p.add_argument("--own-points", action="store_true", help="each configuration at its own point on the shared folds")
    p.add_argument("--out", type=Path, default=None, help="a .md table (and the .json beside it)")
    a = p.parse_args(argv)
    if a.own_points:
        result = compare_own_points(a.cv, a.fold)
    else:
        result = compare(a.cv, summarize_members(a.point_from or a.cv[0])["operating_point"], a.fold)
    md = table_md(result)
    if a.out is not None:
        atomic_write_text(a.out, md)
        atomic_write_text(a.out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
