"""Why a normal head from another scanner is called bleeding: a per-case look (issue 14).

The shipped network outlines a band along the inner table of the skull on the real adult
head of ``dicom2stl-head`` (``ichseg.experiments.external``). Before another training-time
augmentation, this measures what that head differs in from CT-ICH's heads, in HU and mm:

- :func:`depth_profile_hu`: how much brighter than deep brain the tissue is at each depth
  below the inner table (a robust lower quartile, so a bleed covering part of the ring does
  not move it);
- :func:`noise_hu`: the in-plane noise of deep brain (residual after a 3 mm box filter),
  compared at the same pixel size;
- :func:`blob_geometry`: for each predicted (or labelled) 2D blob, its thickness, its
  distance from bone and its HU;
- two inference-time harmonisations, tried, not shipped: :func:`harmonise_rim_hu` (pulls
  the band's depth profile down to CT-ICH's) and a Gaussian blur to CT-ICH's noise.

``python -m ichseg.experiments.rim_look --fetch runs/external --data ../shared/ct-ich --out
results/external/rim-look`` writes ``rim_look.json`` and ``rim_look.md``; predictions stay
under ``--work``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ichseg.files import atomic_write_text

log = logging.getLogger(__name__)

DEPTH_BINS_MM = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15)
BONE_HU = 300
#: the depth profile (lower-quartile HU over deep brain per bin of DEPTH_BINS_MM) of
#: CT-ICH's heads, the median of 100, 104, 110, 116, 122, 060, 049 and 073 as
#: :func:`depth_profile_hu` measures them (``--data`` prints them again)
CTICH_PROFILE_HU = (56.0, 15.0, 7.0, 6.0, 6.0, 6.0, 6.0, 5.0, 3.0, 2.0)


def _cavity_and_depth(slice_hu: np.ndarray, pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    from ichseg.experiments.external import skull_cavity_depth_mm

    return skull_cavity_depth_mm(slice_hu, pixel_mm, BONE_HU)


def depth_profile_hu(hu: np.ndarray, pixel_mm: float, min_cavity_mm2: float = 5000.0) -> dict[str, Any]:
    """Lower-quartile and median HU of soft tissue (-20..150 HU) at each depth bin below
    the inner table, minus the median of deep brain (> 20 mm deep, 15-60 HU), pooled over
    the slices whose skull ring encloses at least ``min_cavity_mm2``. Bins without pixels
    (finer than the pixel) are None."""
    per_bin: list[list[np.ndarray]] = [[] for _ in DEPTH_BINS_MM[1:]]
    deep = []
    for s in np.asarray(hu, np.float32):
        cavity, depth = _cavity_and_depth(s, pixel_mm)
        if cavity.sum() * pixel_mm**2 < min_cavity_mm2:
            continue
        soft = cavity & (s > -20) & (s < 150)
        for i, (lo, hi) in enumerate(itertools.pairwise(DEPTH_BINS_MM)):
            per_bin[i].append(s[soft & (depth > lo) & (depth <= hi)])
        deep.append(s[cavity & (depth > 20) & (s > 15) & (s < 60)])
    if not deep:
        raise ValueError("no slice shows a closed skull ring around a brain")
    ref = float(np.median(np.concatenate(deep)))
    q25, med = [], []
    for chunks in per_bin:
        v = np.concatenate(chunks)
        q25.append(None if v.size == 0 else round(float(np.percentile(v, 25)) - ref, 1))
        med.append(None if v.size == 0 else round(float(np.median(v)) - ref, 1))
    return {"deep_brain_hu": round(ref, 1), "bins_mm": list(DEPTH_BINS_MM), "q25_over_brain_hu": q25, "median_over_brain_hu": med}


def noise_hu(hu: np.ndarray, pixel_mm: float) -> float:
    """Median over slices of the standard deviation of deep brain (15-60 HU, eroded away
    from edges) after removing a 3 mm box-filtered copy: the scanner's in-plane noise."""
    k = max(3, round(3 / pixel_mm) | 1)
    out = []
    for s in np.asarray(hu, np.float32):
        tissue = ((s > 15) & (s < 60)).astype(np.uint8)
        if tissue.sum() * pixel_mm**2 < 5000:
            continue
        inner = cv2.erode(tissue, np.ones((2 * k + 1, 2 * k + 1), np.uint8)).astype(bool)
        if inner.sum() >= 200:
            out.append(float(np.std((s - cv2.blur(s, (k, k)))[inner])))
    if not out:
        raise ValueError("no slice with enough brain to measure its noise")
    return float(np.median(out))


def blob_geometry(hu: np.ndarray, mask: np.ndarray, pixel_mm: float) -> list[dict[str, float]]:
    """Each 8-connected blob of ``mask`` (N, H, W) per slice: area (mm²), thickness (twice
    the largest inscribed radius, mm), median and largest distance from bone (mm), median HU."""
    rows = []
    for k, m in enumerate(np.asarray(mask, bool)):
        if not m.any():
            continue
        dist_bone = cv2.distanceTransform(np.ascontiguousarray(hu[k] <= BONE_HU, dtype=np.uint8), cv2.DIST_L2, 5) * pixel_mm
        n, labels = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        for c in range(1, n):
            blob = labels == c
            inner = cv2.distanceTransform(np.pad(blob, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
            rows.append(
                {"slice": k, "area_mm2": float(blob.sum() * pixel_mm**2), "thickness_mm": float(2 * inner.max() * pixel_mm),
                 "bone_distance_median_mm": float(np.median(dist_bone[blob])),
                 "bone_distance_max_mm": float(dist_bone[blob].max()), "hu_median": float(np.median(hu[k][blob]))}
            )  # fmt: skip
    return rows


def geometry_summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Area-weighted means of :func:`blob_geometry`'s rows, and the share of area in blobs
    thinner than 2.5 mm (a partial-volume rim would be)."""
    if not rows:
        return {"blobs": 0, "area_mm2": 0.0}
    w = np.array([r["area_mm2"] for r in rows])

    def mean(key: str) -> float:
        return round(float(np.average([r[key] for r in rows], weights=w)), 1)

    thin = np.array([r["thickness_mm"] < 2.5 for r in rows])
    return {
        "blobs": len(rows), "area_mm2": round(float(w.sum()), 0), "thickness_mm": mean("thickness_mm"),
        "bone_distance_median_mm": mean("bone_distance_median_mm"), "hu_median": mean("hu_median"),
        "share_thinner_than_2.5_mm": round(float(w[thin].sum() / w.sum()), 3),
    }  # fmt: skip


def harmonise_rim_hu(hu: np.ndarray, pixel_mm: float, profile: dict[str, Any]) -> np.ndarray:
    """``hu`` with the soft tissue at each depth lowered by how much its lower-quartile
    excess exceeds CT-ICH's (:data:`CTICH_PROFILE_HU`), linearly between bin centres and
    never raised: the band below the inner table made as bright as CT-ICH's."""
    q = [np.nan if v is None else v for v in profile["q25_over_brain_hu"]]
    delta = np.clip(np.nan_to_num(np.array(q) - np.array(CTICH_PROFILE_HU), nan=0.0), 0, None)
    centres = np.array([(a + b) / 2 for a, b in itertools.pairwise(DEPTH_BINS_MM)])
    out = np.asarray(hu, np.float32).copy()
    for s in out:
        cavity, depth = _cavity_and_depth(s, pixel_mm)
        soft = cavity & (s > -20) & (s < 150)
        s[soft] -= np.interp(depth[soft], centres, delta, right=0.0)
    return out


def blur_hu(hu: np.ndarray, pixel_mm: float, sigma_mm: float) -> np.ndarray:
    """In-plane Gaussian blur of ``sigma_mm``."""
    return np.stack([cv2.GaussianBlur(s, (0, 0), sigma_mm / pixel_mm) for s in np.asarray(hu, np.float32)])


def _predict(bundle: Any, volume: Any, hu: np.ndarray, out: Path) -> dict[str, Any]:
    import nibabel as nib

    from ichseg.infer.volume import predict_volume

    s = predict_volume(bundle, dataclasses.replace(volume, hu=hu), out, head_check=False)
    mask = np.asarray(nib.load(out / "mask.nii.gz").dataobj)
    if mask.shape[::-1] == hu.shape:  # NIfTI (x, y, z) back to (slice, row, column)
        mask = mask.transpose(2, 1, 0)
    px = float(volume.pixel_spacing[0])
    return {
        "hemorrhage": s["hemorrhage"], "total_volume_ml": round(s["total_volume_ml"], 1), "lesions": len(s["lesions"]),
        "positive_slices": int(sum(bool(m.any()) for m in mask > 0)), "blobs": geometry_summary(blob_geometry(hu, mask > 0, px)),
    }  # fmt: skip


def look(
    fetch_dir: Path, data: Path | None, patients: list[str], work: Path, case_name: str = "dicom2stl-head"
) -> dict[str, Any]:
    """The measurements above for one registry case (and CT-ICH ``patients`` from ``data``)."""
    from ichseg.experiments.registry_cases import CASES, case_input, fetch
    from ichseg.infer.pipeline import load_bundle
    from ichseg.infer.shipped import shipped_model_dir
    from ichseg.io.nifti import read_nifti

    dest = fetch(fetch_dir)
    (case,) = [c for c in CASES if c.name == case_name]
    vol = read_nifti(case_input(dest, case))
    px = float(vol.pixel_spacing[0])
    bundle = load_bundle(shipped_model_dir("full"), runtime="auto", precision="fp32")
    prof = depth_profile_hu(vol.hu, px)
    variants = {
        "as read": vol.hu,
        "rim harmonised": harmonise_rim_hu(vol.hu, px, prof),
        "blur 0.7 mm": blur_hu(vol.hu, px, 0.7),
        "blur 1.0 mm": blur_hu(vol.hu, px, 1.0),
    }
    b = variants["blur 1.0 mm"]
    variants["blur 1.0 mm + rim harmonised"] = harmonise_rim_hu(b, px, depth_profile_hu(b, px))
    result: dict[str, Any] = {
        "case": case.name, "pixel_mm": px, "depth_profile": prof, "noise_hu": round(noise_hu(vol.hu, px), 2),
        "predictions": {k: _predict(bundle, vol, h, Path(work) / k.replace(" ", "-")) for k, h in variants.items()},
        "ct_ich": {},
    }  # fmt: skip
    if data is not None:
        from ichseg.data.convert import ctich_volume
        from ichseg.experiments.external import coarse_pixels

        for pid in patients:
            v, truth, _ = ctich_volume(Path(data) / "Patients_CT" / pid)
            vp = float(v.pixel_spacing[0])
            row = {"depth_profile": depth_profile_hu(v.hu, vp), "noise_hu": round(noise_hu(v.hu, vp), 2),
                   "noise_hu_at_case_pixels": round(noise_hu(coarse_pixels(v, px).hu, px), 2)}  # fmt: skip
            if np.asarray(truth).any():
                row["labelled_blobs"] = geometry_summary(blob_geometry(v.hu, np.asarray(truth) > 0, vp))
            result["ct_ich"][pid] = row
    return result


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:+.0f}"


def markdown(r: dict[str, Any]) -> str:
    bins = r["depth_profile"]["bins_mm"]
    heads = [f"{a}-{b} mm" for a, b in itertools.pairwise(bins)]
    lines = [
        f"Per-case look at `{r['case']}` ({r['pixel_mm']:.2f} mm pixels), the shipped model, float32.",
        "",
        "Lower-quartile HU over deep brain by depth below the inner table:",
        "",
        "| head | deep brain HU | noise HU | noise HU at the case's pixels | " + " | ".join(heads) + " |",
        "|---|---|---|---|" + "---|" * len(heads),
        f"| {r['case']} | {r['depth_profile']['deep_brain_hu']:.1f} | {r['noise_hu']:.1f} | {r['noise_hu']:.1f} | "
        + " | ".join(_fmt(v) for v in r["depth_profile"]["q25_over_brain_hu"])
        + " |",
    ]
    for pid, c in r["ct_ich"].items():
        lines.append(
            f"| CT-ICH {pid} | {c['depth_profile']['deep_brain_hu']:.1f} | {c['noise_hu']:.1f} | "
            f"{c['noise_hu_at_case_pixels']:.1f} | " + " | ".join(_fmt(v) for v in c["depth_profile"]["q25_over_brain_hu"]) + " |"
        )
    lines += [
        "",
        "| input | verdict | volume mL | lesions | positive slices | blob thickness mm | "
        "median distance from bone mm | blob HU | share thinner than 2.5 mm |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, p in r["predictions"].items():
        g = p["blobs"]
        lines.append(
            f"| {k} | {'HEMORRHAGE' if p['hemorrhage'] else 'negative'} | {p['total_volume_ml']:.1f} | {p['lesions']} | "
            f"{p['positive_slices']} | {g.get('thickness_mm', '')} | {g.get('bone_distance_median_mm', '')} | "
            f"{g.get('hu_median', '')} | {g.get('share_thinner_than_2.5_mm', '')} |"
        )
    labelled = {pid: c["labelled_blobs"] for pid, c in r["ct_ich"].items() if "labelled_blobs" in c}
    if labelled:
        each = [f"{pid}: {g['thickness_mm']}, {g['bone_distance_median_mm']}, {g['hu_median']}" for pid, g in labelled.items()]
        lines += ["", "CT-ICH labelled blood, same geometry (patient: thickness mm, bone distance mm, HU): " + "; ".join(each)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ichseg.experiments.rim_look", description=__doc__.split("\n\n")[0])
    p.add_argument("--fetch", type=Path, required=True, help="where ichseg.experiments.external extracts its cases")
    p.add_argument("--data", type=Path, default=None, help="a CT-ICH folder: its patients' profiles beside the case's")
    p.add_argument("--patients", default="100,104,110,116,122,060,049,073")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("runs/rim-look"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    r = look(a.fetch, a.data, [s for s in a.patients.split(",") if s], a.work)
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.out / "rim_look.json", json.dumps(r, indent=1) + "\n")
    md = markdown(r)
    atomic_write_text(a.out / "rim_look.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
