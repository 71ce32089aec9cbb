"""HU windows of CT-ICH: the mapping, its inverse, and the estimate from data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ichseg.data import windows as W
from ichseg.data.windows import (
    BONE_WINDOW,
    BRAIN_HIGH_SATURATED,
    BRAIN_LOW_SATURATED,
    BRAIN_WINDOW,
    Window,
    gray_to_hu,
    hu_to_windows,
    window_hu,
    windows_to_hu,
)

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "ct-ich"
needs_real_data = pytest.mark.skipif(not (REAL_DATA / "Patients_CT").is_dir(), reason="CT-ICH data not at ../shared/ct-ich")


def _dicom_voi_reference(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1, written as the standard's three cases."""
    y = np.empty_like(x, dtype=np.float64)
    lo = x <= c - 0.5 - (w - 1) / 2
    hi = x > c - 0.5 + (w - 1) / 2
    mid = ~lo & ~hi
    y[lo], y[hi] = 0, 255
    y[mid] = ((x[mid] - (c - 0.5)) / (w - 1) + 0.5) * 255
    return np.floor(y + 0.5).astype(np.uint8)


def test_window_is_dicom_linear_voi_lut() -> None:
    x = np.linspace(-1100, 2600, 20001)
    for win in (BRAIN_WINDOW, BONE_WINDOW, Window(35, 80)):
        assert np.array_equal(window_hu(x, win.center, win.width), _dicom_voi_reference(x, win.center, win.width))
    brain, bone = hu_to_windows(np.array([-1000.0, -20.0, 40.0, 100.0, 3000.0]))
    assert brain.dtype == np.uint8 and bone.dtype == np.uint8
    assert brain.tolist()[0] == 0 and brain.tolist()[-1] == 255 and brain[1] == 0 and brain[3] == 255
    assert bone[0] == 0 and bone[-1] == 255 and 0 < bone[2] < 255
    assert BRAIN_WINDOW.lower == pytest.approx(-20, abs=0.5) and BRAIN_WINDOW.upper == pytest.approx(99.5, abs=0.5)
    with pytest.raises(ValueError, match="width"):
        window_hu(x, 0, 1)


def test_gray_to_hu_inverts_the_window_exactly() -> None:
    g = np.arange(256)
    for win in (BRAIN_WINDOW, BONE_WINDOW):
        assert np.array_equal(window_hu(gray_to_hu(g, win.center, win.width), win.center, win.width), g)


def _assert_round_trip(brain: np.ndarray, bone: np.ndarray, min_bone_fraction: float) -> None:
    hu = windows_to_hu(brain, bone)
    assert hu.dtype == np.float32 and hu.shape == brain.shape
    brain2, bone2 = hu_to_windows(hu)
    unsat = (brain > BRAIN_LOW_SATURATED) & (brain < BRAIN_HIGH_SATURATED)
    # the brain window comes back within ±1 wherever it was not saturated ...
    assert np.abs(brain2.astype(int) - brain)[unsat].max(initial=0) <= 1
    # ... and stays saturated on the same side where it was
    assert np.all(brain2[brain <= BRAIN_LOW_SATURATED] <= BRAIN_LOW_SATURATED)
    assert np.all(brain2[brain >= BRAIN_HIGH_SATURATED] >= BRAIN_HIGH_SATURATED)
    # the bone window comes back within ±1 where it gave the HU and is itself unsaturated
    used = ~unsat & (bone >= 1) & (bone <= 254)
    if used.any():
        ok = np.abs(bone2.astype(int) - bone)[used] <= 1
        assert ok.mean() >= min_bone_fraction, ok.mean()
    assert np.all(bone2[(bone == 0) & ~unsat] == 0)


def test_round_trip_on_consistent_windows() -> None:
    rng = np.random.default_rng(0)
    hu = np.concatenate([np.linspace(-1100, 2500, 40000), rng.uniform(-40, 120, 40000), rng.normal(30, 15, 20000)])
    brain, bone = hu_to_windows(hu.reshape(200, 500))
    _assert_round_trip(brain, bone, min_bone_fraction=1.0)


def test_windows_to_hu_prefers_the_brain_window_and_clamps_the_bone_window() -> None:
    brain = np.array([[120, 0, 0, 255, 2]], np.uint8)
    bone = np.array([[0, 0, 75, 200, 60]], np.uint8)
    hu = windows_to_hu(brain, bone)
    assert hu[0, 0] == pytest.approx(gray_to_hu(120, BRAIN_WINDOW.center, BRAIN_WINDOW.width))  # brain wins where unsaturated
    assert hu[0, 1] == W.AIR_HU  # bone-window black is air
    assert hu[0, 2] <= gray_to_hu(BRAIN_LOW_SATURATED, BRAIN_WINDOW.center, BRAIN_WINDOW.width) + 1e-4  # clamped to brain-black
    assert hu[0, 3] == pytest.approx(gray_to_hu(200, BONE_WINDOW.center, BONE_WINDOW.width))  # skull from the bone window
    assert hu[0, 4] == pytest.approx(gray_to_hu(60, BONE_WINDOW.center, BONE_WINDOW.width))  # fat from the bone window
    only_brain = windows_to_hu(brain, None)
    assert only_brain[0, 1] == W.AIR_HU and only_brain[0, 3] == W.BONE_FALLBACK_HU
    with pytest.raises(ValueError, match="shape"):
        windows_to_hu(brain, bone[:, :3])
    with pytest.raises(ValueError, match="uint8"):
        windows_to_hu(brain.astype(np.int16), bone)


def _phantom_patient(root: Path, brain_win: Window, bone_win: Window, n_slices: int = 3, size: int = 160) -> None:
    """A crude head (air, fat ring, skull, parenchyma with a ramp and a CSF blob) windowed
    with known windows and saved as CT-ICH JPGs."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
    rng = np.random.default_rng(1)
    for n in range(1, n_slices + 1):
        hu = np.full((size, size), -1000.0)
        hu[r < 0.95] = -100.0  # fat
        hu[r < 0.82] = 1200.0  # skull
        hu[r < 0.75] = 34.0  # parenchyma
        ramp = (r < 0.6) & (xx > size / 2)
        hu[ramp] = -30 + 140 * (yy[ramp] - size * 0.2) / (size * 0.6)
        hu[np.hypot(yy - size / 2, xx - size * 0.38) < size * 0.08] = 5.0  # CSF
        hu += rng.normal(0, 2, hu.shape)
        for name, win in (("brain", brain_win), ("bone", bone_win)):
            d = root / "Patients_CT" / "001" / name
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(window_hu(hu, win.center, win.width)).save(d / f"{n}.jpg", quality=100)


def test_inter_window_relation_recovers_known_windows(tmp_path: Path) -> None:
    brain_win, bone_win = Window(35.0, 100.0), Window(600.0, 2800.0)
    _phantom_patient(tmp_path, brain_win, bone_win)
    s = W.patient_window_stats(tmp_path / "Patients_CT" / "001")
    assert s is not None and s.n_slices == 3
    assert s.bone_at_brain_0 == pytest.approx(W.window_hu_float(brain_win.lower, bone_win), abs=0.15)
    assert s.bone_at_brain_255 == pytest.approx(W.window_hu_float(brain_win.upper, bone_win), abs=0.15)


def test_estimate_cli_runs_on_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _phantom_patient(tmp_path, BRAIN_WINDOW, BONE_WINDOW, n_slices=2)
    out = tmp_path / "est.json"
    assert W.main([str(tmp_path), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "g0" in printed and "chosen: brain C40/W120" in printed
    doc = json.loads(out.read_text())
    assert doc["n_patients"] == 1 and "fat_hist" not in doc["patients"][0]


@needs_real_data
def test_round_trip_on_real_jpgs() -> None:
    for pid, numbers in (("049", (5, 15, 25)), ("102", (10, 20))):
        for n in numbers:
            folder = REAL_DATA / "Patients_CT" / pid
            brain = np.asarray(Image.open(folder / "brain" / f"{n}.jpg").convert("L"))
            bone = np.asarray(Image.open(folder / "bone" / f"{n}.jpg").convert("L"))
            # the two JPGs disagree here and there (compression); 99 % of bone pixels must still agree
            _assert_round_trip(brain, bone, min_bone_fraction=0.99)


@needs_real_data
def test_estimate_on_real_patients_agrees_with_the_chosen_windows() -> None:
    est = W.estimate_windows(REAL_DATA, patients=["049", "102", "121"], n_boot=30)
    assert est.n_patients == 3
    # the inter-window relation is tight: the chosen windows must reproduce it
    assert est.relation["g0"] == pytest.approx(W.window_hu_float(BRAIN_WINDOW.lower, BONE_WINDOW), abs=0.1)
    assert est.relation["g255"] == pytest.approx(W.window_hu_float(BRAIN_WINDOW.upper, BONE_WINDOW), abs=0.1)
    # the anatomical anchors are loose on three patients; the estimate must still be near
    assert 20 < est.estimated["brain_center"]["estimate"] < 60
    assert 80 < est.estimated["brain_width"]["estimate"] < 170
    assert -130 < est.chosen_check["fat_hu"] < -70
