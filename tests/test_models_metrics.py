"""Model shapes and parameter counts; the loss and metrics on hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ichseg.config import ClassifierConfig, UNetConfig
from ichseg.evaluate.metrics import PixelAccumulator, confusion, dice_per_slice, slice_metrics
from ichseg.models import build_model, count_parameters
from ichseg.train.losses import bce_dice_loss


def _unet_params(c_in: int, f: int, depth: int) -> int:
    """Parameter count worked out layer by layer (weights + biases)."""
    conv = lambda i, o, k=3: i * o * k * k + o  # noqa: E731
    widths = [f * 2**i for i in range(depth)]
    n, ch = 0, c_in
    for w in widths:
        n += conv(ch, w) + conv(w, w)
        ch = w
    n += conv(ch, widths[-1]) + conv(widths[-1], widths[-1])  # bottleneck keeps the deepest width
    ch = widths[-1]
    for w in reversed(widths):
        n += conv(ch, w, 2)  # 2×2 transposed conv
        n += conv(2 * w, w) + conv(w, w)
        ch = w
    return n + conv(ch, 1, 1)


def test_paper_unet_parameter_count_and_shape() -> None:
    model = build_model(UNetConfig())
    assert count_parameters(model) == _unet_params(1, 32, 4) == 5_137_569
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout)) for m in model.modules())
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 512, 512)).shape == (1, 1, 512, 512)


@pytest.mark.parametrize(("size", "f", "depth", "c"), [(64, 8, 3, 1), (96, 16, 4, 2)])
def test_unet_configurable(size: int, f: int, depth: int, c: int) -> None:
    cfg = UNetConfig(input_size_px=size, base_filters=f, depth=depth, windows=("brain", "bone")[:c])
    model = build_model(cfg)
    assert count_parameters(model) == _unet_params(c, f, depth)
    assert model(torch.zeros(2, c, size, size)).shape == (2, 1, size, size)


def test_unet_rejects_indivisible_size() -> None:
    with pytest.raises(ValueError, match="divisible"):
        build_model(UNetConfig(input_size_px=100, depth=4))


def test_classifier_shape() -> None:
    model = build_model(ClassifierConfig(input_size_px=64, base_filters=8, blocks=3))
    assert model(torch.zeros(3, 1, 64, 64)).shape == (3, 1)
    assert count_parameters(model) < 300_000


def test_bce_dice_loss_hand_computed() -> None:
    # logits 0 → p = 0.5 everywhere; 4 pixels, 2 of them blood.
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    bce = math.log(2)
    dice = 1 - (2 * 1.0) / (2.0 + 2.0)  # intersection 0.5+0.5, sum p = 2, sum t = 2
    assert bce_dice_loss()(logits, target).item() == pytest.approx(bce + dice, abs=1e-5)
    # a confident perfect prediction has a loss near 0
    good = torch.where(target > 0, 20.0, -20.0)
    assert bce_dice_loss()(good, target).item() < 1e-4


def test_slice_metrics_hand_table() -> None:
    pred = np.array([1, 1, 0, 0, 1, 0], bool)
    truth = np.array([1, 0, 1, 0, 1, 0], bool)
    m = slice_metrics(pred, truth)
    assert (m["tp"], m["tn"], m["fp"], m["fn"]) == (2, 2, 1, 1)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    # undefined ratios are None, not 0 or 1
    m = slice_metrics(np.zeros(3, bool), np.zeros(3, bool))
    assert m["recall"] is None and m["precision"] is None and m["specificity"] == 1.0
    assert confusion(np.array([True]), np.array([True])) == {"tp": 1, "tn": 0, "fp": 0, "fn": 0}


def test_pixel_metrics_hand_table() -> None:
    # slice 0: truth 4 px, prediction 2 of them + 2 extra → I=2, P=4, T=4
    # slice 1: both empty (counts as Dice 1 per slice, nothing globally)
    # slice 2: truth empty, 1 px predicted → Dice 0 per slice
    # slice 3: truth 2 px, nothing predicted → I=0, P=0, T=2
    t = np.zeros((4, 4, 4), bool)
    p = np.zeros((4, 4, 4), bool)
    t[0, 0, :4] = True
    p[0, 0, :2] = True
    p[0, 1, :2] = True
    p[2, 3, 3] = True
    t[3, 2, :2] = True
    acc = PixelAccumulator()
    acc.add(p[:2], t[:2])
    acc.add(p[2:], t[2:])
    r = acc.result()
    # ΣI = 2, ΣP = 5, ΣT = 6
    assert r["dice_global"] == pytest.approx(2 * 2 / (5 + 6))
    assert r["iou_global"] == pytest.approx(2 / (5 + 6 - 2))
    assert r["dice_mean_positive"] == pytest.approx((0.5 + 0.0) / 2)
    assert r["dice_mean_all"] == pytest.approx((0.5 + 1.0 + 0.0 + 0.0) / 4)
    assert r["slices_with_blood"] == 2
    assert dice_per_slice(p, t).tolist() == [0.5, 1.0, 0.0, 0.0]
    empty = PixelAccumulator()
    empty.add(np.zeros((1, 2, 2), bool), np.zeros((1, 2, 2), bool))
    assert empty.result()["dice_global"] is None and empty.result()["dice_mean_positive"] is None


def test_scan_metrics_any_slice_rule() -> None:
    from ichseg.evaluate.metrics import scan_metrics

    pids = ["a", "a", "b", "b", "c", "d"]
    truth = np.array([0, 1, 0, 0, 0, 1], bool)  # a and d have blood
    pred = np.array([1, 0, 0, 1, 0, 0], bool)  # a (wrong slice, still a scan TP), b false alarm, d missed
    m = scan_metrics(pids, pred, truth)
    assert (m["tp"], m["tn"], m["fp"], m["fn"]) == (1, 1, 1, 1)
    assert m["sensitivity"] == 0.5 and m["specificity"] == 0.5


def test_bootstrap_resamples_patients() -> None:
    from ichseg.evaluate.bootstrap import bootstrap_ci

    def row(pid: str, t: int, v: int, i: int, p: int, a: int) -> dict:
        return {
            "patient_id": pid,
            "hemorrhage": t,
            "verdict": v,
            "pipeline_intersection_px_512": i,
            "pipeline_area_px_512": p,
            "true_area_px_512": a,
        }

    rows = [
        row("a", 1, 1, 30, 40, 50),
        row("a", 0, 0, 0, 0, 0),
        row("b", 1, 0, 0, 0, 20),
        row("c", 0, 1, 0, 10, 0),
        row("d", 0, 0, 0, 0, 0),
    ]
    ci = bootstrap_ci(rows, n_boot=500, seed=0)
    assert ci["patients"] == 4
    # point estimates from the hand table: TP 1, FN 1, FP 1, TN 2; ΣI 30, ΣP 50, ΣT 70
    assert ci["recall"]["estimate"] == 0.5 and ci["precision"]["estimate"] == 0.5
    assert ci["specificity"]["estimate"] == 2 / 3
    assert ci["dice_global"]["estimate"] == 60 / 120
    assert ci["iou_global"]["estimate"] == 30 / 90
    assert ci["scan_sensitivity"]["estimate"] == 0.5 and ci["scan_specificity"]["estimate"] == 0.5
    lo, hi = ci["recall"]["ci"]
    assert lo == 0.0 and hi == 1.0  # with 2 positive patients, resampling spans all-missed to all-found
    assert bootstrap_ci(rows, n_boot=500, seed=0) == ci  # seeded


def test_unet_batch_norm_option() -> None:
    model = build_model(UNetConfig(input_size_px=32, base_filters=4, depth=2, batch_norm=True))
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 2 * (2 + 1 + 2)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 1, 32, 32)


def test_operating_point_grid_and_policies_on_a_hand_computed_table() -> None:
    from ichseg.evaluate.operating_point import ThresholdStats, f_beta, grid_rows, select_row

    # 3 slices × 2 thresholds: predicted areas and overlaps with the truth (px)
    stats = ThresholdStats(
        thresholds=(0.3, 0.7),
        areas=np.array([[50, 30], [20, 0], [100, 5]]),
        inter=np.array([[40, 30], [0, 0], [0, 0]]),
        true_areas=np.array([40, 0, 0]),
    )
    labels = np.array([1, 0, 0])
    gate = np.array([True, True, False])  # slice 2 never reaches the U-Net
    rows = {(r["mask_threshold"], r["min_area_px"]): r for r in grid_rows(stats, gate, labels, (1, 25), ["a", "a", "b"])}
    r = rows[(0.3, 1)]  # slice 0 TP (50 px), slice 1 FP (20 px), slice 2 gated out
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (1, 1, 0, 1)
    assert r["dice"] == 2 * 40 / (70 + 40)
    assert (r["scan_sensitivity"], r["scan_specificity"]) == (1.0, 1.0)  # patient b (normal) stays negative
    r = rows[(0.3, 25)]  # the 20 px speck on slice 1 is dropped
    assert (r["tp"], r["fp"]) == (1, 0) and r["dice"] == 2 * 40 / (50 + 40)
    r = rows[(0.7, 25)]
    assert (r["tp"], r["fp"]) == (1, 0) and r["dice"] == 2 * 30 / (30 + 40) and r["iou"] == 30 / 40
    assert f_beta(1, 1, 0, 2.0) == 5 / 6
    # F2 + Dice: (0.3, 1) 5/6 + 8/11; (0.3, 25) 1 + 8/9 (best); (0.7, *) 1 + 6/7
    assert select_row(list(rows.values()), "f2_dice") is rows[(0.3, 25)]
    assert select_row(list(rows.values()), "recall90_dice") is rows[(0.3, 25)]


def test_patient_table_calls_and_dice_per_patient() -> None:
    from ichseg.evaluate.metrics import patient_table

    def row(pid: str, blood: int, verdict: int, true: int, pred: int, inter: int) -> dict:
        return {"patient_id": pid, "hemorrhage": blood, "verdict": verdict, "true_area_px_512": true,
                "pipeline_area_px_512": pred, "pipeline_intersection_px_512": inter}  # fmt: skip

    rows = [
        row("a", 1, 1, 100, 80, 60), row("a", 1, 0, 50, 0, 0), row("a", 0, 0, 0, 0, 0),
        row("b", 1, 0, 30, 0, 0), row("b", 0, 1, 0, 40, 0),  # called for a blob off its blood
        row("c", 0, 1, 0, 25, 0), row("d", 1, 0, 10, 0, 0),
    ]  # fmt: skip
    t = {r["patient_id"]: r for r in patient_table(rows)}
    assert t["a"]["dice"] == round(2 * 60 / (150 + 80), 4) and t["a"]["blood_slices_called"] == 1 and t["a"]["called"]
    assert t["b"]["dice"] == 0.0 and t["b"]["called"] and t["b"]["blood_slices_called"] == 0
    assert t["c"]["dice"] is None and t["c"]["predicted_px"] == 25  # no blood: its pixels are false positives
    assert not t["d"]["called"]
    assert [r["patient_id"] for r in patient_table(rows)] == ["b", "d", "a", "c"]  # worst Dice first, no-blood last
