"""Lesion volumes, ABC/2 and connectivity on shapes whose answers are known by hand."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest

from ichseg.report.lesions import (
    SUBTYPES,
    ab_diameters_mm,
    abc2,
    label_components,
    lesions,
    total_volume_ml,
    volume_ml,
)


def ellipsoid(semi_axes_mm: tuple[float, float, float], spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """A voxelised ellipsoid (voxel centres inside), axes along (slice, row, column), with a margin."""
    shape = [math.ceil(2 * r / s) + 4 for r, s in zip(semi_axes_mm, spacing_mm, strict=True)]
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing_mm, strict=True)], indexing="ij")
    return sum((g / r) ** 2 for g, r in zip(grids, semi_axes_mm, strict=True)) <= 1.0


# Spacings finer than clinical (5 mm slices) on purpose: with voxel centres sampled inside the
# shape, the volume error comes from the one-voxel surface layer and shrinks with the voxel
# size relative to the radius. At 1 mm slices and 0.4-0.5 mm pixels a 10-20 mm shape is
# within ~0.3 %; at 5 mm slices a 10 mm-radius sphere spans 4 slices and comes back ~5 % low,
# which is the staircase of thick slices, not an error of the code.
@pytest.mark.parametrize(
    ("semi_axes", "spacing"),
    [
        ((10.0, 10.0, 10.0), (1.0, 0.45, 0.45)),  # sphere
        ((10.0, 10.0, 10.0), (0.8, 0.3, 0.4)),  # sphere, rows and columns spaced differently
        ((12.0, 20.0, 8.0), (1.0, 0.4, 0.5)),  # ellipsoid
    ],
)
def test_volume_of_known_shapes_within_2_percent(
    semi_axes: tuple[float, float, float], spacing: tuple[float, float, float]
) -> None:
    mask = ellipsoid(semi_axes, spacing)
    truth_ml = 4.0 / 3.0 * math.pi * math.prod(semi_axes) / 1000.0
    assert volume_ml(mask, spacing) == pytest.approx(truth_ml, rel=0.02)
    found = lesions(mask, spacing)
    assert len(found) == 1
    assert found[0].volume_ml == pytest.approx(truth_ml, rel=0.02)
    assert total_volume_ml(found) == pytest.approx(volume_ml(mask, spacing))
    # ABC/2 approximates an ellipsoid with π/6 ≈ 1/2 but with a weighted C: it is in the right range
    assert 0.5 * truth_ml < found[0].abc2_ml < 1.2 * truth_ml


def test_two_separate_blobs_are_two_lesions_largest_first() -> None:
    spacing = (5.0, 0.5, 0.5)
    mask = np.zeros((12, 64, 64), bool)
    mask[2:5, 10:20, 10:20] = True  # 3 × 10 × 10 voxels
    mask[6:10, 40:60, 40:50] = True  # 4 × 20 × 10 voxels
    found = lesions(mask, spacing)
    assert [les.label for les in found] == [1, 2]
    assert found[0].slices == (7, 8, 9, 10) and found[1].slices == (3, 4, 5)
    vox_ml = 5.0 * 0.5 * 0.5 / 1000
    assert found[0].volume_ml == pytest.approx(800 * vox_ml)
    assert found[1].volume_ml == pytest.approx(300 * vox_ml)
    assert found[0].max_axial_area_mm2 == pytest.approx(200 * 0.25)
    assert found[0].n_voxels == 800
    # centroid without an affine: voxel index × spacing, (slice, row, column)
    assert found[1].centroid_space == "grid"
    assert found[1].centroid_mm == pytest.approx((3 * 5.0, 14.5 * 0.5, 14.5 * 0.5))
    assert total_volume_ml(found) == pytest.approx(1100 * vox_ml)


def test_connectivity_in_plane_corners_join_across_slices_overlap_needed() -> None:
    mask = np.zeros((3, 10, 10), bool)
    mask[0, 2, 2] = mask[0, 3, 3] = True  # in-plane corner contact: one region
    mask[1, 3, 3] = True  # overlaps (0, 3, 3): same lesion
    mask[2, 4, 4] = True  # touches slice 1 only at a corner, 5 mm away: a separate lesion
    labels, k = label_components(mask)
    assert k == 2
    assert labels[0, 2, 2] == labels[0, 3, 3] == labels[1, 3, 3] != labels[2, 4, 4]


def _reference_labels(mask: np.ndarray) -> np.ndarray:
    """Breadth-first flood fill with the documented neighbourhood (8 in-plane + 2 axial)."""
    offsets = [(0, dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx] + [(-1, 0, 0), (1, 0, 0)]
    labels = np.zeros(mask.shape, np.int32)
    n = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if labels[start]:
            continue
        n += 1
        labels[start] = n
        queue = deque([start])
        while queue:
            z, y, x = queue.popleft()
            for dz, dy, dx in offsets:
                p = (z + dz, y + dy, x + dx)
                if all(0 <= c < s for c, s in zip(p, mask.shape, strict=True)) and mask[p] and not labels[p]:
                    labels[p] = n
                    queue.append(p)
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_match_a_flood_fill_reference(seed: int) -> None:
    mask = np.random.default_rng(seed).random((6, 24, 24)) > 0.7
    got, k = label_components(mask)
    ref = _reference_labels(mask)
    assert k == ref.max()
    pairs = set(zip(got[mask].tolist(), ref[mask].tolist(), strict=True))
    assert len(pairs) == k  # the same partition, whatever the numbering


def test_empty_mask_no_lesions_zero_ml() -> None:
    mask = np.zeros((5, 32, 32), bool)
    assert lesions(mask, (5.0, 0.45, 0.45)) == []
    assert volume_ml(mask, (5.0, 0.45, 0.45)) == 0.0
    assert total_volume_ml([]) == 0.0
    assert abc2(mask, (5.0, 0.45, 0.45)).volume_ml == 0.0


def test_ab_of_a_rectangle_by_hand() -> None:
    # 10 rows × 20 columns at 0.5 mm rows, 0.8 mm columns: 5 mm × 16 mm.
    mask = np.zeros((30, 40), bool)
    mask[5:15, 10:30] = True
    a, b = ab_diameters_mm(mask, (0.5, 0.8))
    diagonal = math.hypot(16.0, 5.0)
    assert a == pytest.approx(diagonal, abs=1e-6)  # A: the rectangle's diagonal, edge to edge
    # B: the longest segment at right angles to the diagonal inside the rectangle crosses
    # both long sides: height / sin(angle of the diagonal) = 5 × diagonal / 16.
    assert b == pytest.approx(5.0 * diagonal / 16.0, abs=0.2)


def test_ab_of_an_oblique_ellipse_with_unequal_pixels() -> None:
    dy, dx = 0.4, 0.5
    yy, xx = np.mgrid[0:200, 0:200]
    y, x = (yy - 100) * dy, (xx - 100) * dx
    t = math.radians(30)
    u, v = x * math.cos(t) + y * math.sin(t), -x * math.sin(t) + y * math.cos(t)
    mask = (u / 20.0) ** 2 + (v / 10.0) ** 2 <= 1.0
    a, b = ab_diameters_mm(mask, (dy, dx))
    assert a == pytest.approx(40.0, abs=1.0)  # within about one pixel
    assert b == pytest.approx(20.0, abs=1.0)


def test_abc2_on_a_hand_built_stack_of_ellipses() -> None:
    """Seven 5 mm slices of ellipses whose areas are 16 %, 49 %, 81 %, 100 %, 81 %, 49 %, 16 %
    of the largest (semi-axes 20 × 10 mm): by hand A = 40 mm, B = 20 mm, the slice weights
    are 0, 0.5, 1, 1, 1, 0.5, 0 → C = 4 × 5 mm = 20 mm, so ABC/2 = 4 × 2 × 2 / 2 = 8 mL."""
    spacing = (5.0, 0.25, 0.25)
    ratios = [0.16, 0.49, 0.81, 1.0, 0.81, 0.49, 0.16]
    yy, xx = np.mgrid[0:200, 0:200]
    y, x = (yy - 99.5) * spacing[1], (xx - 99.5) * spacing[2]
    mask = np.zeros((len(ratios) + 2, 200, 200), bool)
    for k, r in enumerate(ratios):
        s = math.sqrt(r)  # scale both axes: area ratio r
        mask[k + 1] = (x / (20.0 * s)) ** 2 + (y / (10.0 * s)) ** 2 <= 1.0
    est = abc2(mask, spacing)
    assert est.largest_slice_index == 4
    assert est.weighted_slices == 4.0
    assert est.c_mm == pytest.approx(20.0)
    assert est.a_mm == pytest.approx(40.0, abs=0.5)
    assert est.b_mm == pytest.approx(20.0, abs=0.5)
    assert est.volume_ml == pytest.approx(est.a_mm * est.b_mm * est.c_mm / 2 / 1000)  # the formula, in cm³
    assert est.volume_ml == pytest.approx(8.0, rel=0.03)
    (les,) = lesions(mask, spacing)
    assert les.abc2_ml == pytest.approx(est.volume_ml)
    assert les.largest_slice == 5 and les.slices == (2, 3, 4, 5, 6, 7, 8)
    assert (les.abc2_a_mm, les.abc2_b_mm, les.abc2_c_mm) == pytest.approx((est.a_mm, est.b_mm, est.c_mm))


def test_subtype_is_argmax_of_mean_over_the_lesion_slices() -> None:
    mask = np.zeros((6, 16, 16), bool)
    mask[1:3, 4:8, 4:8] = True
    probs = {name: np.zeros(6) for name in SUBTYPES}
    probs["subdural"][[1, 2]] = [0.6, 0.8]  # mean 0.7
    probs["epidural"][[1, 2]] = [0.9, 0.3]  # mean 0.6
    probs["intraparenchymal"][4] = 1.0  # outside the lesion: ignored
    probs["fracture"] = np.ones(6)  # not a hemorrhage subtype: ignored
    (les,) = lesions(mask, (5.0, 0.5, 0.5), probs)
    assert les.subtype == "subdural"
    assert les.subtype_probability == pytest.approx(0.7)
    assert les.subtype_probabilities["epidural"] == pytest.approx(0.6)
    assert "fracture" not in les.subtype_probabilities
    (plain,) = lesions(mask, (5.0, 0.5, 0.5))
    assert plain.subtype is None and plain.subtype_probability is None
    with pytest.raises(ValueError, match="slices"):
        lesions(mask, (5.0, 0.5, 0.5), {"subdural": np.zeros(5)})


def test_centroid_in_world_coordinates_with_an_affine() -> None:
    mask = np.zeros((4, 10, 10), bool)
    mask[2, 3, 5] = True
    affine = np.array(  # (slice, row, column) → (x, y, z): x along columns, y along rows, z along slices
        [[0.0, 0.0, 0.5, -100.0], [0.0, 0.4, 0.0, -50.0], [5.0, 0.0, 0.0, 20.0], [0.0, 0.0, 0.0, 1.0]]
    )
    (les,) = lesions(mask, (5.0, 0.4, 0.5), index_to_world_mm=affine)
    assert les.centroid_space == "patient"
    assert les.centroid_mm == pytest.approx((-100.0 + 2.5, -50.0 + 1.2, 20.0 + 10.0))
    assert les.to_dict()["slices"] == [3]


def test_bad_spacing_is_refused() -> None:
    with pytest.raises(ValueError, match="spacing"):
        volume_ml(np.ones((1, 1, 1), bool), (0.0, 1.0, 1.0))


def test_fragments_of_one_collection_are_one_lesion() -> None:
    mask = np.zeros((2, 100, 100), bool)
    mask[0, 40:60, 20:30] = True
    mask[0, 40:60, 33:43] = True  # 3 px = 3 mm from the first: a fragment of the same bleed
    mask[1, 40:60, 80:90] = True  # 37 mm away on the next slice: another bleed
    assert len(lesions(mask, (5.0, 1.0, 1.0))) == 3
    merged = lesions(mask, (5.0, 1.0, 1.0), merge_gap_mm=5.0)
    assert len(merged) == 2 and merged[0].n_voxels == 400 and merged[1].n_voxels == 200
    assert sum(les.volume_ml for les in merged) == pytest.approx(volume_ml(mask, (5.0, 1.0, 1.0)))
