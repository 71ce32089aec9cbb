"""DICOM and NIfTI in, NIfTI masks out, the CT-ICH converter and the sample study.

Every DICOM series here is generated with pydicom in tmp_path, independently of the
converter's writer, so a convention error cannot cancel itself out."""

from __future__ import annotations

import logging
import os
import random
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ichseg.cli import main
from ichseg.data.convert import CT_ICH_PIXEL_SPACING_MM, convert_patient, convert_patient_detailed, ctich_volume
from ichseg.data.ctich import DatasetError
from ichseg.data.windows import hu_to_windows
from ichseg.io.dicom import DicomError, read_dicom_series
from ichseg.io.nifti import NiftiError, read_nifti, write_mask_nifti
from ichseg.io.volume import FLIP_XY, Volume, lps_to_ras, ras_to_lps
from ichseg.sample import sample_study_dir

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "ct-ich"
needs_real_data = pytest.mark.skipif(not (REAL_DATA / "Patients_CT").is_dir(), reason="CT-ICH data not at ../shared/ct-ich")
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


# --------------------------------------------------------------------------- DICOM builder


def make_ds(
    hu: np.ndarray,
    position: tuple[float, float, float],
    *,
    series_uid: str,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    spacing: tuple[float, float] = (0.5, 0.6),
    modality: str = "CT",
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    slope: float = 1.0,
    intercept: float = -1024.0,
    instance: int = 1,
) -> Dataset:
    """A minimal CT (or MR) image dataset whose stored values give ``hu`` after rescale."""
    stored = np.rint((hu - intercept) / slope).astype(np.int16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT if modality == "CT" else MR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.ImageType = list(image_type)
    ds.PatientName = "Test^Patient"
    ds.PatientID = "T1"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "1.2.3.5"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing = [f"{v:g}" for v in spacing]
    ds.SliceThickness = "2.5"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.PixelData = stored.tobytes()
    return ds


def expected_hu(n: int, rows: int = 10, cols: int = 12, seed: int = 0) -> np.ndarray:
    """Distinct slices (slice k holds values around 100 k) that a wrong order would expose."""
    rng = np.random.default_rng(seed)
    return (np.arange(n)[:, None, None] * 100.0 + rng.integers(-50, 50, (n, rows, cols))).astype(np.float32)


def write_series(
    folder: Path,
    hu: np.ndarray,
    *,
    step: float = 2.5,
    origin: tuple[float, float, float] = (-10.0, -20.0, 30.0),
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    names: list[str] | None = None,
    series_uid: str | None = None,
    **kw: object,
) -> tuple[str, list[Path]]:
    """Write slice k at origin + k · step · normal; returns (series UID, files in slice order)."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = series_uid or generate_uid()
    o = np.asarray(orientation, float)
    normal = np.cross(o[:3], o[3:])
    files = []
    for k in range(len(hu)):
        pos = tuple(np.asarray(origin) + k * step * normal)
        ds = make_ds(hu[k], pos, series_uid=uid, orientation=orientation, instance=k + 1, **kw)  # type: ignore[arg-type]
        path = folder / (names[k] if names else f"IM{k:04d}.dcm")
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return uid, files


# --------------------------------------------------------------------------- DICOM reading


def test_reads_series_in_order_with_hu_spacing_and_affine(tmp_path: Path) -> None:
    hu = expected_hu(5)
    uid, files = write_series(tmp_path / "s", hu, slope=0.5, intercept=-1000.0)
    vol = read_dicom_series(tmp_path / "s")
    assert vol.hu.dtype == np.float32 and vol.shape == (5, 10, 12)
    np.testing.assert_allclose(vol.hu, np.rint((hu + 1000) / 0.5) * 0.5 - 1000)
    assert vol.spacing_mm == pytest.approx((2.5, 0.5, 0.6))
    assert vol.series_uid == uid
    assert vol.files == [str(f) for f in files]
    assert vol.sop_instance_uids == [pydicom.dcmread(f).SOPInstanceUID for f in files]
    assert vol.study_instance_uid == "1.2.3.4" and vol.frame_of_reference_uid == "1.2.3.5" and vol.patient_id == "T1"
    # voxel (c, r, k) → LPS: IPP + c · 0.6 · x̂ + r · 0.5 · ŷ + k · 2.5 · ẑ
    assert vol.image_position_lps(0) == pytest.approx([-10, -20, 30])
    assert vol.image_position_lps(4) == pytest.approx([-10, -20, 40])
    assert (vol.affine_lps @ [2, 3, 1, 1])[:3] == pytest.approx([-10 + 1.2, -20 + 1.5, 32.5])
    assert (vol.affine_ras @ [2, 3, 1, 1])[:3] == pytest.approx([10 - 1.2, 20 - 1.5, 32.5])  # RAS: x and y negated
    assert vol.image_orientation_lps == pytest.approx([1, 0, 0, 0, 1, 0])
    assert vol.pixel_spacing == pytest.approx((0.5, 0.6))
    assert len(vol.source_datasets()) == 5


def test_lps_ras_helpers_are_inverse() -> None:
    a = np.arange(16, dtype=float).reshape(4, 4)
    assert np.array_equal(lps_to_ras(ras_to_lps(a)), a)
    assert np.array_equal(ras_to_lps(a)[:2], -a[:2]) and np.array_equal(FLIP_XY @ FLIP_XY, np.eye(4))


def test_order_follows_the_slice_normal_not_names_or_instance_numbers(tmp_path: Path) -> None:
    # rows run towards anterior (column cosine 0,-1,0): normal = x̂ × (−ŷ) = −ẑ, so slice 0 is the most superior
    hu = expected_hu(4)
    write_series(tmp_path / "s", hu, orientation=(1, 0, 0, 0, -1, 0), names=["d.dcm", "c.dcm", "b.dcm", "a.dcm"])
    vol = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.image_position_lps(1)[2] == pytest.approx(30 - 2.5)
    assert vol.slice_normal_lps() == pytest.approx([0, 0, -1])


def test_messy_folder_gives_the_same_volume(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hu = expected_hu(6)
    uid, _ = write_series(tmp_path / "clean", hu)
    clean = read_dicom_series(tmp_path / "clean")

    messy = tmp_path / "messy"
    files = sorted((tmp_path / "clean").iterdir())
    random.Random(1).shuffle(files)
    for i, f in enumerate(files):  # renamed, shuffled, nested
        dst = messy / f"sub{i % 2}" / f"x{i * 7 % 11}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst)
    (messy / "README.txt").write_text("not dicom\n")
    (messy / "DICOMDIR").write_bytes(b"\0" * 200)
    write_series(messy / "scout", expected_hu(1, seed=5), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_series(messy / "short", expected_hu(3, seed=6))  # a shorter axial series
    write_series(messy / "sag", expected_hu(9, seed=7), orientation=(0, 1, 0, 0, 0, -1))  # longer, sagittal
    write_series(messy / "mr", expected_hu(8, seed=8), modality="MR")
    with caplog.at_level(logging.WARNING, logger="ichseg.io.dicom"):
        vol = read_dicom_series(messy)
    np.testing.assert_array_equal(vol.hu, clean.hu)
    np.testing.assert_allclose(vol.affine_ras, clean.affine_ras)
    assert vol.series_uid == uid and vol.sop_instance_uids == clean.sop_instance_uids
    log = caplog.text
    assert "README.txt: not a DICOM file" in log
    assert "DICOMDIR" in log
    assert "localizer" in log and "scout" in log
    assert "modality MR" in log and str(messy / "mr") in log
    assert str(messy / "short") in log and str(messy / "sag") in log


def test_series_uid_picks_a_series(tmp_path: Path) -> None:
    write_series(tmp_path / "a", expected_hu(6))
    short_hu = expected_hu(3, seed=9)
    uid, _ = write_series(tmp_path / "b", short_hu)
    vol = read_dicom_series(tmp_path, series_uid=uid)
    np.testing.assert_array_equal(vol.hu, short_hu)
    with pytest.raises(DicomError, match=r"no series with SeriesInstanceUID 9\.9\.9"):
        read_dicom_series(tmp_path, series_uid="9.9.9")


def test_non_axial_series_is_read_when_it_is_the_only_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hu = expected_hu(4)
    write_series(tmp_path, hu, orientation=(0, 1, 0, 0, 0, -1))
    with caplog.at_level(logging.WARNING):
        vol = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(vol.hu, hu)
    assert "no axial CT series" in caplog.text


@pytest.mark.parametrize("syntax", ["JPEGLSLossless", "JPEG2000Lossless", "RLELossless"])
def test_compressed_series(tmp_path: Path, syntax: str) -> None:
    ts = getattr(pydicom.uid, syntax)
    hu = expected_hu(3, rows=32, cols=32)
    _, files = write_series(tmp_path, hu)
    for f in files:
        ds = pydicom.dcmread(f)
        try:
            ds.compress(ts, ds.pixel_array)
        except Exception as exc:  # no encoder for this syntax in this environment
            pytest.skip(f"cannot encode {syntax} offline: {exc}")
        ds.save_as(f, enforce_file_format=True)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == ts
    np.testing.assert_array_equal(read_dicom_series(tmp_path).hu, hu)


# --------------------------------------------------------------------------- DICOM errors


def test_truncated_slice_of_the_series_is_an_error(tmp_path: Path) -> None:
    _, files = write_series(tmp_path, expected_hu(5))
    data = files[2].read_bytes()
    files[2].write_bytes(data[:-50])  # cut inside the pixel data
    with pytest.raises(DicomError, match=rf"{files[2].name}: truncated file, pixel data has 190 of 240 bytes"):
        read_dicom_series(tmp_path)


def test_unparseable_file_is_skipped_and_its_gap_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, files = write_series(tmp_path, expected_hu(5))
    files[2].write_bytes(files[2].read_bytes()[:200])  # cut inside the header: its series is unknown
    with caplog.at_level(logging.WARNING), pytest.raises(DicomError, match="missing slice"):
        read_dicom_series(tmp_path)
    assert files[2].name in caplog.text and "skipped" in caplog.text


def test_missing_slice_is_an_error(tmp_path: Path) -> None:
    _, files = write_series(tmp_path, expected_hu(6))
    files[3].unlink()
    with pytest.raises(
        DicomError, match=r"missing slice\(s\) between IM0002.dcm and IM0004.dcm: .* 5.00 mm apart, the steps beside it 2.50"
    ):
        read_dicom_series(tmp_path)


def _series_at(folder: Path, z_mm: list[float]) -> list[Path]:
    hu = expected_hu(len(z_mm))
    uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for k, z in enumerate(z_mm):
        make_ds(hu[k], (0, 0, z), series_uid=uid).save_as(folder / f"{k}.dcm", enforce_file_format=True)
    return sorted(folder.iterdir())


def test_two_slice_spacings_are_read_and_only_a_true_gap_is_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A sequential head protocol: 4 mm through the posterior fossa, 7 mm above."""
    z = [4.0 * k for k in range(6)] + [20.0 + 7.0 * k for k in range(1, 6)]
    with caplog.at_level(logging.WARNING):
        vol = read_dicom_series(_series_at(tmp_path / "ge", z)[0].parent)
    assert vol.shape[0] == 11 and "variable slice spacing (5 steps of 4.00 mm, 5 steps of 7.00 mm)" in caplog.text
    assert np.allclose(vol.slice_positions_mm(), np.array(z) - z[0])
    assert np.allclose(vol.hu, expected_hu(11))  # the slices in position order
    ext = vol.slice_extents_mm()
    assert ext.sum() == pytest.approx(z[-1] - z[0] + 4.0 / 2 + 7.0 / 2)
    assert ext[0] == pytest.approx(4.0) and ext[-1] == pytest.approx(7.0) and ext[5] == pytest.approx(5.5)
    # a slice missing in the 7 mm part is still a gap
    with pytest.raises(DicomError, match=r"missing slice\(s\) between 7\.dcm and 8\.dcm: .* 14\.00 mm apart"):
        read_dicom_series(_series_at(tmp_path / "gap", [*z[:8], *z[9:]])[0].parent)
    # one odd step in an even series is read too (positions kept)
    vol = read_dicom_series(_series_at(tmp_path / "odd", [0.0, 2.5, 5.0, 7.5, 10.8])[0].parent)
    assert vol.slice_positions_mm()[-1] == pytest.approx(10.8)


def test_duplicate_positions_are_an_error(tmp_path: Path) -> None:
    hu = expected_hu(3)
    uid = generate_uid()
    for k, z in enumerate([0.0, 2.5, 2.5]):
        make_ds(hu[k], (0, 0, z), series_uid=uid).save_as(tmp_path / f"{k}.dcm", enforce_file_format=True)
    with pytest.raises(DicomError, match="same slice position"):
        read_dicom_series(tmp_path)


def test_unequal_image_sizes_are_an_error(tmp_path: Path) -> None:
    uid, _ = write_series(tmp_path, expected_hu(4))
    make_ds(expected_hu(1, rows=8)[0], (-10, -20, 30 + 2.5 * 4), series_uid=uid).save_as(
        tmp_path / "odd.dcm", enforce_file_format=True
    )
    with pytest.raises(DicomError, match=r"odd.dcm: image is 8×12 \(rows × columns\) but .* is 10×12"):
        read_dicom_series(tmp_path)


def test_mixed_orientation_and_pixel_spacing_are_errors(tmp_path: Path) -> None:
    uid, _ = write_series(tmp_path / "o", expected_hu(3))
    make_ds(expected_hu(1)[0], (-10, -20, 37.5), series_uid=uid, orientation=(1, 0, 0, 0, 0.9, 0.43589)).save_as(
        tmp_path / "o" / "tilted.dcm", enforce_file_format=True
    )
    with pytest.raises(DicomError, match=r"tilted\.dcm: ImageOrientationPatient .*mixed orientations"):
        read_dicom_series(tmp_path / "o")
    uid, _ = write_series(tmp_path / "p", expected_hu(3))
    make_ds(expected_hu(1)[0], (-10, -20, 37.5), series_uid=uid, spacing=(0.7, 0.7)).save_as(
        tmp_path / "p" / "coarse.dcm", enforce_file_format=True
    )
    with pytest.raises(DicomError, match=r"coarse\.dcm: PixelSpacing"):
        read_dicom_series(tmp_path / "p")


def test_non_ct_only_is_an_error(tmp_path: Path) -> None:
    write_series(tmp_path, expected_hu(5), modality="MR")
    with pytest.raises(DicomError, match=r"no axial CT series to read \(MR series \(5 files\)\)"):
        read_dicom_series(tmp_path)
    uid = pydicom.dcmread(next(tmp_path.iterdir())).SeriesInstanceUID
    with pytest.raises(DicomError, match="modality MR, not CT"):
        read_dicom_series(tmp_path, series_uid=uid)


def test_only_localizers_is_an_error(tmp_path: Path) -> None:
    write_series(tmp_path / "a", expected_hu(1), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_series(tmp_path / "b", expected_hu(1))
    write_series(tmp_path / "c", expected_hu(1, seed=3))  # two one-image series: key images, not a study
    with pytest.raises(DicomError, match=r"CT localizer series.*single-slice CT series|single-slice CT series.*localizer"):
        read_dicom_series(tmp_path)
    shutil.rmtree(tmp_path / "c")  # beside a localizer, one CT slice is the study
    vol = read_dicom_series(tmp_path)
    assert vol.shape[0] == 1 and vol.extra["series_choice"].startswith("the only CT image")


def test_empty_missing_and_non_dicom_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomError, match="empty: empty folder"):
        read_dicom_series(tmp_path / "empty")
    with pytest.raises(DicomError, match="nope: no such folder"):
        read_dicom_series(tmp_path / "nope")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("hello")
    (tmp_path / "text" / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 300)
    with pytest.raises(DicomError, match=r"text: no DICOM image among its 2 files"):
        read_dicom_series(tmp_path / "text")
    assert issubclass(DicomError, DatasetError) and issubclass(DicomError, ValueError)


# --------------------------------------------------------------------------- NIfTI


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray, **scaling: float) -> Path:
    img = nib.Nifti1Image(data, affine)
    if scaling:
        img.header.set_slope_inter(scaling["slope"], scaling["inter"])
    nib.save(img, str(path))
    return path


def test_nifti_is_reoriented_without_resampling(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 1000, (6, 7, 5)).astype(np.int16)
    # stored axes: i → −z (inferior), j → +x (right), k → −y (posterior); odd spacings
    affine = np.array([[0, 0.8, 0, -20], [0, 0, -0.9, 30], [-2.5, 0, 0, 40], [0, 0, 0, 1.0]])
    path = _nifti(tmp_path / "ct.nii.gz", data, affine)
    vol = read_nifti(path)
    assert nib.aff2axcodes(vol.affine_ras) == ("L", "P", "S")
    assert vol.shape == (6, 5, 7) and vol.spacing_mm == pytest.approx((2.5, 0.9, 0.8))
    # every voxel keeps its value and its world position
    src_affine = nib.load(str(path)).affine
    for c, r, k in [(0, 0, 0), (6, 4, 5), (3, 2, 1), (1, 4, 2)]:
        world = vol.voxel_to_ras([c, r, k])
        ijk = np.rint(np.linalg.solve(src_affine[:3, :3], world - src_affine[:3, 3])).astype(int)
        assert vol.hu[k, r, c] == data[tuple(ijk)]
    # axial display: rows run anterior → posterior, columns right → left, slices inferior → superior
    lps = vol.affine_lps
    assert lps[:3, 0] @ [1, 0, 0] > 0 and lps[:3, 1] @ [0, 1, 0] > 0 and lps[:3, 2] @ [0, 0, 1] > 0


def test_nifti_scaling_and_single_volume_4d(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4, 1)
    lps_axes = np.diag([-1.0, -1, 1, 1])  # already in display order: no flips
    vol = read_nifti(_nifti(tmp_path / "s.nii", data, lps_axes, slope=2.0, inter=-1024.0))
    assert vol.shape == (4, 3, 2)
    np.testing.assert_allclose(vol.hu.transpose(2, 1, 0), data[..., 0] * 2.0 - 1024)


def test_nifti_errors(tmp_path: Path) -> None:
    with pytest.raises(NiftiError, match=r"4D NIfTI of shape \(4, 4, 3, 2\)"):
        read_nifti(_nifti(tmp_path / "t.nii.gz", np.zeros((4, 4, 3, 2), np.int16), np.eye(4)))
    singular = np.eye(4)
    singular[2, 2] = 0
    hdr = nib.Nifti1Header()
    hdr.set_sform(singular, code=1)  # nibabel refuses a singular qform, so only the sform holds it
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.int16), None, header=hdr), str(tmp_path / "z.nii.gz"))
    with pytest.raises(NiftiError, match="affine is not invertible"):
        read_nifti(tmp_path / "z.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(NiftiError, match=r"junk\.nii\.gz: not a readable NIfTI"):
        read_nifti(tmp_path / "junk.nii.gz")
    with pytest.raises(NiftiError, match="no such file"):
        read_nifti(tmp_path / "missing.nii")


def test_mask_for_a_nifti_input_has_its_exact_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(-100, 100, (5, 6, 4)).astype(np.int16)
    affine = np.array([[0, 0, -3.0, 12.25], [-0.7, 0, 0, 8.5], [0, 0.65, 0.1, -4.0], [0, 0, 0, 1]])  # sheared
    src = _nifti(tmp_path / "ct.nii.gz", data, affine)
    vol = read_nifti(src)
    out = write_mask_nifti(vol.hu > 50, vol, tmp_path / "out" / "mask.nii.gz")
    mask_img, src_img = nib.load(str(out)), nib.load(str(src))
    assert mask_img.shape == data.shape and mask_img.get_data_dtype() == np.uint8
    assert np.array_equal(mask_img.affine, src_img.affine)
    assert np.array_equal(np.asarray(mask_img.dataobj), (data > 50).astype(np.uint8))
    assert os.listdir(tmp_path / "out") == ["mask.nii.gz"]  # no temp file left behind
    with pytest.raises(ValueError, match="mask shape"):
        write_mask_nifti(np.zeros((1, 2, 3), bool), vol, tmp_path / "bad.nii.gz")
    with pytest.raises(ValueError, match=r"\.nii or \.nii\.gz"):
        write_mask_nifti(vol.hu > 0, vol, tmp_path / "mask.png")


def test_mask_for_a_dicom_input_overlays_the_series(tmp_path: Path) -> None:
    hu = expected_hu(4)
    write_series(tmp_path / "s", hu)
    vol = read_dicom_series(tmp_path / "s")
    mask = vol.hu > 150
    out = write_mask_nifti(mask, vol, tmp_path / "mask.nii")
    img = nib.load(str(out))
    np.testing.assert_allclose(img.affine, vol.affine_ras, atol=1e-5)
    assert np.array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), mask.astype(np.uint8))
    back = read_nifti(out)  # already in display orientation: comes back unchanged
    assert np.array_equal(back.hu > 0, mask)
    np.testing.assert_allclose(back.affine_ras, vol.affine_ras, atol=1e-5)


def test_volume_validates_and_windows() -> None:
    vol = Volume(hu=np.zeros((2, 3, 4), np.int16), spacing_mm=(5, 1, 1), affine_ras=np.eye(4), source="x")
    assert vol.hu.dtype == np.float32
    brain, bone = vol.windows()
    assert np.array_equal(brain, hu_to_windows(vol.hu)[0]) and bone.shape == (2, 3, 4)
    with pytest.raises(ValueError, match="slices, rows, columns"):
        Volume(hu=np.zeros((3, 4)), spacing_mm=(1, 1, 1), affine_ras=np.eye(4), source="x")
    with pytest.raises(ValueError, match="1 sop_instance_uids for 2 slices"):
        Volume(hu=np.zeros((2, 3, 4)), spacing_mm=(1, 1, 1), affine_ras=np.eye(4), source="x", sop_instance_uids=["1"])
    with pytest.raises(ValueError, match="not read from a DICOM series"):
        vol.source_datasets()


# --------------------------------------------------------------------------- converter


def _dciodvfy_errors(files: list[Path]) -> list[str]:
    """dciodvfy's error lines for the files; skips when the tool is absent (fails in CI)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dciodvfy (Debian package dicom3tools) is not installed, and CI=true requires it")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    errors = []
    for f in files:
        r = subprocess.run([exe, str(f)], capture_output=True, text=True, timeout=60)
        errors += [f"{f.name}: {line}" for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]
    return errors


def test_convert_synthetic_patient_round_trips(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    patient = sorted((tiny_data / "Patients_CT").iterdir())[0]
    ref, mask, brain_only = ctich_volume(patient)
    assert brain_only == [] and ref.spacing_mm == pytest.approx((5.0, CT_ICH_PIXEL_SPACING_MM, CT_ICH_PIXEL_SPACING_MM))

    assert main(["convert", str(patient), "--to", "dicom", "--out", str(tmp_path / "d")]) == 0
    printed = capsys.readouterr().out
    series = tmp_path / "d" / "dicom"
    assert "DICOM slices" in printed and "reconstructed from" in printed
    vol = read_dicom_series(series)
    np.testing.assert_array_equal(vol.hu, np.rint(ref.hu))
    np.testing.assert_allclose(vol.affine_ras, ref.affine_ras, atol=1e-4)
    assert vol.spacing_mm == pytest.approx((5.0, CT_ICH_PIXEL_SPACING_MM, CT_ICH_PIXEL_SPACING_MM))
    ds = pydicom.dcmread(vol.files[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT" and ds.PixelRepresentation == 1
    assert "reconstructed from" in ds.ImageComments and "reconstructed from" in ds.DerivationDescription
    assert str(ds.PatientName) == f"CT-ICH^{patient.name}" and ds.PatientID == f"CT-ICH-{patient.name}"
    assert len({pydicom.dcmread(f).SeriesInstanceUID for f in vol.files}) == 1
    m = nib.load(str(tmp_path / "d" / "mask.nii.gz"))
    assert np.array_equal(np.asarray(m.dataobj).transpose(2, 1, 0) > 0, mask)
    np.testing.assert_allclose(m.affine, vol.affine_ras, atol=1e-4)
    assert _dciodvfy_errors([Path(f) for f in vol.files]) == []

    r = convert_patient_detailed(patient, "nifti", tmp_path / "n")
    ct = read_nifti(r.image)
    np.testing.assert_array_equal(ct.hu, np.rint(ref.hu))
    assert b"reconstructed from" in nib.load(str(r.image)).header["descrip"].tobytes()
    assert r.mask_slices == int(mask.any(axis=(1, 2)).sum())
    with pytest.raises(ValueError, match="to must be"):
        convert_patient(patient, "png", tmp_path / "x")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="no such folder"):
        convert_patient(tmp_path / "nope", "dicom", tmp_path / "x")


def test_sample_study_is_shipped_and_converts(tmp_path: Path) -> None:
    d = sample_study_dir()
    brains = sorted((d / "brain").glob("*.jpg"))
    assert len(brains) == 33 and len(list((d / "bone").glob("*.jpg"))) == 33
    assert not list(d.rglob("*HGE_Seg*"))  # the ground-truth masks are not shipped
    assert "CC BY 4.0" in (d.parent / "NOTICE.md").read_text() and "10.13026/w8q8-ky94" in (d.parent / "NOTICE.md").read_text()
    r = convert_patient_detailed(d, "dicom", tmp_path)
    assert r.n_slices == 33 and r.mask_voxels == 0 and r.shape == (33, 650, 650)


@needs_real_data
def test_convert_real_patient_reads_back_and_validates(tmp_path: Path) -> None:
    patient = REAL_DATA / "Patients_CT" / "085"  # 19 slices, 2 with blood
    r = convert_patient_detailed(patient, "dicom", tmp_path)
    ref, mask, _ = ctich_volume(patient)
    assert convert_patient(patient, "dicom", tmp_path / "again") == tmp_path / "again" / "dicom"
    vol = read_dicom_series(r.image)
    np.testing.assert_array_equal(vol.hu, np.rint(ref.hu))
    assert r.mask_slices == 2 and r.mask_voxels == int(mask.sum()) > 0
    # windowing the reconstructed HU gives back the brain JPGs (±1 where unsaturated)
    brain, _ = vol.windows()
    from ichseg.data.cache import read_grey_u8

    for k in (0, 9, 18):
        jpg = read_grey_u8(patient / "brain" / f"{k + 1}.jpg")
        use = (jpg > 3) & (jpg < 252)
        assert np.abs(brain[k].astype(int) - jpg)[use].max() <= 1
    assert _dciodvfy_errors([Path(vol.files[0]), Path(vol.files[-1])]) == []


@needs_real_data
def test_convert_patient_without_a_bone_slice(tmp_path: Path) -> None:
    r = convert_patient_detailed(REAL_DATA / "Patients_CT" / "084", "nifti", tmp_path)  # bone/36.jpg is absent
    assert r.brain_only_slices == [36] and r.n_slices == 36


def _thick_series(folder: Path, n: int, thickness: float, kernel: str | None = None, seed: int = 0) -> str:
    uid = generate_uid()
    folder.mkdir(parents=True)
    hu = expected_hu(n, seed=seed)
    for k in range(n):
        ds = make_ds(hu[k], (0, 0, k * thickness), series_uid=uid, instance=k + 1)
        ds.SliceThickness = f"{thickness:g}"
        if kernel:
            ds.ConvolutionKernel = kernel
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
    return uid


def test_the_series_closest_to_5_mm_with_a_soft_kernel_is_chosen_and_said_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    thin = _thick_series(tmp_path / "thin", 40, 1.0, "H30s")
    soft = _thick_series(tmp_path / "soft", 8, 5.0, "H30s", seed=1)
    bone = _thick_series(tmp_path / "bone", 8, 5.0, "H70h", seed=2)
    with caplog.at_level(logging.WARNING):
        vol = read_dicom_series(tmp_path)
    assert vol.series_uid == soft and vol.shape[0] == 8  # not the 40-slice 1 mm one, not the bone kernel
    why = vol.extra["series_choice"]
    assert why.startswith("of 3 CT series, the axial one closest to 5 mm") and "8 images, 5 mm, kernel H30S" in why
    assert "40 images, 1 mm" in why and "H70H" in why
    assert thin in caplog.text and bone in caplog.text
    assert read_dicom_series(tmp_path, series_uid=thin).extra["series_choice"].startswith(f"series {thin}, as asked")
    from ichseg.io.dicom import is_sharp_kernel

    assert [is_sharp_kernel(k) for k in ("BONEPLUS", "STANDARD", "Hr38", "Br64", "J70h", "SOFT", "LUNG", "")] == [
        True, False, False, True, True, False, True, False,
    ]  # fmt: skip


def test_an_export_without_series_uid_or_sop_class_is_read_as_one_series(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hu = expected_hu(5)
    _, files = write_series(tmp_path / "anon", hu)
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.SeriesInstanceUID
        del ds.SOPClassUID
        ds.save_as(f)
    with caplog.at_level(logging.WARNING):
        vol = read_dicom_series(tmp_path / "anon")
    np.testing.assert_array_equal(vol.hu, hu)
    assert caplog.text.count("without SeriesInstanceUID, grouped as one series") == 1
    assert vol.sop_class_uid == CT
