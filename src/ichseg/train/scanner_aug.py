"""Augmentations that imitate a hospital scanner's images rather than CT-ICH's export.

CT-ICH's slices went through a video export to 8-bit JPGs: soft, blocky and with little
noise. A scanner sends sharper reconstruction kernels, thin slices with much stronger,
spatially correlated quantum noise, and other compressions. A network that only ever saw
the export reads that texture as something new (issue 14: a normal scanner head with every
slice head at 0.7-0.9). Each transform here works on float images in [0, 1], channels
first (C, H, W), is seeded through MONAI's ``set_random_state`` (so a resumed run repeats
its batches), and leaves the mask alone: none of them moves anatomy.

The same functions with fixed parameters are the stress test's scanner perturbations
(:mod:`ichseg.evaluate.stress`), so what training imitates is also what is measured.
"""

from __future__ import annotations

import cv2
import numpy as np
from monai.transforms import MapTransform, RandomizableTransform


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


class RandScannerd(RandomizableTransform, MapTransform):
    """With probability ``prob`` each: JPEG at quality 25-90, a sharp kernel (amount
    0.3-1.5), thin-slice noise (σ 0.01-0.05 of the window, correlation 0.6-1.5 px).
    Applied in that order (a scanner's noise is in the image before any export)."""

    def __init__(
        self, keys: str = "image", prob_jpeg: float = 0.25, prob_sharp: float = 0.2, prob_noise: float = 0.2
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.probs = (prob_jpeg, prob_sharp, prob_noise)

    def __call__(self, data):
        d = dict(data)
        r = self.R
        do_jpeg, do_sharp, do_noise = (r.random() < p for p in self.probs)
        quality = int(r.randint(25, 91))
        amount = float(r.uniform(0.3, 1.5))
        std, corr = float(r.uniform(0.01, 0.05)), float(r.uniform(0.6, 1.5))
        seed = int(r.randint(2**31 - 1))
        for key in self.key_iterator(d):
            img = np.asarray(d[key], np.float32)
            if do_noise:
                img = correlated_noise_float(img, std, corr, np.random.default_rng(seed))
            if do_sharp:
                img = sharpen_float(img, amount)
            if do_jpeg:
                img = jpeg_float(img, quality)
            d[key] = img
        return d
