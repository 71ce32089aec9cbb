"""The slices with blood that a fold ensemble misses out of fold, and why, from the fold JSONs.

``python -m ichseg.experiments.misses --cv results/cv/robust-384 --data ../shared/ct-ich
--out results/misses/robust-384 [--overlays runs/misses]`` lists every missed slice at the
pooled operating point (the one that ships) with what the member saw there: its highest
blood probability, its hemorrhage head, the blobs it had at the lowest stored threshold,
the true area, the subtypes, and how the blood looks in the brain window (the mask's mean
grey minus the brain's median: negative is hypodense, as a subacute or chronic collection
is). Each miss gets one cause:

- ``hypodense``: the labelled blood is darker than brain (acute blood is brighter);
- ``no signal``: the member's probability never reaches 0.3 on the slice;
- ``below the operating point``: blobs at 0.3 exist, but none survives the point.

Overlays (optional, never in the repository: they are full-size copies of the dataset's
slices) outline the true blood in red for each missed slice.

``--low-dice D`` adds ``patients.csv`` (every bleeding patient at the point: Dice, slices
with blood and found, missed slices by cause) and, with ``--sheet F``, one small figure of
the bleeding patients whose Dice is below D (issue 13: none may be below 0.2 without its
overlay saying why): each patient's slice with the most missed blood at 256 px, the truth
outlined, captioned with its Dice and its misses' causes. It is a reduced derived figure
of CC BY 4.0 data, credited in its title.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.files import atomic_write_csv, atomic_write_text

log = logging.getLogger(__name__)

SIGNAL_THRESHOLD = 0.3  # the lowest mask threshold the out-of-fold rows keep


def grey_contrast(image_path: str, mask_path: str) -> float | None:
    """Mean brain-window grey inside the mask minus the median grey of brain tissue on the
    slice (grey 60-170): > 0 hyperdense (acute blood), < 0 hypodense."""
    import cv2

    b = cv2.imread(image_path, cv2.IMREAD_GRAYSCALE)
    m = cv2.imread(mask_path, cv2.IMREAD_GRAYSCALE) if mask_path else None
    if b is None or m is None or not (m >= 128).any():
        return None
    brain = b[(b > 60) & (b < 170)]
    return float(b[m >= 128].mean() - np.median(brain)) if brain.size else None


def cause(row: dict[str, Any], contrast: float | None) -> str:
    if contrast is not None and contrast < 0:
        return "hypodense"
    if not row["components"].get(str(SIGNAL_THRESHOLD)):
        return "no signal"
    return "below the operating point"


def slice_index(data_dir: Path) -> dict[tuple[str, int], Any]:
    """The dataset's slice records by (patient, slice)."""
    from ichseg.data.datasets import index_dataset

    return {(r.patient_id, r.slice): r for r in index_dataset(data_dir).records}


def pooled_rows(cfg_dir: Path) -> list[dict[str, Any]]:
    """Every out-of-fold slice row of ``cfg_dir``'s fold JSONs (loaded once per run: they
    are large)."""
    from ichseg.experiments.folds import load_member_folds

    return [r for f in load_member_folds(cfg_dir) for r in f["rows"]]


def misses(cfg_dir: Path, index: dict[tuple[str, int], Any], pooled: list[dict[str, Any]]) -> dict[str, Any]:
    """The missed slices of ``cfg_dir``'s ``pooled`` out-of-fold rows (:func:`pooled_rows`;
    ``index``: :func:`slice_index`)."""
    from ichseg.evaluate.oof import point_rule, slice_outcomes
    from ichseg.experiments.ensemble import summarize_members

    summary = summarize_members(cfg_dir)
    op = summary["operating_point"]
    o = slice_outcomes(pooled, *point_rule(op))
    rows = []
    for r, called in zip(pooled, o["verdict"], strict=True):
        if not r["hemorrhage"] or called:
            continue
        rec = index.get((r["patient_id"], r["slice"]))
        contrast = grey_contrast(rec.image_path, rec.mask_path) if rec is not None else None
        rows.append(
            {
                "patient_id": r["patient_id"],
                "slice": r["slice"],
                "true_px_512": r["true_area_px_512"],
                "max_probability": r["max_probability"],
                "hemorrhage_head": round(r["heads"].get("hemorrhage", 0.0), 3),
                "blobs_at_0.3": len(r["components"].get(str(SIGNAL_THRESHOLD), [])),
                "subtypes": "+".join(k for k, v in r["flags"].items() if v and k != "fracture"),
                "grey_contrast": None if contrast is None else round(contrast, 1),
                "cause": cause(r, contrast),
            }
        )
    blood = sum(1 for r in pooled if r["hemorrhage"])
    by_cause = collections.Counter(r["cause"] for r in rows)
    by_patient = collections.Counter(r["patient_id"] for r in rows)
    return {
        "configuration": Path(cfg_dir).name,
        "operating_point": op,
        "slices_with_blood": blood,
        "missed": len(rows),
        "recall": 1 - len(rows) / blood if blood else None,
        "by_cause": dict(by_cause),
        "by_patient": dict(by_patient.most_common()),
        "rows": rows,
    }


def write_overlays(result: dict[str, Any], index: dict[tuple[str, int], Any], out: Path) -> None:
    import cv2

    for row in result["rows"]:
        rec = index[(row["patient_id"], row["slice"])]
        b = cv2.imread(rec.image_path, cv2.IMREAD_GRAYSCALE)
        m = (cv2.imread(rec.mask_path, cv2.IMREAD_GRAYSCALE) >= 128).astype(np.uint8)
        rgb = cv2.cvtColor(b, cv2.COLOR_GRAY2BGR)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, (0, 0, 255), 1)
        out.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / f"{row['patient_id']}_{row['slice']:03d}_{row['cause'].replace(' ', '-')}.png"), rgb)


def patient_table(pooled: list[dict[str, Any]], result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every bleeding patient of ``pooled`` at ``result``'s point: Dice, slices with blood
    and found, and its missed slices by cause (from :func:`misses`'s rows), worst Dice first."""
    from ichseg.evaluate.oof import patient_costs

    causes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in result["rows"]:
        causes[row["patient_id"]][row["cause"]] += 1
    out = []
    for c in patient_costs(pooled, result["operating_point"]):
        if not c["slices_with_blood"]:
            continue
        missed = causes.get(c["patient_id"], collections.Counter())
        out.append(
            {
                "patient_id": c["patient_id"],
                "dice": None if c["dice"] is None else round(c["dice"], 3),
                "slices_with_blood": c["slices_with_blood"],
                "slices_missed": sum(missed.values()),
                "true_px_512": c["true_px"],
                "false_positive_px": c["false_positive_px"],
                "missed_by_cause": "; ".join(f"{k} {n}" for k, n in missed.most_common()),
            }
        )
    return sorted(out, key=lambda r: (r["dice"] if r["dice"] is not None else 0.0, r["patient_id"]))


IMAGE_CREDIT = "Images: CT-ICH, Hssayeni (2019), PhysioNet, doi:10.13026/w8q8-ky94, CC BY 4.0 (reduced, outlined)"


def write_sheet(
    low: list[dict[str, Any]], result: dict[str, Any], index: dict[tuple[str, int], Any], path: Path, below: float
) -> None:
    """One panel per low-Dice patient (module docstring); written atomically."""
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(low)
    cols = min(4, max(n, 1))
    fig, axes = plt.subplots((n + cols - 1) // cols or 1, cols, figsize=(3.2 * cols, 4.0 * ((n + cols - 1) // cols or 1)))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, pat in zip(np.atleast_1d(axes).ravel(), low, strict=False):
        rows = [r for r in result["rows"] if r["patient_id"] == pat["patient_id"]]
        recs = [index[k] for k in sorted(index) if k[0] == pat["patient_id"] and index[k].hemorrhage]
        if rows:
            worst = max(rows, key=lambda r: r["true_px_512"])
            rec = index[(worst["patient_id"], worst["slice"])]
        elif recs:
            rec = recs[len(recs) // 2]
        else:
            continue
        b = cv2.resize(cv2.imread(rec.image_path, cv2.IMREAD_GRAYSCALE), (256, 256), interpolation=cv2.INTER_AREA)
        m = cv2.resize((cv2.imread(rec.mask_path, cv2.IMREAD_GRAYSCALE) >= 128).astype(np.uint8), (256, 256))
        rgb = cv2.cvtColor(b, cv2.COLOR_GRAY2RGB)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, (0, 220, 0), 1)
        ax.imshow(rgb)
        why = pat["missed_by_cause"] or f"called, blobs off the blood ({pat['false_positive_px']:,} FP px)"
        ax.set_title(f"{pat['patient_id']} slice {rec.slice}: Dice {pat['dice']:.2f}\n{why}", fontsize=8)
    fig.suptitle(f"Bleeding patients below Dice {below:g} out of fold, truth in green\n{IMAGE_CREDIT}", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.95), h_pad=2.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cv", type=Path, required=True, help="a fold-ensemble configuration's fold JSONs")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="misses.csv and misses.json")
    p.add_argument("--overlays", type=Path, default=None, help="a folder for overlay PNGs (outside the repository)")
    p.add_argument("--low-dice", type=float, default=0.2, help="patients.csv, and the sheet of patients below this Dice")
    p.add_argument("--sheet", type=Path, default=None, help="a small PNG of the low-Dice patients (module docstring)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    index = slice_index(a.data)
    pooled = pooled_rows(a.cv)
    r = misses(a.cv, index, pooled)
    atomic_write_csv(a.out / "misses.csv", r["rows"])
    atomic_write_text(a.out / "misses.json", json.dumps({k: v for k, v in r.items() if k != "rows"}, indent=1) + "\n")
    if a.overlays is not None:
        write_overlays(r, index, a.overlays)
    table = patient_table(pooled, r)
    atomic_write_csv(a.out / "patients.csv", table)
    low = [t for t in table if t["dice"] is not None and t["dice"] < a.low_dice]
    if a.sheet is not None and low:
        write_sheet(low, r, index, a.sheet, a.low_dice)
    print(f"bleeding patients below Dice {a.low_dice}: " + ", ".join(f"{t['patient_id']} {t['dice']:.2f}" for t in low))
    print(f"{r['missed']} of {r['slices_with_blood']} slices with blood missed at the shipped point: {r['by_cause']}")
    print("by patient: " + ", ".join(f"{p} {n}" for p, n in r["by_patient"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
