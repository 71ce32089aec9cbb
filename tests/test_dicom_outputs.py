"""DICOM SEG and SR outputs on a small synthetic CT series: they read back, carry the right
codes, references and volumes, and pass dciodvfy (dicom3tools) without errors."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

IN_CI = os.environ.get("CI") == "true"


def _require(module: str):  # returns the module
    """Import an optional dependency: skip when missing on a developer's machine, fail in CI."""
    if IN_CI:
        return __import__(module)
    return pytest.importorskip(module)


pydicom = _require("pydicom")
hd = _require("highdicom")

from ichseg.io.dicom_seg import (  # noqa: E402 - after the optional-dependency check
    index_to_patient_affine,
    seg_frame_numbers,
    write_measurements_sr,
    write_segmentation,
)
from ichseg.report.lesions import lesions, total_volume_ml  # noqa: E402

N_SLICES, SIZE_PX, PIXEL_MM, SLICE_MM = 6, 64, 0.45, 5.0


def make_ct_series(root: Path, n: int = N_SLICES, size: int = SIZE_PX) -> list:
    """A valid single-frame CT Image Storage series: axial, head first supine, 5 mm apart."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    root.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    out = []
    for k in range(n):
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Head", "SYN001", "", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study, "20240101", "120000"
        ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", ""
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.PatientPosition = "CT", series, 1, "HFS"
        ds.BodyPartExamined = "HEAD"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.Manufacturer = "Synthetic"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber, ds.AcquisitionNumber = k + 1, 1
        ds.ContentDate, ds.ContentTime = "20240101", "120000"
        ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-size * PIXEL_MM / 2, -size * PIXEL_MM / 2, SLICE_MM * k]
        ds.SliceThickness, ds.SliceLocation = SLICE_MM, SLICE_MM * k
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = size, size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType, ds.KVP = -1024, 1, "HU", 120
        ds.PixelData = np.full((size, size), 1024 + 40, np.int16).tobytes()
        ds.save_as(root / f"ct{k:03d}.dcm", enforce_file_format=True)
        out.append(ds)
    return out


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines for a file (warnings are allowed); skips off CI if not installed."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        if IN_CI:
            pytest.fail("dciodvfy not found: CI must install the Debian package dicom3tools")
        pytest.skip("dciodvfy not installed (apt-get install -y dicom3tools)")
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120, check=False)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith(("Error", "Abort"))]


@pytest.fixture
def series(tmp_path: Path) -> list:
    return make_ct_series(tmp_path / "ct")


@pytest.fixture
def mask() -> np.ndarray:
    m = np.zeros((N_SLICES, SIZE_PX, SIZE_PX), bool)
    m[2:4, 10:20, 10:25] = True  # lesion on slices 3-4
    m[5, 40:50, 40:50] = True  # lesion on slice 6
    return m


def test_source_series_fixture_is_valid_dicom(tmp_path: Path, series: list) -> None:
    assert dciodvfy_errors(tmp_path / "ct" / "ct000.dcm") == []


def test_seg_reads_back_with_one_hemorrhage_segment_and_only_bloody_frames(
    tmp_path: Path, series: list, mask: np.ndarray
) -> None:
    path = tmp_path / "out" / "seg.dcm"
    written = write_segmentation(mask, series, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["seg.dcm"]  # no temp file left behind
    seg = hd.seg.segread(path)
    assert seg.SOPInstanceUID == written.SOPInstanceUID
    assert seg.SegmentationType == "BINARY"
    assert seg.get_segment_numbers() == [1]
    desc = seg.get_segment_description(1)
    assert desc.segment_label == "Hemorrhage"
    assert (desc.segmented_property_category.value, desc.segmented_property_category.scheme_designator) == ("49755003", "SCT")
    assert (desc.segmented_property_type.value, desc.segmented_property_type.scheme_designator) == ("50960005", "SCT")
    assert seg.NumberOfFrames == 3  # slices 3, 4 and 6 only
    by_uid = seg_frame_numbers(seg)
    assert set(by_uid) == {series[k].SOPInstanceUID for k in (2, 3, 5)}
    back = seg.get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in series], segment_numbers=[1], assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(back[..., 0].astype(bool), mask)
    assert dciodvfy_errors(path) == []


def test_sr_holds_total_and_lesion_volumes_and_references_the_segment(tmp_path: Path, series: list, mask: np.ndarray) -> None:
    seg = write_segmentation(mask, series, tmp_path / "seg.dcm")
    spacing = (SLICE_MM, PIXEL_MM, PIXEL_MM)
    found = lesions(mask, spacing, index_to_world_mm=index_to_patient_affine(series))
    total = total_volume_ml(found)
    path = tmp_path / "sr.dcm"
    write_measurements_sr(seg, series, found, total, path)
    sr = hd.sr.srread(path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 1 + len(found)
    vols = []
    for group in groups:
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert list(ref.referenced_segment_numbers) == [1]
        measured = {m.method.value: m for m in group.get_measurements()}
        voxel = measured["126030"]  # sum of segmented voxel method for volume
        assert (voxel.name.value, voxel.unit.value) == ("118565006", "ml")
        vols.append(voxel.value)
    assert vols[0] == pytest.approx(total, rel=1e-6)
    assert vols[1:] == pytest.approx([les.volume_ml for les in found], rel=1e-6)
    assert total == pytest.approx(mask.sum() * SLICE_MM * PIXEL_MM**2 / 1000)
    for group, les in zip(groups[1:], found, strict=True):  # each lesion points at the CT slices it lies on
        on = {img.referenced_sop_instance_uid for img in group.referenced_segment.source_images_for_segmentation}
        assert on == {series[s - 1].SOPInstanceUID for s in les.slices}
        assert group.tracking_identifier.startswith(f"Lesion {les.label}, slices")
    abc2 = [{m.method.value: m.value for m in g.get_measurements()}["126029"] for g in groups[1:]]
    assert abc2 == pytest.approx([les.abc2_ml for les in found], rel=1e-6)
    assert dciodvfy_errors(path) == []


def test_empty_mask_gives_a_seg_with_one_empty_frame_and_a_zero_volume_sr(tmp_path: Path, series: list) -> None:
    """A SEG may not have zero frames (dciodvfy: 'Value is zero for value 1 of attribute
    Number of Frames', and empty Pixel Data / Per-Frame Functional Groups), so a negative
    result is one all-zero frame on the middle slice."""
    empty = np.zeros((N_SLICES, SIZE_PX, SIZE_PX), bool)
    seg_path, sr_path = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    seg = write_segmentation(empty, series, seg_path)
    back = hd.seg.segread(seg_path)
    assert back.NumberOfFrames == 1
    assert seg_frame_numbers(back) == {series[N_SLICES // 2].SOPInstanceUID: [1]}
    pixels = back.get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in series], segment_numbers=[1], assert_missing_frames_are_empty=True
    )
    assert not pixels.any()
    write_measurements_sr(seg, series, [], 0.0, sr_path)
    groups = hd.sr.srread(sr_path).content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 1 and groups[0].get_measurements()[0].value == 0.0
    assert dciodvfy_errors(seg_path) == []
    assert dciodvfy_errors(sr_path) == []


def test_mismatched_inputs_are_refused(tmp_path: Path, series: list, mask: np.ndarray) -> None:
    with pytest.raises(ValueError, match="slices"):
        write_segmentation(mask[:-1], series, tmp_path / "seg.dcm")
    with pytest.raises(ValueError, match="the mask is 32×64"):
        write_segmentation(mask[:, :32], series, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_index_to_patient_affine_follows_the_slice_positions(series: list) -> None:
    affine = index_to_patient_affine(series)
    first = np.array(series[0].ImagePositionPatient, float)
    np.testing.assert_allclose(affine @ [0, 0, 0, 1], [*first, 1])
    np.testing.assert_allclose(affine @ [5, 0, 0, 1], [*np.array(series[5].ImagePositionPatient, float), 1])
    # row index runs along patient y (second direction cosine), column index along x
    np.testing.assert_allclose(affine @ [0, 2, 3, 1], [first[0] + 3 * PIXEL_MM, first[1] + 2 * PIXEL_MM, first[2], 1])
