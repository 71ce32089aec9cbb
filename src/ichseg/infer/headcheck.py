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

Each test states what it found in the refusal, so a user can see why.

A head CT that goes on below the skull base (neck to vertex, head with cervical spine)
shows the mouth, the tongue and the neck, where soft tissue between the mandible and the
spine reads like brain and blood to a network that has only seen the cranium (a 5 mL
"lesion" in the floor of the mouth of a real neck-to-vertex series). No intracranial blood
lies there, so :func:`slices_below_brain` marks the slices too far below the cranium to
hold brain, and they are not read. A head that fails
the check (e.g. a scan cut to a few slices through the skull base) can still be run with
``--no-head-check``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

MAX_HEAD_WIDTH_MM = 260.0
MIN_BRAIN_CM2 = 15.0
MAX_BRAIN_CM2 = 300.0
MIN_HEAD_SLICE_SHARE = 0.25
MIN_BRAIN_SD_HU = 3.0
BRAIN_HU = (-10.0, 90.0)  # CSF, grey and white matter, fresh blood: what a skull holds

#: Slices whose skull encloses at least this much brain-like tissue are surely cranial (the
#: neck's mandible-to-spine hull holds ≤ 60 cm² on a real neck-to-vertex series; the
#: cerebrum 120-175 cm², a craniectomy's remaining bone still spans most of it).
CRANIAL_BRAIN_CM2 = 100.0
#: How far below the lowest such slice brain can still lie (posterior fossa, foramen
#: magnum). Measured: ≤ 10 mm for every labelled bleed of CT-ICH's 66 development
#: patients, about 30 mm for the cerebellum of a real neck-to-vertex series, whose floor of
#: the mouth lies 78-95 mm below; 123 of CT-ICH shows its floor of the mouth 45 mm below.
BELOW_BRAIN_MARGIN_MM = 60.0


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
    # per slice of the volume, whether it is surely cranial (slices_below_brain reuses it);
    # empty when the check looked at a subset of the slices
    cranial: tuple[bool, ...] = ()


def _largest_component(mask: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(mask, bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def slice_brain_area_mm2(
    hu: np.ndarray, pixel_mm: tuple[float, float], coarse_mm: float = 0.7
) -> tuple[float, float, np.ndarray]:
    """(brain-like area enclosed by bone in mm², body width in mm, that brain mask at the
    slice's size) of one slice. Pixels finer than ``coarse_mm`` are area-averaged by an
    integer factor first: areas and widths need no more, and CT-ICH's 0.35 mm slices then
    cost a quarter (the check ran 0.8 s of a 30-slice study's prediction before)."""
    hu = np.asarray(hu, np.float32)
    f = int(coarse_mm // min(pixel_mm)) if min(pixel_mm) > 0 else 1
    full = hu.shape
    if f >= 2 and min(full) // f >= 16:
        small = (full[1] // f, full[0] // f)  # cv2 sizes are (width, height)
        pixel_mm = (pixel_mm[0] * full[0] / small[1], pixel_mm[1] * full[1] / small[0])
        hu = cv2.resize(hu, small, interpolation=cv2.INTER_AREA)
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
    area = float(brain.sum() * px_area)
    if brain.shape != full:
        brain = cv2.resize(brain.view(np.uint8), full[::-1], interpolation=cv2.INTER_NEAREST).astype(bool)
    return area, float(width), brain


def check_head_ct(hu: np.ndarray, pixel_mm: tuple[float, float], max_slices: int = 40) -> HeadCheck:
    """Whether the volume ``hu`` (slices, rows, columns; in HU) shows a head CT, looking
    at no more than ``max_slices`` slices spread over it (a thin series needs no more)."""
    hu = np.asarray(hu, np.float32)
    every_slice = len(hu) <= max_slices
    if len(hu) > max_slices:
        hu = hu[np.unique(np.linspace(0, len(hu) - 1, max_slices).round().astype(int))]
    n = len(hu)
    lo = float(np.percentile(hu[:, ::4, ::4], 1))  # every 16th pixel: the same percentile, 16× cheaper
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
    # the spread of every other pixel of every other row: the same SD for a quarter of the work
    kept = [
        hu[k][::2, ::2][cv2.erode(brains[k].astype(np.uint8), np.ones((5, 5), np.uint8))[::2, ::2] > 0]
        for k in np.flatnonzero(headlike)
    ]
    inner = (
        np.concatenate(kept)
        if sum(len(v) for v in kept)
        else np.concatenate([hu[k][::2, ::2][brains[k][::2, ::2]] for k in np.flatnonzero(headlike)])
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
    cranial = (areas_cm2 >= CRANIAL_BRAIN_CM2) & (np.array(widths) <= MAX_HEAD_WIDTH_MM) if every_slice else ()
    return HeadCheck(
        True, f"skull around a brain on {int(headlike.sum())} of {n} slices", int(headlike.sum()), n, wmax, sd,
        tuple(bool(c) for c in cranial),
    )  # fmt: skip


def slices_below_brain(
    hu: np.ndarray, pixel_mm: tuple[float, float], superior_mm: np.ndarray, cranial: Sequence[bool] = ()
) -> tuple[np.ndarray, dict[str, Any] | None]:
    """(N,) bool: the slices more than ``BELOW_BRAIN_MARGIN_MM`` below the lowest slice
    whose bone encloses ≥ ``CRANIAL_BRAIN_CM2`` of brain-like tissue (in a head-sized
    cross-section), with what was found; nothing is marked (and None returned) when no such
    slice exists. ``superior_mm`` (N,) is each slice's height towards the vertex, so any
    slice order and direction works. The rule can only keep too much: a cranial slice
    missed (a small child's head, a head cut short) moves the limit down, never up.
    ``cranial``: the per-slice answer :func:`check_head_ct` already found (``HeadCheck.cranial``)."""
    hu = np.asarray(hu)
    z = np.asarray(superior_mm, np.float64)
    n = len(hu)
    if len(cranial) == n:
        cranial = np.asarray(cranial, bool)
    else:
        cranial = np.zeros(n, bool)
        for k in range(n):
            area, width, _ = slice_brain_area_mm2(hu[k], pixel_mm)
            cranial[k] = area / 100.0 >= CRANIAL_BRAIN_CM2 and width <= MAX_HEAD_WIDTH_MM
    if not cranial.any():
        return np.zeros(n, bool), None
    lowest = float(z[cranial].min())
    below = z < lowest - BELOW_BRAIN_MARGIN_MM
    info = {
        "slices_not_read": int(below.sum()),
        "why": (
            f"more than {BELOW_BRAIN_MARGIN_MM:.0f} mm below the lowest slice whose skull holds "
            f"≥ {CRANIAL_BRAIN_CM2:.0f} cm² of brain: below the skull base (mouth, neck), where no intracranial blood lies"
        ),
    }
    return below, info
