"""experiments.compare: configurations on their shared folds at one point (on the committed
fold JSONs of two configurations that share their folds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ichseg.experiments.compare import common_rows, compare

CV = Path(__file__).resolve().parents[1] / "results" / "cv"


def test_shared_folds_same_patients_and_one_point(tmp_path: Path) -> None:
    a, b = CV / "robust-384", CV / "robust-crop"
    if not (a / "fold1.json").exists() or not (b / "fold1.json").exists():
        pytest.skip("fold JSONs not committed")
    only1 = tmp_path / "only1"
    only1.mkdir()
    shutil.copy(a / "fold1.json", only1 / "fold1.json")
    folds, rows = common_rows([b, only1])
    assert folds == [1] and {len(r) for r in rows.values()} == {len(rows["only1"])}
    point = {"mask_threshold": 0.6, "min_area_px": 10, "head_threshold": 0.5}
    point |= {"verdict_rule": "outlined", "head_mask_threshold": 0.4}
    r = compare([a, only1], point)
    assert r["folds"] == [1]
    assert r["configurations"]["robust-384"] == r["configurations"]["only1"]  # the same rows: the same figures
    body = json.loads((a / "fold0.json").read_text())
    body["fold"] = 1  # fold 0's patients under fold 1's name
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "fold1.json").write_text(json.dumps(body))
    with pytest.raises(ValueError, match="held out different patients"):
        common_rows([a, wrong])


def test_own_points_choose_per_configuration_on_shared_folds(tmp_path: Path) -> None:
    from ichseg.experiments.compare import compare_own_points, table_md

    a = CV / "robust-384"
    if not (a / "fold1.json").exists():
        pytest.skip("fold JSONs not committed")
    only1 = tmp_path / "only1"
    only1.mkdir()
    shutil.copy(a / "fold1.json", only1 / "fold1.json")
    r = compare_own_points([a, only1])
    assert r["folds"] == [1] and r["point"] is None
    mine, copy = r["configurations"]["robust-384"], r["configurations"]["only1"]
    assert mine["point"] == copy["point"]  # chosen on fold 1's rows alone, so the same
    assert mine["slice"] == copy["slice"]
    md = table_md(r)
    assert "own point" in md and "| point |" in md and "mask " in md.splitlines()[-1]
