"""One synthetic slice: the anatomy rendered in HU, windowed twice (brain and bone) with
scanner-like noise and texture, plus the public single-slice helpers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ichseg.data.synthetic.anatomy import (
    _AIR,
    _BLOOD_RANGE,
    _CORTICAL_BONE,
    _CSF,
    _DEEP_GREY,
    _DIPLOE,
    _EDEMA,
    _FALX,
    _FAT,
    _GALEA,
    _GREY,
    _MIN_LESION_PX,
    _NOISE_HU,
    _SHIFT,
    _SKIN,
    _WHITE,
    BONE_WINDOW,
    BRAIN_WINDOW,
    INTRAPARENCHYMAL,
    JPEG_QUALITY,
    SUBTYPES,
    Bleed,
    HeadGeometry,
    _bleed_mask,
    _bump,
    _fill,
    _Frame,
    _line,
    _pts,
    _RenderedSlice,
    _ventricles,
    _wall_polygon,
)

logger = logging.getLogger(__name__)


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


def _encode_jpeg(image: np.ndarray) -> bytes:
    buffer = BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
