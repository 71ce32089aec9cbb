"""The perturbations of the stress test: how another scanner or reconstruction would change
CT-ICH's windows, at a mild and a strong level each.

The brightness, contrast and gamma ones act on the brain window (where a calibration shift
shows: a few HU move the brain window by many grey levels but the 20× wider bone window
by less than one), noise and blur on both windows, and so do the scanner looks of
:mod:`ichseg.data.scanner` (JPEG compression, a sharp kernel, thin-slice noise). Running
them over the cross-validation members is :mod:`ichseg.experiments.stress`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

Window = str


def _brain_only(fn: Callable[[np.ndarray], np.ndarray]):
    """A perturbation of the brain-window channel of a (C, H, W) uint8 stack only."""

    def apply(stack: np.ndarray, windows: tuple[Window, ...], rng: np.random.Generator) -> np.ndarray:
        out = stack.copy()
        if "brain" in windows:
            c = windows.index("brain")
            out[c] = fn(stack[c].astype(np.float32)).clip(0, 255).round().astype(np.uint8)
        return out

    return apply


def brightness(offset_grey: float):
    """Brain window + ``offset_grey`` grey levels (a calibration offset of the scanner)."""
    return _brain_only(lambda x: x + offset_grey)


def contrast(factor: float, about_grey: float = 128.0):
    """Brain window stretched by ``factor`` about ``about_grey`` (a narrower window)."""
    return _brain_only(lambda x: about_grey + (x - about_grey) * factor)


def gamma(g: float):
    """Brain window through 255·(x/255)^g (g < 1 brightens the mid-tones)."""
    return _brain_only(lambda x: 255.0 * (x / 255.0) ** g)


def noise(sigma_grey: float):
    """Gaussian noise of ``sigma_grey`` grey levels on every window (dose, reconstruction)."""

    def apply(stack: np.ndarray, windows: tuple[Window, ...], rng: np.random.Generator) -> np.ndarray:
        return (stack.astype(np.float32) + rng.normal(0, sigma_grey, stack.shape)).clip(0, 255).round().astype(np.uint8)

    return apply


def blur(sigma_px: float):
    """Gaussian blur of ``sigma_px`` pixels at 512×512 on every window (a softer kernel)."""

    def apply(stack: np.ndarray, windows: tuple[Window, ...], rng: np.random.Generator) -> np.ndarray:
        return np.stack([cv2.GaussianBlur(c, (0, 0), sigma_px) for c in stack])

    return apply


def _scanner_look(fn: Callable[[np.ndarray, np.random.Generator], np.ndarray]):
    """A :mod:`ichseg.data.scanner` look on every window of a uint8 stack."""

    def apply(stack: np.ndarray, windows: tuple[Window, ...], rng: np.random.Generator) -> np.ndarray:
        out = fn(stack.astype(np.float32) / 255.0, rng)
        return (out * 255.0).clip(0, 255).round().astype(np.uint8)

    return apply


def jpeg(quality: int):
    """Every window through JPEG at ``quality`` (another export's compression)."""
    from ichseg.data.scanner import jpeg_float

    return _scanner_look(lambda x, rng: jpeg_float(x, quality))


def sharp_kernel(amount: float):
    """Unsharp masking by ``amount`` (a bone or sharp soft-tissue reconstruction kernel)."""
    from ichseg.data.scanner import sharpen_float

    return _scanner_look(lambda x, rng: sharpen_float(x, amount))


def thin_slice_noise(sigma_grey: float, corr_px: float = 1.0):
    """Spatially correlated noise of ``sigma_grey`` grey levels (a 1-1.5 mm slice's grain)."""
    from ichseg.data.scanner import correlated_noise_float

    return _scanner_look(lambda x, rng: correlated_noise_float(x, sigma_grey / 255.0, corr_px, rng))


#: name -> ((label, perturbation) for the mild and the strong level)
PERTURBATIONS: dict[str, tuple[tuple[str, Any], tuple[str, Any]]] = {
    "brightness": (("+10 grey", brightness(10)), ("+20 grey", brightness(20))),
    "contrast": (("×1.15", contrast(1.15)), ("×1.3", contrast(1.3))),
    "gamma": (("γ 0.85", gamma(0.85)), ("γ 0.7", gamma(0.7))),
    "noise": (("σ 4 grey", noise(4)), ("σ 8 grey", noise(8))),
    "blur": (("σ 1 px", blur(1.0)), ("σ 2 px", blur(2.0))),
    "jpeg": (("quality 50", jpeg(50)), ("quality 20", jpeg(20))),
    "sharp kernel": (("amount 0.7", sharp_kernel(0.7)), ("amount 1.5", sharp_kernel(1.5))),
    "thin-slice noise": (("σ 6 grey", thin_slice_noise(6)), ("σ 12 grey", thin_slice_noise(12))),
}


CONDITIONS = [("none", "none", None)] + [(name, label, fn) for name, levels in PERTURBATIONS.items() for label, fn in levels]
