"""Synthetic head-CT data in the exact on-disk layout of the PhysioNet CT-ICH data set.

Why this exists: the real data set needs a credentialed download, so demos, CI and
unit tests would otherwise have nothing to run on.  This module draws a small,
deterministic stand-in that the rest of ``ichseg`` can read with the very same
loader it uses for the real data:

* ``Patients_CT/<ID>/brain/<n>.jpg`` - brain-window slice (8-bit greyscale JPEG)
* ``Patients_CT/<ID>/brain/<n>_HGE_Seg.jpg`` - lesion mask, only for bleeding slices
* ``Patients_CT/<ID>/bone/<n>.jpg`` - bone-window version of the same slice
* ``hemorrhage_diagnosis.csv`` - one row per slice (UTF-8 with BOM, like the original)
* ``patient_demographics.csv`` - one row per patient (with the original's odd header)

Every slice is first built as a map of Hounsfield units (HU) and then windowed twice,
exactly as a scanner console would.  That keeps the brain and bone windows
consistent with each other for free: blood (~70 HU) is bright in the brain window and
nearly invisible in the bone window, while the skull saturates the brain window and
shows its structure in the bone window.  Lesions are hyperdense and drawn with sizes
similar to the real masks, so a small U-Net learns them within minutes on a CPU.

Everything is drawn with OpenCV polygon fills on whole images (no per-pixel Python
loops), so the default configuration is written in a few seconds.

Why it is long: one procedural drawing of a head (anatomy, bleeds of five kinds,
windowing, file layout) whose private drawing helpers share one frame geometry; the public
API is its last third. Splitting it into a package is open work (issue 16).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "BONE_WINDOW",
    "BRAIN_WINDOW",
    "DEMOGRAPHICS_HEADER",
    "DIAGNOSIS_HEADER",
    "EPIDURAL",
    "INTRAPARENCHYMAL",
    "INTRAVENTRICULAR",
    "SUBARACHNOID",
    "SUBDURAL",
    "SUBTYPES",
    "Bleed",
    "HeadGeometry",
    "SyntheticConfig",
    "generate_dataset",
    "make_lesion_slice",
    "random_head",
    "render_slice",
]

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


def _window_u8(hu: np.ndarray, noise: np.ndarray, noise_hu: float, window: tuple[float, float]) -> np.ndarray:
    """Adds noise and applies a CT window in one saturating OpenCV pass (fast)."""
    level, width = window
    alpha = 255.0 / width
    beta = -(level - width / 2.0) * alpha
    return cv2.addWeighted(hu, alpha, noise, noise_hu * alpha, beta, dtype=cv2.CV_8U)


def _noise_crop(rng: np.random.Generator, bank: np.ndarray, size: int) -> np.ndarray:
    """A random size x size window of a pre-drawn noise field.

    Drawing fresh Gaussian noise for every slice dominated the run time; random crops of
    one larger field are statistically just as good for a toy data set.
    """
    oy, ox = rng.integers(0, bank.shape[0] - size + 1, 2)
    return bank[oy : oy + size, ox : ox + size]


def _noise_bank(rng: np.random.Generator, size: int) -> np.ndarray:
    extra = max(16, size // 2)
    return rng.standard_normal((size + extra, size + extra), dtype=np.float32)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth density variation (unit-ish amplitude), built at quarter resolution."""
    q = max(16, size // 4)
    low = cv2.resize(rng.standard_normal((8, 8)).astype(np.float32), (q, q), interpolation=cv2.INTER_CUBIC)
    mid = cv2.resize(rng.standard_normal((40, 40)).astype(np.float32), (q, q), interpolation=cv2.INTER_CUBIC)
    small = low * np.float32(0.8) + mid * np.float32(0.6)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


def _render(
    rng: np.random.Generator,
    size_px: int,
    slice_pos: float,
    head: HeadGeometry,
    bleeds: Sequence[Bleed],
    fracture_theta: float | None,
    noise_bank: np.ndarray | None = None,
) -> _RenderedSlice:
    """Builds one slice as an HU map, then windows it twice."""
    size = int(size_px)
    frame = _Frame(head, size, slice_pos)
    px = frame.px
    th = np.linspace(-np.pi, np.pi, 256, endpoint=False)
    ru = frame.unit_px(th)
    rin = frame.rho_in(th)
    tk = frame.thickness_px(th)

    def ring(offset_px: np.ndarray | float) -> np.ndarray:
        return frame.polar_to_px(rin + offset_px / ru, th)

    hu = np.full((size, size), _AIR, np.float32)
    scalp = 12.0 * px
    _fill(hu, ring(tk + scalp), _SKIN)
    _fill(hu, ring(tk + 0.7 * scalp), _FAT)
    _fill(hu, ring(tk + 0.2 * scalp), _GALEA)
    # Skull: outer and inner tables of compact bone with spongy diploe between.
    _fill(hu, ring(tk), _CORTICAL_BONE)
    diploe = np.zeros((size, size), np.uint8)
    _fill(diploe, ring(0.72 * tk), 1)
    _fill(diploe, ring(0.3 * tk), 0)
    _fill(hu, ring(0.72 * tk), _DIPLOE)
    _fill(hu, ring(0.3 * tk), _CORTICAL_BONE)

    fracture = fracture_theta is not None and frame.scale > 0.5
    if fracture:
        th_f = float(fracture_theta)
        ru_f = float(frame.unit_px(np.array(th_f)))
        tk_f = float(frame.thickness_px(np.array(th_f)))
        offsets = np.linspace(-2.0 * px, tk_f + 2.0 * px, 6)
        jitter = rng.normal(0.0, 2.0 * px / ru_f, offsets.size)
        jitter[0] = 0.0
        ths = th_f + np.cumsum(jitter)
        crack = frame.polar_to_px(frame.rho_in(ths) + offsets / ru_f, ths)
        _line(hu, crack, _GALEA, round(max(1.0, 2.5 * px)))
        _line(diploe, crack, 0, round(max(1.0, 2.5 * px)))

    # Intracranial contents: CSF rim, cortical grey ribbon with gyri, white matter.
    inner_table = ring(0.0)
    _fill(hu, inner_table, _CSF)
    csf = max(1.0, 3.0 * px)
    _fill(hu, ring(-csf), _GREY)
    p1, p2 = rng.uniform(0.0, 2 * np.pi, 2)
    gyri = 13.0 * px * (1.0 + 0.45 * np.sin(19 * th + p1) + 0.25 * np.sin(31 * th + p2))
    _fill(hu, ring(-csf - gyri), _WHITE)
    # Sulci: short CSF lines running inwards from the surface (all drawn in one call).
    n_sulci = 26
    th_s = rng.uniform(-np.pi, np.pi, n_sulci)
    ru_s = frame.unit_px(th_s)[:, None]
    offs = (
        np.stack(
            [np.zeros(n_sulci), rng.uniform(6.0, 12.0, n_sulci), rng.uniform(12.0, 22.0, n_sulci)],
            axis=1,
        )
        * px
    )
    ths = th_s[:, None] + np.cumsum(rng.normal(0.0, 1.0, (n_sulci, 3)) * (1.5 * px / ru_s), axis=1)
    sulci = frame.polar_to_px(frame.rho_in(ths) - offs / ru_s, ths)
    cv2.polylines(hu, [_pts(line) for line in sulci], False, _CSF, round(max(1.0, 1.6 * px)), cv2.LINE_8, _SHIFT)

    # Interhemispheric fissure with the (faintly dense) falx.
    for v0, v1 in ((-1.0, -0.55), (1.0, 0.62)):
        v = np.linspace(v0, v1, 6)
        fissure = frame.uv_to_px(rng.normal(0.0, 0.004, 6), v)
        _line(hu, fissure, _CSF, round(max(1.0, 2.5 * px)))
        _line(hu, fissure, _FALX, 1)

    # Deep grey nuclei and lateral ventricles in the middle of the stack.
    if _bump(slice_pos, 0.33, 0.7) > 0.2:
        phi = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)
        for side in (-1.0, 1.0):
            _fill(
                hu,
                frame.uv_to_px(side * 0.21 + 0.07 * np.cos(phi), 0.05 + 0.13 * np.sin(phi)),
                _DEEP_GREY,
            )
    ventricles = _ventricles(frame, slice_pos, head.ventricle_scale)
    for walls in ventricles:
        _fill(hu, _wall_polygon(walls), _CSF)

    # Bleeds: exact pixel masks, clipped to the intracranial space.
    drawn: list[tuple[np.ndarray, float]] = []
    kinds: set[str] = set()
    lesion = np.zeros((size, size), np.uint8)
    if bleeds:
        region = np.zeros((size, size), np.uint8)
        _fill(region, inner_table, 1)
        min_area = max(12.0, _MIN_LESION_PX * px * px)
        edemas: list[np.ndarray] = []
        for bleed in bleeds:
            bmask, edema = _bleed_mask(frame, bleed, ventricles)
            if bmask is None:
                continue
            bmask &= region
            if np.count_nonzero(bmask) < min_area:
                logger.debug("dropping %s bleed smaller than %.0f px", bleed.kind, min_area)
                continue
            blood_hu = float(np.random.default_rng(bleed.shape_seed).uniform(*_BLOOD_RANGE))
            drawn.append((bmask, blood_hu))
            if edema is not None:
                edemas.append(edema & region)
            kinds.add(bleed.kind)
        for edema in edemas:
            hu[edema.view(bool)] = _EDEMA
        for bmask, blood_hu in drawn:
            hu[bmask.view(bool)] = blood_hu
            lesion |= bmask
    mask = lesion.view(bool)

    # Texture: smooth density variation everywhere, trabecular pattern in the diploe,
    # a little extra inhomogeneity in clots.
    tex = _texture(rng, size)
    cv2.add(hu, tex * np.float32(2.5), dst=hu)
    cv2.add(hu, tex * np.float32(260.0), dst=hu, mask=diploe)
    if drawn:
        hu[mask] += tex[mask] * np.float32(3.0)
    hu = cv2.GaussianBlur(hu, (0, 0), max(0.5, 0.8 * px))

    if noise_bank is None:
        noise_bank = _noise_bank(rng, size)
    brain = _window_u8(hu, _noise_crop(rng, noise_bank, size), _NOISE_HU, BRAIN_WINDOW)
    bone = _window_u8(hu, _noise_crop(rng, noise_bank, size), 14.0, BONE_WINDOW)
    return _RenderedSlice(brain, bone, mask, frozenset(kinds), fracture)


# --------------------------------------------------------------------------- public API


def random_head(rng: np.random.Generator) -> HeadGeometry:
    """Draws a plausible patient head: small offset, tilt, size and skull variation."""
    scale = rng.uniform(0.9, 1.03)
    return HeadGeometry(
        center=(0.5 + float(rng.normal(0.0, 0.012)), 0.5 + float(rng.normal(0.0, 0.012))),
        semi_axes=(0.33 * scale * float(rng.uniform(0.95, 1.04)), 0.405 * scale),
        angle=float(np.clip(rng.normal(0.0, 0.07), -0.15, 0.15)),
        skull_thickness=float(rng.uniform(0.018, 0.026)),
        ventricle_scale=float(rng.uniform(0.85, 1.3)),
        shape_seed=int(rng.integers(0, 2**31 - 1)),
    )


def render_slice(
    rng: np.random.Generator,
    size_px: int,
    *,
    slice_pos: float = 0.5,
    head: HeadGeometry | None = None,
    bleeds: Sequence[Bleed] | None = None,
    fracture_theta: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renders one axial slice and returns (brain uint8 HxW, bone uint8 HxW, mask bool HxW).

    Exposed so tests and demos can get a single slice without writing a data set.
    ``slice_pos`` is the position in the stack (0 bottom .. 1 top) and controls head
    size and which structures are visible.  ``head=None`` draws a random head from
    ``rng``.  ``bleeds=None`` draws one random, clearly visible bleed; pass ``()``
    for a normal slice.  ``fracture_theta`` (radians) adds a skull crack there.
    """
    if head is None:
        head = random_head(rng)
    if bleeds is None:
        kind = SUBTYPES[int(rng.integers(len(SUBTYPES)))]
        bleeds = (
            Bleed(
                kind=kind,
                theta=float(rng.uniform(-np.pi, np.pi)),
                rho=float(rng.uniform(0.25, 0.5)),
                area_px=float(rng.uniform(1500.0, 4000.0)),
                shape_seed=int(rng.integers(0, 2**31 - 1)),
            ),
        )
    result = _render(rng, size_px, slice_pos, head, bleeds, fracture_theta)
    return result.brain, result.bone, result.mask


def make_lesion_slice(size_px: int = 650, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Returns (brain uint8, mask bool) of a mid slice with one obvious intraparenchymal bleed.

    Meant for checking a trained model: the lesion is large (~3,500 px at 650 px),
    well inside the brain and far from the skull, so any working model should find it.
    """
    rng = np.random.default_rng(seed)
    bleed = Bleed(
        kind=INTRAPARENCHYMAL,
        theta=float(rng.uniform(-np.pi, np.pi)),
        rho=0.4,
        area_px=3500.0,
        shape_seed=int(rng.integers(0, 2**31 - 1)),
    )
    brain, _bone, mask = render_slice(rng, size_px, slice_pos=0.5, head=HeadGeometry(shape_seed=seed), bleeds=(bleed,))
    return brain, mask


def write_lesion_study(
    patient_dir: Path, size_px: int = 650, seed: int = 0, n_slices: int = 3, area_px: float = 3500.0
) -> list[np.ndarray]:
    """Write ``patient_dir/{brain,bone}/<n>.jpg`` for ``n_slices`` adjacent slices of one
    head with the same obvious intraparenchymal bleed on every slice; returns the masks.

    The study form of :func:`make_lesion_slice`, for models that read the bone window or
    neighbouring slices (2.5D) as well as the brain window.
    """
    rng = np.random.default_rng(seed)
    head = HeadGeometry(shape_seed=seed)
    bleed = Bleed(
        kind=INTRAPARENCHYMAL,
        theta=float(rng.uniform(-np.pi, np.pi)),
        rho=0.4,
        area_px=area_px,
        shape_seed=int(rng.integers(0, 2**31 - 1)),
    )
    masks = []
    for dirname in ("brain", "bone"):
        (Path(patient_dir) / dirname).mkdir(parents=True, exist_ok=True)
    for k in range(n_slices):
        pos = 0.5 + 0.02 * (k - (n_slices - 1) / 2)
        brain, bone, mask = render_slice(rng, size_px, slice_pos=pos, head=head, bleeds=(bleed,))
        (Path(patient_dir) / "brain" / f"{k + 1}.jpg").write_bytes(_encode_jpeg(brain))
        (Path(patient_dir) / "bone" / f"{k + 1}.jpg").write_bytes(_encode_jpeg(bone))
        masks.append(mask)
    return masks


# --------------------------------------------------------------------------- planning

# Relative frequency of subtypes and median peak lesion area (px at 650 px).
_KIND_WEIGHTS = {
    INTRAPARENCHYMAL: 0.32,
    SUBDURAL: 0.2,
    EPIDURAL: 0.16,
    SUBARACHNOID: 0.17,
    INTRAVENTRICULAR: 0.15,
}
_KIND_MEDIAN_AREA = {
    INTRAPARENCHYMAL: 2400.0,
    SUBDURAL: 2400.0,
    EPIDURAL: 2700.0,
    SUBARACHNOID: 900.0,
    INTRAVENTRICULAR: 1200.0,
}


def _patient_ids(rng: np.random.Generator, config: SyntheticConfig) -> list[int]:
    """Consecutive IDs from ``first_id`` with occasional gaps, like a real subset."""
    ids = []
    current = config.first_id
    for _ in range(config.n_patients):
        ids.append(current)
        current += 1 + (1 if rng.random() < 0.2 else 0)
    return ids


def _span(rng: np.random.Generator, valid: list[int], length: int) -> list[int]:
    length = max(1, min(length, len(valid)))
    start = int(rng.integers(0, len(valid) - length + 1))
    return valid[start : start + length]


def _valid_slices(n: int, lo: float, hi: float) -> list[int]:
    pos = [(k + 0.5) / n for k in range(n)]
    valid = [k for k, t in enumerate(pos) if lo <= t <= hi]
    if not valid:  # very short stacks: fall back to the middle slice
        valid = [min(range(n), key=lambda k: abs(pos[k] - 0.5 * (lo + hi)))]
    return valid


def _plan_bleed(rng: np.random.Generator, kind: str, n_slices: int, near: list[int] | None) -> dict[int, Bleed]:
    """Plans one bleed across consecutive slices, largest in the middle of its span."""
    if kind == INTRAVENTRICULAR:
        valid = _valid_slices(n_slices, 0.44, 0.66)
    else:
        valid = _valid_slices(n_slices, 0.22, 0.8)
    length = round(n_slices * rng.uniform(0.2, 0.36))
    if near:
        # A second bleed in the same patient overlaps the first one's slices.
        centre = near[len(near) // 2]
        valid = sorted(valid, key=lambda k: abs(k - centre))[: max(length + 2, 1)]
        valid.sort()
    slices = _span(rng, valid, length)
    peak = float(np.clip(_KIND_MEDIAN_AREA[kind] * rng.lognormal(0.0, 0.75), 300.0, 14000.0))
    if kind in (EPIDURAL, SUBDURAL):
        theta = float(rng.choice([0.0, np.pi]) + rng.uniform(-0.9, 0.9))
    else:
        theta = float(rng.uniform(-np.pi, np.pi))
    rho = float(rng.uniform(0.2, 0.6))
    drift = float(rng.uniform(-0.05, 0.05))
    shape_seed = int(rng.integers(0, 2**31 - 1))
    plan = {}
    for i, k in enumerate(slices):
        profile = 0.2 + 0.8 * math.sin(math.pi * (i + 0.5) / len(slices))
        profile *= float(rng.lognormal(0.0, 0.25))
        plan[k] = Bleed(
            kind=kind,
            theta=theta + drift * i,
            rho=rho,
            area_px=max(_MIN_LESION_PX * 1.3, peak * profile),
            shape_seed=shape_seed,
        )
    return plan


def _plan_dataset(config: SyntheticConfig) -> list[_PatientPlan]:
    """Decides, per patient, head shape, bleeds per slice and fractures."""
    root_seq = np.random.SeedSequence(config.seed)
    plan_rng = np.random.default_rng(root_seq.spawn(1)[0])
    ids = _patient_ids(plan_rng, config)
    n_bleeding = round(config.n_patients * config.hemorrhage_fraction)
    bleeding = set(plan_rng.choice(config.n_patients, size=n_bleeding, replace=False).tolist())
    kinds = list(_KIND_WEIGHTS)
    weights = np.array([_KIND_WEIGHTS[k] for k in kinds])
    weights /= weights.sum()
    n = config.slices_per_patient

    plans = []
    for index, number in enumerate(ids):
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, 1, index]))
        plan = _PatientPlan(
            number=number,
            age=int(rng.integers(1, 73)),
            gender="Male" if rng.random() < 0.6 else "Female",
            head=random_head(rng),
            bleeds=[() for _ in range(n)],
            fractures=[None] * n,
        )
        patient_kinds: list[str] = []
        first_span: list[int] | None = None
        bleed_at: dict[str, list[int]] = {}
        if index in bleeding:
            n_kinds = 2 if rng.random() < 0.3 else 1
            patient_kinds = [str(k) for k in rng.choice(kinds, size=n_kinds, replace=False, p=weights)]
            for kind in patient_kinds:
                per_slice = _plan_bleed(rng, kind, n, first_span)
                bleed_at[kind] = sorted(per_slice)
                if first_span is None:
                    first_span = sorted(per_slice)
                for k, bleed in per_slice.items():
                    plan.bleeds[k] = plan.bleeds[k] + (bleed,)
        # Fractures mostly accompany epidural bleeds, occasionally other trauma.
        if EPIDURAL in patient_kinds:
            p_fracture = 0.7
        elif patient_kinds:
            p_fracture = 0.2
        else:
            p_fracture = 0.08
        if rng.random() < p_fracture:
            if EPIDURAL in bleed_at:
                centre = bleed_at[EPIDURAL][len(bleed_at[EPIDURAL]) // 2]
                theta_f = plan.bleeds[centre][0].theta if plan.bleeds[centre] else 0.0
                for b in plan.bleeds[centre]:
                    if b.kind == EPIDURAL:
                        theta_f = b.theta
                theta_f += float(rng.uniform(-0.15, 0.15))
            else:
                centre = int(rng.choice(_valid_slices(n, 0.3, 0.75)))
                theta_f = float(rng.uniform(-np.pi, np.pi))
            length = int(rng.integers(2, 5))
            for k in range(max(0, centre - length // 2), min(n, centre - length // 2 + length)):
                plan.fractures[k] = theta_f
        plans.append(plan)
    return plans


# --------------------------------------------------------------------------- writing


def _encode_jpeg(image: np.ndarray) -> bytes:
    buffer = BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _demographics_row(plan: _PatientPlan, kinds: set[str], fracture: bool) -> str:
    flags = ["1" if kind in kinds else "" for kind in SUBTYPES]
    if kinds:
        condition = "+ ".join(_CONDITION_NAMES[k] for k in SUBTYPES if k in kinds) + " "
    else:
        condition = "Normal CT"
    return ",".join([str(plan.number), str(plan.age), f'"{plan.gender}"', *flags, "1" if fracture else "", f'"{condition}"', ""])


def generate_dataset(root: Path, config: SyntheticConfig = SyntheticConfig(), *, overwrite: bool = False) -> Path:
    """Writes the dataset under root (created if missing) and returns root.

    Deterministic for a given config (same bytes for the same seed), so tests can
    compare files and demos are reproducible.  Refuses to touch an existing
    ``root/Patients_CT`` (FileExistsError) unless ``overwrite=True``, in which case that
    folder is deleted first so no stale patients remain.
    """
    started = time.perf_counter()
    root = Path(root)
    patients_dir = root / "Patients_CT"
    if patients_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{patients_dir} already exists; pass overwrite=True to replace it")
        logger.info("overwriting existing %s", patients_dir)
        shutil.rmtree(patients_dir)
    patients_dir.mkdir(parents=True)

    plans = _plan_dataset(config)
    noise_bank = _noise_bank(np.random.default_rng(np.random.SeedSequence([config.seed, 3])), config.size_px)
    n = config.slices_per_patient
    diagnosis = [DIAGNOSIS_HEADER]
    demographics = [DEMOGRAPHICS_HEADER]
    n_positive = 0
    for index, plan in enumerate(plans):
        patient_dir = patients_dir / f"{plan.number:03d}"
        brain_dir = patient_dir / "brain"
        bone_dir = patient_dir / "bone"
        brain_dir.mkdir(parents=True)
        bone_dir.mkdir()
        patient_kinds: set[str] = set()
        patient_fracture = False
        for k in range(n):
            rng = np.random.default_rng(np.random.SeedSequence([config.seed, 2, index, k]))
            result = _render(
                rng,
                config.size_px,
                (k + 0.5) / n,
                plan.head,
                plan.bleeds[k],
                plan.fractures[k],
                noise_bank,
            )
            number = k + 1
            (brain_dir / f"{number}.jpg").write_bytes(_encode_jpeg(result.brain))
            (bone_dir / f"{number}.jpg").write_bytes(_encode_jpeg(result.bone))
            positive = bool(result.kinds)
            if positive:
                n_positive += 1
                mask_u8 = result.mask.astype(np.uint8) * np.uint8(255)
                (brain_dir / f"{number}_HGE_Seg.jpg").write_bytes(_encode_jpeg(mask_u8))
            patient_kinds |= result.kinds
            patient_fracture |= result.fracture
            flags = ["1" if kind in result.kinds else "0" for kind in SUBTYPES]
            diagnosis.append(
                ",".join([str(plan.number), str(number), *flags, "0" if positive else "1", "1" if result.fracture else "0"])
            )
        demographics.append(_demographics_row(plan, patient_kinds, patient_fracture))

    with open(root / "hemorrhage_diagnosis.csv", "w", encoding="utf-8-sig", newline="") as fh:
        fh.write("\n".join(diagnosis) + "\n")
    with open(root / "patient_demographics.csv", "w", encoding="utf-8", newline="") as fh:
        fh.write("\n".join(demographics) + "\n")

    total = len(plans) * n
    logger.info(
        "wrote synthetic CT-ICH data set to %s: %d patients, %d slices (%d with hemorrhage) in %.2f s",
        root,
        len(plans),
        total,
        n_positive,
        time.perf_counter() - started,
    )
    return root
