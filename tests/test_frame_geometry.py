"""Scanner-like slices go into the model's 650-px frame and their masks come back onto the
slice's own grid (``infer/volume.py``). Every end-to-end test uses converted CT-ICH data,
where the frame mapping is the identity; these use the grids hospitals send: 512 px at
0.45 mm and 0.7 mm, and a rectangular field of view."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ichseg.data.frame import FRAME_PX, frame_for, from_frame, model_pixel_mm, to_frame


def _shapes(shape: tuple[int, int], spacing_mm: tuple[float, float]) -> np.ndarray:
    """A 20 mm × 12 mm ellipse and a 3 mm-thick crescent 60 mm across, drawn in mm so that
    they are the same anatomy on every grid."""
    h, w = shape
    m = np.zeros(shape, np.uint8)
    cy, cx = h / 2, w / 2
    cv2.ellipse(
        m, (round(cx - 25 / spacing_mm[1]), round(cy)), (round(10 / spacing_mm[1]), round(6 / spacing_mm[0])), 0, 0, 360, 1, -1
    )
    outer = (round(40 / spacing_mm[1]), round(40 / spacing_mm[0]))
    inner = (round(37 / spacing_mm[1]), round(37 / spacing_mm[0]))
    ring = np.zeros(shape, np.uint8)
    cv2.ellipse(ring, (round(cx), round(cy)), outer, 0, -40, 40, 1, -1)
    cv2.ellipse(ring, (round(cx), round(cy)), inner, 0, -40, 40, 0, -1)
    return (m | ring).astype(bool)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_ct_ich_geometry_is_the_identity() -> None:
    frame = frame_for((FRAME_PX, FRAME_PX), (model_pixel_mm(), model_pixel_mm()))
    mask = _shapes((FRAME_PX, FRAME_PX), (model_pixel_mm(), model_pixel_mm()))
    image = (mask * 200).astype(np.uint8)
    assert frame.scaled == (FRAME_PX, FRAME_PX) and frame.offset == (0, 0)
    assert np.array_equal(to_frame(image, frame), image)
    assert np.array_equal(from_frame(mask, frame), mask)  # exact where it can be


@pytest.mark.parametrize(
    ("shape", "spacing_mm"),
    [((512, 512), (0.45, 0.45)), ((512, 512), (0.7, 0.7)), ((400, 512), (0.6, 0.5))],
    ids=["512px-0.45mm", "512px-0.7mm", "rectangular-0.6x0.5mm"],
)
def test_scanner_grids_round_trip_through_the_model_frame(shape: tuple[int, int], spacing_mm: tuple[float, float]) -> None:
    frame = frame_for(shape, spacing_mm)
    mask = _shapes(shape, spacing_mm)
    # in the frame, the anatomy has the model's pixel size: the same area in mm², centred
    framed = to_frame((mask * 255).astype(np.uint8), frame) >= 128
    area_mm2 = mask.sum() * spacing_mm[0] * spacing_mm[1]
    assert framed.sum() * model_pixel_mm() ** 2 == pytest.approx(area_mm2, rel=0.03)
    rows = np.nonzero(framed)[0]
    assert abs(rows.mean() - (frame.offset[0] + np.nonzero(mask)[0].mean() * frame.scaled[0] / shape[0])) < 1.5
    # and a mask drawn in the frame lands back on the slice's own grid, the thin crescent too
    back = from_frame(framed, frame)
    assert back.shape == shape
    assert _dice(back, mask) >= 0.995, _dice(back, mask)  # nearest-neighbour picking gave 0.937-0.944
