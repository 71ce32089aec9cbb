"""The two-stage pipeline at inference time, built only from files on disk (no training code).

A model bundle is a folder with ``unet.{safetensors,json}`` and ``pipeline.json``
(operating point and preprocessing), optionally with the ONNX graphs of its networks. A
two-stage bundle also has ``classifier.{safetensors,json}``, a slice classifier that
gates the U-Net; a single-network bundle has none, and its U-Net's own slice heads give
the slice probabilities (the fold ensemble is one). Importing this module does not import PyTorch: with a graph runtime, a
prediction process never loads it (see :mod:`ichseg.infer.runtimes`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ichseg.config import (
    ClassifierConfig,
    PipelineConfig,
    PreprocessConfig,
    UNetConfig,
    from_dict,
    load_json,
    load_model_config,
)
from ichseg.infer.postprocess import keep_components, mask_thresholds, min_areas_px
from ichseg.infer.runtimes import GRAPH_RUNTIMES, Network, TorchNetwork, as_network, onnx_is_current, runtime_available

log = logging.getLogger(__name__)
RUNTIMES = ("torch", *GRAPH_RUNTIMES, "auto")
SCREEN_GRAPH = "unet_screen.onnx"  # a fold ensemble's first member alone
# What "auto" prefers, from `ichseg bench` (docs/PERFORMANCE.md): both graph runtimes are
# 3-7x faster to start than PyTorch and tie on speed; OpenVINO needs ~200 MB less memory.
AUTO_ORDER = ("openvino", "onnx")


@dataclass
class Bundle:
    """A loaded model bundle."""

    classifier: Network | None  # None: the U-Net's slice heads stand in for a classifier
    classifier_config: ClassifierConfig | None
    unet: Network
    unet_config: UNetConfig
    pipeline: PipelineConfig
    preprocess: PreprocessConfig
    meta: dict[str, Any]
    path: Path
    screen: Network | None = None  # a fold ensemble's first member (see PipelineConfig.screen_threshold)

    @property
    def windows(self) -> tuple[str, ...]:
        """Every input window either stage reads."""
        cls = set(self.classifier_config.windows) if self.classifier_config is not None else set()
        return tuple(sorted(cls | set(self.unet_config.windows)))

    @property
    def heads(self) -> tuple[str, ...]:
        """Names of the slice probabilities: the classifier's heads, or the U-Net's."""
        return tuple(self.classifier_config.heads) if self.classifier_config is not None else tuple(self.unet_config.heads)

    @property
    def members(self) -> int:
        """How many U-Nets the bundle averages (1 unless it is a fold ensemble)."""
        return int(self.meta["unet"].get("members") or 1)


def resolve_runtime(model_dir: Path, runtime: str = "auto") -> str:
    """The back end ``load_bundle`` will use: ``runtime`` itself after checking that it can
    run this bundle (errors say what is missing), or for "auto" the first usable of
    OpenVINO, ONNX Runtime and PyTorch."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r} ({', '.join(RUNTIMES)})")
    if runtime == "torch":
        return runtime
    if runtime == "auto":
        return next((r for r in AUTO_ORDER if runtime_available(r) and onnx_is_current(model_dir, r)), "torch")
    if not onnx_is_current(model_dir, runtime):
        how = "--onnx --int8 --data DIR" if runtime == "onnx-int8" else "--onnx"
        raise FileNotFoundError(f"{model_dir}: no current graphs for {runtime} (run `ichseg export {how} --model {model_dir}`)")
    if not runtime_available(runtime):
        extra = "openvino" if runtime == "openvino" else "onnx"
        raise ModuleNotFoundError(f"runtime {runtime!r} is not installed (pip install 'ichseg[{extra}]')")
    return runtime


PRECISION_RECORD = "precision.json"  # the bundle's bf16 agreement check (ichseg.evaluate.precision)


def bundle_precision(model_dir: Path, runtime: str, requested: str = "auto") -> tuple[str, str]:
    """The precision ``runtime`` will run this bundle at, and why.

    "fp32" is always honoured. "auto" means bf16 only where both hold: the bundle's
    agreement check (``precision.json``, made by ``ichseg check-precision`` on real studies
    for the current weights) passed, and this CPU runs bf16 (:mod:`ichseg.hardware`).
    "bf16" skips the bundle's check (for measuring) but never the CPU's. ONNX Runtime is
    float32 only."""
    import os

    from ichseg.hardware import PRECISIONS, resolve_precision

    requested = os.environ.get("ICHSEG_PRECISION", requested) or "auto"
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r} (choose from {', '.join(PRECISIONS)})")
    if runtime in ("onnx", "onnx-int8"):
        return "fp32", "ONNX Runtime runs float32"
    if requested == "fp32":
        return resolve_precision("fp32")
    if requested == "auto":
        ok, why = bf16_validated(model_dir, runtime)
        if not ok:
            return "fp32", why
    return resolve_precision(requested, "openvino" if runtime == "openvino" else "torch")


def bf16_validated(model_dir: Path, runtime: str) -> tuple[bool, str]:
    """Whether the bundle's bf16 agreement check passed on ``runtime`` for its current
    U-Net weights."""
    from ichseg.files import sha256_file

    path = Path(model_dir) / PRECISION_RECORD
    if not path.exists():
        return False, "bf16 not validated for this bundle (no precision.json)"
    rec = load_json(path)
    if rec.get("unet_sha256") != sha256_file(Path(model_dir) / "unet.safetensors"):
        return False, "bf16 check was made for other weights"
    entry = rec.get("runtimes", {}).get(runtime)
    if entry is None:
        return False, f"bf16 not validated on {runtime}"
    if not entry.get("passed"):
        return False, f"bf16 check failed ({entry.get('reason', 'see precision.json')})"
    return True, f"bf16 check passed on {runtime}"


def load_bundle(model_dir: Path, runtime: str = "torch", threads: int | None = None, precision: str = "fp32") -> Bundle:
    """Load a bundle folder; errors name the missing or bad file.

    ``runtime``: "torch"; "onnx" (ONNX Runtime) or "openvino" (OpenVINO, float32), both on
    the graphs made by ``ichseg export --onnx`` (an error if they are missing or stale, or
    the package is not installed); or "auto": the first usable of ``AUTO_ORDER``
    (OpenVINO, ONNX Runtime), else PyTorch.
    ``threads``: CPU threads of each network (default: the runtime's choice).
    ``precision``: "fp32", "bf16" or "auto" (see :func:`bundle_precision`); what ran is in
    ``meta["precision"]``."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: model folder not found")
    two_stage = (model_dir / "classifier.json").exists()
    needed = ("unet.json", "unet.safetensors", "pipeline.json") + (("classifier.safetensors",) if two_stage else ())
    for name in needed:
        if not (model_dir / name).exists():
            raise FileNotFoundError(f"{model_dir / name}: missing from the model bundle")
    runtime = resolve_runtime(model_dir, runtime)
    prec, prec_why = bundle_precision(model_dir, runtime, precision)
    screening = load_json(model_dir / "pipeline.json")["pipeline"].get("screen_threshold") is not None
    classifier: Network | None = None
    screen: Network | None = None
    ccfg: Any = None
    cmeta: dict[str, Any] = {}
    unet: Network
    if runtime != "torch":  # the graphs carry the weights: only the configs are read
        _, network, unet_graph = GRAPH_RUNTIMES[runtime]
        if two_stage:
            ccfg, cmeta = load_model_config(model_dir / "classifier")
            classifier = network(model_dir / "classifier.onnx", threads, prec)
        ucfg, umeta = load_model_config(model_dir / "unet")
        unet = network(model_dir / unet_graph, threads, prec)
        if screening and (model_dir / SCREEN_GRAPH).exists() and runtime != "onnx-int8":
            screen = network(model_dir / SCREEN_GRAPH, threads, prec)
    else:
        from ichseg.models.weights import load_model

        if two_stage:
            c_module, ccfg, cmeta = load_model(model_dir / "classifier")
            classifier = TorchNetwork(c_module, threads, prec)
        u_module, ucfg, umeta = load_model(model_dir / "unet")
        unet = TorchNetwork(u_module, threads, prec)
        if screening and hasattr(u_module, "members"):
            screen = TorchNetwork(u_module.members[0], threads, prec)
    body = load_json(model_dir / "pipeline.json")
    assert isinstance(ucfg, UNetConfig) and (ccfg is None or isinstance(ccfg, ClassifierConfig))
    if not two_stage and not ucfg.heads:
        raise FileNotFoundError(f"{model_dir / 'classifier.json'}: missing, and the U-Net has no slice heads to stand in")
    body = {**body, "runtime": runtime, "precision": prec, "precision_reason": prec_why}
    return Bundle(
        classifier,
        ccfg,
        unet,
        ucfg,
        from_dict(PipelineConfig, body["pipeline"]),
        from_dict(PreprocessConfig, body["preprocess"]),
        {"classifier": cmeta, "unet": umeta, **body},
        model_dir,
        screen,
    )


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Logistic function in float32, without overflow warnings for large negative logits."""
    x = np.asarray(logits, np.float32)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1 / (1 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1 + e)
    return out


def classify(model: Any, images_u8: np.ndarray, batch: int = 16) -> np.ndarray:
    """Probabilities (N, heads) from uint8 (N, C, S, S) inputs; column 0 is hemorrhage.
    ``model``: a network of any runtime, or a bare PyTorch module."""
    net = as_network(model)
    out = [sigmoid(net(images_u8[s].astype(np.float32) / 255)) for s in _batches(len(images_u8), batch)]
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def segment(
    model: Any, images_u8: np.ndarray, out_size_px: int | tuple[int, int], batch: int = 4, tta_flip: bool = False
) -> np.ndarray:
    """Blood probability maps (N, H, W); see :func:`segment_with_heads`."""
    return segment_with_heads(model, images_u8, out_size_px, batch, tta_flip)[0]


def segment_with_heads(
    model: Any, images_u8: np.ndarray, out_size_px: int | tuple[int, int], batch: int = 4, tta_flip: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Blood probability maps (N, H, W) float32 at ``out_size_px`` (an int, or (H, W)),
    and the slice heads' probabilities (N, heads) of a U-Net that has them (else None),
    upsampled bilinearly (half-pixel centres, as PyTorch's ``align_corners=False``) from
    the U-Net's resolution, so that metrics and masks are always at full size.

    ``tta_flip`` averages the probabilities of each slice and of its left-right mirror
    (mirrored back): the head is nearly symmetric, so this costs 2× and smooths errors
    that depend on the side. ``batch`` slices per call (2× that with the mirrors) bounds
    the memory a heavy study needs."""
    net = as_network(model)
    size = (out_size_px, out_size_px) if isinstance(out_size_px, int) else tuple(out_size_px)
    out = np.zeros((len(images_u8), *size), np.float32)
    heads: np.ndarray | None = None
    for s in _batches(len(images_u8), batch):
        x = images_u8[s].astype(np.float32) / 255
        if tta_flip:  # one call on the slices and their mirrors together
            raw = net(np.concatenate([x, x[..., ::-1]]))
            seg, head = (raw[0], raw[1]) if isinstance(raw, tuple) else (raw, None)
            both = sigmoid(seg)[:, 0]
            prob = (both[: len(x)] + both[len(x) :, :, ::-1]) / 2
            head_p = None if head is None else (sigmoid(head[: len(x)]) + sigmoid(head[len(x) :])) / 2
        else:
            raw = net(x)
            seg, head = (raw[0], raw[1]) if isinstance(raw, tuple) else (raw, None)
            prob = sigmoid(seg)[:, 0]
            head_p = None if head is None else sigmoid(head)
        if head_p is not None:
            if heads is None:
                heads = np.zeros((len(images_u8), head_p.shape[1]), np.float32)
            heads[s] = head_p
        for j, p in enumerate(prob):
            out[s.start + j] = p if p.shape == size else cv2.resize(p, size[::-1], interpolation=cv2.INTER_LINEAR)
    return out, heads


def segment_bundle(
    bundle: Bundle, images_u8: np.ndarray, out_size_px: int | tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """A bundle's U-Net on every slice: (probabilities (N, H, W) at ``out_size_px``, slice
    heads (N, K) or None, which slices the whole ensemble ran on (N,) bool).

    With a fold ensemble and ``pipeline.screen_threshold`` its first member screens every
    slice, and the whole ensemble runs only where that member's highest blood probability
    or its hemorrhage head reaches the threshold (calibrated on out-of-fold slices, see
    :func:`ichseg.evaluate.oof.screen_threshold`); elsewhere the first member's output is
    kept. Without them, the U-Net runs on every slice."""
    cfg = bundle.pipeline
    n = len(images_u8)
    if bundle.screen is None or cfg.screen_threshold is None:
        probs, heads = segment_with_heads(bundle.unet, images_u8, out_size_px, tta_flip=cfg.tta_flip)
        return probs, heads, np.ones(n, bool)
    probs, heads = segment_with_heads(bundle.screen, images_u8, out_size_px, tta_flip=cfg.tta_flip)
    flag = probs.reshape(n, -1).max(1) >= cfg.screen_threshold if n else np.zeros(0, bool)
    if heads is not None:
        flag |= heads[:, 0] >= cfg.screen_threshold
    if flag.any():
        p_all, h_all = segment_with_heads(bundle.unet, images_u8[flag], out_size_px, tta_flip=cfg.tta_flip)
        probs[flag] = p_all
        if heads is not None and h_all is not None:
            heads[flag] = h_all
    return probs, heads, flag


def masks_from_probs(
    probs: np.ndarray,
    config: PipelineConfig,
    area_scale: float = 1.0,
    inside: np.ndarray | None = None,
    head: np.ndarray | None = None,
) -> np.ndarray:
    """Threshold probability maps (N, H, W); specks below ``min_area_px`` (given at 512×512,
    scaled by ``area_scale`` for other sizes) are removed: whole masks with
    ``speck_removal="slice"``, each connected blob with "component". With
    ``config.intracranial`` and ``inside`` (N, H, W) bool, nothing outside it is kept.
    ``head`` (N,): the hemorrhage head, which under ``verdict_rule="outlined"`` lowers the
    threshold of the slices it flags (:func:`ichseg.infer.postprocess.mask_thresholds`) and,
    with the head's veto, raises the minimum blob area of the slices it doubts
    (:func:`ichseg.infer.postprocess.min_areas_px`)."""
    t = mask_thresholds(
        head, len(probs), config.mask_threshold, config.head_threshold, config.head_mask_threshold, config.verdict_rule
    )
    masks = probs >= t[:, None, None].astype(probs.dtype)
    if config.intracranial and inside is not None:
        masks &= inside
    min_area = area_scale * min_areas_px(
        head, len(probs), config.min_area_px, config.head_veto_below, config.head_veto_min_area_px
    )
    if config.speck_removal == "component":
        for k in range(len(masks)):
            masks[k] = keep_components(masks[k], min_area[k])
        return masks
    if config.speck_removal != "slice":
        raise ValueError(f"unknown speck_removal {config.speck_removal!r} (slice or component)")
    areas = masks.reshape(len(masks), -1).sum(1)
    masks[areas < min_area] = False
    return masks


def pipeline_verdict(cls_prob: np.ndarray, seg_positive: np.ndarray, config: PipelineConfig) -> np.ndarray:
    """Two-stage verdict: the classifier gates the U-Net, and a gated slice is called
    positive when the U-Net then outlines blood (non-empty mask after speck removal)."""
    return (cls_prob >= config.classifier_threshold) & seg_positive
