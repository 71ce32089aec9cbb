"""Tests for the synthetic CT-ICH data set generator."""

from __future__ import annotations

import csv
import io
import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ichseg.data.synthetic import (
    DIAGNOSIS_HEADER,
    SUBTYPES,
    SyntheticConfig,
    generate_dataset,
    make_lesion_slice,
    render_slice,
)

SMALL = SyntheticConfig(n_patients=3, slices_per_patient=6, size_px=128, seed=1)
# Enough patients/slices that several bleeds are drawn, still fast at 160 px.
MEDIUM = SyntheticConfig(n_patients=6, slices_per_patient=10, size_px=160, seed=2)

DEMOGRAPHICS_COLUMNS = [
    "Patient Number",
    "Age\n(years)",
    "Gender",
    "Intraventricular",
    "Intraparenchymal",
    "Subarachnoid",
    "Epidural",
    "Subdural",
    "Fracture (Yes/No)",
    "Condition on file",
    "Note",
]


def _read_diagnosis(root: Path) -> list[dict[str, str]]:
    with open(root / "hemorrhage_diagnosis.csv", encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "L"
        return np.asarray(img)


@pytest.fixture(scope="module")
def medium_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synth") / "ds", MEDIUM)


def test_layout_files_exist(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "ds", SMALL)
    assert root == tmp_path / "ds"
    assert (root / "hemorrhage_diagnosis.csv").is_file()
    assert (root / "patient_demographics.csv").is_file()
    rows = _read_diagnosis(root)
    assert len(rows) == SMALL.n_patients * SMALL.slices_per_patient
    folders = sorted(p.name for p in (root / "Patients_CT").iterdir())
    assert folders == sorted({f"{int(r['PatientNumber']):03d}" for r in rows})
    assert folders[0] == f"{SMALL.first_id:03d}"
    for row in rows:
        patient = root / "Patients_CT" / f"{int(row['PatientNumber']):03d}"
        for window in ("brain", "bone"):
            image = _load(patient / window / f"{row['SliceNumber']}.jpg")
            assert image.shape == (SMALL.size_px, SMALL.size_px)


def test_diagnosis_csv_bom_and_header(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path, SMALL)
    raw = (root / "hemorrhage_diagnosis.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    assert b"\r\n" not in raw
    text = raw.decode("utf-8-sig")
    assert text.split("\n", 1)[0] == DIAGNOSIS_HEADER
    first = text.split("\n")[1].split(",")
    assert first[0] == str(SMALL.first_id)  # integer, no zero padding
    for row in _read_diagnosis(root):
        flags = [row[k] for k in (*SUBTYPES, "No_Hemorrhage", "Fracture_Yes_No")]
        assert set(flags) <= {"0", "1"}
        # No_Hemorrhage is the complement of "any subtype".
        assert (row["No_Hemorrhage"] == "1") == all(row[k] == "0" for k in SUBTYPES)


def test_demographics_header_and_rows(medium_root: Path) -> None:
    raw = (medium_root / "patient_demographics.csv").read_bytes()
    assert raw.startswith(b'"Patient Number","Age\n(years)","Gender"')
    with open(medium_root / "patient_demographics.csv", encoding="utf-8", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == DEMOGRAPHICS_COLUMNS
    body = table[1:]
    assert len(body) == MEDIUM.n_patients
    assert all(len(row) == 11 for row in body)
    diagnosis = _read_diagnosis(medium_root)
    for row in body:
        number = row[0]
        slices = [r for r in diagnosis if r["PatientNumber"] == number]
        assert slices
        for col, kind in enumerate(SUBTYPES, start=3):
            anywhere = any(r[kind] == "1" for r in slices)
            assert row[col] == ("1" if anywhere else "")
        fracture = any(r["Fracture_Yes_No"] == "1" for r in slices)
        assert row[8] == ("1" if fracture else "")


def test_masks_match_csv_and_images(medium_root: Path) -> None:
    rows = _read_diagnosis(medium_root)
    n_positive = 0
    for row in rows:
        brain_dir = medium_root / "Patients_CT" / f"{int(row['PatientNumber']):03d}" / "brain"
        mask_path = brain_dir / f"{row['SliceNumber']}_HGE_Seg.jpg"
        has_mask = mask_path.is_file()
        assert has_mask == (row["No_Hemorrhage"] == "0")
        if has_mask:
            n_positive += 1
            assert (brain_dir / f"{row['SliceNumber']}.jpg").is_file()
            assert np.count_nonzero(_load(mask_path) >= 128) > 0
    # Every mask file has a matching image (no orphan masks).
    for mask_path in (medium_root / "Patients_CT").glob("*/brain/*_HGE_Seg.jpg"):
        assert mask_path.with_name(mask_path.name.replace("_HGE_Seg", "")).is_file()
    assert 0 < n_positive < len(rows)


def test_lesions_brighter_than_brain(medium_root: Path) -> None:
    kernel = np.ones((9, 9), np.uint8)
    checked = 0
    for mask_path in sorted((medium_root / "Patients_CT").glob("*/brain/*_HGE_Seg.jpg")):
        mask = _load(mask_path) >= 128
        brain = _load(mask_path.with_name(mask_path.name.replace("_HGE_Seg", "")))
        ring = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool) & ~mask
        # Surrounding brain only: leave out skull (very bright) and air/CSF (dark).
        surround = brain[ring & (brain > 40) & (brain < 160)]
        assert brain[mask].mean() > np.median(surround) + 30
        checked += 1
    assert checked > 0


def test_deterministic_bytes(tmp_path: Path) -> None:
    a = generate_dataset(tmp_path / "a", SMALL)
    b = generate_dataset(tmp_path / "b", SMALL)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    # A different seed gives different pixels.
    c = generate_dataset(tmp_path / "c", SyntheticConfig(n_patients=3, slices_per_patient=6, size_px=128, seed=99))
    rel = Path("Patients_CT", f"{SMALL.first_id:03d}", "brain", "1.jpg")
    assert (c / rel).read_bytes() != (a / rel).read_bytes()


def test_existing_dataset_is_refused(tmp_path: Path) -> None:
    generate_dataset(tmp_path, SMALL)
    with pytest.raises(FileExistsError, match="Patients_CT"):
        generate_dataset(tmp_path, SMALL)
    # overwrite=True replaces the folder and leaves the same content.
    before = (tmp_path / "hemorrhage_diagnosis.csv").read_bytes()
    generate_dataset(tmp_path, SMALL, overwrite=True)
    assert (tmp_path / "hemorrhage_diagnosis.csv").read_bytes() == before


def test_patient_ids_may_skip_but_are_increasing(tmp_path: Path) -> None:
    config = SyntheticConfig(n_patients=8, slices_per_patient=2, size_px=64, first_id=49)
    root = generate_dataset(tmp_path, config)
    numbers = sorted({int(r["PatientNumber"]) for r in _read_diagnosis(root)})
    assert len(numbers) == 8 and numbers[0] == 49
    assert all(b > a for a, b in itertools.pairwise(numbers))


def test_render_slice_and_lesion_slice() -> None:
    brain, bone, mask = render_slice(np.random.default_rng(0), 128)
    assert brain.shape == bone.shape == mask.shape == (128, 128)
    assert brain.dtype == bone.dtype == np.uint8 and mask.dtype == bool
    assert mask.any()
    _, _, empty = render_slice(np.random.default_rng(0), 128, bleeds=())
    assert not empty.any()

    brain, mask = make_lesion_slice(256, seed=3)
    assert brain.shape == mask.shape == (256, 256)
    assert mask.sum() > 300  # obvious lesion (~3,500 px at 650 px, scaled)
    background = brain[(brain > 40) & (brain < 160) & ~mask]
    assert brain[mask].mean() > np.median(background) + 50
    again, _ = make_lesion_slice(256, seed=3)
    assert np.array_equal(brain, again)


def test_invalid_config_rejected() -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(hemorrhage_fraction=1.5)
    with pytest.raises(ValueError):
        SyntheticConfig(size_px=10)


def test_jpeg_is_greyscale_quality(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path, SMALL)
    path = next((root / "Patients_CT").glob("*/bone/1.jpg"))
    with Image.open(io.BytesIO(path.read_bytes())) as img:
        assert img.format == "JPEG" and img.mode == "L"
