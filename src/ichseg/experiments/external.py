"""Real CT from outside CT-ICH, as the package registries ship it, through ``ichseg predict``.

CT-ICH's JPGs all went through one export; a hospital's scanner gives other textures,
kernels, pixel sizes and headers. These are the real (scanner-acquired) CT series found
inside packages on the registries this project may use (PyPI source distributions, whose
wheels leave the data out, and Debian packages; :mod:`.registry_cases` lists and fetches
them). None has a hemorrhage label, so what is measured is what a
user would see: is the series read, is it refused when it is not a head, and what does the
model answer on a head that, as far as a reader can tell, does not bleed.

``python -m ichseg.experiments.external --fetch runs/external`` downloads the packages
(``pip download``, ``apt-get download``: registries only) and extracts the cases; ``--model M --out
results/external/<name>`` predicts each with bundle M (default: the shipped model) and
writes ``external.json`` and ``external.md``; overlays stay under ``--work`` (default
``runs/external/out``), never in the repository (the series keep their packages' licences).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ichseg.experiments.registry_cases import CASES, Case, case_input, fetch
from ichseg.files import atomic_write_text

log = logging.getLogger(__name__)


def run_case(dest: Path, case: Case, model: Path | None, work: Path) -> dict[str, Any]:
    """``ichseg predict`` on one case in a child process, as a user runs it: its exit
    status, last line, and the summary's verdict, volume and lesions."""
    out = Path(work) / case.name
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "ichseg.cli", "predict", str(case_input(dest, case)), "--out", str(out), "--no-progress"]
    if model is not None:
        cmd += ["--model", str(model)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = (done.stdout.strip() or done.stderr.strip()).splitlines()
    row: dict[str, Any] = {**asdict(case), "exit": done.returncode, "answer": lines[-1] if lines else ""}
    summary = out / "summary.json"
    if done.returncode == 0 and summary.exists():
        s = json.loads(summary.read_text())
        row.update(
            hemorrhage=s["hemorrhage"],
            scan_probability=s["scan_probability"],
            total_volume_ml=s["total_volume_ml"],
            lesions=len(s["lesions"]),
            positive_slices=len(s["positive_slices"]),
            slices=s["slices"],
            head_check=s["head_check"],
            cautions=s.get("cautions", []),
            outputs=s["outputs"],
        )
    return row


def skull_cavity_depth_mm(slice_hu: Any, pixel_mm: float, bone_hu: float = 300.0) -> tuple[Any, Any]:
    """The inside of one slice's skull ring (bone > ``bone_hu`` filled, bone removed) and
    each pixel's depth below the inner table in mm: what the rim measurements share."""
    import cv2
    import numpy as np

    bone = np.ascontiguousarray(slice_hu > bone_hu, dtype=np.uint8)
    contours, _ = cv2.findContours(bone, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(bone)
    cv2.drawContours(filled, contours, -1, 1, cv2.FILLED)
    cavity = (filled > 0) & (bone == 0)
    return cavity, cv2.distanceTransform(cavity.astype(np.uint8), cv2.DIST_L2, 3) * pixel_mm


def rim_excess_hu(hu: Any, pixel_mm: float) -> float | None:
    """Median HU of the 0.5-3 mm band just inside the skull minus that of deep brain (> 15 mm
    from the skull, 15-60 HU), median over the slices that show a closed skull ring: how
    much brighter than brain the inner table's partial-volume and beam-hardening rim reads,
    which a thin extra-axial bleed also does. None without such slices."""
    import numpy as np

    out = []
    for s in np.asarray(hu, np.float32):
        cavity, depth_mm = skull_cavity_depth_mm(s, pixel_mm)
        if cavity.sum() * pixel_mm**2 < 2500:  # < 25 cm²: no brain cross-section worth measuring
            continue
        soft = (s > -100) & (s < 200)
        band = cavity & soft & (depth_mm > 0.5) & (depth_mm <= 3.0)
        deep = cavity & (depth_mm > 15) & (s > 15) & (s < 60)
        if band.sum() >= 50 and deep.sum() >= 500:
            out.append(float(np.median(s[band]) - np.median(s[deep])))
    return float(np.median(out)) if out else None


def case_rim(dest: Path, case: Case) -> float | None:
    """:func:`rim_excess_hu` of a head case, read as ``ichseg predict`` reads it."""
    path = case_input(dest, case)
    if path.is_dir():
        from ichseg.io.dicom import read_dicom_series

        vol = read_dicom_series(path)
    else:
        from ichseg.io.nifti import read_nifti

        vol = read_nifti(path)
    return rim_excess_hu(vol.hu, float(vol.pixel_spacing[0]))


def coarse_pixels(volume: Any, pixel_mm: float) -> Any:
    """``volume`` as a scanner with ``pixel_mm`` pixels would have stored it (area-averaged
    down, the affine scaled to match): do coarse pixels alone make a normal head bleed?"""
    import cv2
    import numpy as np

    from ichseg.io.volume import Volume

    f = volume.pixel_spacing[0] / pixel_mm
    h, w = volume.hu.shape[1:]
    size = (round(w * f), round(h * f))
    hu = np.stack([cv2.resize(s, size, interpolation=cv2.INTER_AREA) for s in volume.hu.astype(np.float32)])
    a = volume.affine_ras.copy()
    a[:3, 0] *= pixel_mm / volume.pixel_spacing[1]
    a[:3, 1] *= pixel_mm / volume.pixel_spacing[0]
    return Volume(hu, (volume.spacing_mm[0], pixel_mm, pixel_mm), a, source=f"{volume.source} at {pixel_mm:g} mm", modality="CT")


def coarse_check(data: Path, patients: list[str], model: Path | None, work: Path, pixels_mm=(0.7, 1.0)) -> list[dict]:
    """Each CT-ICH patient as stored and at each of ``pixels_mm``: verdict, mL, lesions."""
    from ichseg.data.convert import ctich_volume
    from ichseg.infer.pipeline import load_bundle
    from ichseg.infer.shipped import shipped_model_dir
    from ichseg.infer.volume import predict_volume

    bundle = load_bundle(Path(model) if model else shipped_model_dir("full"), runtime="auto", precision="fp32")
    out = []
    for pid in patients:
        vol, truth, _ = ctich_volume(Path(data) / "Patients_CT" / pid)
        for mm in (None, *pixels_mm):
            v = vol if mm is None else coarse_pixels(vol, mm)
            s = predict_volume(bundle, v, Path(work) / f"coarse-{pid}-{mm}", head_check=False)
            out.append(
                {"patient": pid, "labelled_px": int(truth.sum()), "pixel_mm": mm or float(vol.pixel_spacing[0]),
                 "hemorrhage": s["hemorrhage"], "scan_probability": s["scan_probability"],
                 "total_volume_ml": s["total_volume_ml"], "lesions": len(s["lesions"])}
            )  # fmt: skip
    return out


def _hu(v: float | None) -> str:
    return "" if v is None else f"{v:+.0f}"


def table_md(rows: list[dict[str, Any]], model: str) -> str:
    lines = [
        f"Model: {model}. Real CT from registry packages (no hemorrhage labels; see `ichseg.experiments.external`).",
        "",
        "| case | package | what it is | answer | positive slices | volume mL | lesions | inner-table rim, HU over brain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["exit"] == 0:
            answer = "HEMORRHAGE" if r["hemorrhage"] else "no hemorrhage"
            answer += f" ({r['scan_probability']:.2f})" + ("; contrast caution" if r.get("cautions") else "")
            lines.append(
                f"| {r['name']} | {r['package']} {r['version']} | {r['what']} | {answer} | "
                f"{r['positive_slices']} of {r['slices']} | {r['total_volume_ml']:.1f} | {r['lesions']} | "
                f"{_hu(r.get('rim_hu'))} |"
            )
        else:
            refused = f"refused (exit {r['exit']}): {r['answer']}"
            lines.append(f"| {r['name']} | {r['package']} {r['version']} | {r['what']} | {refused} | | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fetch", type=Path, required=True, help="where the packages are downloaded and the cases extracted")
    p.add_argument("--model", type=Path, default=None, help="model bundle (default: the shipped model)")
    p.add_argument("--out", type=Path, default=None, help="external.json and external.md (omit: fetch only)")
    p.add_argument("--work", type=Path, default=None, help="the predictions' folders (default: <fetch>/out)")
    p.add_argument("--rim-data", type=Path, default=None, help="a CT-ICH folder: also the rim of --rim-patients")
    p.add_argument("--rim-patients", default="", help="comma-separated CT-ICH patient IDs (e.g. normal ones)")
    p.add_argument("--coarse", action="store_true", help="also predict --rim-patients at 0.7 and 1.0 mm pixels")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    dest = fetch(a.fetch)
    if a.out is None:
        print(f"{len(CASES)} cases in {dest}")
        return 0
    rows = [run_case(dest, c, a.model, a.work or dest / "out") for c in CASES]
    for c, r in zip(CASES, rows, strict=True):
        r["rim_hu"] = case_rim(dest, c) if c.head else None
    rims: dict[str, float | None] = {}
    if a.rim_data is not None and a.rim_patients:
        from ichseg.data.convert import ctich_volume

        for pid in a.rim_patients.split(","):
            vol, _, _ = ctich_volume(a.rim_data / "Patients_CT" / pid)
            rims[pid] = rim_excess_hu(vol.hu, float(vol.pixel_spacing[0]))
    coarse = []
    if a.coarse and a.rim_data is not None and a.rim_patients:
        coarse = coarse_check(a.rim_data, a.rim_patients.split(","), a.model, a.work or dest / "out")
    model = str(a.model) if a.model is not None else "the shipped model"
    a.out.mkdir(parents=True, exist_ok=True)
    result = {"model": model, "cases": rows, "ct_ich_rim_hu": rims, "ct_ich_coarse_pixels": coarse}
    atomic_write_text(a.out / "external.json", json.dumps(result, indent=1) + "\n")
    md = table_md(rows, model)
    if rims:
        md += "\nInner-table rim of CT-ICH patients, HU over deep brain: " + ", ".join(f"{k} {_hu(v)}" for k, v in rims.items())
        md += "\n"
    if coarse:
        md += "\nCT-ICH patients at coarser pixels (patient, pixel mm: verdict, mL): "
        md += "; ".join(
            f"{c['patient']} {c['pixel_mm']:.2f}: {'HEMORRHAGE' if c['hemorrhage'] else 'negative'}, {c['total_volume_ml']:.1f}"
            for c in coarse
        )
        md += "\n"
    atomic_write_text(a.out / "external.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
