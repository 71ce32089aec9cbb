"""Is this a head CT? Decided from what the images show, not from the tags.

The model has only seen heads. An abdomen, a chest, an MR series or a water phantom sent to
it still gets an answer, and any answer would be wrong; tags cannot be trusted to say so
(BodyPartExamined is often empty or wrong, and NIfTI has none). So before predicting we
look for the two things every head CT has:

1. **Hounsfield units**: air outside the patient near -1000 HU and soft tissue near 0-80
   HU. An MR series (or a CT exported without its rescale) has neither.
2. **A skull around a brain**: on a share of the slices, the convex hull of the bone
   (> 300 HU) holds brain-like tissue (-10 to 90 HU) of ``MIN_BRAIN_CM2``-``MAX_BRAIN_CM2``, in a body cross-section
   at most ``MAX_HEAD_WIDTH_MM`` wide. An abdomen or chest is wider than any head, and its
   bones (spine, ribs, pelvis) enclose no brain; a head holds one on most of its slices.
3. **Brain, not water**: the tissue inside the skull varies (grey and white matter, CSF);
   a water phantom inside a plastic or bone-like shell is flat to a few HU.

Each test states what it found in the refusal, so a user can see why. A head that fails
the check (e.g. a scan cut to a few slices through the skull base) can still be run with
``--no-head-check``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MAX_HEAD_WIDTH_MM = 260.0
MIN_BRAIN_CM2 = 15.0
MAX_BRAIN_CM2 = 300.0
MIN_HEAD_SLICE_SHARE = 0.25
MIN_BRAIN_SD_HU = 3.0
BRAIN_HU = (-10.0, 90.0)  # CSF, grey and white matter, fresh blood: what a skull holds


class NotAHeadCT(ValueError):
    """The images do not show a head CT; the message says what was found."""


@dataclass(frozen=True)
class HeadCheck:
    is_head: bool
    reason: str
    head_slices: int
    slices: int
    max_body_width_mm: float
    brain_sd_hu: float | None


def _largest_component(mask: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(mask, bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def slice_brain_area_mm2(hu: np.ndarray, pixel_mm: tuple[float, float]) -> tuple[float, float, np.ndarray]:
    """(brain-like area enclosed by bone in mm², body width in mm, that brain mask) of one slice."""
    px_area = pixel_mm[0] * pixel_mm[1]
    body = _largest_component(hu > -300)
    width = 0.0
    if body.any():
        cols = np.flatnonzero(body.any(0))
        rows = np.flatnonzero(body.any(1))
        width = max((cols[-1] - cols[0] + 1) * pixel_mm[1], (rows[-1] - rows[0] + 1) * pixel_mm[0])
    # the skull has gaps (sutures, foramina, the skull base, a craniotomy): what it
    # encloses is taken as the convex hull of its bone, not as the holes of a closed ring
    bone = hu > 300
    inside = np.zeros_like(bone)
    ys, xs = np.nonzero(bone)
    if len(ys) >= 3:
        hull = cv2.convexHull(np.stack([xs, ys], 1).astype(np.int32))
        cv2.fillConvexPoly(inside.view(np.uint8), hull, 1)
        inside &= ~bone
    brain = inside & (hu >= BRAIN_HU[0]) & (hu <= BRAIN_HU[1])
    return float(brain.sum() * px_area), float(width), brain


def check_head_ct(hu: np.ndarray, pixel_mm: tuple[float, float], max_slices: int = 40) -> HeadCheck:
    """Whether the volume ``hu`` (slices, rows, columns; in HU) shows a head CT, looking
    at no more than ``max_slices`` slices spread over it (a thin series needs no more)."""
    hu = np.asarray(hu, np.float32)
    if len(hu) > max_slices:
        hu = hu[np.unique(np.linspace(0, len(hu) - 1, max_slices).round().astype(int))]
    n = len(hu)
    lo = float(np.percentile(hu, 1))
    if lo > -500:
        return HeadCheck(
            False, f"no air at about -1000 HU (1st percentile {lo:.0f}): not CT in Hounsfield units", 0, n, 0.0, None
        )
    areas, widths, brains = [], [], []
    for k in range(n):
        a, w, b = slice_brain_area_mm2(hu[k], pixel_mm)
        areas.append(a / 100.0)
        widths.append(w)
        brains.append(b)
    areas_cm2 = np.array(areas)
    headlike = (areas_cm2 >= MIN_BRAIN_CM2) & (areas_cm2 <= MAX_BRAIN_CM2) & (np.array(widths) <= MAX_HEAD_WIDTH_MM)
    share = float(headlike.mean()) if n else 0.0
    wmax = float(max(widths)) if widths else 0.0
    if not headlike.any() or share < MIN_HEAD_SLICE_SHARE:
        what = (
            f"widest cross-section {wmax:.0f} mm (a head is at most {MAX_HEAD_WIDTH_MM:.0f})"
            if wmax > MAX_HEAD_WIDTH_MM
            else f"largest region enclosed by bone with brain-like HU {areas_cm2.max(initial=0):.0f} cm²"
        )
        return HeadCheck(
            False,
            f"no skull around a brain on {n - int(headlike.sum())} of {n} slices ({what}): not a head CT",
            int(headlike.sum()),
            n,
            wmax,
            None,
        )
    kept = [hu[k][cv2.erode(brains[k].astype(np.uint8), np.ones((5, 5), np.uint8)) > 0] for k in np.flatnonzero(headlike)]
    inner = (
        np.concatenate(kept)
        if sum(len(v) for v in kept)
        else np.concatenate([hu[k][brains[k]] for k in np.flatnonzero(headlike)])
    )
    sd = float(inner.std()) if inner.size else 0.0
    if inner.size and sd < MIN_BRAIN_SD_HU:
        return HeadCheck(
            False,
            f"the region inside the skull is uniform (SD {sd:.1f} HU, brain varies by more than {MIN_BRAIN_SD_HU:g}): "
            "a phantom, not a head",
            int(headlike.sum()),
            n,
            wmax,
            sd,
        )
    return HeadCheck(True, f"skull around a brain on {int(headlike.sum())} of {n} slices", int(headlike.sum()), n, wmax, sd)
