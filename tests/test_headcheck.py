"""Not a head CT, told from the images: an abdomen, a chest, an MR series and a water
phantom are refused with what was found; real heads pass."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REAL_DATA
from ichseg.infer.headcheck import MIN_BRAIN_SD_HU, NotAHeadCT, check_head_ct

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "ichseg" / "sample" / "ct-ich-049"
PX = 0.7  # mm, a body field of view: 512 px = 358 mm


def _ellipse(img: np.ndarray, center_mm: tuple[float, float], axes_mm: tuple[float, float], value: float) -> None:
    c = (int(256 + center_mm[0] / PX), int(256 + center_mm[1] / PX))
    cv2.ellipse(img, c, (int(axes_mm[0] / PX), int(axes_mm[1] / PX)), 0, 0, 360, value, -1)


def _volume(draw, n: int = 12, noise_hu: float = 12.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, 512, 512), np.float32)
    for k in range(n):
        img = np.full((512, 512), -1000.0, np.float32)
        draw(img)
        out[k] = img + rng.normal(0, noise_hu, img.shape) * (img > -900)
    return out


def abdomen(img: np.ndarray) -> None:
    _ellipse(img, (0, 0), (160, 115), -100)  # fat
    _ellipse(img, (0, 0), (150, 105), 45)  # organs
    _ellipse(img, (0, 70), (18, 18), 500)  # vertebra
    _ellipse(img, (0, 70), (10, 10), 200)


def chest(img: np.ndarray) -> None:
    _ellipse(img, (0, 0), (150, 100), 40)
    _ellipse(img, (-70, 0), (55, 75), -800)  # lungs
    _ellipse(img, (70, 0), (55, 75), -800)
    for a in np.linspace(0, 2 * np.pi, 14, endpoint=False):  # ribs: bone dots round the wall
        _ellipse(img, (140 * np.cos(a), 92 * np.sin(a)), (6, 6), 600)


def phantom(img: np.ndarray) -> None:
    _ellipse(img, (0, 0), (92, 92), 400)  # a bone-like shell
    _ellipse(img, (0, 0), (86, 86), 0)  # water


def test_real_heads_pass() -> None:
    from ichseg.data.convert import ctich_volume

    vol, _, _ = ctich_volume(SAMPLE)
    r = check_head_ct(vol.hu, vol.pixel_spacing)
    assert r.is_head and r.head_slices / r.slices > 0.9 and r.brain_sd_hu > MIN_BRAIN_SD_HU


def test_abdomen_chest_mr_and_phantom_are_refused_with_what_was_found() -> None:
    r = check_head_ct(_volume(abdomen), (PX, PX))
    assert not r.is_head and "widest cross-section 3" in r.reason and "not a head CT" in r.reason  # 320 mm of body
    r = check_head_ct(_volume(chest), (PX, PX))
    assert not r.is_head and "widest cross-section" in r.reason
    mr = np.clip(_volume(abdomen) + 1000, 0, None) * 0.8  # MR-like: no negative values at all
    r = check_head_ct(mr, (PX, PX))
    assert not r.is_head and "not CT in Hounsfield units" in r.reason
    r = check_head_ct(_volume(phantom, noise_hu=1.0), (PX, PX))
    assert not r.is_head and "a phantom" in r.reason


def test_predict_refuses_a_non_head_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import nibabel as nib

    from ichseg.cli import main

    path = tmp_path / "abdomen.nii.gz"
    hu = _volume(abdomen, n=6)
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0).astype(np.int16), np.diag([PX, PX, 5.0, 1.0])), str(path))
    capsys.readouterr()
    assert main(["predict", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "abdomen.nii.gz" in err[0] and "not a head CT" in err[0] and "--no-head-check" in err[0]
    assert not (tmp_path / "out").exists()
    assert issubclass(NotAHeadCT, ValueError)


@pytest.mark.skipif(not REAL_DATA.exists(), reason="needs ../shared/ct-ich")
def test_every_development_patient_is_a_head() -> None:
    from ichseg.data.convert import ctich_volume

    for p in sorted((REAL_DATA / "Patients_CT").iterdir())[::6]:
        vol, _, _ = ctich_volume(p)
        assert check_head_ct(vol.hu, vol.pixel_spacing).is_head, p.name


def head_slice(img: np.ndarray) -> None:
    _ellipse(img, (0, 0), (80, 95), 40)  # scalp
    _ellipse(img, (0, 0), (75, 90), 900)  # skull
    _ellipse(img, (0, 0), (70, 85), 32)  # brain: ~187 cm², a cranial slice
    _ellipse(img, (10, -20), (8, 20), 8)  # a ventricle


def neck_slice(img: np.ndarray) -> None:
    _ellipse(img, (0, 0), (60, 55), 45)  # muscles, tongue: brain-like HU
    cv2.ellipse(img, (256, 256 - int(10 / PX)), (int(45 / PX), int(40 / PX)), 0, 180, 360, 900, int(6 / PX))  # mandible
    _ellipse(img, (0, 35), (12, 12), 900)  # vertebra
    _ellipse(img, (0, 35), (6, 6), 20)  # its canal and cord


def test_slices_below_the_skull_base_are_not_read() -> None:
    """Neck slices more than the margin below the lowest cranial slice are marked, whichever
    way the series runs; the cranium and the slices just below it are kept; a volume
    without a cranial slice (a child's small head, a phantom) has nothing marked."""
    from ichseg.infer.headcheck import BELOW_BRAIN_MARGIN_MM, slices_below_brain

    heads, necks = _volume(head_slice, n=8), _volume(neck_slice, n=20, seed=1)
    hu = np.concatenate([necks, heads])  # slice 0 the lowest, 5 mm apart
    z = np.arange(len(hu)) * 5.0
    below, info = slices_below_brain(hu, (PX, PX), z)
    lowest = 20 * 5.0
    assert np.array_equal(below, z < lowest - BELOW_BRAIN_MARGIN_MM)
    assert 0 < below.sum() < 20 and info["slices_not_read"] == below.sum() and "skull base" in info["why"]
    flipped, _ = slices_below_brain(hu[::-1], (PX, PX), z[::-1])  # vertex first: heights fall
    assert np.array_equal(flipped, below[::-1])
    # the head check found the same cranial slices, and its answer is reused
    check = check_head_ct(hu, (PX, PX))
    assert check.is_head and check.cranial == tuple([False] * 20 + [True] * 8)
    assert np.array_equal(slices_below_brain(hu, (PX, PX), z, check.cranial)[0], below)
    none, info = slices_below_brain(necks, (PX, PX), z[:20])
    assert not none.any() and info is None


def test_unread_slices_give_no_answer() -> None:
    from ichseg.infer.study import StudyPrediction
    from ichseg.infer.volume import unread_prediction

    masks = [np.ones((4, 4), bool), np.ones((4, 4), bool), np.zeros((4, 4), bool)]
    pred = StudyPrediction(
        masks, np.array([True, True, False]), {"hemorrhage": np.array([0.99, 0.7, 0.2])}, np.array([0.9, 0.8, 0.1]),
        review=np.array([False, False, True]),
    )  # fmt: skip
    out = unread_prediction(pred, np.array([True, False, False]))
    assert not out.masks[0].any() and out.masks[1].all()
    assert list(out.verdict) == [False, True, False] and out.scan_probability == pytest.approx(0.7)
    assert list(out.review) == [False, False, True] and out.max_probability[0] == 0


@pytest.mark.skipif(not REAL_DATA.exists(), reason="needs ../shared/ct-ich")
def test_ct_ich_necks_are_not_read_and_no_bleed_is_lost() -> None:
    """123 shows its mouth and neck (slices 1-8 not read); 080's bleed lies lowest of all
    the labelled ones relative to its cranium (10 mm below its lowest cranial slice)."""
    from ichseg.data.convert import ctich_volume
    from ichseg.infer.headcheck import slices_below_brain
    from ichseg.infer.volume import superior_mm

    for pid, expected in (("123", list(range(1, 9))), ("080", [])):
        vol, truth, _ = ctich_volume(REAL_DATA / "Patients_CT" / pid)
        check = check_head_ct(vol.hu, vol.pixel_spacing)
        below, _ = slices_below_brain(vol.hu, vol.pixel_spacing, superior_mm(vol), check.cranial)
        assert list(np.flatnonzero(below) + 1) == expected, pid
        assert not (below & np.asarray(truth).reshape(len(truth), -1).any(1)).any()


def test_skull_base_census_counts_what_is_not_read() -> None:
    from ichseg.experiments.skull_base import census, markdown

    hu = np.concatenate([_volume(neck_slice, n=20, seed=1), _volume(head_slice, n=8)])
    z = np.arange(len(hu)) * 5.0
    truth = np.zeros(hu.shape, bool)
    truth[22, 250:260, 250:260] = True  # a bleed on the third cranial slice
    row = census(hu, (PX, PX), z, truth)
    assert row["not_read"] == list(range(1, 9)) and row["labelled_slices_not_read"] == 0
    assert row["lowest_bleed_above_lowest_cranial_mm"] == 10.0
    table = {"margin_mm": 60.0, "cranial_brain_cm2": 100.0, "ct_ich": {"x": row},
             "ct_ich_totals": {"patients": 1, "slices_not_read": 8, "labelled_slices_not_read": 0,
                               "lowest_bleed_above_lowest_cranial_mm": 10.0}}  # fmt: skip
    assert "| x | 28 | 1, 2, 3, 4, 5, 6, 7, 8 |" in markdown(table)
