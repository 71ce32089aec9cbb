"""Multi-frame (Enhanced) CT: one DICOM instance holding every slice as a frame.

Newer scanners export a head CT as one Enhanced CT Image instance (SOP class
1.2.840.10008.5.1.4.1.1.2.1, or a Legacy Converted Enhanced CT) whose geometry and rescale
are not top-level attributes but functional groups: per frame in
PerFrameFunctionalGroupsSequence, or once for all frames in
SharedFunctionalGroupsSequence. These functions read one frame's values the way the
standard says (per-frame first, then shared), so the reader can treat each frame as the
slice it is.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def functional_group(ds: Any, frame: int, sequence: str) -> Any | None:
    """The first item of functional-group ``sequence`` (e.g. "PlanePositionSequence") for
    ``frame`` (0-based): from the frame's own group, else from the shared one."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq is not None and len(seq) > index:
            items = seq[index].get(sequence)
            if items is not None and len(items):
                return items[0]
    return None


def frame_geometry(ds: Any, frame: int) -> dict[str, Any]:
    """ImagePositionPatient, ImageOrientationPatient, PixelSpacing and SliceThickness of one
    frame (None where the groups do not give them)."""
    pos = functional_group(ds, frame, "PlanePositionSequence")
    ori = functional_group(ds, frame, "PlaneOrientationSequence")
    meas = functional_group(ds, frame, "PixelMeasuresSequence")
    return {
        "position": None if pos is None else pos.get("ImagePositionPatient"),
        "orientation": None if ori is None else ori.get("ImageOrientationPatient"),
        "pixel_spacing": None if meas is None else meas.get("PixelSpacing"),
        "thickness": None if meas is None else meas.get("SliceThickness"),
    }


def frame_hu(ds: Any, pixels: np.ndarray, frame: int) -> np.ndarray:
    """HU of one frame: its stored values × RescaleSlope + RescaleIntercept from the frame's
    PixelValueTransformationSequence (per frame, else shared, else top level, else 1 and 0)."""
    t = functional_group(ds, frame, "PixelValueTransformationSequence")
    src = t if t is not None else ds
    slope = float(src.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(src.get("RescaleIntercept", 0.0) or 0.0)
    return (pixels[frame].astype(np.float32) * slope + intercept).astype(np.float32)
