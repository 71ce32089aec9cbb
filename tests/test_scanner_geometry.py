"""Scanner geometry the CT-ICH converter never makes: a gantry-tilted series and a series
with two slice spacings give the lesions and volumes of the straight, uniform original."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from ichseg.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "ichseg" / "sample" / "ct-ich-049"


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ichseg.data.convert import convert_patient

    return Path(convert_patient(SAMPLE, "dicom", tmp_path_factory.mktemp("straight") / "series"))


def _slices(series: Path) -> list:
    ds = [dcmread(f) for f in sorted(series.iterdir())]
    return sorted(ds, key=lambda d: float(d.ImagePositionPatient[2]))


def _save(ds_list: list, folder: Path) -> Path:
    folder.mkdir(parents=True)
    uid = generate_uid()
    for k, ds in enumerate(ds_list):
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    return folder


def tilted(series: Path, folder: Path, degrees: float = 18.5) -> Path:
    """The same images in planes tilted about the patient's left-right axis, the table
    stepping straight along z by 5 mm / cos θ (so the slices stay 5 mm apart along their
    normal, as a tilted scan of the same head is)."""
    t = math.radians(degrees)
    out = []
    slices = _slices(series)
    z0 = float(slices[0].ImagePositionPatient[2])
    for k, ds in enumerate(slices):
        x, y, _ = (float(v) for v in ds.ImagePositionPatient)
        ds.ImageOrientationPatient = [1, 0, 0, 0, f"{math.cos(t):.6f}", f"{math.sin(t):.6f}"]
        ds.ImagePositionPatient = [f"{x:.4f}", f"{y:.4f}", f"{z0 + k * 5.0 / math.cos(t):.4f}"]
        ds.GantryDetectorTilt = f"{degrees:g}"
        out.append(ds)
    return _save(out, folder)


def two_spacings(series: Path, folder: Path, thin_below: int = 14) -> Path:
    """The lower ``thin_below`` slices as pairs of 2.5 mm slices (each half of a 5 mm
    slice), the rest at 5 mm: a series whose spacing changes."""
    out = []
    for k, ds in enumerate(_slices(series)):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        if k < thin_below:
            for dz in (-1.25, 1.25):
                d = dcmread(ds.filename) if hasattr(ds, "filename") and ds.filename else ds.copy()
                d.ImagePositionPatient = [f"{x:.4f}", f"{y:.4f}", f"{z + dz:.4f}"]
                d.SliceThickness = "2.5"
                out.append(d)
        else:
            out.append(ds)
    return _save(out, folder)


def _predict(series: Path, out: Path) -> dict:
    assert main(["predict", str(series), "--out", str(out), "--no-progress", "--no-overlays", "--precision", "fp32"]) == 0
    return json.loads((out / "summary.json").read_text())


def test_tilted_and_two_spacing_series_give_the_same_lesions(straight: Path, tmp_path: Path) -> None:
    ref = _predict(straight, tmp_path / "ref")
    assert ref["lesions"], "the sample has a bleed"
    tilt = _predict(tilted(straight, tmp_path / "tilted"), tmp_path / "out-tilted")
    assert tilt["slices"] == ref["slices"] and tilt["spacing_mm"][0] == pytest.approx(5.0, abs=1e-3)
    mixed = _predict(two_spacings(straight, tmp_path / "mixed"), tmp_path / "out-mixed")
    assert mixed["slices"] == ref["slices"] + 14 and mixed["slabs"] is not None  # 2.5 mm below: read as slabs
    for got in (tilt, mixed):
        assert got["hemorrhage"] == ref["hemorrhage"] and len(got["lesions"]) == len(ref["lesions"])
        assert got["total_volume_ml"] == pytest.approx(ref["total_volume_ml"], rel=0.05)
        assert got["lesions"][0]["volume_ml"] == pytest.approx(ref["lesions"][0]["volume_ml"], rel=0.05)
        # ABC/2 weighs whole slices (0, ½ or 1 by area), so the slices at the change of spacing,
        # whose extents are means of two steps, move it more than the voxel volume
        assert got["lesions"][0]["abc2_ml"] == pytest.approx(ref["lesions"][0]["abc2_ml"], rel=0.1)
    # tilted: the same slices in their own planes, 5 mm apart along their normal: the same volumes
    for a, b in zip(tilt["lesions"], ref["lesions"], strict=True):
        assert a["volume_ml"] == pytest.approx(b["volume_ml"], rel=1e-4) and a["slices"] == b["slices"]
    # the tilted masks are the straight ones, slice by slice, on the input's own grid
    import nibabel as nib

    a = np.asarray(nib.load(str(tmp_path / "ref" / "mask.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "out-tilted" / "mask.nii.gz")).dataobj)
    assert np.array_equal(a, b)


def test_an_anonymised_export_is_predicted_without_a_seg_it_could_not_cite(straight: Path, tmp_path: Path) -> None:
    out = []
    for ds in _slices(straight):
        del ds.SeriesInstanceUID
        del ds.SOPClassUID
        out.append(ds)
    folder = tmp_path / "anon"
    folder.mkdir()
    for k, ds in enumerate(out):
        ds.save_as(folder / f"{k:03d}.dcm")
    ref = _predict(straight, tmp_path / "ref")
    got = _predict(folder, tmp_path / "out")
    assert got["total_volume_ml"] == ref["total_volume_ml"] and got["slices"] == ref["slices"]
    assert not (tmp_path / "out" / "segmentation.dcm").exists() and (tmp_path / "out" / "mask.nii.gz").exists()
    assert (tmp_path / "ref" / "segmentation.dcm").exists()


def test_an_enhanced_multiframe_ct_gives_the_masks_of_its_single_frame_series(straight: Path, tmp_path: Path) -> None:
    """The sample converted by highdicom into one Legacy Converted Enhanced CT instance
    (every slice a frame, geometry and rescale in functional groups)."""
    import highdicom as hd

    dss = _slices(straight)
    for d in dss:  # attributes the Enhanced CT module requires and the converter does not write
        d.Manufacturer = d.get("Manufacturer") or "ichseg"
        d.KVP = "120"
        d.AcquisitionNumber = 1
        d.ContentDate, d.ContentTime = d.get("ContentDate", "20240101"), d.get("ContentTime", "120000")
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        dss, series_instance_uid=generate_uid(), series_number=2, sop_instance_uid=generate_uid(), instance_number=1
    )
    folder = tmp_path / "enhanced"
    folder.mkdir()
    enhanced.save_as(folder / "enhanced.dcm")
    ref = _predict(straight, tmp_path / "ref")
    got = _predict(folder, tmp_path / "out")
    assert got["slices"] == ref["slices"] and got["total_volume_ml"] == pytest.approx(ref["total_volume_ml"], abs=1e-3)
    import nibabel as nib

    a = np.asarray(nib.load(str(tmp_path / "ref" / "mask.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "out" / "mask.nii.gz")).dataobj)
    assert np.array_equal(a, b)
    assert not (tmp_path / "out" / "segmentation.dcm").exists()  # a SEG citing frames is not written yet
