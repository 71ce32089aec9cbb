"""The out-of-fold scoring that chose the shipped operating point, on hand-computed tables."""

from __future__ import annotations

import pytest

from ichseg.evaluate.oof import (
    MASK_THRESHOLDS,
    metrics_at,
    patient_costs,
    px512_to_ml,
    recall_by_group,
    screen_threshold,
)
from ichseg.evaluate.oof_grid import choose, score


def row(pid: str, sl: int, true_px: int, blobs: list[list[int]], head: float = 0.0, maxp: float = 0.0, **flags: int) -> dict:
    """One out-of-fold slice whose blobs ([area, overlap] at 512 px) are the same at every
    mask threshold, and the same without the intracranial mask."""
    comps = {str(t): blobs for t in MASK_THRESHOLDS}
    return {
        "patient_id": pid,
        "slice": sl,
        "hemorrhage": int(true_px > 0),
        "true_area_px_512": true_px,
        "max_probability": maxp,
        "heads": {"hemorrhage": head},
        "flags": {"epidural": 0, "subdural": 0, **flags},
        "components": comps,
        "components_no_intracranial": comps,
    }


# patient 1 bleeds on two slices (one found, one missed); patient 2 is normal, with a
# 10-px speck on one slice and a confident head on the other
ROWS = [
    row("p1", 1, 100, [[80, 60]], head=0.6, epidural=1),
    row("p1", 2, 50, [], head=0.2, epidural=1),
    row("p2", 1, 0, [[10, 0]], head=0.1),
    row("p2", 2, 0, [], head=0.95),
]


def test_metrics_at_counts_slices_patients_and_pixels() -> None:
    m = metrics_at(ROWS, 0.5, 5, None)
    assert (m["slice"]["tp"], m["slice"]["fp"], m["slice"]["fn"], m["slice"]["tn"]) == (1, 1, 1, 1)
    assert m["pixel"]["dice_global"] == pytest.approx(2 * 60 / (90 + 150))
    assert m["pixel"]["iou_global"] == pytest.approx(60 / (90 + 150 - 60))
    assert m["fp_px_per_normal_patient"] == 10 and m["normal_patients"] == 1
    assert (m["scan"]["sensitivity"], m["scan"]["specificity"]) == (1.0, 0.0)
    # a 20-px minimum removes the speck; the normal patient is then clean
    m = metrics_at(ROWS, 0.5, 20, None)
    assert (m["slice"]["fp"], m["scan"]["specificity"], m["slice"]["precision"]) == (0, 1.0, 1.0)
    # head fusion at 0.9 calls the confident normal slice positive (its pixels stay 0)
    m = metrics_at(ROWS, 0.5, 20, 0.9)
    assert (m["slice"]["fp"], m["scan"]["specificity"], m["pixel"]["pixels_predicted"]) == (1, 0.0, 80)


def _point(tp: int, fp: int, fn: int, dice: float, sens: float) -> dict:
    return {"slice": {"tp": tp, "fp": fp, "fn": fn}, "pixel": {"dice_global": dice}, "scan": {"sensitivity": sens}}


def test_the_shipped_policy_never_trades_a_missed_patient_for_a_better_score() -> None:
    a = _point(8, 0, 2, 0.8, 0.9)  # F2 = 40/48, misses a bleeding patient
    b = _point(9, 5, 1, 0.6, 1.0)  # F2 = 45/54, finds every patient
    assert score(a, "f2_dice") == pytest.approx(40 / 48 + 0.8)
    assert choose([a, b], "f2_dice") is a
    assert choose([a, b], "scan_safe_f2_dice") is b
    assert score(a, "f1_dice") == pytest.approx(2 * 8 / (2 * 8 + 2) + 0.8)
    with pytest.raises(ValueError, match="unknown policy"):
        score(a, "dice")


def test_screen_threshold_keeps_the_asked_share_of_bleeding_slices() -> None:
    rows = [row("p", k, 100, [], maxp=p) for k, p in enumerate((0.5, 0.04, 0.2))] + [row("n", 1, 0, [], maxp=0.9)]
    assert screen_threshold(rows, 0.995) == 0.03  # the 0.04 slice must still be sent
    assert screen_threshold(rows, 0.6) == 0.2  # two of three are enough
    assert screen_threshold([*rows, row("q", 1, 100, [], maxp=0.001)], 0.995) is None


def test_patient_costs_rank_by_the_dice_a_perfect_patient_would_add() -> None:
    costs = patient_costs(ROWS, {"mask_threshold": 0.5, "min_area_px": 5, "head_threshold": None})
    p1 = next(c for c in costs if c["patient_id"] == "p1")
    assert (p1["true_px"], p1["predicted_px"], p1["false_positive_px"], p1["false_negative_px"]) == (150, 80, 20, 90)
    assert p1["dice"] == pytest.approx(120 / 230)
    assert p1["dice_cost"] == pytest.approx(300 / 310 - 0.5)
    assert costs[0]["patient_id"] == "p1"


def test_recall_by_subtype_and_bleed_size() -> None:
    g = recall_by_group(ROWS, {"mask_threshold": 0.5, "min_area_px": 5, "head_threshold": None})
    assert g["subtype"] == {"epidural": {"slices": 2, "patients": 1, "found": 1, "recall": 0.5, "dice": pytest.approx(120 / 230)}}
    assert "subdural" not in g["subtype"]  # no slice flagged: no row rather than a 0/0
    assert list(g["size"]) == ["< 1 mL"]
    # 512 px over a 650-px frame of 0.35 mm pixels, 5 mm slices
    assert px512_to_ml(512 * 512) == pytest.approx((650 * 0.35) ** 2 * 5 / 1000)


def test_outlined_rule_never_calls_a_slice_without_an_outline() -> None:
    """Under "outlined" the confident head of the normal slice does not make it positive
    (it is for review); on slices it flags, the lower mask threshold's blobs count."""
    rows = [
        row("p1", 1, 100, [[80, 60]], head=0.6),
        {**row("p1", 2, 50, [], head=0.9), "components": {**{str(t): [] for t in MASK_THRESHOLDS}, "0.4": [[30, 25]]}},
        row("p2", 1, 0, [], head=0.95),
    ]
    fused = metrics_at(rows, 0.5, 5, 0.9)
    assert (fused["slice"]["tp"], fused["slice"]["fp"]) == (2, 1)  # the head alone called p1/2 and p2/1
    outlined = metrics_at(rows, 0.5, 5, 0.9, True, "outlined", 0.4)
    assert (outlined["slice"]["tp"], outlined["slice"]["fp"], outlined["slice"]["fn"]) == (2, 0, 0)
    assert outlined["pixel"]["pixels_intersection"] == 60 + 25 and outlined["scan"]["specificity"] == 1.0
    without_low = metrics_at(rows, 0.5, 5, 0.9, True, "outlined", None)
    assert without_low["slice"]["fn"] == 1  # no lower threshold: the flagged slice has no blob


def test_outlined_grid_and_the_pipeline_functions_agree() -> None:
    import numpy as np

    from ichseg.config import PipelineConfig
    from ichseg.evaluate.oof_grid import grid, operating_point
    from ichseg.infer.pipeline import masks_from_probs
    from ichseg.infer.postprocess import fuse_verdict, review_flags

    points = grid(ROWS, rule="outlined")
    assert all(p["verdict_rule"] == "outlined" for p in points)
    assert {p["head_mask_threshold"] for p in points if p["head_threshold"] is None} == {None}
    assert len(points) > len(grid(ROWS))  # every lower threshold of each head threshold
    cfg = operating_point({"mask_threshold": 0.8, "min_area_px": 5, "head_threshold": 0.5, "verdict_rule": "outlined",
                           "head_mask_threshold": 0.4}, PipelineConfig(speck_removal="component"))  # fmt: skip
    probs = np.zeros((3, 16, 16), np.float32)
    probs[:, 4:8, 4:8] = 0.6  # above 0.4, below 0.8
    head = np.array([0.9, 0.2, 0.9], np.float32)
    probs[2] = 0.0  # flagged, but nothing to outline
    masks = masks_from_probs(probs, cfg, head=head)
    assert masks[0].sum() == 16 and masks[1].sum() == 0 and masks[2].sum() == 0
    areas = masks.reshape(3, -1).sum(1)
    assert fuse_verdict(areas, head, 0.5, "outlined").tolist() == [True, False, False]
    assert review_flags(areas, head, 0.5, "outlined").tolist() == [False, False, True]
    assert fuse_verdict(areas, head, 0.5, "fused").tolist() == [True, False, True]
    assert not review_flags(areas, head, 0.5, "fused").any()
    with pytest.raises(ValueError, match="verdict_rule"):
        fuse_verdict(areas, head, 0.5, "both")


def test_a_subtype_is_named_only_where_its_head_was_right_out_of_fold() -> None:
    from types import SimpleNamespace

    from ichseg.evaluate.oof import subtype_thresholds
    from ichseg.infer.clinical import lesion_json

    rows = []
    for k in range(10):  # epidural head high on 6 slices, right on 5 of them; subdural head never right
        r = row("p", k, 100, [[50, 40]], epidural=int(k < 5), subdural=0)
        r["heads"] = {"hemorrhage": 0.9, "epidural": 0.8 if k < 6 else 0.05, "subdural": 0.6}
        rows.append(r)
    t = subtype_thresholds(rows)
    assert t["epidural"] == 0.1  # 6 slices called at 0.1, 5 of them epidural: 83 % >= 70 %
    assert t["subdural"] is None  # right 0 % of the time at every threshold
    les = SimpleNamespace(to_dict=lambda: {"label": 1, "subtype": "epidural", "subtype_probability": 0.85})
    assert lesion_json(les, {"epidural": 0.8})["subtype"] == "epidural"
    assert lesion_json(les, {"epidural": 0.9})["subtype"] is None
    named_nowhere = lesion_json(les, {})
    assert named_nowhere["subtype"] is None and named_nowhere["subtype_uncalibrated"] == "epidural"


def _random_rows(seed: int, patients: int = 6, slices: int = 12) -> list[dict]:
    """Out-of-fold rows with random blobs at every stored threshold (fewer, smaller blobs at
    higher thresholds), random heads, half the patients bleeding."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        for k in range(slices):
            true_px = int(rng.integers(50, 3000)) if p % 2 == 0 and rng.random() < 0.5 else 0
            comps = {}
            blobs = [[int(a), int(rng.integers(0, a + 1)) if true_px else 0] for a in rng.integers(5, 900, rng.integers(0, 5))]
            for t in MASK_THRESHOLDS:
                blobs = [[max(5, int(a * 0.8)), min(int(a * 0.8), o)] for a, o in blobs if rng.random() < 0.85]
                comps[str(t)] = blobs
            rows.append(
                {
                    "patient_id": f"{p:03d}",
                    "slice": k,
                    "hemorrhage": int(true_px > 0),
                    "true_area_px_512": true_px,
                    "max_probability": 0.5,
                    "heads": {"hemorrhage": float(rng.random() ** 2)},
                    "flags": {},
                    "components": comps,
                    "components_no_intracranial": comps,
                }
            )
    return rows


@pytest.mark.parametrize("rule", ["fused", "outlined"])
def test_the_fast_grid_gives_exactly_the_reference_metrics(rule: str) -> None:
    """The grid's table lookups (OutcomeTable) against metrics_at's loop over every blob,
    at points with and without the head's veto and the head-flagged lower threshold."""
    from ichseg.evaluate.oof import point_rule
    from ichseg.evaluate.oof_grid import grid

    rows = _random_rows(3)
    points = grid(rows, rule=rule, veto=True)
    assert any(p["head_veto_below"] is not None for p in points)
    for p in points[::23]:
        ref = metrics_at(rows, *point_rule(p))
        assert {k: p[k] for k in ref} == ref, p


def test_the_head_vetoes_small_blobs_on_slices_it_doubts() -> None:
    """A 40-px speck on a normal slice whose head is 0.05 goes with a veto (0.1, 80 px); the
    same-size true blob on a slice the head flags stays; a 300-px blob stays whatever the head."""
    import numpy as np

    from ichseg.config import PipelineConfig
    from ichseg.evaluate.oof import point_rule
    from ichseg.evaluate.oof_grid import operating_point
    from ichseg.infer.pipeline import masks_from_probs

    rows = [
        row("p1", 1, 60, [[40, 35]], head=0.6),
        row("p1", 2, 400, [[300, 280]], head=0.02),
        row("p2", 1, 0, [[40, 0]], head=0.05),
    ]
    plain = metrics_at(rows, 0.5, 5, None, True, "outlined")
    assert (plain["slice"]["tp"], plain["slice"]["fp"], plain["scan"]["specificity"]) == (2, 1, 0.0)
    vetoed = metrics_at(rows, 0.5, 5, None, True, "outlined", None, 0.1, 80)
    assert (vetoed["slice"]["tp"], vetoed["slice"]["fp"], vetoed["scan"]["specificity"]) == (2, 0, 1.0)
    assert vetoed["pixel"]["pixels_predicted"] == 340
    point = {"mask_threshold": 0.5, "min_area_px": 5, "head_threshold": None, "verdict_rule": "outlined",
             "head_mask_threshold": None, "head_veto_below": 0.1, "head_veto_min_area_px": 80}  # fmt: skip
    assert metrics_at(rows, *point_rule(point)) == vetoed
    # the same rule on probability maps (area_scale 1: these maps are at 512 px)
    cfg = operating_point(point, PipelineConfig(speck_removal="component"))
    assert (cfg.head_veto_below, cfg.head_veto_min_area_px) == (0.1, 80)
    probs = np.zeros((3, 64, 64), np.float32)
    probs[0, :5, :8] = probs[2, :5, :8] = 0.9  # 40 px
    probs[1, 20:40, 20:35] = 0.9  # 300 px
    masks = masks_from_probs(probs, cfg, head=np.array([0.6, 0.02, 0.05]))
    assert masks.reshape(3, -1).sum(1).tolist() == [40, 300, 0]
    assert masks_from_probs(probs, cfg).reshape(3, -1).sum(1).tolist() == [40, 300, 40]  # no head, no veto


def test_the_specificity_policy_pays_for_false_alarms_on_normal_patients() -> None:
    def pt(tp: int, fp: int, fn: int, dice: float, spec: float) -> dict:
        return {"slice": {"tp": tp, "fp": fp, "fn": fn}, "pixel": {"dice_global": dice},
                "scan": {"sensitivity": 1.0, "specificity": spec}}  # fmt: skip

    loud = pt(9, 4, 1, 0.6, 0.4)  # one more slice found, 60 % of normals called bleeding
    quiet = pt(8, 1, 2, 0.6, 0.8)
    assert choose([loud, quiet], "scan_safe_f2_dice") is loud
    assert choose([loud, quiet], "scan_safe_f2_dice_spec") is quiet
    assert score(quiet, "scan_safe_f2_dice_spec") == pytest.approx(score(quiet, "scan_safe_f2_dice") + 0.8)


def test_a_miss_is_explained_by_its_density_and_the_members_signal(tmp_path) -> None:
    import cv2
    import numpy as np

    from ichseg.experiments.misses import cause, grey_contrast

    img = np.full((64, 64), 115, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:20, 10:20] = 255
    img[10:20, 10:20] = 75  # a hypodense collection (070's kind)
    cv2.imwrite(str(tmp_path / "b.png"), img)
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    c = grey_contrast(str(tmp_path / "b.png"), str(tmp_path / "m.png"))
    assert c == pytest.approx(-40)
    silent = row("p", 1, 100, [])
    assert cause(silent, c) == "hypodense"
    assert cause(silent, 30.0) == "no signal"
    assert cause(row("p", 1, 100, [[8, 8]]), 30.0) == "below the operating point"
    assert grey_contrast(str(tmp_path / "b.png"), "") is None
