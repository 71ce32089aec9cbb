"""``ichseg export --onnx``: a bundle's two networks as ONNX graphs, for the graph runtimes
of :mod:`ichseg.infer.runtimes`.

The graphs take the same float input as the PyTorch modules (N, C, S, S) in [0, 1] and
return the same logits, with a free batch dimension. Each ``.onnx`` file has a JSON
sidecar with the SHA-256 of the safetensors it came from: a bundle whose weights changed
after export is never run with stale graphs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ichseg.infer.runtimes import STAGES, onnx_is_current
from ichseg.io import atomic_write, atomic_write_text, sha256_file

log = logging.getLogger(__name__)
__all__ = ["export_onnx", "onnx_is_current"]


def export_onnx(model_dir: Path, opset: int = 17) -> list[Path]:
    """Write ``<stage>.onnx`` and ``<stage>.onnx.json`` beside each stage's safetensors."""
    from ichseg.train.checkpoint import load_model

    model_dir = Path(model_dir)
    out = []
    for stage in STAGES:
        model, cfg, _ = load_model(model_dir / stage)
        model.eval()
        x = torch.rand(1, cfg.in_channels, cfg.input_size_px, cfg.input_size_px)
        path = model_dir / f"{stage}.onnx"

        def write(tmp: Path, model=model, x=x) -> None:
            torch.onnx.export(
                model,
                (x,),
                str(tmp),
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )

        atomic_write(path, write)
        atomic_write_text(
            Path(f"{path}.json"),
            json.dumps({"source": f"{stage}.safetensors", "source_sha256": sha256_file(model_dir / f"{stage}.safetensors")})
            + "\n",
        )
        log.info("exported %s", path)
        out.append(path)
    return out
