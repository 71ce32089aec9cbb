"""The SEG that ``predict`` writes sits where its source slices are: every frame's
PlanePositionSequence is its source slice's ImagePositionPatient, and the SEG put back into
patient space is exactly ``mask.nii.gz``. On a series whose origin is not CT-ICH's (shifted,
written in reverse order under shuffled names), so that a mix-up of slices or axes shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _shifted_series(tmp_path: Path) -> Path:
    from pydicom import dcmread

    from ichseg.data.convert import convert_patient
    from ichseg.sample import sample_study_dir

    series = convert_patient(sample_study_dir(), "dicom", tmp_path / "conv")
    files = sorted(series.glob("*.dcm"))
    out = tmp_path / "series"
    out.mkdir()
    for k, f in enumerate(reversed(files)):  # written last slice first, under names that do not sort by position
        ds = dcmread(f)
        ds.ImagePositionPatient = [float(v) + d for v, d in zip(ds.ImagePositionPatient, (12.25, -45.5, 78.75), strict=True)]
        ds.save_as(out / f"x{(k * 7919) % 1009:04d}.dcm", enforce_file_format=True)
    return out


def test_seg_frames_sit_on_their_source_slices_and_match_the_nifti_mask(tmp_path: Path) -> None:
    hd = pytest.importorskip("highdicom")
    import nibabel as nib
    from pydicom import dcmread

    from ichseg.cli import main

    src = _shifted_series(tmp_path)
    out = tmp_path / "out"
    assert main(["-q", "predict", str(src), "--out", str(out), "--no-progress", "--runtime", "torch"]) == 0
    sources = {ds.SOPInstanceUID: ds for ds in (dcmread(f) for f in src.glob("*.dcm"))}
    seg = hd.seg.segread(str(out / "segmentation.dcm"))
    frames = seg.pixel_array if seg.pixel_array.ndim == 3 else seg.pixel_array[None]
    assert len(seg.PerFrameFunctionalGroupsSequence) == len(frames) > 0

    nii = nib.load(str(out / "mask.nii.gz"))
    mask = np.asarray(nii.dataobj) > 0
    # the sample bleeds on several slices: what is compared below is blood on more than one
    # frame, not two empty volumes (an empty mask is written as one all-zero frame)
    assert len(frames) >= 2 and all(f.any() for f in frames)
    assert (mask.reshape(-1, mask.shape[-1]).any(0)).sum() == len(frames)
    to_voxel = np.linalg.inv(nii.affine)
    hit = np.zeros_like(mask)
    for k, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = sources[uid]
        ipp = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        assert ipp == pytest.approx([float(v) for v in source.ImagePositionPatient], abs=1e-4), uid
        # each blood pixel of the frame, through the source slice's geometry into patient
        # space (LPS), then into the NIfTI's voxels (its affine is RAS)
        rows, cols = np.nonzero(frames[k])
        o = np.asarray([float(v) for v in source.ImageOrientationPatient])
        dr, dc = (float(v) for v in source.PixelSpacing)
        lps = np.asarray(ipp)[None] + cols[:, None] * dc * o[None, :3] + rows[:, None] * dr * o[None, 3:]
        ras = lps * np.array([-1.0, -1.0, 1.0])
        ijk = np.rint((to_voxel @ np.c_[ras, np.ones(len(ras))].T)[:3].T).astype(int)
        assert mask[tuple(ijk.T)].all(), f"frame {k + 1}: blood outside mask.nii.gz"
        hit[tuple(ijk.T)] = True
    assert np.array_equal(hit, mask)  # and nothing in mask.nii.gz that no frame holds
