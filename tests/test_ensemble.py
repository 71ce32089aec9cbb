"""The fold ensemble: post-processing and verdict fusion on hand-made maps, the intracranial
mask on a generated skull, per-study normalisation, and the whole CV → assemble → predict /
evaluate / stress path in miniature, including resuming a killed fold."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import SMALL_PX
from ichseg.cli import main
from ichseg.config import PipelineConfig, RunConfig, TrainConfig, UNetConfig, save_json, to_dict
from ichseg.data.normalize import intracranial_mask, normalize_studies, parenchyma_level
from ichseg.infer.pipeline import masks_from_probs
from ichseg.infer.postprocess import component_table, fuse_verdict, keep_components


def test_component_speck_removal_and_verdict_fusion_on_hand_made_maps() -> None:
    probs = np.zeros((3, 64, 64), np.float32)
    probs[0, 10:16, 10:16] = 0.9  # a 36 px bleed
    probs[0, 40:42, 40:42] = 0.8  # a 4 px speck beside it
    probs[1, 5:7, 5:7] = 0.95  # slice 1: only a speck, but a confident head
    probs[2, 30:40, 30:40] = 0.6  # slice 2: a blob outside the skull
    inside = np.ones((3, 64, 64), bool)
    inside[2, 25:45, 25:45] = False
    cfg = PipelineConfig(mask_threshold=0.5, min_area_px=10, speck_removal="component", intracranial=True)
    masks = masks_from_probs(probs, cfg, inside=inside)
    assert masks[0].sum() == 36 and not masks[0, 40, 40]  # the speck goes, the bleed stays
    assert masks[1].sum() == 0 and masks[2].sum() == 0
    # the older rule empties a slice only when its whole mask is small: the speck survives
    old = masks_from_probs(probs, dataclasses.replace(cfg, speck_removal="slice", intracranial=False))
    assert old[0].sum() == 40 and old[2].sum() == 100
    areas = masks.reshape(3, -1).sum(1)
    heads = np.array([0.2, 0.97, 0.3])
    assert fuse_verdict(areas, heads, None).tolist() == [True, False, False]
    assert fuse_verdict(areas, heads, 0.95).tolist() == [True, True, False]
    # the component table keeps [area, overlap] per blob, so any minimum area can be applied later
    truth = np.zeros((64, 64), bool)
    truth[10:13, 10:16] = True
    assert sorted(component_table(probs[0] >= 0.5, truth)) == [[36, 18]]  # the 4 px speck is below the stored floor
    assert keep_components(probs[0] >= 0.5, 5).sum() == 36


def _skull_slice(size: int = 128, gap_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A bone-window slice: scalp (75) outside a skull ring (220), brain (75) inside, and
    the true intracranial region; ``gap_deg`` opens the skull so scalp touches brain."""
    bone = np.zeros((size, size), np.uint8)
    c = (size // 2, size // 2)
    cv2.ellipse(bone, c, (54, 46), 0, 0, 360, 75, -1)  # scalp
    cv2.ellipse(bone, c, (50, 42), 0, 0, 360, 220, -1)  # skull
    cv2.ellipse(bone, c, (44, 36), 0, 0, 360, 75, -1)  # brain
    truth = np.zeros_like(bone)
    cv2.ellipse(truth, c, (44, 36), 0, 0, 360, 1, -1)
    if gap_deg:
        cv2.ellipse(bone, c, (50, 42), 0, -gap_deg / 2, gap_deg / 2, 75, 7)
    return bone, truth.astype(bool)


@pytest.mark.parametrize("gap_deg", [0.0, 10.0])
def test_intracranial_mask_on_a_generated_skull(gap_deg: float) -> None:
    bone, truth = _skull_slice(gap_deg=gap_deg)
    m = intracranial_mask(bone)
    iou = (m & truth).sum() / (m | truth).sum()
    assert iou > 0.93, iou
    ring = np.zeros_like(bone)
    cv2.ellipse(ring, (64, 64), (54, 46), 0, 0, 360, 1, 3)  # the scalp, outside the skull
    assert not (m & ring.astype(bool)).any()
    assert intracranial_mask(np.zeros((32, 32), np.uint8)).all()  # no bone window: never deletes a finding
    assert not intracranial_mask(np.full((32, 32), 250, np.uint8)).any()  # bone only: nothing inside


def test_normalisation_moves_a_brighter_study_to_the_reference_level() -> None:
    bone, truth = _skull_slice()
    rng = np.random.default_rng(0)
    brain = np.where(truth, rng.normal(140, 6, truth.shape), 0).clip(0, 255).astype(np.uint8)
    x = np.stack([np.stack([bone, brain])] * 3)  # (3 slices, [bone, brain], H, W)
    assert abs(parenchyma_level(x[:, 1], x[:, 0]) - 140) <= 1
    out, offsets = normalize_studies(x, ("bone", "brain"), 0, ["a"] * 3, reference=122.0)
    assert abs(offsets["a"] - 18) <= 1
    assert abs(parenchyma_level(out[:, 1], out[:, 0]) - 122) <= 1
    assert (out[:, 0] == x[:, 0]).all()  # the bone window is left alone


TINY_ENSEMBLE = RunConfig(
    unet=UNetConfig(
        input_size_px=32,
        base_filters=4,
        depth=3,
        batch_norm=True,
        windows=("bone", "brain"),
        context_slices=1,
        heads=("hemorrhage", "intraparenchymal", "subdural"),
        normalize="parenchyma",
    ),
    train_unet=TrainConfig(
        epochs=2,
        samples_per_epoch=16,
        resume_every_steps=1,
        channels_last=False,
        hflip=True,
        intensity=True,
        strong_intensity=True,
    ),
    pipeline=PipelineConfig(min_area_px=0, eval_size_px=64, speck_removal="component", intracranial=True),
    stages=("unet",),
    cv_inner_validation=False,
)


def _cv_args(data: Path, work: Path, results: Path, cfg: Path, *extra: str) -> list[str]:
    return [
        "cv",
        "--data",
        str(data),
        "--out",
        str(work),
        "--name",
        "ens",
        "--folds",
        "2",
        "--config",
        str(cfg),
        "--results",
        str(results),
        "--image-size",
        str(SMALL_PX),
        "--no-progress",
        *extra,
    ]


def test_fold_ensemble_cv_resume_assemble_predict_evaluate_stress(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from ichseg.experiments.folds import load_member_folds, member_dir, train_fold
    from ichseg.infer.pipeline import load_bundle
    from ichseg.infer.predict import predict_path

    cfg_path = tmp_path / "cfg.json"
    save_json(to_dict(TINY_ENSEMBLE), cfg_path)
    work, results = tmp_path / "cv", tmp_path / "results"
    # a fold killed after 3 optimizer steps, then resumed by `ichseg cv`, ends where an
    # uninterrupted fold does
    kw = {"progress": False, "expected_size_px": SMALL_PX}
    train_fold(tiny_data, work, TINY_ENSEMBLE, "ens", 0, 2, max_steps=3, **kw)
    assert json.loads((member_dir(work, "ens", 0) / "resume.json").read_text())["global_step"] == 3
    assert main(_cv_args(tiny_data, work, results, cfg_path)) == 0
    train_fold(tiny_data, tmp_path / "straight", TINY_ENSEMBLE, "ens", 0, 2, **kw)
    resumed = load_file(str(member_dir(work, "ens", 0) / "last.safetensors"))
    straight = load_file(str(member_dir(tmp_path / "straight", "ens", 0) / "last.safetensors"))
    for k, v in straight.items():
        assert torch.allclose(resumed[k].float(), v.float(), atol=1e-5), k
    # a changed configuration cannot silently continue a fold
    other = dataclasses.replace(TINY_ENSEMBLE, train_unet=dataclasses.replace(TINY_ENSEMBLE.train_unet, epochs=3))
    with pytest.raises(ValueError, match="another configuration"):
        train_fold(tiny_data, work, other, "ens", 0, 2, **kw)
    capsys.readouterr()
    assert main(_cv_args(tiny_data, work, results, cfg_path)) == 0  # finished folds are skipped
    assert capsys.readouterr().out.count("skipped") == 2

    folds = load_member_folds(results / "ens")
    assert sorted(p for f in folds for p in f["val_patients"]) == sorted(p.name for p in (tiny_data / "Patients_CT").iterdir())
    row = folds[0]["rows"][0]
    assert set(row["heads"]) == {"hemorrhage", "intraparenchymal", "subdural"}
    assert set(row["components"]) == {"0.3", "0.4", "0.5", "0.6", "0.7", "0.8"}
    # a configuration with flip TTA is scored out of fold with it: the rows are the bundle's
    from ichseg.data.splits import select
    from ichseg.evaluate.oof import member_rows
    from ichseg.models.weights import load_model

    prep, outer = train_fold(tiny_data, work, TINY_ENSEMBLE, "ens", 0, 2, **kw)  # finished: returns at once
    unet, ucfg, _ = load_model(member_dir(work, "ens", 0) / "last")
    held = select(prep.records, outer["val"])
    plain, flipped = (
        member_rows(unet, ucfg, held, prep.cache_root, TINY_ENSEMBLE.preprocess, ucfg.heads, eval_px=64, tta_flip=t)
        for t in (False, True)
    )
    assert [r["max_probability"] for r in plain] == [r["max_probability"] for r in folds[0]["rows"]]
    assert [r["max_probability"] for r in flipped] != [r["max_probability"] for r in plain]

    assert main(["cv-table", "--results", str(results), "--json", str(tmp_path / "summ")]) == 0
    out = capsys.readouterr().out
    assert "## ens (fold ensemble, 2/2 folds)" in out and "| shipped rule | 2/2 |" in out
    summary = json.loads((tmp_path / "summ" / "ens.json").read_text())
    op = summary["operating_point"]

    # the members become one bundle with the pooled out-of-fold operating point
    dest = tmp_path / "installed"
    from ichseg.experiments.release import install

    assert (
        main(
            [
                "release",
                "--data",
                str(tiny_data),
                "--out",
                str(tmp_path / "rel"),
                "--cv",
                str(results / "ens"),
                "--cv-work",
                str(work),
                "--image-size",
                str(SMALL_PX),
            ]
        )
        == 0
    )
    (dest / "classifier.json").parent.mkdir(parents=True)
    (dest / "classifier.json").write_text("{}")  # a leftover of an older two-stage bundle
    install(tmp_path / "rel" / "model", dest)
    assert not (dest / "classifier.json").exists()
    bundle = load_bundle(dest)
    assert bundle.classifier is None and bundle.members == 2
    assert bundle.pipeline.mask_threshold == op["mask_threshold"] and bundle.pipeline.head_threshold == op["head_threshold"]
    body = json.loads((dest / "pipeline.json").read_text())
    assert body["trained_on"]["patient_fingerprints"]

    # the ensemble averages its members' probabilities (float16 storage: close, not equal)
    from ichseg.infer.pipeline import segment_with_heads
    from ichseg.models.weights import load_model

    x = np.random.default_rng(0).integers(0, 255, (3, 6, 32, 32)).astype(np.uint8)
    p_ens, h_ens = segment_with_heads(bundle.unet, x, 32)
    members = [load_model(member_dir(work, "ens", k) / "last")[0] for k in range(2)]
    outs = [segment_with_heads(m, x, 32) for m in members]
    assert np.allclose(p_ens, (outs[0][0] + outs[1][0]) / 2, atol=2e-3)
    assert np.allclose(h_ens, (outs[0][1] + outs[1][1]) / 2, atol=2e-3)

    # the screening cascade: threshold 0 runs every member everywhere, above 1 only the first
    from ichseg.infer.pipeline import segment_bundle
    from ichseg.infer.runtimes import TorchNetwork

    screened = dataclasses.replace(bundle, screen=TorchNetwork(load_model(dest / "unet")[0].members[0]))
    for t, all_ran in ((0.0, True), (1.01, False)):
        b = dataclasses.replace(screened, pipeline=dataclasses.replace(bundle.pipeline, screen_threshold=t))
        probs, _, ran = segment_bundle(b, x, 32)
        assert ran.all() if all_ran else not ran.any()
        assert np.allclose(probs, p_ens if all_ran else outs[0][0], atol=2e-3)

    # predict: deterministic, verdicts from mask or head
    patient = sorted((tiny_data / "Patients_CT").iterdir())[0]
    a = predict_path(bundle, patient, tmp_path / "pa")
    b = predict_path(load_bundle(dest), patient, tmp_path / "pb")
    assert a == [dict(r, image_path=r["image_path"]) for r in b]
    js = json.loads((tmp_path / "pa" / "predictions.json").read_text())
    assert js["ensemble_members"] == 2 and "scan_probability" in js

    # the graph runtimes run the same ensemble; its ONNX weights are stored in float16 after
    # the exporter folded batch-norm into the convolutions, hence a rounding of ~1e-4
    assert main(["export", "--onnx", "--model", str(dest)]) == 0
    for runtime in ("onnx", "openvino"):
        p_g, h_g = segment_with_heads(load_bundle(dest, runtime=runtime).unet, x, 32)
        assert np.abs(p_g - p_ens).max() < 2e-3 and np.abs(h_g - h_ens).max() < 2e-3

    # evaluate keeps every metrics.json key of the two-stage bundles
    ev = tmp_path / "ev"
    args = ["evaluate", "--data", str(tiny_data), "--model", str(dest), "--out", str(ev), "--image-size", str(SMALL_PX)]
    assert main([*args, "--no-progress"]) == 0
    m = json.loads((ev / "metrics.json").read_text())
    for key in ("slice", "scan", "pixel", "variants", "subtype_auc", "operating_point", "resolution", "bootstrap"):
        assert key in m
    assert set(m["variants"]) == {"unet_only", "classifier"} and m["ensemble_members"] == 2
    # the definitions describe the rule that ran (two members averaged, no classifier gate)
    said = m["definitions"]["slice_verdicts"]["pipeline"]
    assert "fold ensemble of 2 U-Nets" in said and f"probability >= {op['mask_threshold']:g}" in said
    assert "gates" not in said and said in (ev / "metrics.md").read_text()
    assert len(m["patients_seen_in_training"]) == len(body["trained_on"]["patients"])

    # the stress test: each fold's member on its own held-out patients, inputs perturbed
    stress = tmp_path / "stress.json"
    stress_args = ["stress", "--data", str(tiny_data), "--cv", str(results / "ens"), "--cv-work", str(work)]
    assert main([*stress_args, "--out", str(stress), "--image-size", str(SMALL_PX), "--fold", "0"]) == 0
    assert (work / "stress" / "ens" / "fold0.json").exists() and not stress.exists()  # one fold: no table yet
    assert main([*stress_args, "--out", str(stress), "--image-size", str(SMALL_PX)]) == 0
    s = json.loads(stress.read_text())
    from ichseg.evaluate.perturb import CONDITIONS

    assert len(s["table"]) == len(CONDITIONS) == 17 and s["table"][0]["perturbation"] == "none"
    assert {"jpeg", "sharp kernel", "thin-slice noise"} <= {r["perturbation"] for r in s["table"]}
    # a condition added after a fold was cached is computed; the others are reused as they are
    cache = work / "stress" / "ens" / "fold0.json"
    body = json.loads(cache.read_text())
    kept = body["conditions"].pop("jpeg|quality 20")
    cache.write_text(json.dumps(body))
    assert main([*stress_args, "--out", str(stress), "--image-size", str(SMALL_PX)]) == 0
    again = json.loads(cache.read_text())["conditions"]
    assert again["jpeg|quality 20"] == kept and again["blur|σ 2 px"] == body["conditions"]["blur|σ 2 px"]
    assert json.loads(stress.read_text())["table"] == s["table"]
    assert {r["strength"] for r in s["table"]} == {"none", "mild", "strong"}
    # values, not only keys: the unperturbed row is the CV's own pooled figure at the same
    # point (cv-table's summary of the same fold JSONs)
    none, pooled = s["table"][0], summary["pooled"]
    assert s["operating_point"] == op and s["patients"] == 5 and s["normal_patients"] == pooled["normal_patients"]
    for key, want in (
        ("dice", pooled["pixel"]["dice_global"]),
        ("recall", pooled["slice"]["recall"]),
        ("precision", pooled["slice"]["precision"]),
        ("scan_sensitivity", pooled["scan"]["sensitivity"]),
        ("scan_specificity", pooled["scan"]["specificity"]),
        ("fp_px_per_normal_patient", pooled["fp_px_per_normal_patient"]),
    ):
        assert (none[key] is None and want is None) or none[key] == pytest.approx(want, abs=1e-12), key
    assert none["dice_change"] == 0
    for r in s["table"]:
        assert all(r[k] is None or 0 <= r[k] <= 1 for k in ("dice", "recall", "precision", "scan_sensitivity"))
        assert r["dice_change"] == pytest.approx(r["dice"] - none["dice"], abs=1e-12)
    # every condition scores the same held-out slices with the same truth (only the input
    # moved), every patient once; a strong perturbation changes what the members see
    labels = ("patient_id", "slice", "hemorrhage", "true_area_px_512")
    scored = []
    for f in folds:
        conds = json.loads((work / "stress" / "ens" / f"fold{f['fold']}.json").read_text())["conditions"]
        assert set(conds) == {f"{name}|{level}" for name, level, _ in CONDITIONS}
        base = conds["none|none"]
        assert set(base["patient_id"]) == set(f["val_patients"])
        assert all([c[k] for k in labels] == [base[k] for k in labels] for c in conds.values())
        scored += base["patient_id"]
        for key in ("noise|σ 8 grey", "blur|σ 2 px"):
            assert conds[key]["max_probability"] != base["max_probability"], key
    assert len(scored) == 5 * 8
    fields = ("dice", "recall", "precision", "scan_specificity", "fp_px_per_normal_patient")
    assert any(r[k] != none[k] for r in s["table"] if r["strength"] == "strong" for k in fields)

    # one network for the price of one: the rule the folds measured, trained on every
    # patient, at the same pooled out-of-fold point (no screening: there is one member)
    rel = ["release", "--data", str(tiny_data), "--out", str(tmp_path / "one"), "--cv", str(results / "ens")]
    assert main([*rel, "--cv-work", str(work), "--image-size", str(SMALL_PX), "--single", "--no-progress"]) == 0
    one = load_bundle(tmp_path / "one" / "model")
    assert one.members == 1 and one.screen is None and one.pipeline.screen_threshold is None
    assert one.pipeline.mask_threshold == op["mask_threshold"] and one.pipeline.head_threshold == op["head_threshold"]
    body = json.loads((tmp_path / "one" / "model" / "pipeline.json").read_text())
    everyone = sorted(p.name for p in (tiny_data / "Patients_CT").iterdir())
    assert body["trained_on"]["patients"] == everyone and body["ensemble"] == {"members": 1, "single": True, "cv_folds": [0, 1]}
    from ichseg.experiments.single import single_dir

    single = load_file(str(single_dir(work, "ens") / "train" / "unet" / "last.safetensors"))
    shipped = load_file(str(tmp_path / "one" / "model" / "unet.safetensors"))
    assert single.keys() == shipped.keys() and all(torch.equal(single[k], shipped[k]) for k in single)
    from ichseg.experiments.assemble import recalibrate

    assert recalibrate(tmp_path / "one" / "model", results / "ens")["operating_point"]["mask_threshold"] == op["mask_threshold"]
    assert json.loads((tmp_path / "one" / "model" / "pipeline.json").read_text())["pipeline"]["screen_threshold"] is None
    assert predict_path(one, patient, tmp_path / "p1")


def test_a_skull_thinner_than_the_opening_disc_keeps_the_scalp_out() -> None:
    """A child's skull or the temporal squama (2-4 mm) is thinner than the disc that regrows
    the brain's edge (about 5 mm): the growth must stop at the bone, not take the muscle and
    scalp just outside it (on a real head that muscle was then outlined as blood)."""
    size, c = 256, (128, 128)
    bone = np.zeros((size, size), np.uint8)
    cv2.ellipse(bone, c, (110, 96), 0, 0, 360, 75, -1)  # scalp and temporalis, 8 px
    cv2.ellipse(bone, c, (102, 88), 0, 0, 360, 220, -1)  # skull, 2 px: under the disc's 5 px radius
    cv2.ellipse(bone, c, (100, 86), 0, 0, 360, 75, -1)  # brain
    m = intracranial_mask(bone)
    outside = np.zeros_like(bone)
    cv2.ellipse(outside, c, (110, 96), 0, 0, 360, 1, -1)
    cv2.ellipse(outside, c, (102, 88), 0, 0, 360, 0, -1)
    assert not (m & outside.astype(bool)).any()
    inside = np.zeros_like(bone)
    cv2.ellipse(inside, c, (100, 86), 0, 0, 360, 1, -1)
    assert (m & inside.astype(bool)).sum() / inside.sum() > 0.99
