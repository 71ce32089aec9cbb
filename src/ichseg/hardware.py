"""What this CPU can do, and which numeric precision the networks run at on it.

The project's machines alternate between an Intel Xeon with AMX (bf16 matrix units) and an
AMD EPYC with AVX2 only. bf16 autocast with channels-last makes U-Net training 2.6-5.6x
faster on the Intel one, and OpenVINO's bf16 hint makes inference about 4x faster; on the
AMD one bf16 would be emulated and slower. So precision is chosen per machine, never
assumed:

1. the CPU flags must advertise bf16 (``amx_bf16`` or ``avx512_bf16`` in /proc/cpuinfo);
2. a *child process* must then run a small bf16 computation and match float32. A virtual
   machine once advertised AMX and killed the process with SIGILL when it was used; in a
   child that costs one failed probe, not the run. The answer is cached on disk per CPU,
   flags and package version, so a hospital PC pays the probe (about 2 s) once, not on
   every ``predict``.

Anything else (no flags, probe crashed, timed out, disagreed, or ``ICHSEG_PRECISION=fp32``)
means float32. Every run records which path ran (:func:`describe`).

``ONEDNN_MAX_CPU_ISA`` (oneDNN's cap, which PyTorch and OpenVINO both obey) below the bf16
instruction sets counts as "no native bf16" too: with ``ONEDNN_MAX_CPU_ISA=AVX2`` an AMX
machine runs as an AVX2-only CPU would, which is how the AVX2 timings are measured on a
machine that has more (``ichseg bench`` records the cap).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "auto")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
PROBE_TIMEOUT_S = 120.0

# Child-process probes: run a tiny bf16 computation, compare it with float32, print "ok".
# A SIGILL, a crash or a wrong answer all leave "ok" unprinted.
_PROBES = {
    "torch": """
import torch
torch.manual_seed(0)
conv = torch.nn.Conv2d(8, 16, 3, padding=1)
x = torch.rand(2, 8, 32, 32).contiguous(memory_format=torch.channels_last)
conv = conv.to(memory_format=torch.channels_last)
ref = conv(x)
with torch.autocast("cpu", dtype=torch.bfloat16):
    y = conv(x)
    m = torch.rand(64, 64) @ torch.rand(64, 64)
y.float().sum().backward()
err = (y.float() - ref).abs().max().item()
assert y.dtype == torch.bfloat16 and m.dtype == torch.bfloat16, (y.dtype, m.dtype)
assert err < 0.1 * ref.abs().max().item() + 1e-3, err
print("ok")
""",
    "openvino": """
import numpy as np
import openvino as ov
import openvino.opset13 as ops
x = ops.parameter([1, 8, 32, 32], np.float32)
w = ops.constant(np.random.default_rng(0).standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.1)
y = ops.relu(ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1]))
model = ov.Model([y], [x])
inp = np.random.default_rng(1).random((1, 8, 32, 32), dtype=np.float32)
core = ov.Core()
ref = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(inp)[0]
out = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})(inp)[0]
assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max() + 1e-3
print("ok")
""",
}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_kind(flags: frozenset[str] | None = None) -> str:
    """``"amx"`` (bf16 matrix units), ``"avx512_bf16"``, ``"avx2"`` or ``"baseline"``: the
    class of CPU that decides which precision pays off."""
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    if "avx2" in flags:
        return "avx2"
    return "baseline"


def isa_cap() -> str | None:
    """oneDNN's instruction-set cap from the environment (``ONEDNN_MAX_CPU_ISA``, or its
    old name ``DNNL_MAX_CPU_ISA``), upper-cased; None when unset or ``ALL``."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return None if cap in ("", "ALL") else cap


def isa_cap_allows_bf16(cap: str | None = None) -> bool:
    """Whether oneDNN may use native bf16 under ``cap`` (default: the environment's): the
    caps that name BF16, FP16 or AMX (AVX512_CORE_BF16 and up), or AVX10."""
    cap = isa_cap() if cap is None else cap.upper()
    return cap is None or any(k in cap for k in ("BF16", "FP16", "AMX", "AVX10"))


def advertises_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU flags claim native bf16 arithmetic (AMX or AVX-512 BF16) and no
    oneDNN instruction-set cap rules it out."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_FLAGS) and isa_cap_allows_bf16()


def _cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "ichseg" / "bf16_probe.json"


def _package_version(backend: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(backend)
    except metadata.PackageNotFoundError:
        return "absent"


def _cache_key(backend: str) -> str:
    flags = ",".join(sorted(cpu_flags()))
    text = f"{backend}|{_package_version(backend)}|{cpu_model()}|{hashlib.sha256(flags.encode()).hexdigest()[:16]}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def run_probe(backend: str, timeout_s: float = PROBE_TIMEOUT_S, code: str | None = None) -> tuple[bool, str]:
    """Run the bf16 probe of ``backend`` ("torch" or "openvino") in a child process.

    Returns (passed, reason). ``code`` replaces the probe's script (tests use it to stand
    in for a crash); the child's stdout must end with "ok"."""
    if backend not in _PROBES:
        raise ValueError(f"unknown bf16 probe {backend!r} (choose from {', '.join(_PROBES)})")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code if code is not None else _PROBES[backend]],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    except subprocess.TimeoutExpired:
        return False, f"probe timed out after {timeout_s:.0f} s"
    except OSError as exc:
        return False, f"probe could not start ({exc})"
    if proc.returncode < 0:
        return False, f"probe killed by signal {-proc.returncode}"
    if proc.returncode != 0 or not proc.stdout.strip().endswith("ok"):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return False, f"probe failed (exit {proc.returncode}: {last[:200]})"
    return True, "bf16 probe passed in a child process"


def bf16_usable(backend: str, *, use_cache: bool = True) -> tuple[bool, str]:
    """Whether ``backend`` may run at bf16 here, and why: the CPU flags first (no child is
    started on a CPU without them), then the child-process probe, cached on disk."""
    if not isa_cap_allows_bf16():
        return False, f"ONEDNN_MAX_CPU_ISA={isa_cap()} rules out native bf16"
    if not advertises_bf16():
        return False, f"CPU ({cpu_kind()}) has no native bf16"
    if _package_version(backend) == "absent":
        return False, f"{backend} is not installed"
    key = _cache_key(backend)
    path = _cache_path()
    cache: dict[str, Any] = {}
    if use_cache:
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
        if key in cache:
            hit = cache[key]
            return bool(hit["ok"]), str(hit["reason"]) + " (cached)"
    ok, reason = run_probe(backend)
    log.info("bf16 probe for %s: %s", backend, reason)
    if use_cache:
        try:
            from ichseg.files import atomic_write_text

            cache[key] = {"ok": ok, "reason": reason, "cpu": cpu_model()}
            atomic_write_text(path, json.dumps(cache, indent=1) + "\n")
        except OSError as exc:  # a read-only home only costs a probe per process
            log.debug("bf16 probe cache not written: %s", exc)
    return ok, reason


def resolve_precision(requested: str, backend: str = "torch") -> tuple[str, str]:
    """``requested`` ("fp32", "bf16" or "auto") as the precision that will run, with the
    reason. ``ICHSEG_PRECISION`` in the environment overrides the request (e.g. ``fp32``
    to rule bf16 out on a machine). "bf16" that cannot run here falls back to fp32 with a
    warning rather than failing: correctness never depends on it."""
    requested = os.environ.get("ICHSEG_PRECISION", requested) or "fp32"
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r} (choose from {', '.join(PRECISIONS)})")
    if requested == "fp32":
        return "fp32", "float32 requested"
    ok, reason = bf16_usable(backend)
    if ok:
        return "bf16", reason
    if requested == "bf16":
        log.warning("bf16 requested but not usable here (%s); running float32", reason)
    return "fp32", reason


def describe(precision: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """What a run executed on: CPU model and kind, cores, and (when given) the precision
    that ran and why. Saved beside every run and every set of weights."""
    out: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_kind": cpu_kind(),
        "bf16_flags": sorted(f for f in BF16_FLAGS if f in cpu_flags()),
        "logical_cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    cap = isa_cap()
    if cap is not None:  # an emulated smaller CPU (e.g. AVX2 on an AMX machine) says so
        out["isa_cap"] = cap
    if precision is not None:
        out["precision"] = precision
        out["precision_reason"] = reason
    return out
