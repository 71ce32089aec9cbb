"""Real multi-slice CT from outside CT-ICH, from registry packages (PyPI source distributions,
Debian packages; :mod:`ichseg.experiments.registry_cases`): each is read, and predicted or refused with the right
message. ``.ci/run`` fetches them into ``$ICHSEG_EXTERNAL_CT``; elsewhere they are fetched
by ``python -m ichseg.experiments.external --fetch DIR`` and the tests skip without them
(in CI they fail instead). No label exists, so no verdict is asserted beyond consistency:
what the model answers on them is in docs/RESULTS.md."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ichseg.cli import main
from ichseg.experiments.registry_cases import CASES, case_input

ROOT = Path(os.environ.get("ICHSEG_EXTERNAL_CT", Path(__file__).resolve().parents[1] / "runs" / "external"))
BY_NAME = {c.name: c for c in CASES}


def _case(name: str) -> Path:
    if not (ROOT / name).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{ROOT / name} missing: .ci/run fetches it (python -m ichseg.experiments.external --fetch)")
        pytest.skip(f"fetch with: python -m ichseg.experiments.external --fetch {ROOT}")
    return case_input(ROOT, BY_NAME[name])


def _predict(path: Path, out: Path) -> dict:
    assert main(["predict", str(path), "--out", str(out), "--no-progress", "--no-overlays"]) == 0
    return json.loads((out / "summary.json").read_text())


def test_a_real_contrast_head_series_is_read_with_seg_sr_and_its_caution(tmp_path: Path) -> None:
    from pydicom import dcmread

    from ichseg.io.dicom import read_dicom_series

    path = _case("rsna-head-contrast")
    vol = read_dicom_series(path)
    assert vol.shape == (34, 512, 512) and vol.spacing_mm[0] == pytest.approx(5.0, abs=0.01)
    s = _predict(path, tmp_path / "out")
    assert s["head_check"].startswith("skull around a brain")
    assert s["hemorrhage"] == bool(s["lesions"])
    assert any("contrast-enhanced" in c for c in s["cautions"])
    seg = dcmread(tmp_path / "out" / "segmentation.dcm")  # its source lacks PatientBirthDate
    assert seg.Modality == "SEG" and "measurements.dcm" in s["outputs"]


@pytest.mark.parametrize("name", ["dicom2stl-head", "dicom2stl-example", "invesalius-cranium"])
def test_real_head_volumes_in_nifti_pass_the_head_check(name: str, tmp_path: Path) -> None:
    s = _predict(_case(name), tmp_path / "out")
    assert s["head_check"].startswith("skull around a brain")
    assert s["hemorrhage"] == bool(s["lesions"]) and s["cautions"] == []


def test_a_real_abdomen_series_with_blank_uids_is_refused_as_not_a_head(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _case("totalsegmentator-abdomen")
    capsys.readouterr()
    assert main(["predict", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a head CT" in err[0] and "no skull around a brain on 20 of 20" in err[0], err
    assert not (tmp_path / "out").exists()


def test_rim_excess_is_the_band_inside_the_skull_over_deep_brain() -> None:
    import cv2
    import numpy as np

    from ichseg.experiments.external import rim_excess_hu

    s = np.full((256, 256), -1000, np.float32)
    cv2.circle(s, (128, 128), 110, 1000, -1)  # skull
    cv2.circle(s, (128, 128), 100, 70, -1)  # a bright 100-90 px rim (1 px = 0.5 mm: a 5 mm band)
    cv2.circle(s, (128, 128), 90, 35, -1)  # brain
    assert rim_excess_hu(np.stack([s, s]), 0.5) == 35.0
    assert rim_excess_hu(np.full((1, 64, 64), -1000, np.float32), 0.5) is None  # no skull


def test_an_invesalius_project_becomes_a_nifti_the_reader_orients(tmp_path: Path) -> None:
    """InVesalius stores slices from the skull base up, rows towards the face, columns towards
    the patient's left: read back, the face is at the top of the image, as in every DICOM
    axial, and the spacings follow their axes."""
    import io
    import plistlib
    import tarfile

    import numpy as np

    from ichseg.experiments.registry_cases import inv3_to_nifti
    from ichseg.io.nifti import read_nifti

    zyx = np.zeros((3, 4, 5), np.int16)
    zyx[0, 3, 1] = 1000  # lowest slice, the row nearest the face, the second column from the right
    main_plist = plistlib.dumps({"matrix": {"filename": "matrix.dat", "dtype": "int16", "shape": [3, 4, 5]},
                                 "spacing": [0.5, 0.6, 2.0], "modality": "CT"})  # fmt: skip
    src = tmp_path / "Head.inv3"
    with tarfile.open(src, "w:gz") as tar:
        for name, data in (("proj/main.plist", main_plist), ("proj/matrix.dat", zyx.tobytes())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    vol = read_nifti(inv3_to_nifti(src, tmp_path / "out" / "head.nii.gz"))
    assert vol.hu.shape == (3, 4, 5)
    assert vol.hu[0, 0, 1] == 1000  # face row now on top; slice and column unchanged
    assert vol.spacing_mm[0] == pytest.approx(2.0)
    assert tuple(vol.pixel_spacing) == pytest.approx((0.6, 0.5))
    (tmp_path / "bad.inv3").write_bytes(b"")
    with tarfile.open(tmp_path / "bad.inv3", "w:gz"):
        pass
    with pytest.raises(ValueError, match="not an InVesalius 3 project"):
        inv3_to_nifti(tmp_path / "bad.inv3", tmp_path / "bad.nii.gz")
