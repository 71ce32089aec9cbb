"""Labelled NIfTI volumes in HU (nnU-Net, CT-ICH's NIfTI release, a CSV of pairs) read into
the same slice index as CT-ICH's JPGs, on tiny volumes generated here."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest

from ichseg.data.datasets import index_dataset
from ichseg.data.volumes import detect_layout, index_volumes
from ichseg.errors import DatasetError

SHAPE = (72, 72)  # rows, columns at 3 mm: a 216 mm field of view


@pytest.fixture(autouse=True)
def _store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICHSEG_CACHE", str(tmp_path / "cache"))


def head_hu(n: int) -> np.ndarray:
    """(n, rows, cols) HU: air, a skull ring, brain at 35 HU."""
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    r = np.hypot(yy - SHAPE[0] / 2, xx - SHAPE[1] / 2)
    s = np.full(SHAPE, -1000.0, np.float32)
    s[r < 30] = 1000.0
    s[r < 27] = 35.0
    return np.repeat(s[None], n, 0)


def write(path: Path, vol_krc: np.ndarray, slice_mm: float = 5.0, dtype=np.float32) -> Path:
    """A (slices, rows, columns) array as NIfTI with 3 mm pixels, axial, LPS display order
    stored as nibabel wants it (x = column, y = row, z = slice)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(vol_krc).transpose(2, 1, 0).astype(dtype)
    affine = np.diag([-3.0, -3.0, slice_mm, 1.0])  # columns towards L, rows towards P
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def blob(n: int, k: list[int], value: int, at: tuple[int, int] = (30, 30), size: int = 6) -> np.ndarray:
    lab = np.zeros((n, *SHAPE), np.uint8)
    for j in k:
        lab[j, at[0] : at[0] + size, at[1] : at[1] + size] = value
    return lab


def nnunet(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]], labels: dict[str, int], slice_mm: float = 5.0) -> Path:
    for case, (img, lab) in cases.items():
        write(root / "imagesTr" / f"{case}_0000.nii.gz", img, slice_mm)
        write(root / "labelsTr" / f"{case}.nii.gz", lab, slice_mm, dtype=np.uint8)
    body = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": len(cases), "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(body))
    return root


def test_an_nnunet_folder_with_subtype_classes_becomes_a_slice_index(tmp_path: Path) -> None:
    hu = head_hu(4)
    edh = blob(4, [1], 1)
    mixed = blob(4, [2], 2) + blob(4, [2], 3, at=(10, 40), size=4)  # SDH, and edema that is not blood
    root = nnunet(
        tmp_path / "Dataset001_ICH",
        {"case_a": (hu, edh), "case_b": (hu, mixed)},
        {"background": 0, "EDH": 1, "SDH": 2, "perihematomal edema": 3},
    )
    assert detect_layout(root) == "nnunet"
    res = index_dataset(root)
    recs = {(r.patient_id, r.slice): r for r in res.records}
    assert len(recs) == 8 and {p for p, _ in recs} == {"case_a", "case_b"}
    assert [recs["case_a", k].hemorrhage for k in (1, 2, 3, 4)] == [0, 1, 0, 0]
    assert recs["case_a", 2].epidural == 1 and recs["case_a", 2].subdural == 0
    b3 = recs["case_b", 3]
    assert (b3.hemorrhage, b3.subdural, b3.epidural) == (1, 1, 0)
    # the model's frame: 72 px of 3 mm are 617 px of 0.35 mm in the 650 frame; edema is no blood
    m = cv2.imread(b3.mask_path, cv2.IMREAD_GRAYSCALE) >= 128
    assert m.shape == (650, 650)
    assert m.sum() == pytest.approx((6 * 3 / 0.35) ** 2, rel=0.1)
    brain = cv2.imread(b3.image_path, cv2.IMREAD_GRAYSCALE)
    assert abs(int(brain[325, 200]) - round((35 + 20) / 120 * 255)) <= 2  # 35 HU in the 40/120 brain window
    assert res.meta["label_map"]["values"] == {"0": "background", "1": "epidural", "2": "subdural", "3": "ignore"}
    # a rerun reuses the rendering; a changed label is rendered again
    stamp = Path(b3.image_path).stat().st_mtime_ns
    assert index_dataset(root).records == res.records and Path(b3.image_path).stat().st_mtime_ns == stamp
    write(root / "labelsTr" / "case_b.nii.gz", np.zeros_like(mixed), dtype=np.uint8)
    assert not any(r.hemorrhage for r in index_dataset(root).records if r.patient_id == "case_b")


def test_a_thin_series_is_read_as_the_5mm_slabs_prediction_uses(tmp_path: Path) -> None:
    """16 slices of 1.25 mm: 4 slabs. Blood on 3 of a slab's 4 slices is blood in the slab;
    on 1 of 4 it is averaged away, as it is in the slab's HU."""
    hu = head_hu(16)
    lab = blob(16, [4, 5, 6], 1) + blob(16, [12], 1, at=(10, 30))
    root = nnunet(tmp_path / "thin", {"t": (hu, lab)}, {"background": 0, "hemorrhage": 1}, slice_mm=1.25)
    res = index_volumes(root)
    assert [r.hemorrhage for r in res.records] == [0, 1, 0, 0]
    assert res.meta["cases"]["t"]["slabs"] == 4 and res.meta["cases"]["t"]["slices"] == 16


def test_ctich_nifti_and_csv_layouts(tmp_path: Path) -> None:
    hu = head_hu(3)
    ct = tmp_path / "ctich"
    write(ct / "ct_scans" / "49.nii", hu)
    write(ct / "masks" / "49.nii", blob(3, [1], 255), dtype=np.uint8)  # 0/255 is binary too
    assert detect_layout(ct) == "ctich-nifti"
    assert [r.hemorrhage for r in index_dataset(ct).records] == [0, 1, 0]
    pairs = tmp_path / "site" / "pairs.csv"
    write(pairs.parent / "img" / "p1.nii.gz", hu)
    write(pairs.parent / "lab" / "p1.nii.gz", blob(3, [0, 2], 1), dtype=np.uint8)
    pairs.write_text("case,image,mask\nsite-1,img/p1.nii.gz,lab/p1.nii.gz\n")
    assert detect_layout(pairs) == "csv"
    res = index_dataset(pairs)
    assert [(r.patient_id, r.hemorrhage) for r in res.records] == [("site-1", 1), ("site-1", 0), ("site-1", 1)]
    assert res.meta["label_map"]["kind"] == "binary"


def test_every_bad_case_is_named_and_skip_bad_keeps_the_rest(tmp_path: Path) -> None:
    hu = head_hu(3)
    site = tmp_path / "site"
    rows = ["case,image,label"]

    def add(case: str, img: np.ndarray | None, lab: np.ndarray | None, *, img_file: str | None = None) -> None:
        ip = site / f"{case}.nii.gz"
        if img is not None:
            write(ip, img)
        lp = site / f"{case}_seg.nii.gz"
        if lab is not None:
            write(lp, lab, dtype=np.uint8)
        rows.append(f"{case},{img_file or ip.name},{lp.name if lab is not None else ''}")

    add("good", hu, blob(3, [1], 1))
    add("grid", hu, blob(3, [1], 1)[:, :60])  # label grid differs from its image
    add("multi", hu, blob(3, [1], 1) + blob(3, [2], 2))  # three values where binary is expected
    add("nolabel", hu, None)
    add("fourd", None, blob(3, [1], 1))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3, 2), np.float32), np.eye(4)), str(site / "fourd.nii.gz"))
    add("empty", None, blob(3, [1], 1))
    (site / "empty.nii.gz").write_bytes(b"")
    (site / "pairs.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError) as err:
        index_dataset(site / "pairs.csv")
    msg = str(err.value)
    assert "5 problem(s)" in msg
    for needle in ("grid_seg.nii.gz: label grid", "multi_seg.nii.gz: a non-binary label", "'nolabel' has no label",
                   "fourd.nii.gz: 4D NIfTI", "empty.nii.gz: empty file"):  # fmt: skip
        assert needle in msg, needle
    res = index_dataset(site / "pairs.csv", skip_bad=True)
    assert {r.patient_id for r in res.records} == {"good"} and len(res.skipped) == 5


def test_label_names_must_mean_something(tmp_path: Path) -> None:
    hu = head_hu(2)
    root = nnunet(tmp_path / "odd", {"a": (hu, blob(2, [0], 1))}, {"background": 0, "tumour": 1})
    with pytest.raises(DatasetError, match="'tumour' \\(value 1\\) match no hemorrhage"):
        index_dataset(root)
    root = nnunet(tmp_path / "undeclared", {"a": (hu, blob(2, [0], 4))}, {"background": 0, "hemorrhage": 1})
    with pytest.raises(DatasetError, match="label value\\(s\\) \\[4\\] are not declared"):
        index_dataset(root)


def test_ctich_exported_to_nnunet_reads_back_as_the_same_index(tiny_data: Path, tmp_path: Path) -> None:
    """``ichseg convert DATA --to nnunet`` then the reader: the same patients, slices, blood
    labels and subtype flags (where the CSV flags one) as the JPG layout; the train stage
    runs on it unchanged and writes the layout into the run's dataset.json."""
    import dataclasses

    from ichseg.cli import main
    from ichseg.config import RunConfig, TrainConfig, UNetConfig
    from ichseg.data.ctich import SUBTYPES, build_index
    from ichseg.experiments.workflow import prepare

    out = tmp_path / "nn"
    assert main(["convert", str(tiny_data), "--to", "nnunet", "--out", str(out)]) == 0
    jpg = {(r.patient_id, r.slice): r for r in build_index(tiny_data, expected_size_px=None).records}
    vol = {(r.patient_id, r.slice): r for r in index_dataset(out).records}
    assert jpg.keys() == vol.keys()
    for k, a in jpg.items():
        b = vol[k]
        assert a.hemorrhage == b.hemorrhage, k
        if a.hemorrhage and sum(getattr(a, s) for s in SUBTYPES) == 1:
            assert all(getattr(a, s) == getattr(b, s) for s in SUBTYPES), k
    cfg = RunConfig(
        unet=UNetConfig(input_size_px=32, base_filters=4, depth=3),
        train_unet=TrainConfig(epochs=1, samples_per_epoch=8, channels_last=False),
        stages=("unet",),
    )
    cfg = dataclasses.replace(cfg, pipeline=dataclasses.replace(cfg.pipeline, eval_size_px=64))
    prep = prepare(out, tmp_path / "work", cfg, progress=False)
    assert sorted(prep.split["train"] + prep.split["val"]) == sorted({p for p, _ in jpg})
    assert json.loads((tmp_path / "work" / "dataset.json").read_text())["layout"] == "nnunet"


def test_finetune_starts_from_the_bundle_and_scores_held_out_patients_before_and_after(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file

    from ichseg.cli import main
    from ichseg.config import ClassifierConfig, PipelineConfig, RunConfig, TrainConfig, UNetConfig
    from ichseg.experiments.workflow import bundle_stage, prepare, train_stage
    from ichseg.infer.pipeline import load_bundle

    cfg = RunConfig(
        unet=UNetConfig(input_size_px=32, base_filters=4, depth=3),
        classifier=ClassifierConfig(input_size_px=32, base_filters=4, blocks=3),
        train_unet=TrainConfig(epochs=1, samples_per_epoch=16, channels_last=False),
        train_classifier=TrainConfig(epochs=1, samples_per_epoch=16),
        pipeline=PipelineConfig(min_area_px=0, eval_size_px=64),
    )
    prep = prepare(tiny_data, tmp_path / "w", cfg, progress=False, expected_size_px=96)
    train_stage(prep, "classifier", progress=False)
    train_stage(prep, "unet", progress=False)
    base = bundle_stage(tmp_path / "w", cfg)
    (base / "unet.onnx").write_bytes(b"stale graph")  # must not follow the new weights
    out = tmp_path / "site-model"
    args = ["finetune", "--model", str(base), "--data", str(tiny_data), "--out", str(out), "--image-size", "96"]
    assert main([*args, "--epochs", "1", "--samples-per-epoch", "8", "--held-out", "0.4", "--no-progress"]) == 0
    r = json.loads((out / "finetune.json").read_text())
    assert set(r["finetune_patients"]).isdisjoint(r["held_out_patients"]) and r["held_out_patients"]
    assert set(r["held_out"]["before"]) == set(r["held_out"]["after"]) >= {"slice_recall", "dice_global"}
    assert r["base_unet_sha256"] and r["data_checksum"] and r["finetune_config"]["epochs"] == 1
    assert not (out / "unet.onnx").exists() and (out / "classifier.safetensors").exists()
    a, b = load_file(str(base / "unet.safetensors")), load_file(str(out / "unet.safetensors"))
    assert a.keys() == b.keys() and any(not (a[k] == b[k]).all() for k in a)  # trained on, from the same weights
    bundle = load_bundle(out)
    assert bundle.meta["finetune"]["finetuned_from"] == str(base.resolve())
    # the members resume from the work folder: a rerun with another schedule into it is
    # refused (it once silently reused the old members), the same schedule resumes
    work = tmp_path / ".site-model-work"
    assert (work / "finetune-run.json").exists()
    assert main([*args, "--epochs", "2", "--samples-per-epoch", "8", "--held-out", "0.4", "--no-progress"]) == 2
    assert "started with another finetune_config" in capsys.readouterr().err
    assert main([*args, "--epochs", "1", "--samples-per-epoch", "8", "--held-out", "0.4", "--no-progress"]) == 0
    assert load_file(str(out / "unet.safetensors")).keys() == b.keys()
    assert bundle.meta["unet"]["finetuned_from"] == str(base.resolve())
    # rehearsal: the base data mixed in, as many slices as the site's fine-tuning part
    out2 = tmp_path / "site-model-rehearsed"
    args2 = ["finetune", "--model", str(base), "--data", str(tiny_data), "--out", str(out2), "--image-size", "96"]
    assert main([*args2, "--epochs", "1", "--samples-per-epoch", "8", "--held-out", "0.4", "--no-progress",
                 "--rehearse", str(tiny_data), "--rehearsal-ratio", "0.5", "--keep-batchnorm"]) == 0  # fmt: skip
    assert json.loads((out2 / "finetune.json").read_text())["finetune_config"]["freeze_batchnorm"] is True
    reh = json.loads((out2 / "finetune.json").read_text())["rehearsal"]
    assert reh["slices"] == round(0.5 * reh["site_slices"]) and reh["data_checksum"]
    # batch-norm adaptation (kept for experiments.finetune_check) needs batch norm: this
    # paper-style U-Net has none, and nothing is written
    from ichseg.experiments.finetune import FinetuneConfig, finetune

    out3 = tmp_path / "site-model-bn"
    with pytest.raises(ValueError, match="no batch-norm layer"):
        finetune(base, tiny_data, out3, FinetuneConfig(adapt="batchnorm", held_out_fraction=0.4), expected_size_px=96)
    assert not out3.exists()


def test_rehearsal_subset_keeps_the_share_of_positive_slices() -> None:
    import numpy as np

    from ichseg.experiments.finetune import concat_arrays, rehearsal_subset
    from ichseg.train.loop import Arrays

    n = 100
    labels = (np.arange(n) % 4 == 0).astype(np.int64)  # 25 % positive
    data = Arrays(
        np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1), np.zeros((n, 1, 1), bool), labels, labels[:, None].astype(np.float32)
    )
    sub = rehearsal_subset(data, 40, seed=3)
    assert len(sub.labels) == 40 and int(sub.labels.sum()) == 10
    assert np.array_equal(sub.labels, data.labels[sub.images[:, 0, 0, 0]])  # rows stay together
    assert len(np.unique(sub.images)) == 40  # no slice drawn twice
    assert sub.targets is not None and np.array_equal(sub.targets[:, 0], sub.labels)  # targets follow their rows
    assert rehearsal_subset(data, 500, seed=3) is data  # fewer than asked: all of it
    both = concat_arrays(data, sub)
    assert len(both.labels) == 140 and both.targets is not None and both.targets.shape == (140, 1)
