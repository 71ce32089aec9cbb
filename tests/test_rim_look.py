"""The per-case rim measurements on a synthetic head whose answers are known: a skull ring
of 1,000 HU around 30-HU brain, a band 1-4 mm below the inner table raised by 20 HU, and
white noise of known size."""

from __future__ import annotations

import numpy as np
import pytest

from ichseg.experiments.rim_look import CTICH_PROFILE_HU, blob_geometry, depth_profile_hu, harmonise_rim_hu, noise_hu

PX_MM = 0.5


def head(band_hu: float = 20.0, noise: float = 0.0, n: int = 3) -> np.ndarray:
    yy, xx = np.mgrid[:400, :400]
    r_mm = np.hypot(yy - 200, xx - 200) * PX_MM
    s = np.full((400, 400), -1000.0, np.float32)
    s[r_mm < 90] = 1000.0  # skull, inner table at 80 mm
    depth = 80 - r_mm
    s[depth > 0] = 30.0
    s[(depth > 1) & (depth <= 4)] += band_hu
    rng = np.random.default_rng(0)
    return np.stack([s + (rng.normal(0, noise, s.shape) * (depth > 0)).astype(np.float32) for _ in range(n)])


def test_depth_profile_finds_the_band_below_the_inner_table_and_none_deep() -> None:
    p = depth_profile_hu(head(20.0), PX_MM)
    q = dict(zip(p["bins_mm"][:-1], p["q25_over_brain_hu"], strict=True))
    assert p["deep_brain_hu"] == pytest.approx(30.0)
    assert q[2] == pytest.approx(20.0) and q[3] == pytest.approx(20.0)
    assert q[6] == pytest.approx(0.0) and q[12] == pytest.approx(0.0)


def test_rim_harmonisation_lowers_the_band_to_ctich_and_never_raises() -> None:
    hu = head(20.0)
    out = harmonise_rim_hu(hu, PX_MM, depth_profile_hu(hu, PX_MM))
    after = depth_profile_hu(out, PX_MM)
    q = dict(zip(after["bins_mm"][:-1], after["q25_over_brain_hu"], strict=True))
    assert q[2] == pytest.approx(CTICH_PROFILE_HU[2], abs=3.0)
    assert (out <= hu + 1e-4).all()
    assert np.array_equal(out[hu > 300], hu[hu > 300])  # bone untouched
    dark = head(0.0)  # a band darker than CT-ICH's is left as it is
    assert np.array_equal(harmonise_rim_hu(dark, PX_MM, depth_profile_hu(dark, PX_MM)), dark)


def test_noise_is_the_added_noise() -> None:
    assert noise_hu(head(0.0, noise=6.0), PX_MM) == pytest.approx(6.0, rel=0.1)
    assert noise_hu(head(0.0, noise=2.0), PX_MM) == pytest.approx(2.0, rel=0.1)


def test_blob_geometry_of_a_crescent_against_the_bone() -> None:
    hu = head(0.0, n=1)
    yy, xx = np.mgrid[:400, :400]
    depth = 80 - np.hypot(yy - 200, xx - 200) * PX_MM
    crescent = ((depth > 0) & (depth <= 3) & (xx > 300))[None]
    (row,) = blob_geometry(hu, crescent, PX_MM)
    assert row["thickness_mm"] == pytest.approx(3.0, abs=1.0)
    assert row["bone_distance_median_mm"] < 2.0 and row["hu_median"] == pytest.approx(30.0)
