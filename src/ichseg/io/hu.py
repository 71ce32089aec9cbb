"""HU ↔ CT-ICH's two 8-bit windows: the mapping every format reader and writer needs.

CT-ICH's slices are 8-bit exports of a *brain* and a *bone* window; the window constants
here were estimated from the data (:mod:`ichseg.data.windows` holds the estimation, and
``docs/WINDOWS.md`` its method and numbers). The mapping is DICOM's linear VOI LUT
function (PS3.3 C.11.2.1.2.1) onto 0–255, rounded to the nearest level, which is what an
8-bit window export does. It lives with the formats because turning a DICOM or NIfTI
volume into the slices the networks read is part of reading it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """A display window: HU ``center`` and ``width`` (DICOM Window Center / Window Width)."""

    center: float
    width: float

    @property
    def lower(self) -> float:
        """HU shown as grey 0 (and everything below)."""
        return float(gray_to_hu(0, self.center, self.width))

    @property
    def upper(self) -> float:
        """HU shown as grey 255 (and everything above)."""
        return float(gray_to_hu(255, self.center, self.width))


BRAIN_WINDOW = Window(center=40.0, width=120.0)
"""CT-ICH's brain window (estimated, see the module docstring): −20 … 99 HU onto 0 … 255."""

BONE_WINDOW = Window(center=700.0, width=3200.0)
"""CT-ICH's bone window (estimated, see the module docstring): −900 … 2299 HU onto 0 … 255."""

BRAIN_LOW_SATURATED = 3
"""Brain-window grey levels ≤ this count as saturated black. The JPGs' black is 1 (not 0) in
flat regions and JPEG ringing lifts it to 2–3 next to edges, so these levels mean "below
the window" rather than −19 HU."""

BRAIN_HIGH_SATURATED = 252
"""Brain-window grey levels ≥ this count as saturated white (JPEG ringing pulls 255 down)."""

AIR_HU = -1000.0
"""HU given to bone-window black (grey 0): in a head only air lies below the bone window's
floor (−900 HU), and −1000 is what a scanner would show there."""

BONE_FALLBACK_HU = 1000.0
"""HU for saturated brain-window white when a slice has no bone window: mostly skull."""


# --------------------------------------------------------------------------- mapping


def window_hu(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """HU → uint8 through a linear window, as an 8-bit window export does it.

    DICOM's linear VOI LUT (PS3.3 C.11.2.1.2.1): ``y = ((x − (c − 0.5)) / (w − 1) + 0.5)``
    scaled to 0–255, clipped at both ends, rounded half up to the nearest grey level.
    """
    if width <= 1:
        raise ValueError(f"window width must be > 1 HU, got {width}")
    x = np.asarray(hu, dtype=np.float64)
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)


def gray_to_hu(gray: np.ndarray | float, center: float, width: float) -> np.ndarray:
    """Inverse of the unclipped window: the HU that maps exactly onto ``gray`` (float64)."""
    g = np.asarray(gray, dtype=np.float64)
    return (g / 255.0 - 0.5) * (width - 1) + center - 0.5


def hu_to_windows(hu: np.ndarray, brain: Window = BRAIN_WINDOW, bone: Window = BONE_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """HU (any shape) → (brain_u8, bone_u8) as CT-ICH's JPGs show them, so a DICOM or NIfTI
    volume reaches the model in the grey levels it was trained on."""
    return window_hu(hu, brain.center, brain.width), window_hu(hu, bone.center, bone.width)


def windows_to_hu(
    brain_u8: np.ndarray,
    bone_u8: np.ndarray | None,
    brain: Window = BRAIN_WINDOW,
    bone: Window = BONE_WINDOW,
) -> np.ndarray:
    """Reconstruct HU (float32) from a slice's two windows: the inverse used by the converter.

    Where the brain window is not saturated it is used (0.47 HU per grey level, against
    12.5 in the bone window). Where it is saturated the bone window gives the HU, limited
    to the side of the brain window that the saturation says (a brain-black pixel is at
    most the HU of grey ``BRAIN_LOW_SATURATED``): the two windows must agree, and the brain
    window is the sharper witness. Bone-window black becomes ``AIR_HU``.

    Round trip (tested): ``hu_to_windows(windows_to_hu(b, o))`` returns the brain grey level
    within ±1 where it was not saturated and stays saturated where it was, and the bone
    grey level within ±1 where the brain window was saturated and the two windows agree.
    Without a bone window (``bone_u8=None``) saturated black becomes ``AIR_HU`` and
    saturated white ``BONE_FALLBACK_HU``: a crude stand-in, logged by the caller.
    """
    b = np.asarray(brain_u8)
    if b.dtype != np.uint8:
        raise ValueError(f"brain window must be uint8, got {b.dtype}")
    low = b <= BRAIN_LOW_SATURATED
    high = b >= BRAIN_HIGH_SATURATED
    hu = gray_to_hu(b, brain.center, brain.width)
    if bone_u8 is None:
        hu[low] = AIR_HU
        hu[high] = BONE_FALLBACK_HU
        return hu.astype(np.float32)
    o = np.asarray(bone_u8)
    if o.shape != b.shape:
        raise ValueError(f"brain window {b.shape} and bone window {o.shape} differ in shape")
    if o.dtype != np.uint8:
        raise ValueError(f"bone window must be uint8, got {o.dtype}")
    hu_bone = gray_to_hu(o, bone.center, bone.width)
    hu_bone[o == 0] = AIR_HU
    low_cap = float(gray_to_hu(BRAIN_LOW_SATURATED, brain.center, brain.width))
    high_floor = float(gray_to_hu(BRAIN_HIGH_SATURATED, brain.center, brain.width))
    hu[low] = np.minimum(hu_bone[low], low_cap)
    hu[high] = np.maximum(hu_bone[high], high_floor)
    return hu.astype(np.float32)
