"""Resumable training state: model and optimizer tensors as safetensors plus a JSON of the
loop's counters; no pickle anywhere. Final weights are written by
:mod:`ichseg.models.weights`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ichseg.config import save_json
from ichseg.models.weights import save_tensors

log = logging.getLogger(__name__)


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
