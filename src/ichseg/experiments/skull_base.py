"""Which slices ``predict`` leaves unread below the skull base, and what that costs.

``python -m ichseg.experiments.skull_base --data ../shared/ct-ich --fetch runs/external
--out results/external/skull-base`` applies :func:`ichseg.infer.headcheck.slices_below_brain`
to every CT-ICH development patient (in reconstructed HU) and to the registry cases of
:mod:`ichseg.experiments.external`, and writes per patient the slices not read, whether any
holds a labelled bleed, and how far the lowest labelled bleed lies below the lowest
cranial slice (the safety margin the rule keeps is ``BELOW_BRAIN_MARGIN_MM``). No network
runs: the rule looks at the HU only.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.files import atomic_write_text

log = logging.getLogger(__name__)


def census(hu: np.ndarray, pixel_mm: tuple[float, float], superior: np.ndarray, truth: np.ndarray | None = None) -> dict:
    """The rule on one volume: slices not read (1-based), and with ``truth`` (N, H, W) the
    labelled slices among them and the lowest bleed's height over the lowest cranial slice."""
    from ichseg.infer.headcheck import check_head_ct, slices_below_brain

    check = check_head_ct(hu, pixel_mm)
    below, _ = slices_below_brain(hu, pixel_mm, superior, check.cranial)
    row: dict[str, Any] = {"slices": len(hu), "not_read": [int(k) + 1 for k in np.flatnonzero(below)]}
    if truth is not None and check.cranial:
        bleeding = np.asarray(truth).reshape(len(truth), -1).any(1)
        row["labelled_slices_not_read"] = int((below & bleeding).sum())
        if bleeding.any() and any(check.cranial):
            lowest = float(superior[np.asarray(check.cranial)].min())
            row["lowest_bleed_above_lowest_cranial_mm"] = round(float(superior[bleeding].min()) - lowest, 1)
    return row


def run(data: Path | None, fetch_dir: Path | None) -> dict[str, Any]:
    from ichseg.infer.headcheck import BELOW_BRAIN_MARGIN_MM, CRANIAL_BRAIN_CM2
    from ichseg.infer.volume import superior_mm

    out: dict[str, Any] = {"margin_mm": BELOW_BRAIN_MARGIN_MM, "cranial_brain_cm2": CRANIAL_BRAIN_CM2, "ct_ich": {}}
    if data is not None:
        from ichseg.data.convert import ctich_volume

        for p in sorted((Path(data) / "Patients_CT").iterdir()):
            vol, truth, _ = ctich_volume(p)
            out["ct_ich"][p.name] = census(vol.hu, vol.pixel_spacing, superior_mm(vol), truth)
    if fetch_dir is not None:
        from ichseg.experiments.registry_cases import CASES, case_input, fetch
        from ichseg.io.dicom import read_dicom_series
        from ichseg.io.nifti import read_nifti

        dest = fetch(fetch_dir)
        out["external"] = {}
        for case in CASES:
            src = case_input(dest, case)
            vol = read_nifti(src) if src.name.endswith((".nii", ".nii.gz")) else read_dicom_series(src)
            out["external"][case.name] = census(vol.hu, vol.pixel_spacing, superior_mm(vol))
    rows = out["ct_ich"].values()
    margins = [r["lowest_bleed_above_lowest_cranial_mm"] for r in rows if "lowest_bleed_above_lowest_cranial_mm" in r]
    out["ct_ich_totals"] = {
        "patients": len(out["ct_ich"]),
        "slices_not_read": sum(len(r["not_read"]) for r in rows),
        "labelled_slices_not_read": sum(r.get("labelled_slices_not_read", 0) for r in rows),
        "lowest_bleed_above_lowest_cranial_mm": min(margins) if margins else None,
    }
    return out


def markdown(r: dict[str, Any]) -> str:
    t = r["ct_ich_totals"]
    lines = [
        f"Rule: slices more than {r['margin_mm']:g} mm below the lowest slice whose skull holds ≥ "
        f"{r['cranial_brain_cm2']:g} cm² of brain-like tissue are not read.",
        "",
        f"CT-ICH, {t['patients']} patients: {t['slices_not_read']} slices not read, "
        f"{t['labelled_slices_not_read']} of them with a labelled bleed; lowest labelled bleed "
        f"{t['lowest_bleed_above_lowest_cranial_mm']} mm from the lowest cranial slice (negative: below it).",
        "",
        "| volume | slices | not read |",
        "|---|---|---|",
    ]
    for group in ("ct_ich", "external"):
        for name, row in r.get(group, {}).items():
            if row["not_read"] or group == "external":
                lines.append(f"| {name} | {row['slices']} | {', '.join(map(str, row['not_read'])) or 'none'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="CT-ICH (JPG layout)")
    p.add_argument("--fetch", type=Path, default=None, help="where the registry cases are (or are fetched to)")
    p.add_argument("--out", type=Path, default=Path("results/external/skull-base"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    r = run(a.data, a.fetch)
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.out / "skull_base.json", json.dumps(r, indent=1) + "\n")
    atomic_write_text(a.out / "skull_base.md", markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
