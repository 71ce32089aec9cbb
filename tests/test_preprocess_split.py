"""Preprocessing (resize, binarise, cache reuse/rebuild) and the patient split."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import SMALL_PX
from ichseg.config import PreprocessConfig
from ichseg.data.cache import SliceCache, resize_image_u8, resize_mask
from ichseg.data.ctich import SliceRecord, build_index
from ichseg.data.splits import load_split, save_split, select, split_patients
from ichseg.train.loop import to_tensor


def test_resize_and_binarise() -> None:
    img = np.full((650, 650), 200, np.uint8)
    assert resize_image_u8(img, 512).shape == (512, 512)
    assert resize_image_u8(img, 512)[100, 100] == 200
    mask = np.zeros((650, 650), np.uint8)
    mask[100:300, 100:300] = 250
    mask[400:402, 400:402] = 90  # JPEG ringing below the on-level is not blood
    out = resize_mask(mask, 512)
    assert out.dtype == bool
    assert set(np.unique(out)) == {False, True}
    assert abs(out.sum() - 200 * 200 * (512 / 650) ** 2) < 800
    assert not out[315, 315]
    x = to_tensor(np.array([[[[0, 255]]]], np.uint8), channels_last=False)
    assert x.min().item() == 0.0 and x.max().item() == 1.0


def test_cache_reuses_and_rebuilds_only_changes(tiny_data: Path, tmp_path: Path) -> None:
    recs = build_index(tiny_data, expected_size_px=SMALL_PX).records
    cache = SliceCache(tmp_path / "cache", PreprocessConfig(size_px=64))
    cache.build(recs, ("brain", "bone"))
    files = sorted(cache.dir.rglob("*.png"))
    assert len(files) == 3 * len(recs)
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    images, masks = cache.load(recs, ("brain", "bone"))
    assert images.shape == (len(recs), 2, 64, 64) and images.dtype == np.uint8
    assert masks.shape == (len(recs), 64, 64)
    assert [bool(m.any()) for m in masks] == [bool(r.hemorrhage) for r in recs]
    stored = Image.open(cache.dir / f"{recs[0].patient_id}/{recs[0].slice}_mask.png")
    assert stored.mode == "L"

    # a rerun touches nothing
    cache.build(recs, ("brain", "bone"))
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes

    # a changed source rebuilds exactly its own file
    src = Path(recs[3].image_path)
    Image.fromarray(np.full((SMALL_PX, SMALL_PX), 7, np.uint8)).save(src, format="JPEG")
    cache.build(recs, ("brain", "bone"))
    changed = [f for f in files if f.stat().st_mtime_ns != mtimes[f]]
    assert changed == [cache.dir / f"{recs[3].patient_id}/{recs[3].slice}_brain.png"]

    # a changed parameter goes to a different folder
    other = SliceCache(tmp_path / "cache", PreprocessConfig(size_px=64, image_interpolation="bilinear"))
    assert other.dir != cache.dir
    assert json.loads(cache.manifest_path.read_text())["config"]["size_px"] == 64
    assert not any(p.name.endswith(".tmp") or ".tmp" in p.name for p in cache.dir.rglob("*"))
    assert os.listdir(tmp_path / "cache") == [cache.dir.name]


def _rec(pid: str, s: int, hem: int) -> SliceRecord:
    return SliceRecord(pid, s, "x", "", "", hem, 0, 0, 0, 0, 0, 0)


def test_split_by_patient_no_leak_and_stratified(tmp_path: Path) -> None:
    recs = [_rec(f"{p:03d}", s, int(p % 3 == 0 and s == 2)) for p in range(49, 79) for s in range(1, 5)]
    split = split_patients(recs, 0.2, seed=1)
    assert not set(split["train"]) & set(split["val"])
    assert set(split["train"]) | set(split["val"]) == {r.patient_id for r in recs}
    assert len(split["val"]) == 6
    for part in ("train", "val"):
        assert any(r.hemorrhage for r in select(recs, split[part]))
    assert split_patients(recs, 0.2, seed=1) == split  # fixed seed, same split
    save_split(split, tmp_path / "split.json", seed=1, val_fraction=0.2)
    assert load_split(tmp_path / "split.json") == split
    # slices of a patient never straddle the split
    val_slices = select(recs, split["val"])
    assert {r.patient_id for r in val_slices}.isdisjoint(split["train"])


def test_kfold_covers_every_patient_once_without_leak() -> None:
    from ichseg.data.splits import kfold_patients

    recs = [_rec(f"{p:03d}", s, int(p % 3 == 0 and s == 2)) for p in range(49, 115) for s in range(1, 4)]
    folds = kfold_patients(recs, 5, seed=0)
    assert len(folds) == 5
    vals = [v for f in folds for v in f["val"]]
    assert sorted(vals) == sorted({r.patient_id for r in recs})  # each patient validated exactly once
    for f in folds:
        assert not set(f["train"]) & set(f["val"])
        assert any(r.hemorrhage for r in select(recs, f["val"]))
        assert 13 <= len(f["val"]) <= 14
    assert kfold_patients(recs, 5, seed=0) == folds


def test_split_of_tiny_cohort_still_has_validation() -> None:
    recs = [_rec("001", 1, 1), _rec("002", 1, 0)]
    split = split_patients(recs, 0.2, seed=0)
    assert len(split["val"]) == 1 and len(split["train"]) == 1


def test_atomic_write_leaves_normal_permissions(tmp_path: Path) -> None:
    from ichseg.files import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["a.txt"]
