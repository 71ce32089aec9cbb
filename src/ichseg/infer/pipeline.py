"""The two-stage pipeline at inference time, built only from files on disk (no training code).

A model bundle is a folder with ``classifier.{safetensors,json}``, ``unet.{safetensors,json}``
and ``pipeline.json`` (operating point and preprocessing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ichseg.config import ClassifierConfig, PipelineConfig, PreprocessConfig, UNetConfig, from_dict, load_json
from ichseg.train.checkpoint import load_model, load_model_config

log = logging.getLogger(__name__)
RUNTIMES = ("torch", "onnx", "openvino", "auto")
AUTO_ORDER = ("openvino", "onnx")  # fastest first, as measured by `ichseg bench` (docs/PERFORMANCE.md)


@dataclass
class Bundle:
    """A loaded model bundle."""

    classifier: nn.Module
    classifier_config: ClassifierConfig
    unet: nn.Module
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
    from ichseg.infer.onnx_runtime import onnx_is_current, runtime_available

    current = onnx_is_current(model_dir)
    if runtime == "auto":
        return next((r for r in AUTO_ORDER if current and runtime_available(r)), "torch")
    if not current:
        raise FileNotFoundError(f"{model_dir}: no current ONNX graphs (run `ichseg export --onnx --model {model_dir}`)")
    if not runtime_available(runtime):
        raise ModuleNotFoundError(f"runtime {runtime!r} is not installed (pip install 'ichseg[{runtime}]')")
    return runtime


def load_bundle(model_dir: Path, runtime: str = "torch") -> Bundle:
    """Load a bundle folder; errors name the missing or bad file.

    ``runtime``: "torch"; "onnx" (ONNX Runtime) or "openvino" (OpenVINO, float32), both on
    the graphs made by ``ichseg export --onnx`` (an error if they are missing or stale, or
    the package is not installed); or "auto": the fastest usable one, in the order
    measured by ``ichseg bench`` on this project's machine: OpenVINO, ONNX Runtime, PyTorch."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: model folder not found")
    for name in ("classifier.json", "classifier.safetensors", "unet.json", "unet.safetensors", "pipeline.json"):
        if not (model_dir / name).exists():
            raise FileNotFoundError(f"{model_dir / name}: missing from the model bundle")
    runtime = resolve_runtime(model_dir, runtime)
    if runtime != "torch":  # the graphs carry the weights: only the configs are read
        from ichseg.infer.onnx_runtime import GRAPH_RUNTIMES

        model_class = GRAPH_RUNTIMES[runtime][1]
        ccfg, cmeta = load_model_config(model_dir / "classifier")
        ucfg, umeta = load_model_config(model_dir / "unet")
        classifier, unet = model_class(model_dir / "classifier.onnx"), model_class(model_dir / "unet.onnx")
    else:
        classifier, ccfg, cmeta = load_model(model_dir / "classifier")
        unet, ucfg, umeta = load_model(model_dir / "unet")
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


@torch.inference_mode()
def classify(model: nn.Module, images_u8: np.ndarray, batch: int = 16) -> np.ndarray:
    """Probabilities (N, heads) from uint8 (N, C, S, S) inputs; column 0 is hemorrhage."""
    model.eval()
    out = [torch.sigmoid(model(torch.from_numpy(images_u8[s]).float().div_(255))) for s in _batches(len(images_u8), batch)]
    return torch.cat(out).numpy() if out else np.zeros((0, 1), np.float32)


@torch.inference_mode()
def segment(
    model: nn.Module, images_u8: np.ndarray, out_size_px: int | tuple[int, int], batch: int = 8, tta_flip: bool = False
) -> np.ndarray:
    """Blood probability maps (N, H, W) float32 at ``out_size_px``, upsampled bilinearly from
    the U-Net's resolution so that metrics and masks are always at full size.

    ``tta_flip`` averages the probabilities of each slice and of its left-right mirror
    (mirrored back): the head is nearly symmetric, so this costs 2× and smooths errors
    that depend on the side."""
    model.eval()
    size = (out_size_px, out_size_px) if isinstance(out_size_px, int) else out_size_px
    out = np.zeros((len(images_u8), *size), np.float32)
    for s in _batches(len(images_u8), batch):
        x = torch.from_numpy(images_u8[s]).float().div_(255).contiguous(memory_format=torch.channels_last)
        if tta_flip:  # one call on the slices and their mirrors together
            both = torch.sigmoid(model(torch.cat([x, x.flip(-1)])))
            prob = (both[: len(x)] + both[len(x) :].flip(-1)) / 2
        else:
            prob = torch.sigmoid(model(x))
        if prob.shape[-2:] != size:
            prob = F.interpolate(prob, size=size, mode="bilinear", align_corners=False)
        out[s] = prob[:, 0].numpy()
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
