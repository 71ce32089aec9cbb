"""Which shipped network a machine gets: the 16-filter one where bf16 runs, the 8-filter
one at float32 (the speed target, docs/PERFORMANCE.md), ``ICHSEG_MODEL`` to name one, and
a clear answer when a bundle is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ichseg.infer import pipeline, shipped


@pytest.fixture(autouse=True)
def _fresh_choice(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(shipped.MODEL_ENV, raising=False)
    monkeypatch.delenv("ICHSEG_PRECISION", raising=False)


def _precision(answer: str):
    return lambda model_dir, runtime, requested="auto": (answer, f"{answer} (test)")


def test_bf16_gets_the_full_network_and_float32_the_lite_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "bundle_precision", _precision("bf16"))
    got = shipped.choose_shipped("torch")
    assert got.name == "full" and got.path == shipped.PACKAGED_MODEL and "bf16" in got.reason
    monkeypatch.setattr(pipeline, "bundle_precision", _precision("fp32"))
    got = shipped.choose_shipped("torch")
    assert got.name == "lite" and got.path == shipped.PACKAGED_LITE_MODEL and "float32" in got.reason


def test_a_forced_float32_run_is_given_the_lite_network() -> None:
    # no mock: ICHSEG_PRECISION=fp32 rules bf16 out on any CPU, so this holds on both kinds
    assert shipped.choose_shipped("torch", "fp32").name == "lite"


def test_the_environment_names_one_and_a_bad_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "bundle_precision", _precision("fp32"))
    monkeypatch.setenv(shipped.MODEL_ENV, "full")
    got = shipped.choose_shipped()
    assert got.name == "full" and got.reason == "ICHSEG_MODEL=full"
    assert shipped.shipped_record(got.path) == {"name": "full", "selection": "ICHSEG_MODEL=full"}
    monkeypatch.setenv(shipped.MODEL_ENV, "tiny")
    with pytest.raises(ValueError, match="ICHSEG_MODEL='tiny'"):
        shipped.choose_shipped()


def test_without_the_lite_bundle_the_full_one_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(pipeline, "bundle_precision", _precision("fp32"))
    monkeypatch.setattr(shipped, "PACKAGED_LITE_MODEL", tmp_path / "lite")
    got = shipped.choose_shipped("torch")
    assert got.name == "full" and "not installed" in got.reason


def test_a_missing_bundle_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(shipped.SHIPPED_MODELS, "lite", tmp_path / "lite")
    with pytest.raises(FileNotFoundError, match="lite model is missing"):
        shipped.shipped_model_dir("lite")
    with pytest.raises(ValueError, match="unknown shipped model"):
        shipped.shipped_model_dir("huge")


def test_a_bundle_outside_the_package_is_not_called_shipped(tmp_path: Path) -> None:
    assert shipped.shipped_record(tmp_path) is None
    assert shipped.shipped_record(shipped.PACKAGED_MODEL)["name"] == "full"
