"""Thin series read as ~5 mm slabs: how slices are grouped, and on a real study that the
masks of a 1.25 mm re-make match those of its 5 mm original."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import REAL_DATA
from ichseg.data.slabs import average_slabs, slab_index, slab_thickness_mm
from ichseg.io.volume import Volume, affine_from_dicom

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "ichseg" / "sample" / "ct-ich-049"


def test_thin_slices_group_into_five_mm_slabs() -> None:
    z = np.arange(16) * 1.25
    assert slab_index(z).tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert slab_thickness_mm(z, slab_index(z)).tolist() == [5.0] * 4
    assert slab_index(np.arange(6) * 5.0).tolist() == list(range(6))  # 5 mm: as it is
    assert slab_index(np.arange(6) * 4.0).tolist() == list(range(6))
    # 1 mm slices: a last slab of 2 mm joins the one before
    assert slab_index(np.arange(12) * 1.0).tolist() == [0] * 5 + [1] * 7
    # two spacings (1 mm, then 2 mm): slabs by position, still ~5 mm
    z = np.concatenate([np.arange(10) * 1.0, 10 + np.arange(5) * 2.0])
    idx = slab_index(z)
    assert idx.tolist() == [0] * 5 + [1] * 5 + [2] * 3 + [3] * 2
    hu = np.arange(len(z), dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    assert average_slabs(hu, idx)[:, 0, 0].tolist() == [2.0, 7.0, 11.0, 13.5]


def thin_remake(volume: Volume, factor: int, noise_hu: float, seed: int = 0) -> Volume:
    """``volume``'s 5 mm slices as ``factor`` thin slices each, whose mean is the original
    plus noise: what a thick reconstruction averaged from them would give back. The thin
    slices get the stronger, correlated noise of thin slices (σ ``noise_hu``)."""
    import cv2

    rng = np.random.default_rng(seed)
    thick = volume.spacing_mm[0]
    thin = np.repeat(volume.hu, factor, axis=0)
    for k in range(len(thin)):
        field = cv2.GaussianBlur(rng.standard_normal(thin.shape[1:]).astype(np.float32), (0, 0), 1.0)
        thin[k] += field * (noise_hu / max(float(field.std()), 1e-6))
    step = thick / factor
    a = volume.affine_lps
    first = a[:3, 3] + a[:3, 2] / np.linalg.norm(a[:3, 2]) * (step / 2 - thick / 2)
    affine = affine_from_dicom(first, a[:3, 0] / np.linalg.norm(a[:3, 0]), a[:3, 1] / np.linalg.norm(a[:3, 1]),
                               volume.pixel_spacing, a[:3, 2] / np.linalg.norm(a[:3, 2]) * step)  # fmt: skip
    return Volume(thin, (step, *volume.pixel_spacing), affine, source=f"{volume.source} as {step:g} mm", modality="CT")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 if not a.any() and not b.any() else float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize("shipped", ["full", "lite"])
def test_a_thin_remake_gives_the_masks_of_its_five_mm_original(shipped: str, tmp_path: Path) -> None:
    from ichseg.data.convert import ctich_volume
    from ichseg.infer.pipeline import load_bundle
    from ichseg.infer.shipped import shipped_model_dir
    from ichseg.infer.volume import predict_volume

    thick, _, _ = ctich_volume(SAMPLE)
    thin = thin_remake(thick, 4, noise_hu=8.0)
    bundle = load_bundle(shipped_model_dir(shipped), runtime="auto", precision="fp32")
    ref = predict_volume(bundle, thick, tmp_path / "thick")
    got = predict_volume(bundle, thin, tmp_path / "thin")
    assert got["slices"] == 4 * ref["slices"] and got["slabs"]["slabs"] == ref["slices"]
    assert ref["slabs"] is None
    import nibabel as nib

    a = np.asarray(nib.load(str(tmp_path / "thick" / "mask.nii.gz")).dataobj) > 0
    b = np.asarray(nib.load(str(tmp_path / "thin" / "mask.nii.gz")).dataobj) > 0
    assert b.shape[2] == 4 * a.shape[2]
    assert _dice(np.repeat(a, 4, axis=2), b) >= 0.9
    assert got["hemorrhage"] == ref["hemorrhage"]
    assert got["total_volume_ml"] == pytest.approx(ref["total_volume_ml"], rel=0.1)


@pytest.mark.skipif(not REAL_DATA.exists(), reason="needs ../shared/ct-ich")
@pytest.mark.parametrize("shipped", ["full", "lite"])
def test_a_normal_head_remade_at_1_mm_with_thin_slice_noise_stays_negative(shipped: str, tmp_path: Path) -> None:
    """Patient 100 (no hemorrhage) as 1 mm slices with σ 10 HU of correlated noise: read
    slice by slice, the shipped (16-filter) model calls it bleeding (scan probability 0.52, 3 slices,
    measured when this test was written); read as slabs it stays negative."""
    from ichseg.data.convert import ctich_volume
    from ichseg.infer.pipeline import load_bundle
    from ichseg.infer.shipped import shipped_model_dir
    from ichseg.infer.volume import predict_volume

    thick, truth, _ = ctich_volume(REAL_DATA / "Patients_CT" / "100")
    assert not truth.any()
    bundle = load_bundle(shipped_model_dir(shipped), runtime="auto", precision="fp32")
    got = predict_volume(bundle, thin_remake(thick, 5, noise_hu=10.0), tmp_path / "thin")
    assert got["slabs"]["slabs"] == thick.shape[0] and got["slices"] == 5 * thick.shape[0]
    assert not got["hemorrhage"] and got["total_volume_ml"] == 0.0
    if bundle.pipeline.head_threshold is not None:  # the lite network's verdict has no head gate
        assert got["scan_probability"] < bundle.pipeline.head_threshold
