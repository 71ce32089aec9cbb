"""Real DICOM from outside CT-ICH that the registries ship: pydicom's test files hold one
slice of a CQ500 head CT (JPEG 2000, lossy), a small CT of another body part, an MR, a
SEG and a nuclear-medicine image. Each is read or refused with the right message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ichseg.cli import main

pydicom_data = pytest.importorskip("pydicom.data")
FILES = Path(pydicom_data.__file__).parent / "test_files"


def _folder(tmp_path: Path, name: str, files: Path = FILES, package: str = "pydicom") -> Path:
    """A folder in ``tmp_path`` holding only ``files/name`` (skipped if ``package`` dropped it)."""
    src = files / name
    if not src.exists():
        pytest.skip(f"{package} no longer ships {name}")
    dst = tmp_path / Path(name).stem
    dst.mkdir()
    shutil.copy(src, dst / name)
    return dst


def test_a_cq500_head_slice_in_jpeg2000_is_read_and_predicted(tmp_path: Path) -> None:
    from ichseg.io.dicom import read_dicom_series

    folder = _folder(tmp_path, "693_J2KI.dcm")
    vol = read_dicom_series(folder)
    assert vol.shape == (1, 512, 512) and vol.spacing_mm[0] == pytest.approx(5.0)  # its SliceThickness
    assert vol.hu.min() < -900 and 0 < float(vol.hu[0, 256, 256]) < 100  # air outside, brain in the middle
    assert main(["predict", str(folder), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["slices"] == 1 and s["head_check"].startswith("skull around a brain on 1 of 1")
    assert s["hemorrhage"] == bool(s["lesions"])  # the verdict matches what is drawn
    # the slice has no FrameOfReferenceUID, which a SEG must cite: mask and report, no SEG
    assert (tmp_path / "out" / "mask.nii.gz").exists() and not (tmp_path / "out" / "segmentation.dcm").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("CT_small.dcm", "no skull around a brain on 1 of 1 slices"),
        ("MR_small.dcm", "no axial CT series to read (MR series (1 files))"),
        ("liver_1frame.dcm", "no axial CT series to read (SEG series (1 files))"),
        ("JPEG2000.dcm", "no axial CT series to read (NM series (1 files))"),
    ],
)
def test_other_modalities_and_body_parts_are_refused(
    name: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = _folder(tmp_path, name)
    capsys.readouterr()
    assert main(["predict", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


# pydicom-data (the registry's `pydicom-data` package, pydicom's larger test files) holds the
# same CQ500 head slice losslessly (uncompressed and JPEG 2000 lossless) and a real Enhanced
# (multi-frame) CT: two frames of a skull-stripped perfusion map of a brain.
def _data_store_folder(tmp_path: Path, name: str) -> Path:
    data_store = pytest.importorskip("data_store")
    return _folder(tmp_path, name, Path(data_store.__file__).parent / "data", "pydicom-data")


def test_the_lossless_cq500_slice_reads_the_same_hu_from_both_encodings(tmp_path: Path) -> None:
    from ichseg.io.dicom import read_dicom_series

    raw = read_dicom_series(_data_store_folder(tmp_path, "693_UNCR.dcm"))
    j2k = read_dicom_series(_data_store_folder(tmp_path, "693_J2KR.dcm"))
    assert raw.shape == (1, 512, 512) and raw.spacing_mm[1] == pytest.approx(0.478516)
    assert (raw.hu == j2k.hu).all()  # JPEG 2000 lossless decodes to the stored pixels
    assert 15 < float(abs(raw.hu[0, 200:300, 200:300].mean())) < 45  # brain, in HU


def test_the_lossless_cq500_slice_is_predicted_with_one_consistent_verdict(tmp_path: Path) -> None:
    folder = _data_store_folder(tmp_path, "693_UNCR.dcm")
    assert main(["predict", str(folder), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["head_check"].startswith("skull around a brain on 1 of 1")
    assert s["hemorrhage"] == bool(s["lesions"])
    assert s["hemorrhage"] == (sum(lesion["volume_ml"] for lesion in s["lesions"]) > 0)


def test_a_real_enhanced_ct_perfusion_map_is_read_and_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ichseg.io.dicom import read_dicom_series

    folder = _data_store_folder(tmp_path, "eCT_Supplemental.dcm")
    vol = read_dicom_series(folder)  # multi-frame: one slice per frame, spacing from the functional groups
    assert vol.shape == (2, 512, 512) and vol.spacing_mm[1] == pytest.approx(0.388672)
    capsys.readouterr()
    assert main(["predict", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no skull around a brain on 2 of 2 slices" in err[0], err
