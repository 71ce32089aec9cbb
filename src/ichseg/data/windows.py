"""How CT-ICH's two 8-bit windows were estimated, in Hounsfield units (the mapping itself,
HU ↔ grey levels, is :mod:`ichseg.io.hu`; this module re-exports it).

The model was trained on CT-ICH's JPGs: each slice twice, as a *brain* window and a *bone*
window, exported from Siemens syngo as 8-bit grey. The dataset does not say which windows.
To run the model on DICOM or NIfTI volumes in HU we must produce the same grey levels, so
the windows were estimated from the data (:func:`estimate_windows`, method and numbers in
``docs/WINDOWS.md``; rerun with ``python -m ichseg.data.windows PATH/TO/ct-ich``):

* the two JPGs of a slice show the same HU through two linear windows, so where neither is
  saturated their tile means obey ``bone = g0 + brain · (g255 − g0) / 255``; over the 66
  development patients g0 = 70.11 and g255 = 79.66 bone-window grey levels (patients'
  IQR ±0.03): the bone window is 26.7× wider than the brain window, and this fixes where
  the brain window's black and white ends sit inside it;
* anatomy pins the absolute scale: the pooled peak of homogeneous fat in the bone window
  (grey 64.1, fat ≈ −100 HU), of ventricular CSF in the brain window (grey 56.6, ≈ 5 HU)
  and the patients' median intracranial parenchyma (brain grey 122, ≈ 34 HU) are fitted
  by one line.

That gives brain centre 37 HU (95 % interval 32–43), width 120 (101–137); bone centre
699 (591–795), width 3207 (2701–3653); the intervals come from the bootstrap over
patients and the uncertainty of the anatomical HU. The constants below are the round
values inside those intervals, brain 40/120 and bone 700/3200 (centre/width), which also
reproduce g0 and g255 to within 0.04 grey levels. ``docs/WINDOWS.md`` has the details.

The grey-level mapping is DICOM's linear VOI LUT function (PS3.3 C.11.2.1.2.1) onto
0–255, rounded to the nearest level, which is what an 8-bit window export does.

Why it is long: the window estimate is one statistical method (block regression,
anatomical anchors, bootstrap) with its command-line entry; its steps are private and only
meaningful together.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ichseg.io.hu import (  # noqa: F401  (re-exported: the estimate and the constants it rounds to)
    AIR_HU,
    BONE_FALLBACK_HU,
    BONE_WINDOW,
    BRAIN_HIGH_SATURATED,
    BRAIN_LOW_SATURATED,
    BRAIN_WINDOW,
    Window,
    gray_to_hu,
    hu_to_windows,
    window_hu,
    windows_to_hu,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- estimation

ANCHOR_PRIORS_HU: dict[str, tuple[float, float]] = {
    "fat": (-100.0, 10.0),  # subcutaneous fat: −80 … −120 HU in the literature
    "csf": (5.0, 4.0),  # ventricular CSF: 0 … 15 HU (water is 0 by calibration)
    "parenchyma": (34.0, 3.0),  # whole-brain median: white matter ≈ 25–30, grey ≈ 35–45 HU, mixed on 5 mm slices
}
"""Mean and 1 s.d. of the HU each anatomical anchor is assumed to have."""

_FAT_RANGE = (55, 70)  # bone-window grey range searched for the fat peak (soft tissue sits at ~75)
_CSF_RANGE = (30, 80)  # brain-window grey range searched for the CSF peak (parenchyma starts ~85)
_SLICE_RE = re.compile(r"^(\d+)\.jpe?g$", re.IGNORECASE)


@dataclass
class PatientWindowStats:
    """What one patient's slices say, in grey levels (None where not measurable)."""

    patient_id: str
    n_slices: int
    n_blocks: int
    bone_at_brain_0: float  # g0: bone grey where the brain window turns black
    bone_at_brain_255: float  # g255: bone grey where it turns white
    parenchyma_brain: float | None  # median brain grey of intracranial parenchyma
    fat_bone: float | None  # bone grey of this patient's fat peak, when it has one
    csf_brain: float | None  # brain grey of this patient's CSF peak, when it has one
    cortical_bone: float | None  # 99th percentile bone grey of skull pixels (sanity check only)
    fat_hist: list[int] = field(default_factory=list, repr=False)  # homogeneous head pixels, bone window
    csf_hist: list[int] = field(default_factory=list, repr=False)  # homogeneous inner-brain pixels, brain window


@dataclass
class WindowEstimate:
    """Dataset-level estimate with 95 % intervals, and where the chosen constants put the anchors."""

    n_patients: int
    relation: dict[str, float]
    anchors_gray: dict[str, float]
    estimated: dict[str, dict[str, float]]
    chosen: dict[str, dict[str, float]]
    chosen_check: dict[str, float]
    priors_hu: dict[str, tuple[float, float]]
    patients: list[PatientWindowStats] = field(default_factory=list)


def _slice_pairs(patient_dir: Path) -> Iterator[tuple[Path, Path]]:
    brain_dir, bone_dir = patient_dir / "brain", patient_dir / "bone"
    if not brain_dir.is_dir() or not bone_dir.is_dir():
        return
    names = sorted((p for p in brain_dir.iterdir() if _SLICE_RE.match(p.name)), key=lambda p: int(p.stem))
    for p in names:
        twin = bone_dir / p.name
        if twin.exists():
            yield p, twin


def _read_u8(path: Path) -> np.ndarray:
    from ichseg.data.cache import read_grey_u8

    return read_grey_u8(path)


def _block_means(brain: np.ndarray, bone: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of block × block tiles where no pixel is saturated in either window.

    Block means, not pixels: the bone JPG is coarser (12.5 HU per grey level) and smoother
    (its compression blurs) than the brain JPG, so pixel pairs scatter and a fit on them
    is biased; the mean of a tile in either window is the same linear function of the
    tile's mean HU, with 64× less noise."""
    h, w = (brain.shape[0] // block) * block, (brain.shape[1] // block) * block
    a = brain[:h, :w].reshape(h // block, block, w // block, block).astype(np.float32)
    o = bone[:h, :w].reshape(h // block, block, w // block, block).astype(np.float32)
    ok = (
        (a.min(axis=(1, 3)) > BRAIN_LOW_SATURATED)
        & (a.max(axis=(1, 3)) < BRAIN_HIGH_SATURATED)
        & (o.min(axis=(1, 3)) >= 1)
        & (o.max(axis=(1, 3)) <= 254)
    )
    return a.mean(axis=(1, 3))[ok], o.mean(axis=(1, 3))[ok]


def _head_mask(bone: np.ndarray) -> np.ndarray:
    """The head (largest non-air blob, holes filled) on a bone-window slice."""
    head = (bone > 20).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(head, connectivity=4)
    if n <= 1:
        return np.zeros(bone.shape, bool)
    head = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    contours, _ = cv2.findContours(head, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(head)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def _local_range(image: np.ndarray, size: int) -> np.ndarray:
    k = np.ones((size, size), np.uint8)
    return cv2.dilate(image, k).astype(np.float32) - cv2.erode(image, k).astype(np.float32)


def _homogeneous_fat_hist(bone: np.ndarray) -> np.ndarray:
    """Bone-window histogram of head pixels whose 5×5 neighbourhood spans ≤ 2 grey levels.

    Only homogeneous pixels: fat next to skin, muscle or air is a partial-volume mixture
    (and the bone JPG is blurred), which smears any fat peak towards soft tissue; inside a
    thick fat layer (scalp, orbit, neck) the pixels are pure fat."""
    sel = _head_mask(bone) & (_local_range(bone, 5) <= 2)
    return np.bincount(bone[sel], minlength=256)


def _homogeneous_csf_hist(brain: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Brain-window histogram, after a 7×7 mean (single-pixel noise here is ~10 grey levels),
    of inner intracranial pixels whose 7×7 neighbourhood of means spans ≤ 6 levels: the
    ventricles' CSF forms a peak there, apart from the parenchyma."""
    inner = cv2.erode(inside.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    smooth = cv2.blur(brain.astype(np.float32), (7, 7))
    sel = inner & (_local_range(smooth, 7) <= 6)
    return np.bincount(np.clip(np.rint(smooth[sel]), 0, 255).astype(np.int64), minlength=256)


def _peak(hist: np.ndarray, lo: int, hi: int, min_count: int = 200) -> float | None:
    """Mode of ``hist`` within [lo, hi] to a fraction of a level (parabola through the
    maximum of the 3-smoothed histogram and its neighbours); None when the maximum lies on
    the range's edge (a slope, not a peak) or holds fewer than ``min_count`` pixels."""
    h = np.convolve(np.asarray(hist, np.float64), np.ones(3) / 3, mode="same")
    k = lo + int(np.argmax(h[lo : hi + 1]))
    if k in (lo, hi) or h[k] < min_count:
        return None
    y0, y1, y2 = h[k - 1], h[k], h[k + 1]
    denom = y0 - 2 * y1 + y2
    return float(k + (0.5 * (y0 - y2) / denom if denom < 0 else 0.0))


def patient_window_stats(patient_dir: Path, block: int = 8) -> PatientWindowStats | None:
    """Measure one CT-ICH patient folder (``brain/<n>.jpg`` with ``bone/<n>.jpg`` twins)."""
    from ichseg.data.normalize import intracranial_mask, parenchyma_level

    xs, ys, brains, bones, skull = [], [], [], [], []
    fat_hist = np.zeros(256, np.int64)
    csf_hist = np.zeros(256, np.int64)
    for brain_path, bone_path in _slice_pairs(patient_dir):
        a, o = _read_u8(brain_path), _read_u8(bone_path)
        if a.shape != o.shape:
            log.warning("%s: brain %s and bone %s differ in size; slice skipped", brain_path, a.shape, o.shape)
            continue
        brains.append(a)
        bones.append(o)
        x, y = _block_means(a, o, block)
        xs.append(x)
        ys.append(y)
        fat_hist += _homogeneous_fat_hist(o)
        inside = intracranial_mask(o)
        if not inside.all() and inside.sum() > 0.01 * inside.size:
            csf_hist += _homogeneous_csf_hist(a, inside)
        skull.append(o[o > 100])
    if not brains:
        return None
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(x) < 100:
        log.warning("%s: only %d unsaturated blocks; patient skipped", patient_dir, len(x))
        return None
    # bone on brain: the brain window is the precise one, so it is the regressor
    slope, icpt = np.polyfit(x.astype(np.float64), y.astype(np.float64), 1)
    skull_px = np.concatenate(skull)
    return PatientWindowStats(
        patient_id=patient_dir.name,
        n_slices=len(brains),
        n_blocks=len(x),
        bone_at_brain_0=float(icpt),
        bone_at_brain_255=float(icpt + 255 * slope),
        parenchyma_brain=parenchyma_level(np.stack(brains), np.stack(bones)),
        fat_bone=_peak(fat_hist, *_FAT_RANGE),
        csf_brain=_peak(csf_hist, *_CSF_RANGE),
        cortical_bone=float(np.percentile(skull_px, 99)) if len(skull_px) > 1000 else None,
        fat_hist=fat_hist.tolist(),
        csf_hist=csf_hist.tolist(),
    )


def _fit_bone_window(gray: np.ndarray, hu: np.ndarray, sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares line HU = lower + gray / 255 · width through the anchors.

    ``gray`` and ``hu`` are (..., K) for K anchors (gray in bone-window levels), ``sd`` (K,)
    the prior s.d. of each anchor's HU; returns (lower, width) of the bone window."""
    w = 1.0 / np.asarray(sd, np.float64) ** 2
    sw = w.sum()
    mx = (gray * w).sum(-1) / sw
    my = (hu * w).sum(-1) / sw
    slope = (w * (gray - mx[..., None]) * (hu - my[..., None])).sum(-1) / (w * (gray - mx[..., None]) ** 2).sum(-1)
    return my - slope * mx, slope * 255.0


def _anchor_grays(stats: Sequence[PatientWindowStats]) -> dict[str, float]:
    """Dataset-level grey levels: medians of the per-patient relation and parenchyma, and the
    fat and CSF peaks of the pooled histograms (a single patient's peak is often too small
    to find; pooled, the peaks are clear)."""
    fat = _peak(np.sum([s.fat_hist for s in stats], axis=0), *_FAT_RANGE)
    csf = _peak(np.sum([s.csf_hist for s in stats], axis=0), *_CSF_RANGE)
    par = [s.parenchyma_brain for s in stats if s.parenchyma_brain is not None]
    return {
        "g0": float(np.median([s.bone_at_brain_0 for s in stats])),
        "g255": float(np.median([s.bone_at_brain_255 for s in stats])),
        "parenchyma_brain": float(np.median(par)) if par else float("nan"),
        "fat_bone": float("nan") if fat is None else fat,
        "csf_brain": float("nan") if csf is None else csf,
    }


def _windows_from(grays: dict[str, np.ndarray], hu: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Both windows from the relation (g0, g255) and the anchors; the brain-window anchors are
    carried into bone-window levels through the relation, then one line is fitted."""
    g0, g255 = grays["g0"], grays["g255"]

    def to_bone(brain_gray: np.ndarray) -> np.ndarray:
        return g0 + brain_gray * (g255 - g0) / 255.0

    names = [n for n in ("fat", "csf", "parenchyma") if np.all(np.isfinite(grays[_GRAY_KEY[n]]))]
    gray = np.stack([grays["fat_bone"] if n == "fat" else to_bone(grays[_GRAY_KEY[n]]) for n in names], axis=-1)
    target = np.stack([hu[n] for n in names], axis=-1)
    lo_bone, w_bone = _fit_bone_window(gray, target, np.array([ANCHOR_PRIORS_HU[n][1] for n in names]))
    w_brain = w_bone * (g255 - g0) / 255.0
    lo_brain = lo_bone + g0 / 255.0 * w_bone
    return {
        "brain_center": lo_brain + w_brain / 2,
        "brain_width": w_brain,
        "bone_center": lo_bone + w_bone / 2,
        "bone_width": w_bone,
    }


_GRAY_KEY = {"fat": "fat_bone", "csf": "csf_brain", "parenchyma": "parenchyma_brain"}


def estimate_windows(data_dir: Path, patients: Sequence[str] | None = None, n_boot: int = 2000, seed: int = 0) -> WindowEstimate:
    """Estimate CT-ICH's brain and bone windows from the JPGs alone (see the module docstring).

    ``data_dir`` holds ``Patients_CT/``. Per patient: the inter-window relation, the
    parenchyma median and the fat and CSF histograms. The 95 % intervals come from
    ``n_boot`` bootstrap resamples of the patients, each with HU drawn from the anchor
    priors (``ANCHOR_PRIORS_HU``). About three minutes for 66 patients on one core.
    """
    from ichseg.data.ctich import PATIENTS_DIR, DatasetError

    root = Path(data_dir) / PATIENTS_DIR
    if not root.is_dir():
        raise DatasetError(f"{data_dir}: no {PATIENTS_DIR} folder")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and (patients is None or p.name in patients))
    stats = []
    for d in dirs:
        s = patient_window_stats(d)
        if s is not None:
            stats.append(s)
            log.info("%s: g0 %.2f g255 %.2f parenchyma %s", d.name, s.bone_at_brain_0, s.bone_at_brain_255, s.parenchyma_brain)
    if not stats:
        raise DatasetError(f"{root}: no patient with brain/bone slice pairs")

    grays = _anchor_grays(stats)
    point_hu = {n: np.float64(m) for n, (m, _) in ANCHOR_PRIORS_HU.items()}
    point = _windows_from({k: np.float64(v) for k, v in grays.items()}, point_hu)

    rng = np.random.default_rng(seed)
    boot = [_anchor_grays([stats[i] for i in rng.integers(0, len(stats), len(stats))]) for _ in range(n_boot)]
    boot_grays = {k: np.array([b[k] for b in boot]) for k in grays}
    ok = np.all([np.isfinite(v) | ~np.isfinite(grays[k]) for k, v in boot_grays.items()], axis=0)
    boot_grays = {k: v[ok] for k, v in boot_grays.items()}
    draws_hu = {n: rng.normal(m, s, int(ok.sum())) for n, (m, s) in ANCHOR_PRIORS_HU.items()}
    sims = _windows_from(boot_grays, draws_hu)
    estimated = {
        k: {
            "estimate": float(point[k]),
            "ci95_low": float(np.percentile(v, 2.5)),
            "ci95_high": float(np.percentile(v, 97.5)),
        }
        for k, v in sims.items()
    }
    q = {k: np.percentile(v, [2.5, 97.5]) for k, v in boot_grays.items()}
    par = [s.parenchyma_brain for s in stats if s.parenchyma_brain is not None]
    anchors = {
        **{k: v for k, v in grays.items() if k not in ("g0", "g255")},
        **{f"{k}_ci95": [float(q[k][0]), float(q[k][1])] for k in ("parenchyma_brain", "fat_bone", "csf_brain")},
        "parenchyma_brain_iqr": [float(v) for v in np.percentile(par, [25, 75])] if par else [],
        "fat_bone_patients_with_peak": sum(s.fat_bone is not None for s in stats),
        "csf_brain_patients_with_peak": sum(s.csf_brain is not None for s in stats),
    }
    cort = [s.cortical_bone for s in stats if s.cortical_bone is not None]
    if cort:
        anchors["cortical_bone"] = float(np.median(cort))
    g0s = [s.bone_at_brain_0 for s in stats]
    g255s = [s.bone_at_brain_255 for s in stats]
    relation = {
        "g0": grays["g0"],
        "g0_iqr": [float(v) for v in np.percentile(g0s, [25, 75])],
        "g0_ci95": [float(v) for v in q["g0"]],
        "g255": grays["g255"],
        "g255_iqr": [float(v) for v in np.percentile(g255s, [25, 75])],
        "g255_ci95": [float(v) for v in q["g255"]],
        "width_ratio": 255.0 / (grays["g255"] - grays["g0"]),
    }

    def brain_hu(g: float) -> float:
        return float(gray_to_hu(g, BRAIN_WINDOW.center, BRAIN_WINDOW.width))

    def bone_hu(g: float) -> float:
        return float(gray_to_hu(g, BONE_WINDOW.center, BONE_WINDOW.width))

    chosen_check = {
        "g0_predicted": window_hu_float(BRAIN_WINDOW.lower, BONE_WINDOW),
        "g255_predicted": window_hu_float(BRAIN_WINDOW.upper, BONE_WINDOW),
        "parenchyma_hu": brain_hu(grays["parenchyma_brain"]),
        "fat_hu": bone_hu(grays["fat_bone"]),
        "csf_hu": brain_hu(grays["csf_brain"]),
    }
    if cort:
        chosen_check["cortical_bone_hu"] = bone_hu(anchors["cortical_bone"])
    return WindowEstimate(
        n_patients=len(stats),
        relation=relation,
        anchors_gray=anchors,
        estimated=estimated,
        chosen={"brain": asdict(BRAIN_WINDOW), "bone": asdict(BONE_WINDOW)},
        chosen_check=chosen_check,
        priors_hu=dict(ANCHOR_PRIORS_HU),
        patients=stats,
    )


def window_hu_float(hu: float, window: Window) -> float:
    """The unrounded, unclipped grey level of ``hu`` in ``window`` (for reporting fits)."""
    return float(((hu - (window.center - 0.5)) / (window.width - 1) + 0.5) * 255.0)


def format_estimate(est: WindowEstimate) -> str:
    """The estimate as the plain-text report ``python -m ichseg.data.windows`` prints."""
    r, a, c, p = est.relation, est.anchors_gray, est.chosen_check, est.priors_hu

    def ci(v: list[float]) -> str:
        return f"[{v[0]:.2f}, {v[1]:.2f}]"

    lines = [
        f"patients measured: {est.n_patients}",
        "inter-window relation: bone-window grey where the brain window turns black (g0) and white (g255)",
        f"  g0   = {r['g0']:.2f}  patients' IQR {ci(r['g0_iqr'])}, 95 % CI {ci(r['g0_ci95'])}"
        f"   chosen windows: {c['g0_predicted']:.2f}",
        f"  g255 = {r['g255']:.2f}  patients' IQR {ci(r['g255_iqr'])}, 95 % CI {ci(r['g255_ci95'])}"
        f"   chosen windows: {c['g255_predicted']:.2f}",
        f"  bone width / brain width = {r['width_ratio']:.2f}   chosen: {BONE_WINDOW.width / BRAIN_WINDOW.width:.2f}",
        "anchors: grey level (95 % CI) -> HU under the chosen windows (prior used in the fit)",
        f"  parenchyma, brain window, median of patients {a['parenchyma_brain']:.1f} {ci(a['parenchyma_brain_ci95'])}"
        f" -> {c['parenchyma_hu']:.1f} HU  (prior {p['parenchyma'][0]:g} ± {p['parenchyma'][1]:g})",
        f"  fat, bone window, pooled peak {a['fat_bone']:.2f} {ci(a['fat_bone_ci95'])}"
        f" -> {c['fat_hu']:.1f} HU  (prior {p['fat'][0]:g} ± {p['fat'][1]:g};"
        f" {a['fat_bone_patients_with_peak']} patients show their own peak)",
        f"  CSF, brain window, pooled peak {a['csf_brain']:.2f} {ci(a['csf_brain_ci95'])}"
        f" -> {c['csf_hu']:.1f} HU  (prior {p['csf'][0]:g} ± {p['csf'][1]:g};"
        f" {a['csf_brain_patients_with_peak']} patients show their own peak)",
    ]
    if "cortical_bone" in a:
        lines.append(
            f"  skull, 99th percentile, bone window {a['cortical_bone']:.1f} -> {c['cortical_bone_hu']:.0f} HU"
            "  (check only: dense cortical bone is 1500-2000 HU)"
        )
    lines.append("estimated windows, point estimate [95 % interval] (HU):")
    for k, v in est.estimated.items():
        lines.append(f"  {k:13s} {v['estimate']:8.1f}  [{v['ci95_low']:.1f}, {v['ci95_high']:.1f}]")
    lines.append(
        f"chosen: brain C{BRAIN_WINDOW.center:g}/W{BRAIN_WINDOW.width:g} ({BRAIN_WINDOW.lower:g} .. {BRAIN_WINDOW.upper:g} HU),"
        f" bone C{BONE_WINDOW.center:g}/W{BONE_WINDOW.width:g} ({BONE_WINDOW.lower:g} .. {BONE_WINDOW.upper:g} HU)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ichseg.data.windows DATA [--patients 049 052] [--json FILE]``."""
    parser = argparse.ArgumentParser(
        prog="python -m ichseg.data.windows", description="Estimate CT-ICH's brain and bone windows."
    )
    parser.add_argument("data", type=Path, help="folder holding Patients_CT/")
    parser.add_argument("--patients", nargs="*", help="only these patient IDs")
    parser.add_argument("--json", type=Path, help="also write the estimate (with per-patient numbers) as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    est = estimate_windows(args.data, patients=args.patients)
    print(format_estimate(est))
    if args.json:
        from ichseg.files import atomic_write_text

        doc = asdict(est)
        for row in doc["patients"]:  # histograms stay out of the JSON: 512 numbers per patient
            row.pop("fat_hist", None)
            row.pop("csf_hist", None)
        atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
