"""Weights as safetensors plus a JSON sidecar; no pickle anywhere, so a checkpoint from an
untrusted source cannot run code when loaded."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ichseg.config import ClassifierConfig, UNetConfig, load_model_config, model_stem, save_json
from ichseg.io import atomic_write
from ichseg.models import build_model

log = logging.getLogger(__name__)

DATASET_CREDIT = (
    "Trained on CT-ICH: Hssayeni, M. (2019). Computed Tomography Images for Intracranial "
    "Hemorrhage Detection and Segmentation (version 1.0.0). PhysioNet. doi:10.13026/w8q8-ky94. "
    "CC BY 4.0."
)


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


def load_model(path_stem: Path) -> tuple[nn.Module, UNetConfig | ClassifierConfig, dict[str, Any]]:
    """Rebuild a model from ``<stem>.json`` and load ``<stem>.safetensors`` into it (eval mode)."""
    path_stem = model_stem(path_stem)
    config, meta = load_model_config(path_stem)
    model = build_model(config)
    weights = path_stem.with_suffix(".safetensors")
    try:
        state = load_file(str(weights))
    except (OSError, Exception) as exc:  # safetensors raises its own error types
        raise ValueError(f"{weights}: cannot load weights ({exc})") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.eval()
    return model, config, meta


def save_resume(out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Everything needed to continue training after a kill.

    Tensors go to a step-numbered safetensors file first; the JSON that points at it is
    renamed into place last, so a kill at any moment leaves the previous state usable.
    """
    out_dir = Path(out_dir)
    step = state["global_step"]
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in opt_state["state"].items():
        for k, v in pstate.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    name = f"resume-{step:08d}.safetensors"
    save_tensors(tensors, out_dir / name)
    body = {**state, "tensors": name, "param_groups": opt_state["param_groups"], "opt_scalars": scalars}
    save_json(body, out_dir / "resume.json")
    for old in out_dir.glob("resume-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_resume(out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Restore model and optimizer from :func:`save_resume`; None if there is nothing to resume."""
    path = Path(out_dir) / "resume.json"
    if not path.exists():
        return None
    body = json.loads(path.read_text())
    tensors = load_file(str(Path(out_dir) / body["tensors"]))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state: dict[str, Any] = {"state": {}, "param_groups": body["param_groups"]}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            opt_state["state"].setdefault(int(pid), {})[name] = v
    for pid, extra in body.get("opt_scalars", {}).items():
        opt_state["state"].setdefault(int(pid), {}).update(extra)
    optimizer.load_state_dict(opt_state)
    log.info("resuming from %s (epoch %d, step %d)", path, body["epoch"], body["step_in_epoch"])
    return body
