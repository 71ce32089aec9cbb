"""What a hospital scanner's images look like beside CT-ICH's export, as pure functions.

CT-ICH's slices went through a video export to 8-bit JPGs: soft, blocky and with little
noise. A scanner sends sharper reconstruction kernels, thin slices with much stronger,
spatially correlated quantum noise, and other compressions. These functions imitate each
on float windows in [0, 1], channels first (C, H, W). Training draws them at random
(:mod:`ichseg.train.scanner_aug`); the stress test applies them at fixed levels
(:mod:`ichseg.experiments.stress`), so what training imitates is also what is measured.
"""

from __future__ import annotations

import cv2
import numpy as np


def jpeg_u8(image_u8: np.ndarray, quality: int) -> np.ndarray:
    """A uint8 (H, W) image through JPEG at ``quality`` (1-100) and back: the blocking and
    ringing of a lossy export."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image_u8), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # cv2 cannot fail on a valid uint8 image; keep the input if it ever does
        return image_u8
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def jpeg_float(image: np.ndarray, quality: int) -> np.ndarray:
    """Float (C, H, W) in [0, 1] through JPEG at ``quality``, channel by channel."""
    out = np.empty_like(image, dtype=np.float32)
    for c in range(len(image)):
        u8 = np.clip(image[c] * 255 + 0.5, 0, 255).astype(np.uint8)
        out[c] = jpeg_u8(u8, quality).astype(np.float32) / 255
    return out


def sharpen_float(image: np.ndarray, amount: float, sigma_px: float = 1.0) -> np.ndarray:
    """Unsharp masking (image + amount × (image − blur)), as a sharp reconstruction kernel
    enhances edges and noise; clipped to [0, 1]."""
    out = np.empty_like(image, dtype=np.float32)
    for c in range(len(image)):
        blur = cv2.GaussianBlur(image[c].astype(np.float32), (0, 0), sigma_px)
        out[c] = image[c] + amount * (image[c] - blur)
    return np.clip(out, 0.0, 1.0)


def correlated_noise_float(image: np.ndarray, std: float, corr_px: float, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise blurred over ``corr_px`` (the grain of filtered back projection on
    thin slices), rescaled to standard deviation ``std``; the same field on every channel
    (the windows of one slice share its noise), clipped to [0, 1]."""
    h, w = image.shape[-2:]
    field = rng.standard_normal((h, w)).astype(np.float32)
    if corr_px > 0:
        field = cv2.GaussianBlur(field, (0, 0), corr_px)
    field *= std / max(float(field.std()), 1e-6)
    return np.clip(image + field[None], 0.0, 1.0)


# Bone-window grey levels of CT-ICH's export (ichseg.data.normalize): skull above 120,
# soft tissue and blood 30-120, as fractions of the window.
SKULL_BONE_WINDOW = 120 / 255
SOFT_BONE_WINDOW = 30 / 255


def skull_rim_float(
    image: np.ndarray, brain_channels: list[int], bone_channel: int, excess: float, width_px: float
) -> np.ndarray:
    """Brighten soft tissue next to the skull by ``excess`` (a fraction of the brain window)
    decaying as exp(−distance / ``width_px``): the partial-volume and beam-hardening rim
    along the inner table that some scanners show much brighter than CT-ICH's export does
    (a real adult head from outside CT-ICH: +40 HU over brain in the 0.5-3 mm band against
    +16-29 HU on CT-ICH; docs/RESULTS.md), and that a network which never saw it outlines
    as a thin extra-axial bleed. The skull is found on ``bone_channel``; ``brain_channels``
    are brightened, clipped to [0, 1]."""
    bone = image[bone_channel]
    skull = (bone > SKULL_BONE_WINDOW).astype(np.uint8)
    if not skull.any():
        return image
    distance = cv2.distanceTransform(1 - skull, cv2.DIST_L2, 3)
    soft = (bone >= SOFT_BONE_WINDOW) & (skull == 0)
    rim = np.where(soft, np.exp(-distance / max(width_px, 1e-3)), 0.0).astype(np.float32) * excess
    out = image.astype(np.float32, copy=True)
    for c in brain_channels:
        out[c] = np.clip(out[c] + rim, 0.0, 1.0)
    return out
