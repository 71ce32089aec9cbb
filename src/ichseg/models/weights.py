"""Model weights on disk: safetensors plus a JSON sidecar (kind, config, provenance and the
dataset credit). No pickle anywhere, so weights from an untrusted source cannot run code
when loaded. Inference and evaluation read weights through here, never through training
code."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ichseg.config import ClassifierConfig, UNetConfig, load_model_config, model_stem, save_json
from ichseg.credits import DATASET_CREDIT  # re-exported: the credit written into every sidecar
from ichseg.files import atomic_write
from ichseg.models import build_model

log = logging.getLogger(__name__)
__all__ = ["DATASET_CREDIT", "load_model", "save_ensemble", "save_model", "save_tensors"]


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Atomic safetensors write (contiguous CPU copies, as the format requires)."""
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(Path(path), lambda tmp: save_file(clean, str(tmp)))


def save_model(model: nn.Module, config: UNetConfig | ClassifierConfig, path_stem: Path, meta: dict[str, Any]) -> None:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` (kind, model config, metadata)."""
    path_stem = Path(path_stem)
    save_tensors(model.state_dict(), path_stem.with_suffix(".safetensors"))
    kind = "unet" if isinstance(config, UNetConfig) else "classifier"
    from ichseg.config import to_dict

    save_json({"kind": kind, "config": to_dict(config), **meta}, path_stem.with_suffix(".json"))


def save_ensemble(
    members: list[nn.Module], config: UNetConfig, path_stem: Path, meta: dict[str, Any], *, fp16: bool = True
) -> None:
    """Write K U-Nets of one config as one ensemble (``members.<k>.`` prefixes in one
    safetensors file). ``fp16`` stores floating-point tensors in half precision (half the
    size; they are computed in float32 after loading)."""
    from ichseg.models.ensemble_net import EnsembleUNet

    state = EnsembleUNet(members).state_dict()
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    path_stem = Path(path_stem)
    save_tensors(state, path_stem.with_suffix(".safetensors"))
    from ichseg.config import to_dict

    body = {"kind": "unet", "config": to_dict(config), "members": len(members), "storage": "float16" if fp16 else "float32"}
    save_json({**body, **meta}, path_stem.with_suffix(".json"))


def load_model(path_stem: Path) -> tuple[nn.Module, UNetConfig | ClassifierConfig, dict[str, Any]]:
    """Rebuild a model from ``<stem>.json`` and load ``<stem>.safetensors`` into it (eval
    mode); an ensemble sidecar (``members``: K) gives an :class:`EnsembleUNet` of K."""
    path_stem = model_stem(path_stem)
    config, meta = load_model_config(path_stem)
    if meta.get("members"):
        from ichseg.models.ensemble_net import EnsembleUNet

        model: nn.Module = EnsembleUNet([build_model(config) for _ in range(int(meta["members"]))])
    else:
        model = build_model(config)
    weights = path_stem.with_suffix(".safetensors")
    try:
        state = load_file(str(weights))
    except (OSError, Exception) as exc:  # safetensors raises its own error types
        raise ValueError(f"{weights}: cannot load weights ({exc})") from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.eval()
    return model, config, meta
