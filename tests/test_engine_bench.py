"""``python -m ichseg.experiments.engine_bench`` records what it ran on, Ray's version included
(the benchmark itself is stubbed out: it takes minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")


def test_the_hardware_block_names_the_ray_version(monkeypatch, tmp_path: Path) -> None:
    from ichseg.experiments import engine_bench

    monkeypatch.setattr(engine_bench, "run", lambda data, n, runtime: {"studies": n, "runtime": runtime})
    assert engine_bench.main(["--data", str(tmp_path), "--studies", "2", "--out", str(tmp_path / "bench.json")]) == 0
    hw = json.loads((tmp_path / "bench.json").read_text())["hardware"]
    assert hw["ray"] == ray.__version__ and "torch" in hw and "cpu_kind" in hw
