"""bf16 where the CPU runs it: the child-process probe, the fallback to float32, training
and inference at each precision, and the agreement check that lets a bundle use bf16."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ichseg import hardware
from ichseg.evaluate.precision import compare_precisions, mask_agreement, write_record
from ichseg.files import sha256_file
from ichseg.infer.pipeline import PRECISION_RECORD, bf16_validated, bundle_precision, load_bundle
from ichseg.infer.study import StudyPrediction

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "ichseg" / "weights" / "default"
SAMPLE = Path(__file__).resolve().parents[1] / "src" / "ichseg" / "sample" / "ct-ich-049"
BF16_HERE = hardware.bf16_usable("torch")[0]


@pytest.fixture(autouse=True)
def _private_probe_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own probe cache and no precision override from the environment."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("ICHSEG_PRECISION", raising=False)


def test_cpu_kind_from_flags() -> None:
    assert hardware.cpu_kind(frozenset({"avx2", "avx512_bf16", "amx_bf16"})) == "amx"
    assert hardware.cpu_kind(frozenset({"avx2", "avx512_bf16"})) == "avx512_bf16"
    assert hardware.cpu_kind(frozenset({"avx2", "fma"})) == "avx2"
    assert hardware.cpu_kind(frozenset()) == "baseline"
    assert not hardware.advertises_bf16(frozenset({"avx2", "avx512f"}))


def test_probe_survives_a_child_killed_by_sigill() -> None:
    """The failure that once killed a run: the child dies of SIGILL, the parent carries on."""
    ok, why = hardware.run_probe("torch", code="import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    assert not ok and "signal 4" in why
    ok, why = hardware.run_probe("torch", code="raise SystemExit('wrong answer')")
    assert not ok and "exit 1" in why
    ok, why = hardware.run_probe("torch", code="import time; time.sleep(5)", timeout_s=0.5)
    assert not ok and "timed out" in why
    assert hardware.run_probe("torch", code="print('ok')")[0]


def test_no_bf16_flags_means_float32_without_a_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(hardware, "run_probe", lambda *a, **k: pytest.fail("no probe on a CPU without bf16"))
    assert hardware.resolve_precision("auto") == ("fp32", "CPU (avx2) has no native bf16")
    assert hardware.resolve_precision("bf16")[0] == "fp32"  # asked for, refused, with a warning
    assert hardware.describe("fp32", "x")["cpu_kind"] == "avx2"


def test_a_failed_probe_falls_back_and_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))

    def crash(backend: str, **_: object) -> tuple[bool, str]:
        calls.append(backend)
        return False, "probe killed by signal 4"

    monkeypatch.setattr(hardware, "run_probe", crash)
    assert hardware.resolve_precision("auto") == ("fp32", "probe killed by signal 4")
    precision, why = hardware.resolve_precision("auto")
    assert precision == "fp32" and why.endswith("(cached)")
    assert calls == ["torch"]  # probed once per CPU, not per process


def test_environment_rules_bf16_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICHSEG_PRECISION", "fp32")
    assert hardware.resolve_precision("bf16") == ("fp32", "float32 requested")
    monkeypatch.setenv("ICHSEG_PRECISION", "fp16")
    with pytest.raises(ValueError, match="unknown precision"):
        hardware.resolve_precision("auto")


def test_an_isa_cap_below_bf16_means_float32_and_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONEDNN_MAX_CPU_ISA=AVX2 on an AMX machine is how AVX2-only timings are taken: bf16
    must then be off without a probe (oneDNN would refuse its kernels), and say so."""
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16", "avx512_bf16"}))
    monkeypatch.setattr(hardware, "run_probe", lambda *a, **k: pytest.fail("no probe under an AVX2 cap"))
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert hardware.resolve_precision("auto") == ("fp32", "ONEDNN_MAX_CPU_ISA=AVX2 rules out native bf16")
    assert not hardware.advertises_bf16()
    assert hardware.describe()["isa_cap"] == "AVX2"
    for cap, ok in (("AVX512_CORE", False), ("AVX512_CORE_BF16", True), ("AVX512_CORE_AMX", True), ("ALL", True)):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert hardware.isa_cap_allows_bf16() is ok, cap
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    assert "isa_cap" not in hardware.describe()


def _tiny_training(tmp_path: Path, precision: str):
    from ichseg.config import TrainConfig, UNetConfig
    from ichseg.train.loop import Arrays, train_model

    rng = np.random.default_rng(0)
    images = (rng.random((8, 1, 32, 32)) * 255).astype(np.uint8)
    masks = np.zeros((8, 32, 32), bool)
    masks[::2, 10:16, 10:20] = True
    labels = masks.reshape(8, -1).any(1).astype(np.int64)
    data = Arrays(images, masks, labels)
    cfg = UNetConfig(input_size_px=32, base_filters=4, depth=2, batch_norm=True)
    tc = TrainConfig(epochs=1, batch_size=4, samples_per_epoch=8, learning_rate=1e-3, precision=precision)
    result = train_model(cfg, tc, data, data, tmp_path / precision, progress=False)
    meta = json.loads((tmp_path / precision / "last.json").read_text())
    state = json.loads((tmp_path / precision / "resume.json").read_text())
    return result, meta, state


def test_training_records_the_precision_that_ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, meta, state = _tiny_training(tmp_path, "auto")
    ran = "bf16" if BF16_HERE else "fp32"
    assert meta["train_hardware"]["precision"] == ran
    assert state["steps_by_precision"] == {ran: 2}
    assert np.isfinite(result.history[0]["train_loss"])
    # the same request on a CPU whose probe crashes trains at float32
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    monkeypatch.setattr(hardware, "run_probe", lambda *a, **k: (False, "probe killed by signal 4"))
    _, meta, state = _tiny_training(tmp_path / "fallback", "auto")
    assert meta["train_hardware"]["precision"] == "fp32"
    assert meta["train_hardware"]["precision_reason"] == "probe killed by signal 4"
    assert state["steps_by_precision"] == {"fp32": 2}


def _prediction(masks: list[np.ndarray], verdict: list[bool], head: list[float]) -> StudyPrediction:
    return StudyPrediction(masks, np.array(verdict), {"hemorrhage": np.array(head)}, np.zeros(len(masks)))


def test_mask_agreement_counts_pixels_and_verdicts() -> None:
    a = np.zeros((4, 4), bool)
    a[0, :2] = True  # 2 px
    b = np.zeros((4, 4), bool)
    b[0, :3] = True  # 3 px, 2 shared
    empty = np.zeros((4, 4), bool)
    r = mask_agreement(_prediction([a, empty], [True, False], [0.9, 0.1]), _prediction([b, empty], [True, True], [0.8, 0.6]))
    assert r["dice"] == pytest.approx(2 * 2 / 5)
    assert r["verdict_differs"] == [1]
    assert r["max_head_difference"] == pytest.approx(0.5)
    both_empty = mask_agreement(_prediction([empty], [False], [0.1]), _prediction([empty], [False], [0.1]))
    assert both_empty["dice"] == 1.0  # empty-ground-truth policy: two empty masks agree


def _bundle_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(SHIPPED, dst)
    (dst / PRECISION_RECORD).unlink(missing_ok=True)
    return dst


def test_auto_stays_float32_until_the_bundle_passed_its_check(tmp_path: Path) -> None:
    model = _bundle_copy(tmp_path)
    assert bundle_precision(model, "openvino", "auto") == ("fp32", "bf16 not validated for this bundle (no precision.json)")
    assert bundle_precision(model, "onnx", "bf16")[0] == "fp32"  # ONNX Runtime has no bf16 path
    sha = sha256_file(model / "unet.safetensors")
    record = {"unet_sha256": sha, "runtimes": {"openvino": {"passed": True, "reason": "test"}}}
    (model / PRECISION_RECORD).write_text(json.dumps(record))
    assert bf16_validated(model, "openvino")[0]
    assert bundle_precision(model, "openvino", "auto")[0] == ("bf16" if hardware.bf16_usable("openvino")[0] else "fp32")
    assert bundle_precision(model, "torch", "auto") == ("fp32", "bf16 not validated on torch")
    (model / PRECISION_RECORD).write_text(json.dumps({**record, "unet_sha256": "0" * 64}))
    assert bundle_precision(model, "openvino", "auto") == ("fp32", "bf16 check was made for other weights")
    record["runtimes"]["openvino"] = {"passed": False, "reason": "Dice 0.9"}
    (model / PRECISION_RECORD).write_text(json.dumps(record))
    assert bundle_precision(model, "openvino", "auto") == ("fp32", "bf16 check failed (Dice 0.9)")


def _short_study(tmp_path: Path, slices: tuple[int, ...] = (9, 15, 16, 17, 21, 22)) -> Path:
    """A few slices of the shipped sample (two with blood) as a study folder."""
    study = tmp_path / "study"
    for window in ("brain", "bone"):
        (study / window).mkdir(parents=True)
        for k, n in enumerate(slices, 1):
            shutil.copy(SAMPLE / window / f"{n}.jpg", study / window / f"{k}.jpg")
    return study


def test_agreement_check_on_real_slices_decides_what_auto_runs(tmp_path: Path) -> None:
    model = _bundle_copy(tmp_path)
    r = compare_precisions(model, [_short_study(tmp_path)], runtime="torch")
    assert r["unet_sha256"] == sha256_file(model / "unet.safetensors")
    if not BF16_HERE:
        assert not r["passed"] and "cannot run here" in r["reason"]
        return
    row = r["studies"]["study"]
    assert row["slices"] == 6 and row["fp32_px"] > 0
    assert r["passed"] == (r["pooled_dice"] >= 0.99 and not row["verdict_differs"])
    (model / PRECISION_RECORD).write_text(json.dumps({"unet_sha256": r["unet_sha256"], "runtimes": {"openvino": {}}}))
    write_record(model, r)  # merged with the other runtime's entry, made for the same weights
    assert set(json.loads((model / PRECISION_RECORD).read_text())["runtimes"]) == {"openvino", "torch"}
    assert bundle_precision(model, "torch", "auto")[0] == ("bf16" if r["passed"] else "fp32")
    bundle = load_bundle(model, runtime="torch", precision="auto")
    assert bundle.meta["precision"] == ("bf16" if r["passed"] else "fp32")


def test_train_step_bench_times_each_precision_that_runs_here() -> None:
    from ichseg.config import UNetConfig
    from ichseg.train.speed import markdown, measure

    r = measure(UNetConfig(input_size_px=32, base_filters=4, depth=2, batch_norm=True, heads=("hemorrhage",)), (32,), steps=1)
    ran = {(row["precision"], row["channels_last"]) for row in r["rows"]}
    assert ran == ({("fp32", False), ("fp32", True)} | ({("bf16", False), ("bf16", True)} if BF16_HERE else set()))
    assert r["rows"][0]["speedup"] == 1.0 and all(row["s_per_sample"] > 0 for row in r["rows"])
    assert r["hardware"]["precision"] == ("bf16" if BF16_HERE else "fp32")
    assert "| 32 | fp32 | no |" in markdown(r)
