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

Overlays (optional, never in the repository: they are derived from the dataset's images)
outline the true blood in red for each missed slice.
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


def misses(cfg_dir: Path, index: dict[tuple[str, int], Any]) -> dict[str, Any]:
    """The missed slices of ``cfg_dir``'s pooled out-of-fold rows (``index``: :func:`slice_index`)."""
    from ichseg.evaluate.oof import point_rule, slice_outcomes
    from ichseg.experiments.ensemble import summarize_members
    from ichseg.experiments.folds import load_member_folds

    summary = summarize_members(cfg_dir)
    op = summary["operating_point"]
    pooled = [r for f in load_member_folds(cfg_dir) for r in f["rows"]]
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cv", type=Path, required=True, help="a fold-ensemble configuration's fold JSONs")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="misses.csv and misses.json")
    p.add_argument("--overlays", type=Path, default=None, help="a folder for overlay PNGs (outside the repository)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    index = slice_index(a.data)
    r = misses(a.cv, index)
    atomic_write_csv(a.out / "misses.csv", r["rows"])
    atomic_write_text(a.out / "misses.json", json.dumps({k: v for k, v in r.items() if k != "rows"}, indent=1) + "\n")
    if a.overlays is not None:
        write_overlays(r, index, a.overlays)
    print(f"{r['missed']} of {r['slices_with_blood']} slices with blood missed at the shipped point: {r['by_cause']}")
    print("by patient: " + ", ".join(f"{p} {n}" for p, n in r["by_patient"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
