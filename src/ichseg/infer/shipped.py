"""Where the shipped models live inside the installed package, which one a machine gets,
and which files make a bundle.

Two networks ship, trained by the same recipe and each cross-validated on the same 66
CT-ICH patients (docs/RESULTS.md): ``full`` (``robust-384``, 16 base filters) and ``lite``
(``robust-384-lite``, 8 filters, a quarter of the arithmetic). The speed target (a typical
30-slice study in ≤ 3 s as a whole process) is met by ``full`` only where the CPU runs bf16
(1.7 s on an AMX Xeon); at float32 it takes 5.6 s on an AVX2-only EPYC, ``lite`` 2.3 s. So
the default follows the precision that will run: bf16 → ``full``, float32 → ``lite``, at a
cost of 0.011 pooled Dice and two of 37 normal patients' verdicts, measured out of fold.
``ICHSEG_MODEL=full`` or ``lite`` overrides the choice; ``--model PATH`` bypasses it.

Inference needs this (``predict`` without ``--model``) and must not import the experiments
that make the bundles (they pull in training), so it lives here;
:mod:`ichseg.experiments.release` writes them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
#: The 16-filter network: shipped as the default where bf16 runs.
PACKAGED_MODEL = _WEIGHTS / "default"
#: The 8-filter network: the default where only float32 runs.
PACKAGED_LITE_MODEL = _WEIGHTS / "lite"
SHIPPED_MODELS = {"full": PACKAGED_MODEL, "lite": PACKAGED_LITE_MODEL}
MODEL_ENV = "ICHSEG_MODEL"
BUNDLE_FILES = ("unet.safetensors", "unet.json", "pipeline.json")  # plus classifier.* in a two-stage bundle
CLASSIFIER_FILES = ("classifier.safetensors", "classifier.json")


@dataclass(frozen=True)
class ShippedChoice:
    """Which shipped network runs here and why (logged when it is chosen)."""

    name: str
    path: Path
    reason: str


def _complete(path: Path) -> bool:
    return all((path / n).exists() for n in BUNDLE_FILES)


def shipped_model_dir(name: str = "full") -> Path:
    """One shipped bundle by name, with a clear error when the checkout lacks it."""
    if name not in SHIPPED_MODELS:
        raise ValueError(f"unknown shipped model {name!r} (choose from {', '.join(SHIPPED_MODELS)})")
    path = SHIPPED_MODELS[name]
    if not _complete(path):
        raise FileNotFoundError(f"{path}: the shipped {name} model is missing; pass --model PATH")
    return path


def _wanted_model() -> str:
    """``ICHSEG_MODEL`` as set ("auto" when unset or empty)."""
    return os.environ.get(MODEL_ENV, "auto") or "auto"


def choose_shipped(runtime: str = "auto", precision: str = "auto") -> ShippedChoice:
    """The shipped network for this machine: ``full`` where the default runtime will run
    it at bf16, else ``lite`` (float32 CPUs, ``--precision fp32``, ONNX Runtime).
    ``ICHSEG_MODEL`` names one outright. A missing lite bundle falls back to ``full``.
    Asked once per process (the bf16 probe behind it is cached on disk)."""
    wanted = _wanted_model()
    if wanted != "auto":
        if wanted not in SHIPPED_MODELS:
            raise ValueError(f"{MODEL_ENV}={wanted!r}: choose auto, {', '.join(SHIPPED_MODELS)}")
        return ShippedChoice(wanted, shipped_model_dir(wanted), f"{MODEL_ENV}={wanted}")
    full = shipped_model_dir("full")
    if not _complete(PACKAGED_LITE_MODEL):
        return ShippedChoice("full", full, "the lite model is not installed")
    from ichseg.infer.pipeline import bundle_precision, resolve_runtime

    rt = resolve_runtime(full, runtime)
    prec, why = bundle_precision(full, rt, precision)
    if prec == "bf16":
        return ShippedChoice("full", full, f"bf16 runs here on {rt} ({why}): the 16-filter network")
    return ShippedChoice("lite", PACKAGED_LITE_MODEL, f"float32 on {rt} ({why}): the 8-filter network, fast enough at float32")


def default_model_dir(runtime: str = "auto", precision: str = "auto") -> Path:
    """The shipped bundle for this machine (:func:`choose_shipped`), logged once per call."""
    choice = choose_shipped(runtime, precision)
    log.info("shipped model: %s (%s)", choice.name, choice.reason)
    return choice.path


def shipped_record(model_dir: Path) -> dict[str, str] | None:
    """For summary.json: which shipped network ``model_dir`` is and how the default is
    chosen; None for a bundle that is not a shipped one (``--model PATH``). The precision
    and runtime that ran are recorded beside it by the caller."""
    here = Path(model_dir).resolve()
    for name, path in SHIPPED_MODELS.items():
        if here == path.resolve():
            wanted = _wanted_model()
            how = f"{MODEL_ENV}={wanted}" if wanted != "auto" else "full where bf16 runs, lite where float32 runs"
            return {"name": name, "selection": how}
    return None
