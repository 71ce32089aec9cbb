"""The two-stage pipeline at inference time, built only from files on disk (no training code).

A model bundle is a folder with ``classifier.{safetensors,json}``, ``unet.{safetensors,json}``
and ``pipeline.json`` (operating point and preprocessing), optionally with the ONNX graphs
of both networks. Importing this module does not import PyTorch: with a graph runtime, a
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
from ichseg.infer.runtimes import GRAPH_RUNTIMES, Network, TorchNetwork, as_network, onnx_is_current, runtime_available

log = logging.getLogger(__name__)
RUNTIMES = ("torch", *GRAPH_RUNTIMES, "auto")
# What "auto" prefers, from `ichseg bench` (docs/PERFORMANCE.md): both graph runtimes are
# 3-7x faster to start than PyTorch and tie on speed; OpenVINO needs ~200 MB less memory.
AUTO_ORDER = ("openvino", "onnx")


@dataclass
class Bundle:
    """A loaded model bundle."""

    classifier: Network
    classifier_config: ClassifierConfig
    unet: Network
    unet_config: UNetConfig
    pipeline: PipelineConfig
    preprocess: PreprocessConfig
    meta: dict[str, Any]
    path: Path

    @property
    def windows(self) -> tuple[str, ...]:
        """Every input window either stage reads."""
        return tuple(sorted(set(self.classifier_config.windows) | set(self.unet_config.windows)))


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


def load_bundle(model_dir: Path, runtime: str = "torch", threads: int | None = None) -> Bundle:
    """Load a bundle folder; errors name the missing or bad file.

    ``runtime``: "torch"; "onnx" (ONNX Runtime) or "openvino" (OpenVINO, float32), both on
    the graphs made by ``ichseg export --onnx`` (an error if they are missing or stale, or
    the package is not installed); or "auto": the first usable of ``AUTO_ORDER``
    (OpenVINO, ONNX Runtime), else PyTorch.
    ``threads``: CPU threads of each network (default: the runtime's choice)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: model folder not found")
    for name in ("classifier.json", "classifier.safetensors", "unet.json", "unet.safetensors", "pipeline.json"):
        if not (model_dir / name).exists():
            raise FileNotFoundError(f"{model_dir / name}: missing from the model bundle")
    runtime = resolve_runtime(model_dir, runtime)
    classifier: Network
    unet: Network
    if runtime != "torch":  # the graphs carry the weights: only the configs are read
        _, network, unet_graph = GRAPH_RUNTIMES[runtime]
        ccfg, cmeta = load_model_config(model_dir / "classifier")
        ucfg, umeta = load_model_config(model_dir / "unet")
        classifier, unet = network(model_dir / "classifier.onnx", threads), network(model_dir / unet_graph, threads)
    else:
        from ichseg.models.weights import load_model

        c_module, ccfg, cmeta = load_model(model_dir / "classifier")
        u_module, ucfg, umeta = load_model(model_dir / "unet")
        classifier, unet = TorchNetwork(c_module, threads), TorchNetwork(u_module, threads)
    body = load_json(model_dir / "pipeline.json")
    assert isinstance(ccfg, ClassifierConfig) and isinstance(ucfg, UNetConfig)
    body = {**body, "runtime": runtime}
    return Bundle(
        classifier,
        ccfg,
        unet,
        ucfg,
        from_dict(PipelineConfig, body["pipeline"]),
        from_dict(PreprocessConfig, body["preprocess"]),
        {"classifier": cmeta, "unet": umeta, **body},
        model_dir,
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
    """Blood probability maps (N, H, W) float32 at ``out_size_px`` (an int, or (H, W)),
    upsampled bilinearly (half-pixel centres, as PyTorch's ``align_corners=False``) from
    the U-Net's resolution, so that metrics and masks are always at full size.

    ``tta_flip`` averages the probabilities of each slice and of its left-right mirror
    (mirrored back): the head is nearly symmetric, so this costs 2× and smooths errors
    that depend on the side. ``batch`` slices per call (2× that with the mirrors) bounds
    the memory a heavy study needs."""
    net = as_network(model)
    size = (out_size_px, out_size_px) if isinstance(out_size_px, int) else tuple(out_size_px)
    out = np.zeros((len(images_u8), *size), np.float32)
    for s in _batches(len(images_u8), batch):
        x = images_u8[s].astype(np.float32) / 255
        if tta_flip:  # one call on the slices and their mirrors together
            both = sigmoid(net(np.concatenate([x, x[..., ::-1]])))[:, 0]
            prob = (both[: len(x)] + both[len(x) :, :, ::-1]) / 2
        else:
            prob = sigmoid(net(x))[:, 0]
        for j, p in enumerate(prob):
            out[s.start + j] = p if p.shape == size else cv2.resize(p, size[::-1], interpolation=cv2.INTER_LINEAR)
    return out


def masks_from_probs(probs: np.ndarray, config: PipelineConfig, area_scale: float = 1.0) -> np.ndarray:
    """Threshold probability maps; masks smaller than ``min_area_px`` (given at 512×512,
    scaled by ``area_scale`` for other sizes) are emptied as specks."""
    masks = probs >= config.mask_threshold
    areas = masks.reshape(len(masks), -1).sum(1)
    masks[areas < config.min_area_px * area_scale] = False
    return masks


def pipeline_verdict(cls_prob: np.ndarray, seg_positive: np.ndarray, config: PipelineConfig) -> np.ndarray:
    """Two-stage verdict: the classifier gates the U-Net, and a gated slice is called
    positive when the U-Net then outlines blood (non-empty mask after speck removal)."""
    return (cls_prob >= config.classifier_threshold) & seg_positive
