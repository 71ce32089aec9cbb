"""The synthetic head's anatomy: densities, the configuration and geometry types, and the
drawing of skull, brain, ventricles and the five kinds of bleed on one frame."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

logger = logging.getLogger(__name__)

# Subtype names are the column names of hemorrhage_diagnosis.csv, so a drawn bleed's
# kind can be written to the CSV without any translation table.
INTRAVENTRICULAR = "Intraventricular"
INTRAPARENCHYMAL = "Intraparenchymal"
SUBARACHNOID = "Subarachnoid"
EPIDURAL = "Epidural"
SUBDURAL = "Subdural"
SUBTYPES: tuple[str, ...] = (
    INTRAVENTRICULAR,
    INTRAPARENCHYMAL,
    SUBARACHNOID,
    EPIDURAL,
    SUBDURAL,
)

DIAGNOSIS_HEADER = (
    "PatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,Subdural,No_Hemorrhage,Fracture_Yes_No"
)
# The real file has a line break inside the quoted "Age (years)" header cell; loaders
# must cope with it, so the synthetic file reproduces it.
DEMOGRAPHICS_HEADER = (
    '"Patient Number","Age\n(years)","Gender","Intraventricular","Intraparenchymal",'
    '"Subarachnoid","Epidural","Subdural","Fracture (Yes/No)","Condition on file","Note"'
)
# Wording of the "Condition on file" column, in SUBTYPES order.
_CONDITION_NAMES = {
    INTRAVENTRICULAR: "Intraventricular HGE",
    INTRAPARENCHYMAL: "Intracranial HGE",
    SUBARACHNOID: "Subarachnoid HGE",
    EPIDURAL: "Extradural HGE",
    SUBDURAL: "Subdural HGE",
}

REFERENCE_SIZE = 650
"""Image size of the real data set; all lengths/areas below are given at this size."""

BRAIN_WINDOW: tuple[float, float] = (40.0, 120.0)
"""(level, width) in HU of the brain window used by the real data set."""
BONE_WINDOW: tuple[float, float] = (600.0, 2800.0)
"""(level, width) in HU of the bone window: skull detailed, soft tissue dark grey."""

JPEG_QUALITY = 95

# Tissue densities (HU).  Brain window (40/120) maps -20..100 HU onto 0..255.
_AIR = -1000.0
_SKIN = 35.0
_FAT = -90.0
_GALEA = 30.0
_CORTICAL_BONE = 1900.0
_DIPLOE = 850.0
_CSF = 6.0
_GREY = 41.0
_WHITE = 32.0
_DEEP_GREY = 36.0
_FALX = 45.0
_EDEMA = 16.0
_BLOOD_RANGE = (66.0, 82.0)
_NOISE_HU = 3.0

_MIN_LESION_PX = 150.0  # smallest real lesion area at the reference size
_MAX_LESION_PX = 15000.0  # largest real lesion area at the reference size
_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_SHIFT_SCALE = float(1 << _SHIFT)


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and randomness of a synthetic data set.

    The defaults give a set that is small enough to write in a few seconds and to
    train a toy model on a laptop, yet has enough positive slices (~15 %) for the
    model to learn something.
    """

    n_patients: int = 12
    slices_per_patient: int = 16
    size_px: int = 650
    hemorrhage_fraction: float = 0.5  # fraction of patients with a bleed
    first_id: int = 49
    seed: int = 0

    def __post_init__(self) -> None:
        # Fail early with a clear message instead of producing a broken layout.
        if self.n_patients < 1:
            raise ValueError(f"n_patients must be >= 1, got {self.n_patients}")
        if self.slices_per_patient < 1:
            raise ValueError(f"slices_per_patient must be >= 1, got {self.slices_per_patient}")
        if self.size_px < 64:
            raise ValueError(f"size_px must be >= 64, got {self.size_px}")
        if not 0.0 <= self.hemorrhage_fraction <= 1.0:
            raise ValueError(f"hemorrhage_fraction must be within [0, 1], got {self.hemorrhage_fraction}")
        if self.first_id < 0:
            raise ValueError(f"first_id must be >= 0, got {self.first_id}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class HeadGeometry:
    """Patient-level placement and shape of the head.

    Lengths are fractions of the image size so the same patient can be rendered at
    any resolution; slice-dependent shrinking is applied on top by ``render_slice``.
    """

    center: tuple[float, float] = (0.5, 0.5)
    semi_axes: tuple[float, float] = (0.33, 0.405)  # left-right, anterior-posterior
    angle: float = 0.0  # in-plane rotation, radians
    skull_thickness: float = 0.022  # mean skull thickness, fraction of image size
    ventricle_scale: float = 1.0  # patient-specific ventricle size (age-like)
    shape_seed: int = 0  # seeds the skull outline wobble, fixed for all slices


@dataclass(frozen=True)
class Bleed:
    """One hyperdense bleed on one slice.

    ``theta`` is the angular position around the head (radians in the head frame;
    -pi/2 is anterior/top of the image, 0 is the image's right side).  ``rho`` is the
    normalised distance from the head centre (used by intraparenchymal bleeds only).
    ``area_px`` is the wanted lesion area at the 650 px reference size; the drawn area
    is close to it unless the anatomy (e.g. ventricle size) limits it.  ``shape_seed``
    fixes the outline so the same bleed looks alike on consecutive slices.
    """

    kind: str
    theta: float = 0.0
    rho: float = 0.4
    area_px: float = 2000.0
    shape_seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SUBTYPES:
            raise ValueError(f"unknown bleed kind {self.kind!r}; expected one of {SUBTYPES}")


@dataclass(frozen=True)
class _RenderedSlice:
    brain: np.ndarray
    bone: np.ndarray
    mask: np.ndarray
    kinds: frozenset[str]
    fracture: bool


@dataclass
class _PatientPlan:
    number: int
    age: int
    gender: str
    head: HeadGeometry
    bleeds: list[tuple[Bleed, ...]] = field(default_factory=list)
    fractures: list[float | None] = field(default_factory=list)


# --------------------------------------------------------------------------- drawing


def _head_scale(slice_pos: float) -> float:
    """Relative head size of an axial slice at ``slice_pos`` (0 = bottom, 1 = top).

    An axial series cuts a roughly ellipsoidal head, so the section is largest in the
    middle of the stack and shrinks towards skull base and vertex.
    """
    x = (float(slice_pos) - 0.5) / 0.62
    return max(0.3, math.sqrt(max(0.0, 1.0 - x * x)))


def _bump(slice_pos: float, lo: float, hi: float) -> float:
    """Smooth 0..1..0 profile over [lo, hi]; used for structures seen in mid slices."""
    if not lo < slice_pos < hi:
        return 0.0
    return math.sin(math.pi * (slice_pos - lo) / (hi - lo))


class _Frame:
    """Maps head-frame coordinates of one slice to pixel coordinates."""

    def __init__(self, head: HeadGeometry, size: int, slice_pos: float) -> None:
        scale = _head_scale(slice_pos)
        self.size = size
        self.px = size / REFERENCE_SIZE  # pixels per reference pixel
        self.scale = scale
        self.cx = head.center[0] * size
        self.cy = head.center[1] * size
        self.a = head.semi_axes[0] * size * scale
        self.b = head.semi_axes[1] * size * scale
        self.cos = math.cos(head.angle)
        self.sin = math.sin(head.angle)
        shape_rng = np.random.default_rng(head.shape_seed)
        self._wob_k = np.arange(2, 6, dtype=np.float64)
        self._wob_amp = shape_rng.uniform(0.0, 0.012, 4)
        self._wob_phase = shape_rng.uniform(0.0, 2 * np.pi, 4)
        self._thk_phase = shape_rng.uniform(0.0, 2 * np.pi, 2)
        # Oblique cuts near the vertex/skull base make the skull look thicker.
        self.skull_px = head.skull_thickness * size * (1.0 + 0.6 * (1.0 - scale))

    def rho_in(self, theta: np.ndarray) -> np.ndarray:
        """Normalised radius of the inner skull table (slightly irregular ellipse)."""
        th = np.asarray(theta, dtype=np.float64)[..., None]
        return 1.0 + np.sum(self._wob_amp * np.cos(self._wob_k * th + self._wob_phase), axis=-1)

    def unit_px(self, theta: np.ndarray) -> np.ndarray:
        """Pixels per unit of normalised radius in direction ``theta``."""
        return np.hypot(self.a * np.cos(theta), self.b * np.sin(theta))

    def thickness_px(self, theta: np.ndarray) -> np.ndarray:
        """Skull thickness in pixels; thicker frontally/occipitally like a real skull."""
        return self.skull_px * (
            1.0 + 0.28 * np.cos(2 * theta + self._thk_phase[0]) + 0.10 * np.cos(3 * theta + self._thk_phase[1])
        )

    def uv_to_px(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Normalised head coordinates (u right, v posterior) to (N, 2) pixel xy."""
        u = np.asarray(u, dtype=np.float64) * self.a
        v = np.asarray(v, dtype=np.float64) * self.b
        x = self.cx + u * self.cos - v * self.sin
        y = self.cy + u * self.sin + v * self.cos
        x, y = np.broadcast_arrays(x, y)
        return np.stack([x, y], axis=-1)

    def polar_to_px(self, rho: np.ndarray, theta: np.ndarray) -> np.ndarray:
        return self.uv_to_px(rho * np.cos(theta), rho * np.sin(theta))


def _pts(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points) * _SHIFT_SCALE).astype(np.int32).reshape(-1, 1, 2)


def _fill(img: np.ndarray, points: np.ndarray, value: float) -> None:
    cv2.fillPoly(img, [_pts(points)], float(value), lineType=cv2.LINE_8, shift=_SHIFT)


def _line(img: np.ndarray, points: np.ndarray, value: float, thickness: int) -> None:
    cv2.polylines(img, [_pts(points)], False, float(value), max(1, int(thickness)), cv2.LINE_8, _SHIFT)


def _ventricles(frame: _Frame, slice_pos: float, scale: float) -> list[np.ndarray]:
    """Lateral ventricle outlines ('butterfly' of two curved horns) for mid slices.

    Returns one (2, N, 2) array of wall points per side (left and right wall, ordered
    from the frontal to the occipital end), so a posterior part can be cut out for
    intraventricular blood, which layers there; ``_wall_polygon`` closes it.
    """
    vf = _bump(slice_pos, 0.36, 0.74)
    if vf < 0.15:
        return []
    s = np.linspace(-1.0, 1.0, 40)
    v = -0.04 + s * 0.27 * math.sqrt(vf) * scale
    half_width = frame.a * (0.03 + 0.016 * s**2 + 0.02 * (s + 1.0) ** 2 / 4.0) * vf * scale
    polys = []
    for side in (-1.0, 1.0):
        u = side * (0.065 + 0.09 * s**2) * scale
        centre = frame.uv_to_px(u, v)
        tangent = np.gradient(centre, axis=0)
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-9
        normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
        left = centre + normal * half_width[:, None]
        right = centre - normal * half_width[:, None]
        polys.append(np.stack([left, right], axis=0))  # (2, N, 2): both walls
    return polys


def _wall_polygon(walls: np.ndarray, start: int = 0) -> np.ndarray:
    return np.concatenate([walls[0, start:], walls[1, start:][::-1]], axis=0)


def _polygon_area(points: np.ndarray) -> float:
    return float(cv2.contourArea(np.asarray(points, dtype=np.float32).reshape(-1, 1, 2)))


def _bleed_mask(frame: _Frame, bleed: Bleed, ventricles: list[np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Draws one bleed into a fresh uint8 mask; returns (mask, edema_mask or None).

    The mask is not yet clipped to the intracranial space; the caller does that so
    extra-axial bleeds end exactly at the inner skull table.
    """
    size = frame.size
    px = frame.px
    target = min(bleed.area_px, _MAX_LESION_PX) * px * px
    srng = np.random.default_rng(bleed.shape_seed)
    mask = np.zeros((size, size), np.uint8)
    theta0 = float(bleed.theta)

    if bleed.kind == INTRAPARENCHYMAL:
        k = np.arange(2, 7, dtype=np.float64)
        amps = srng.uniform(0.0, 0.22, k.size) / (k / 2.0)
        phases = srng.uniform(0.0, 2 * np.pi, k.size)
        phi = np.linspace(0.0, 2 * np.pi, 120, endpoint=False)
        rr = 1.0 + np.sum(amps * np.cos(k * phi[:, None] + phases), axis=1)
        rr = np.maximum(rr, 0.35)
        unit_area = 0.5 * float(np.sum(rr**2)) * (2 * np.pi / phi.size)
        radius = math.sqrt(target / unit_area)
        rin0 = float(frame.rho_in(np.array(theta0)))
        ru0 = float(frame.unit_px(np.array(theta0)))
        rho_max = rin0 - (1.45 * radius * float(rr.max()) + 4.0 * px) / ru0
        rho = float(np.clip(bleed.rho, 0.0, max(0.0, rho_max)))
        centre = frame.polar_to_px(np.array(rho), np.array(theta0))
        ring = np.stack([np.cos(phi), np.sin(phi)], axis=1) * rr[:, None]
        _fill(mask, centre + radius * ring, 1)
        edema = np.zeros((size, size), np.uint8)
        _fill(edema, centre + 1.35 * radius * ring, 1)
        return mask, edema

    if bleed.kind in (EPIDURAL, SUBDURAL):
        if bleed.kind == EPIDURAL:
            # Biconvex lens: short arc, deep, blunt profile.
            half_arc = float(np.clip(0.22 * (target / px**2 / 2000.0) ** 0.3, 0.14, 0.55))
            power, depth_cap = 0.5, 0.28
        else:
            # Crescent: long arc, thin, tapering ends.
            half_arc = float(np.clip(0.55 * (target / px**2 / 2000.0) ** 0.3, 0.35, 1.3))
            power, depth_cap = 1.1, 0.11
        half_arc *= srng.uniform(0.85, 1.15)
        s = np.linspace(-1.0, 1.0, 72)
        theta = theta0 + half_arc * s
        rin = frame.rho_in(theta)
        ru = frame.unit_px(theta)
        table = frame.polar_to_px(rin, theta)
        # Inward normal of the inner table, so the clot thickness is measured
        # perpendicular to the skull whatever the head's eccentricity.
        tangent = np.gradient(table, axis=0)
        normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
        normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
        inward = np.array([frame.cx, frame.cy]) - table
        normal *= np.sign(np.sum(normal * inward, axis=1, keepdims=True))
        skew = srng.uniform(-0.25, 0.25)  # slightly asymmetric, as real clots are
        prof = (1.0 - s**2) ** power * (1.0 + skew * s)
        arc_px = float(np.sum(prof * np.linalg.norm(tangent, axis=1)))
        depth = min(target / max(arc_px, 1e-6), depth_cap * float(ru.mean()))
        outer = table - normal * (2.0 * px)
        inner = table + normal * (depth * prof)[:, None]
        _fill(mask, np.concatenate([outer, inner[::-1]], axis=0), 1)
        return mask, None

    if bleed.kind == SUBARACHNOID:
        # Thin bright streaks following sulci and the brain surface.
        region = np.zeros((size, size), np.uint8)
        th_all = np.linspace(-np.pi, np.pi, 256, endpoint=False)
        _fill(region, frame.polar_to_px(frame.rho_in(th_all), th_all), 1)
        spread = 0.45
        for _ in range(24):
            th = theta0 + srng.uniform(-spread, spread)
            ru = float(frame.unit_px(np.array(th)))
            rin = float(frame.rho_in(np.array(th)))
            depth = srng.uniform(12.0, 34.0) * px
            offsets = np.linspace(1.0 * px, depth, 5)
            ths = th + np.cumsum(srng.normal(0.0, 2.0 * px / ru, 5))
            sulcus = frame.polar_to_px(rin - offsets / ru, ths)
            tail_th = th + np.linspace(0.0, srng.uniform(-0.16, 0.16), 6)
            tail = frame.polar_to_px(rin - 2.0 * px / frame.unit_px(tail_th), tail_th)
            thickness = max(1, round(srng.uniform(2.5, 4.5) * px))
            _line(mask, np.concatenate([tail[::-1], sulcus], axis=0), 1, thickness)
            if np.count_nonzero(mask & region) >= target:
                break
        return mask, None

    # INTRAVENTRICULAR: blood layering in the posterior part of the ventricles.
    if not ventricles:
        return None, None
    side = 1 if math.cos(theta0) >= 0 else 0
    order = [side, 1 - side]
    remaining = target
    for idx in order:
        walls = ventricles[idx]
        full_area = _polygon_area(_wall_polygon(walls))
        if full_area <= 0 or remaining <= 0:
            break
        frac = float(np.clip(remaining / full_area, 0.2, 1.0))
        n = walls.shape[1]
        start = min(n - 3, round((1.0 - frac) * (n - 1)))
        _fill(mask, _wall_polygon(walls, start), 1)
        remaining -= frac * full_area
    return mask, None
