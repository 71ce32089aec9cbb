"""A refactor must not change what the shipped model says: ``predict`` on the packaged sample
reproduces ``tests/golden/sample-predict.json`` (written by ``tests/golden_sample.py``).

Bit-for-bit equality (every field, the masks' SHA-256 included) is asserted only on the CPU
kind the golden was recorded on (its ``cpu_kind``, e.g. ``amx``). On any other kind float32
kernels (AVX2 against AVX-512/AMX) differ in the last bits, so the comparison there is the
tolerant one: the same slice verdicts and review flags, probabilities within 2e-4, blood
areas within 1 % (or 3 px) and the same study verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from golden_sample import GOLDEN, sample_outputs


def test_predict_on_the_sample_matches_the_golden_outputs(tmp_path: Path) -> None:
    want = json.loads(GOLDEN.read_text())
    got = sample_outputs(tmp_path / "out")
    if got["unet_sha256"] != want["unet_sha256"]:
        pytest.fail(f"the shipped model changed: rewrite {GOLDEN} with `python tests/golden_sample.py` (and say why)")
    if got["cpu_kind"] != want["cpu_kind"]:
        # float32 kernels differ between CPU kinds (AVX2 against AVX-512/AMX) in the last
        # bits; the rounded probabilities and the verdicts must still agree
        for g, w in zip(got["slices"], want["slices"], strict=True):
            assert g["hemorrhage"] == w["hemorrhage"] and g["review"] == w["review"], g["slice"]
            for k, v in w.items():
                if k.endswith("_probability"):
                    assert abs(g[k] - v) <= 2e-4, (g["slice"], k)
            assert abs(g["area_px"] - w["area_px"]) <= max(3, 0.01 * w["area_px"]), g["slice"]
        assert got["summary"]["hemorrhage"] == want["summary"]["hemorrhage"]
        return
    assert got == want  # same CPU kind: bit for bit, masks included
