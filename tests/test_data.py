"""CT-ICH layout reading: CSV quirks, the slice index, label cross-check, bad inputs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REAL_DATA, SMALL_PX
from ichseg.cli import main
from ichseg.data.ctich import (
    INDEX_COLUMNS,
    DatasetError,
    build_index,
    read_demographics_csv,
    read_diagnosis_csv,
    read_index,
    write_index,
)


def test_diagnosis_csv_strips_bom(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_bytes(
        "\ufeffPatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,Subdural,No_Hemorrhage,Fracture_Yes_No\n"
        "49,1,0,1,0,0,1,0,1\n49,2,0,0,0,0,0,1,0\n".encode()
    )
    rows = read_diagnosis_csv(p)
    assert rows[(49, 1)] == {
        "intraventricular": 0,
        "intraparenchymal": 1,
        "subarachnoid": 0,
        "epidural": 0,
        "subdural": 1,
        "no_hemorrhage": 0,
        "fracture": 1,
    }
    assert rows[(49, 2)]["no_hemorrhage"] == 1


def test_diagnosis_csv_names_file_on_bad_value(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text(
        "PatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,Subdural,No_Hemorrhage,"
        "Fracture_Yes_No\n49,1,0,7,0,0,0,0,0\n"
    )
    with pytest.raises(DatasetError, match=r"d\.csv, line 2"):
        read_diagnosis_csv(p)


def test_demographics_quoted_newline_and_empty_cells(tmp_path: Path) -> None:
    p = tmp_path / "demo.csv"
    p.write_text(
        '"Patient Number","Age\n(years)","Gender","Intraventricular","Intraparenchymal","Subarachnoid","Epidural",'
        '"Subdural","Fracture (Yes/No)","Condition on file","Note"\n'
        '49,35,"Male",,1,,1,,1,"Intracranial HGE+ Extradural HGE ",\n'
        '50,8,"Female",,,,,,,"",\n'
    )
    rows = read_demographics_csv(p)
    assert len(rows) == 2
    assert rows[0]["patient_number"] == 49 and rows[0]["age"] == 35
    assert rows[0]["intraparenchymal"] == 1 and rows[0]["intraventricular"] == 0
    assert rows[0]["fracture"] == 1 and rows[1]["fracture"] == 0
    assert rows[1]["gender"] == "Female"


def test_index_columns_and_labels(tiny_data: Path, tmp_path: Path) -> None:
    res = build_index(tiny_data, expected_size_px=SMALL_PX)
    assert len(res.records) == 5 * 8
    assert res.disagreements == []
    for r in res.records:
        assert bool(r.mask_path) == bool(r.hemorrhage)
        assert Path(r.image_path).exists() and Path(r.bone_path).exists()
    out = tmp_path / "index.csv"
    write_index(res.records, out)
    with open(out, newline="") as fh:
        assert tuple(next(csv.reader(fh))) == INDEX_COLUMNS
    assert read_index(out) == res.records
    assert read_index(out)[0].patient_id.startswith("0")  # zero padding survives the round trip


def test_disagreement_is_listed_not_resolved(tiny_data: Path, tmp_path: Path) -> None:
    rec = next(r for r in build_index(tiny_data, expected_size_px=SMALL_PX).records if r.hemorrhage)
    Path(rec.mask_path).unlink()
    res = build_index(tiny_data, expected_size_px=SMALL_PX)
    assert [(d.patient_id, d.slice, d.mask_says_hemorrhage, d.csv_says_hemorrhage) for d in res.disagreements] == [
        (rec.patient_id, rec.slice, 0, 1)
    ]
    assert main(["index", "--data", str(tiny_data), "--out", str(tmp_path / "o"), "--image-size", str(SMALL_PX)]) == 0
    text = (tmp_path / "o" / "label_disagreements.csv").read_text()
    assert f"{rec.patient_id},{rec.slice},0,1" in text


def test_subset_of_patients_works(tiny_data: Path) -> None:
    import shutil

    pids = sorted(p.name for p in (tiny_data / "Patients_CT").iterdir())
    shutil.rmtree(tiny_data / "Patients_CT" / pids[1])
    res = build_index(tiny_data, expected_size_px=SMALL_PX)
    assert {r.patient_id for r in res.records} == set(pids) - {pids[1]}


def _first(tiny_data: Path, hemorrhage: bool):
    return next(r for r in build_index(tiny_data, expected_size_px=SMALL_PX).records if bool(r.hemorrhage) == hemorrhage)


def _damage(kind: str, tiny_data: Path) -> Path:
    rec = _first(tiny_data, True)
    img = Path(rec.image_path)
    if kind == "missing":  # a CSV row with no image
        img.unlink()
    elif kind == "empty":
        img.write_bytes(b"")
    elif kind == "corrupt":
        img.write_bytes(b"this is not a jpeg" * 10)
    elif kind == "mask_without_image":
        img.unlink()
        # drop the CSV row too, so only the orphan mask is wrong
        csvp = tiny_data / "hemorrhage_diagnosis.csv"
        lines = csvp.read_text(encoding="utf-8-sig").splitlines()
        keep = [ln for ln in lines if not ln.startswith(f"{int(rec.patient_id)},{rec.slice},")]
        csvp.write_text("\n".join(keep) + "\n", encoding="utf-8-sig")
        return Path(rec.mask_path)
    elif kind == "wrong_size":
        Image.fromarray(np.zeros((SMALL_PX + 10, SMALL_PX), np.uint8)).save(img)
    return img


@pytest.mark.parametrize("kind", ["missing", "empty", "corrupt", "mask_without_image", "wrong_size"])
def test_bad_input_names_the_file(kind: str, tiny_data: Path) -> None:
    bad = _damage(kind, tiny_data)
    with pytest.raises(DatasetError) as err:
        build_index(tiny_data, expected_size_px=SMALL_PX)
    assert bad.name in str(err.value) and str(bad.parent) in str(err.value)


@pytest.mark.parametrize("kind", ["missing", "empty", "corrupt", "mask_without_image", "wrong_size"])
def test_skip_bad_warns_and_leaves_slice_out(kind: str, tiny_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    n_before = len(build_index(tiny_data, expected_size_px=SMALL_PX).records)
    bad = _damage(kind, tiny_data)
    res = build_index(tiny_data, expected_size_px=SMALL_PX, skip_bad=True)
    assert len(res.records) == n_before - 1
    assert any(bad.name in m for m in res.skipped)
    assert any(bad.name in r.message for r in caplog.records)


def test_cli_reports_bad_input_without_traceback(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = _damage("corrupt", tiny_data)
    code = main(["index", "--data", str(tiny_data), "--out", str(tmp_path / "o"), "--image-size", str(SMALL_PX)])
    assert code == 2
    assert bad.name in capsys.readouterr().err
    assert not (tmp_path / "o" / "index.csv").exists()


def test_row_without_csv_label_is_an_error(tiny_data: Path) -> None:
    rec = _first(tiny_data, False)
    csvp = tiny_data / "hemorrhage_diagnosis.csv"
    lines = csvp.read_text(encoding="utf-8-sig").splitlines()
    csvp.write_text(
        "\n".join(ln for ln in lines if not ln.startswith(f"{int(rec.patient_id)},{rec.slice},")) + "\n", encoding="utf-8-sig"
    )
    with pytest.raises(DatasetError, match="no row for patient"):
        build_index(tiny_data, expected_size_px=SMALL_PX)


@pytest.mark.skipif(not (REAL_DATA / "Patients_CT").is_dir(), reason="../shared/ct-ich not present")
def test_real_ct_ich_index() -> None:
    res = build_index(REAL_DATA)
    assert len({r.patient_id for r in res.records}) == 66
    assert len(res.records) == 2004
    assert sum(r.hemorrhage for r in res.records) == 246
    assert res.disagreements == []
    assert sum(1 for r in res.records if not r.bone_path) == 1  # patient 084 lacks one bone slice


def test_every_bad_file_is_named_at_once_and_nothing_is_written(tiny_data: Path, tmp_path: Path, capsys) -> None:
    """Three patients each with a different fault: one run names all three files (a user fixes
    them in one go), and the index is not written."""
    records = build_index(tiny_data, expected_size_px=SMALL_PX).records
    picks, seen = [], set()
    for r in records:
        if r.patient_id not in seen:
            seen.add(r.patient_id)
            picks.append(Path(r.image_path))
    corrupt, empty, wrong = picks[:3]
    corrupt.write_bytes(b"this is not a jpeg" * 10)
    empty.write_bytes(b"")
    Image.fromarray(np.zeros((SMALL_PX + 10, SMALL_PX), np.uint8)).save(wrong)
    with pytest.raises(DatasetError) as err:
        build_index(tiny_data, expected_size_px=SMALL_PX)
    for bad in (corrupt, empty, wrong):
        assert str(bad) in str(err.value), bad
    code = main(["index", "--data", str(tiny_data), "--out", str(tmp_path / "o"), "--image-size", str(SMALL_PX)])
    printed = capsys.readouterr().err
    assert code == 2 and all(str(b) in printed for b in (corrupt, empty, wrong))
    assert not (tmp_path / "o" / "index.csv").exists()
