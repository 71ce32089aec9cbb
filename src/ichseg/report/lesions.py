"""Hemorrhage lesions from a predicted mask: 3-D connected regions, their volumes (voxel count
and the bedside ABC/2 estimate), where they are, and their most likely subtype.

Everything here is a pure function of numpy arrays and a voxel spacing, so the numbers a
report shows can be recomputed from the saved mask alone.

Connectivity: 8-connected within a slice, and across slices two in-plane regions belong to
one lesion when their footprints overlap (share at least one (row, column) pixel), i.e.
the 3-D neighbourhood of the 8 in-plane neighbours plus the 2 face neighbours along the
slice axis. Why: CT pixels are ~0.45 mm but slices are ~5 mm apart, so a voxel that
touches the next slice only at a corner is ~5 mm away from it in 3-D, while in-plane a thin
oblique rim of subdural blood is often continuous only through pixel corners; 6-connectivity
would cut such rims into pieces and 26-connectivity would merge separate bleeds that
merely sit diagonally above one another. Implemented with OpenCV per slice plus
union-find across slices (no scipy or cc3d dependency); ``scipy.ndimage.label`` with the
equivalent structuring element gives the same labels (tested when scipy is installed).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

#: Hemorrhage subtype heads of the slice classifier (the RSNA/CT-ICH five). "fracture" is
#: a head too but not a hemorrhage subtype, so it is never a lesion's subtype.
SUBTYPES: tuple[str, ...] = ("intraventricular", "intraparenchymal", "subarachnoid", "epidural", "subdural")

#: Kothari et al. slice weights: a slice counts 1 if its hemorrhage area is ≥ 75 % of the
#: largest slice's, 0.5 if ≥ 25 %, else 0.
ABC2_FULL_SLICE_FRACTION = 0.75
ABC2_HALF_SLICE_FRACTION = 0.25


@dataclass(frozen=True)
class Abc2Estimate:
    """The ABC/2 measurements of one lesion (Kothari et al. 1996); lengths in mm."""

    a_mm: float  # largest diameter on the largest-area slice
    b_mm: float  # largest diameter perpendicular to A on that slice
    c_mm: float  # weighted slice count × slice thickness
    weighted_slices: float
    largest_slice_index: int  # 0-based index into the mask's slices
    volume_ml: float  # A·B·C / 2 in cm³


@dataclass(frozen=True)
class Lesion:
    """One 3-D connected hemorrhage region.

    ``slices`` and ``largest_slice`` are 1-based slice numbers in the mask's order (what a
    reader scrolls to). ``centroid_mm`` is in patient/world coordinates (x, y, z) when an
    index-to-world affine was given (``centroid_space == "patient"``), else the centroid's
    voxel index (slice, row, column) times the spacing (``centroid_space == "grid"``), which
    only locates lesions relative to each other.
    """

    label: int
    n_voxels: int
    volume_ml: float
    abc2_ml: float
    abc2_a_mm: float
    abc2_b_mm: float
    abc2_c_mm: float
    slices: tuple[int, ...]
    largest_slice: int
    centroid_mm: tuple[float, float, float]
    centroid_space: str
    max_axial_area_mm2: float
    subtype: str | None = None
    subtype_probability: float | None = None
    subtype_probabilities: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["slices"] = list(self.slices)
        d["centroid_mm"] = list(self.centroid_mm)
        return d


def _check_spacing(spacing_mm: Sequence[float]) -> tuple[float, float, float]:
    sp = tuple(float(s) for s in spacing_mm)
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing_mm must be 3 positive numbers (between slices, rows, columns), got {spacing_mm!r}")
    return sp  # type: ignore[return-value]


def voxel_volume_mm3(spacing_mm: Sequence[float]) -> float:
    """Volume of one voxel in mm³ from (slice, row, column) spacing in mm."""
    sz, sy, sx = _check_spacing(spacing_mm)
    return sz * sy * sx


def volume_ml(mask: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Volume of the mask's true voxels in mL (= cm³): voxel count × voxel volume / 1000.

    Uses the spacing between slices as each voxel's depth, which is what the volume of a
    stack of slices measures whether or not the slices overlap or have gaps."""
    return float(np.count_nonzero(mask)) * voxel_volume_mm3(spacing_mm) / 1000.0


def total_volume_ml(found: Sequence[Lesion]) -> float:
    """Sum of the lesions' voxel volumes in mL (equals ``volume_ml`` of the whole mask)."""
    return float(sum(les.volume_ml for les in found))


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label 3-D lesions: 8-connected in-plane, linked across adjacent slices by overlap.

    Returns (labels int32 (N, H, W) with 0 = background and 1..K, K). Labels are numbered
    in order of first appearance (slice, then OpenCV's raster order)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be (slices, rows, columns), got shape {mask.shape}")
    labels = np.zeros(mask.shape, np.int32)
    offset = 0
    for k in range(mask.shape[0]):
        if not mask[k].any():
            continue
        n, lab = cv2.connectedComponents(mask[k].astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        lab[lab > 0] += offset
        labels[k] = lab
        offset += n - 1
    if offset == 0:
        return labels, 0
    parent = np.arange(offset + 1, dtype=np.int64)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = int(parent[root])
        while parent[x] != root:  # path compression
            parent[x], x = root, int(parent[x])
        return root

    for k in range(mask.shape[0] - 1):
        a, b = labels[k], labels[k + 1]
        both = (a > 0) & (b > 0)
        if not both.any():
            continue
        pairs = np.unique(np.stack([a[both], b[both]], axis=1), axis=0)
        for p, q in pairs:
            rp, rq = find(int(p)), find(int(q))
            if rp != rq:
                parent[max(rp, rq)] = min(rp, rq)
    roots = np.array([find(i) for i in range(offset + 1)], np.int64)
    _, compact = np.unique(roots, return_inverse=True)  # root 0 (background) maps to 0
    return compact.astype(np.int32)[labels], int(compact.max())


def bridged(mask: np.ndarray, spacing_mm: Sequence[float], gap_mm: float) -> np.ndarray:
    """``mask`` with each slice dilated by half of ``gap_mm`` (an ellipse in pixels of the
    row and column spacing), so fragments less than ``gap_mm`` apart touch."""
    _, sy, sx = _check_spacing(spacing_mm)
    ry, rx = max(1, round(gap_mm / 2 / sy)), max(1, round(gap_mm / 2 / sx))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rx + 1, 2 * ry + 1))
    out = np.zeros_like(mask, dtype=bool)
    for k in range(len(mask)):
        if mask[k].any():
            out[k] = cv2.dilate(mask[k].astype(np.uint8), kernel) > 0
    return out


def ab_diameters_mm(slice_mask: np.ndarray, row_col_spacing_mm: Sequence[float]) -> tuple[float, float]:
    """A and B of ABC/2 on one axial slice, in mm.

    A is the largest diameter of the region: the largest distance between two points of it,
    taken between pixel edges (pixel corners, via the convex hull) as a caliper on the
    screen would measure it. B is the largest diameter perpendicular to A: the longest
    segment perpendicular to A that lies inside the region (the line a reader draws across
    the bleed at its widest, right-angled to A), found by sampling perpendicular lines at a
    quarter of a pixel. For an ellipse these are its two axes; for a crescent (subdural) B is
    its thickness, not the width of its bow."""
    dy, dx = (float(s) for s in row_col_spacing_mm)
    rows, cols = np.nonzero(slice_mask)
    if rows.size == 0:
        return 0.0, 0.0
    r0, c0 = rows.min(), cols.min()
    region = np.zeros((rows.max() - r0 + 1, cols.max() - c0 + 1), bool)
    region[rows - r0, cols - c0] = True
    rr, cc = rows - r0, cols - c0
    # pixel (r, c) covers [c - 0.5, c + 0.5] × [r - 0.5, r + 0.5] in pixel units
    corners = np.concatenate(
        [np.stack([(cc + sx) * dx, (rr + sy) * dy], axis=1) for sx in (-0.5, 0.5) for sy in (-0.5, 0.5)]
    ).astype(np.float64)
    hull = cv2.convexHull(corners.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    d2 = ((hull[:, None, :] - hull[None, :, :]) ** 2).sum(axis=2)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    a_mm = float(math.sqrt(d2[i, j]))
    if a_mm == 0.0:
        return 0.0, 0.0
    a_dir = (hull[j] - hull[i]) / a_mm
    n_dir = np.array([-a_dir[1], a_dir[0]])
    centre = hull.mean(axis=0)
    u = (hull - centre) @ a_dir
    v = (hull - centre) @ n_dir
    step = max(min(dx, dy) / 4.0, max(np.ptp(u), np.ptp(v)) / 2000.0)  # ≤ 2000 × 2000 samples
    us = np.arange(u.min() + step / 2, u.max(), step)
    vs = np.arange(v.min() + step / 2, v.max(), step)
    if us.size == 0 or vs.size == 0:
        return a_mm, 0.0
    pts = centre + us[:, None, None] * a_dir + vs[None, :, None] * n_dir  # (U, V, 2) in mm
    col = np.floor(pts[..., 0] / dx + 0.5).astype(np.int64)
    row = np.floor(pts[..., 1] / dy + 0.5).astype(np.int64)
    ok = (row >= 0) & (row < region.shape[0]) & (col >= 0) & (col < region.shape[1])
    inside = np.zeros(ok.shape, bool)
    inside[ok] = region[row[ok], col[ok]]
    padded = np.zeros((inside.shape[0], inside.shape[1] + 2), np.int8)
    padded[:, 1:-1] = inside
    edges = np.diff(padded, axis=1)
    starts, ends = np.nonzero(edges == 1)[1], np.nonzero(edges == -1)[1]  # row-major: runs pair up in order
    b_mm = float((ends - starts).max() * step) if starts.size else 0.0
    return a_mm, min(b_mm, a_mm)


def abc2(lesion_mask: np.ndarray, spacing_mm: Sequence[float], slice_thickness_mm: np.ndarray | None = None) -> Abc2Estimate:
    """The bedside ABC/2 volume estimate of ONE hemorrhage, exactly as Kothari et al. define it.

    Kothari RU, Brott T, Broderick JP, et al. "The ABCs of measuring intracerebral
    hemorrhage volumes." Stroke 1996;27(8):1304-1305. doi:10.1161/01.STR.27.8.1304.

    - A: the largest diameter on the axial slice with the largest hemorrhage area
      (the first such slice if several tie), see ``ab_diameters_mm``;
    - B: the largest diameter perpendicular to A on the same slice;
    - C: the number of slices with hemorrhage, each weighted against the largest slice's
      area (1 if ≥ 75 %, 0.5 if 25–75 %, 0 if < 25 %), times the slice thickness. The
      spacing between slices (``spacing_mm[0]``) stands in for the thickness, which is
      the same for the contiguous, non-overlapping axial slices the formula assumes;
    - volume = A·B·C / 2 with A, B, C in cm, giving cm³ = mL.

    ``slice_thickness_mm`` (one value per slice of ``lesion_mask``) replaces the uniform
    spacing in C for a series whose spacing changes: each counted slice adds its own.

    Why report it next to the voxel volume: ABC/2 is what clinicians compute at the bedside
    and what the trials' thresholds (e.g. 30 mL) were measured with; it approximates an
    ellipsoid (π/6 ≈ 1/2) and overestimates irregular bleeds, so the two numbers differ.
    """
    sz, sy, sx = _check_spacing(spacing_mm)
    lesion_mask = np.asarray(lesion_mask, dtype=bool)
    areas_px = lesion_mask.reshape(lesion_mask.shape[0], -1).sum(axis=1)
    if areas_px.max(initial=0) == 0:
        return Abc2Estimate(0.0, 0.0, 0.0, 0.0, -1, 0.0)
    largest = int(np.argmax(areas_px))
    fraction = areas_px / areas_px[largest]
    weights = np.where(fraction >= ABC2_FULL_SLICE_FRACTION, 1.0, np.where(fraction >= ABC2_HALF_SLICE_FRACTION, 0.5, 0.0))
    weights[areas_px == 0] = 0.0
    weighted = float(weights.sum())
    c_mm = weighted * sz if slice_thickness_mm is None else float((weights * np.asarray(slice_thickness_mm, float)).sum())
    a_mm, b_mm = ab_diameters_mm(lesion_mask[largest], (sy, sx))
    vol = (a_mm / 10.0) * (b_mm / 10.0) * (c_mm / 10.0) / 2.0
    return Abc2Estimate(a_mm, b_mm, c_mm, weighted, largest, vol)


def _subtype(
    slice_idx: np.ndarray, slice_probs: Mapping[str, np.ndarray] | None, n: int
) -> tuple[str | None, float | None, dict]:
    if not slice_probs:
        return None, None, {}
    means: dict[str, float] = {}
    for name in SUBTYPES:
        if name not in slice_probs:
            continue
        p = np.asarray(slice_probs[name], dtype=np.float64).reshape(-1)
        if p.shape[0] != n:
            raise ValueError(f"slice_probs[{name!r}] has {p.shape[0]} values for {n} slices")
        means[name] = float(p[slice_idx].mean())
    if not means:
        return None, None, {}
    best = max(means, key=lambda k: means[k])
    return best, means[best], means


def lesions(
    mask: np.ndarray,
    spacing_mm: Sequence[float],
    slice_probs: Mapping[str, np.ndarray] | None = None,
    *,
    index_to_world_mm: np.ndarray | None = None,
    slice_thickness_mm: np.ndarray | None = None,
    merge_gap_mm: float = 0.0,
) -> list[Lesion]:
    """The mask's 3-D connected lesions, largest first (``label`` 1 = largest).

    mask: bool (N slices, H rows, W columns) on the CT's own grid.
    spacing_mm: (between slices, between rows, between columns) in mm.
    slice_probs: per-slice probabilities (N,) by head name; the heads in ``SUBTYPES`` give
        each lesion's subtype: the mean over the lesion's slices of each head's probability,
        and the argmax. Other keys (e.g. "hemorrhage", "fracture") are ignored. None or no
        subtype heads → subtype None.
    index_to_world_mm: optional 4×4 affine taking (slice, row, column, 1) voxel indices to
        world coordinates in mm (for DICOM: patient LPS x, y, z; see
        ``ichseg.io.dicom_seg.index_to_patient_affine``). Only the centroid uses it.
    slice_thickness_mm: optional (N,) extent of each slice along the normal
        (:meth:`ichseg.io.volume.Volume.slice_extents_mm`), for a series whose spacing
        changes: each voxel's depth is its own slice's, in the volume and in ABC/2's C.
    merge_gap_mm: fragments closer than this in-plane (on one slice, or on adjacent slices)
        are one lesion: a collection the threshold cut into pieces is reported as the one
        bleed it is. 0 keeps every connected component apart.
    """
    spacing = _check_spacing(spacing_mm)
    mask = np.asarray(mask, dtype=bool)
    labels, k = label_components(bridged(mask, spacing, merge_gap_mm) if merge_gap_mm > 0 else mask)
    labels = labels * mask  # the bridges only join; each lesion is its own voxels
    if k == 0:
        return []
    if index_to_world_mm is not None:
        index_to_world_mm = np.asarray(index_to_world_mm, dtype=np.float64)
        if index_to_world_mm.shape != (4, 4):
            raise ValueError(f"index_to_world_mm must be 4×4, got {index_to_world_mm.shape}")
    n = mask.shape[0]
    sz, sy, sx = spacing
    depth = np.full(n, sz) if slice_thickness_mm is None else np.asarray(slice_thickness_mm, np.float64)
    if depth.shape != (n,) or not np.all(depth > 0):
        raise ValueError(f"slice_thickness_mm must be {n} positive numbers, got shape {depth.shape}")
    z, y, x = np.nonzero(labels)
    lab = labels[z, y, x]
    order = np.argsort(lab, kind="stable")
    z, y, x, lab = z[order], y[order], x[order], lab[order]
    bounds = np.searchsorted(lab, np.arange(1, k + 2))
    found: list[dict[str, Any]] = []
    for i in range(k):
        s = slice(bounds[i], bounds[i + 1])
        zi, yi, xi = z[s], y[s], x[s]
        z0, z1, y0, y1, x0, x1 = zi.min(), zi.max(), yi.min(), yi.max(), xi.min(), xi.max()
        sub = np.zeros((z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1), bool)
        sub[zi - z0, yi - y0, xi - x0] = True
        est = abc2(sub, spacing, depth[z0 : z1 + 1])
        per_slice = np.bincount(zi - z0)
        present = np.flatnonzero(per_slice) + z0
        idx_centroid = np.array([zi.mean(), yi.mean(), xi.mean()])
        if index_to_world_mm is not None:
            world = index_to_world_mm @ np.append(idx_centroid, 1.0)
            centroid, space = tuple(float(c) for c in world[:3]), "patient"
        else:
            centroid, space = tuple(float(c) for c in idx_centroid * np.array(spacing)), "grid"
        subtype, p_subtype, means = _subtype(present, slice_probs, n)
        found.append(
            {
                "n_voxels": int(zi.size),
                "volume_ml": float(depth[zi].sum()) * sy * sx / 1000.0,
                "abc2_ml": est.volume_ml,
                "abc2_a_mm": est.a_mm,
                "abc2_b_mm": est.b_mm,
                "abc2_c_mm": est.c_mm,
                "slices": tuple(int(p) + 1 for p in present),
                "largest_slice": int(est.largest_slice_index + z0) + 1,
                "centroid_mm": centroid,
                "centroid_space": space,
                "max_axial_area_mm2": float(per_slice.max()) * sy * sx,
                "subtype": subtype,
                "subtype_probability": p_subtype,
                "subtype_probabilities": means,
            }
        )
    found.sort(key=lambda d: (-d["n_voxels"], d["slices"][0]))
    out = [Lesion(label=j + 1, **d) for j, d in enumerate(found)]
    log.debug("%d lesion(s), %.2f mL in total", len(out), total_volume_ml(out))
    return out
