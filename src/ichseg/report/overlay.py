"""The CT slice with the predicted blood drawn on it: one picture shared by the overlays that
``predict`` writes and by the report's key slices, so the two always look the same."""

from __future__ import annotations

import cv2
import numpy as np


def overlay_rgb(image_u8: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The CT slice with blood tinted red and outlined in yellow, for a human reader."""
    if not mask.any():  # most slices: just the slice in RGB
        return cv2.cvtColor(image_u8, cv2.COLOR_GRAY2RGB)
    rgb = np.repeat(image_u8[..., None], 3, axis=2).astype(np.float32)
    red = np.array([255, 0, 0], np.float32)
    rgb[mask] = 0.55 * rgb[mask] + 0.45 * red
    out = rgb.clip(0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (255, 255, 0), 1)
    return out
