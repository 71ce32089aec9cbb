"""Seconds per training sample of one U-Net step, at each precision and memory layout.

What decides how long a cross-validation takes on this CPU, measured rather than assumed:
the same step (forward, Dice + CE + head loss, backward, Adam) of a configuration's U-Net
on random data, as ``ichseg bench --train-steps`` prints. bf16 is measured only where
:mod:`ichseg.hardware` finds it usable; every row records what ran.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from ichseg.config import UNetConfig
from ichseg.hardware import describe, resolve_precision
from ichseg.models import build_model
from ichseg.train.loop import autocast_for
from ichseg.train.losses import SegmentationLoss


def step_seconds_per_sample(
    config: UNetConfig, size_px: int, precision: str, channels_last: bool, batch: int = 8, steps: int = 5, warmup: int = 2
) -> float:
    """Median seconds per sample of ``steps`` training steps (after ``warmup``) on random
    (batch, C, size, size) inputs."""
    torch.manual_seed(0)
    model = build_model(config)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = SegmentationLoss()
    x = torch.rand(batch, config.in_channels, size_px, size_px)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 1, size_px, size_px) > 0.95).float()
    yh = torch.zeros(batch, len(config.heads)) if config.heads else None
    times = []
    for k in range(warmup + steps):
        t0 = time.perf_counter()
        with autocast_for(precision, torch.device("cpu")):
            out = model(x)
        out = tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()
        loss = loss_fn(out, (y, yh) if yh is not None else y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k >= warmup:
            times.append((time.perf_counter() - t0) / batch)
    return statistics.median(times)


def measure(config: UNetConfig, sizes_px: tuple[int, ...], steps: int = 5) -> dict[str, Any]:
    """Every (size, precision, layout) combination that runs here, with the ratio of each
    to float32 without channels-last at the same size."""
    bf16, why = resolve_precision("auto")
    precisions = ["fp32"] + (["bf16"] if bf16 == "bf16" else [])
    rows = []
    for size in sizes_px:
        base = None
        for precision in precisions:
            for cl in (False, True):
                s = step_seconds_per_sample(config, size, precision, cl, steps=steps)
                base = s if base is None else base
                rows.append(
                    {"size_px": size, "precision": precision, "channels_last": cl, "s_per_sample": s, "speedup": base / s}
                )
    return {"unet": config.__dict__ | {"windows": list(config.windows), "heads": list(config.heads)}, "rows": rows,
            "hardware": describe(bf16, why), "torch": torch.__version__, "threads": torch.get_num_threads()}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    lines = ["| input px | precision | channels-last | s / sample | × vs fp32 |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(
            f"| {r['size_px']} | {r['precision']} | {'yes' if r['channels_last'] else 'no'} | {r['s_per_sample']:.3f} | "
            f"{r['speedup']:.1f} |"
        )
    return "\n".join(lines) + "\n"
