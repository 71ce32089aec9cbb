"""Re-choosing the mask threshold after fine-tuning (issue 19): on hand-made rows it moves
only the mask threshold, never to one that misses a bleeding patient, and through
``ichseg finetune`` the bundle it writes carries the re-chosen point while the held-out
patients are scored at both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ichseg.config import PipelineConfig
from ichseg.evaluate.oof import MASK_THRESHOLDS
from ichseg.evaluate.rechoose import rechoose_mask_threshold, with_mask_threshold


def _row(pid: str, sl: int, true_px: int, blobs_by_t: dict[float, list[list[int]]], head: float = 0.2) -> dict:
    comps = {str(t): blobs_by_t.get(t, []) for t in MASK_THRESHOLDS}
    return {"patient_id": pid, "slice": sl, "hemorrhage": int(true_px > 0), "true_area_px_512": true_px,
            "max_probability": 0.9, "heads": {"hemorrhage": head}, "flags": {},
            "components": comps, "components_no_intracranial": comps}  # fmt: skip


# p1 bleeds (its blob is found up to 0.6 and gone from 0.7); p2 is normal, with a 200-px
# false blob up to 0.4: the best threshold that keeps p1 and clears p2 is 0.5 (every head
# 0.2: below the head threshold, so no slice gets the lower threshold, and above the veto)
ROWS = [
    _row("p1", 1, 300, {t: [[250, 200]] for t in (0.3, 0.4, 0.5, 0.6)}),
    _row("p1", 2, 0, {}),
    _row("p2", 1, 0, {0.3: [[200, 0]], 0.4: [[200, 0]]}),
    _row("p2", 2, 0, {}),
]


def test_the_threshold_moves_to_clear_a_false_alarm_but_never_to_miss_a_patient() -> None:
    base = PipelineConfig(mask_threshold=0.3, min_area_px=10, head_threshold=0.5, verdict_rule="outlined",
                          head_mask_threshold=0.3, head_veto_below=0.1, head_veto_min_area_px=160)  # fmt: skip
    new, candidates = rechoose_mask_threshold(ROWS, base, "scan_safe_f2_dice")
    assert new.mask_threshold == 0.5  # 0.6 scores the same: the lower one wins the tie
    # everything else is the base's
    assert (new.min_area_px, new.head_threshold, new.verdict_rule, new.head_veto_below, new.head_veto_min_area_px) == (
        10, 0.5, "outlined", 0.1, 160)  # fmt: skip
    assert new.head_mask_threshold == 0.3
    by_t = {c["mask_threshold"]: c for c in candidates}
    assert set(by_t) == set(MASK_THRESHOLDS)
    assert by_t[0.3]["scan"]["specificity"] == 0.0 and by_t[0.5]["scan"]["specificity"] == 1.0
    assert by_t[0.7]["scan"]["sensitivity"] == 0.0 and by_t[0.7]["score"] < by_t[0.3]["score"]
    # a tie with the base keeps the base
    assert rechoose_mask_threshold(ROWS, with_mask_threshold(base, 0.6), "scan_safe_f2_dice")[0].mask_threshold == 0.6


def test_the_head_mask_threshold_never_ends_above_the_mask_threshold() -> None:
    p = PipelineConfig(mask_threshold=0.6, head_mask_threshold=0.4)
    assert with_mask_threshold(p, 0.3).head_mask_threshold == 0.3
    assert with_mask_threshold(p, 0.8).head_mask_threshold == 0.4
    assert with_mask_threshold(PipelineConfig(mask_threshold=0.6), 0.3).head_mask_threshold is None
    with pytest.raises(ValueError, match="no slices"):
        rechoose_mask_threshold([], p)


def test_finetune_writes_the_rechosen_point_and_scores_both(tiny_data: Path, tmp_path: Path) -> None:
    """A one-network bundle (the shipped lite bundle's settings around a tiny U-Net with
    slice heads) fine-tuned with ``--rechoose-threshold``."""
    import numpy as np

    from ichseg.cli import main
    from ichseg.config import TrainConfig, UNetConfig
    from ichseg.experiments.finetune_check import fold_bundle
    from ichseg.infer.pipeline import load_bundle
    from ichseg.infer.shipped import shipped_model_dir
    from ichseg.train.loop import Arrays, train_model

    rng = np.random.default_rng(0)
    cfg = UNetConfig(input_size_px=32, base_filters=4, depth=2, batch_norm=True, windows=("bone", "brain"),
                     context_slices=1, heads=("hemorrhage",), normalize="parenchyma")  # fmt: skip
    images = (rng.random((8, 6, 32, 32)) * 255).astype(np.uint8)
    masks = np.zeros((8, 32, 32), bool)
    masks[::2, 10:16, 10:20] = True
    labels = masks.reshape(8, -1).any(1).astype(np.int64)
    data = Arrays(images, masks, labels, labels[:, None].astype(np.float32))
    train_model(cfg, TrainConfig(epochs=1, batch_size=4, samples_per_epoch=8, channels_last=False), data, data,
                tmp_path / "member", progress=False)  # fmt: skip
    base = fold_bundle(shipped_model_dir("lite"), tmp_path / "member", tmp_path / "base")
    body = json.loads((base / "pipeline.json").read_text())
    body["pipeline"]["eval_size_px"] = 64  # small and quick
    body["preprocess"]["size_px"] = 96
    (base / "pipeline.json").write_text(json.dumps(body))
    (base / "cv_summary.json").unlink()  # its policy then defaults
    out = tmp_path / "site"
    args = ["finetune", "--model", str(base), "--data", str(tiny_data), "--out", str(out), "--image-size", "96",
            "--epochs", "1", "--samples-per-epoch", "8", "--held-out", "0.4", "--no-progress",
            "--rechoose-threshold"]  # fmt: skip
    assert main(args) == 0
    r = json.loads((out / "finetune.json").read_text())
    chosen = r["rechosen_threshold"]
    assert chosen["policy"] == "scan_safe_f2_dice" and chosen["base_mask_threshold"] == 0.3
    assert len(chosen["candidates"]) == len(MASK_THRESHOLDS) and "in sample" in chosen["chosen_on"]
    assert load_bundle(out).pipeline.mask_threshold == chosen["mask_threshold"]
    assert load_bundle(out).pipeline.min_area_px == 10  # the rest is the base's
    assert set(r["held_out"]) == {"before", "after", "after_base_point"}
    assert set(r["held_out"]["after_base_point"]) == set(r["held_out"]["after"])
