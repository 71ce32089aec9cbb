"""ONNX export of a model bundle, and the ONNX Runtime and OpenVINO back ends that run it.

The exported graphs take the same float input as the PyTorch modules (N, C, S, S) in
[0, 1] and return the same logits, with a free batch dimension, so ``classify`` and
``segment`` run unchanged on any back end. OpenVINO reads the same ``.onnx`` files (no
second export) and compiles them for the CPU it finds, in float32: reduced precision
(bf16) is never requested, because some virtual machines advertise AMX/AVX-512-BF16 in
their CPU flags and then kill the process with "Illegal instruction" when it is used. Each ``.onnx`` file has a JSON sidecar with
the SHA-256 of the safetensors it came from: a bundle whose weights changed after export
is never run with stale graphs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from ichseg.io import atomic_write, atomic_write_text, sha256_file

log = logging.getLogger(__name__)
STAGES = ("classifier", "unet")


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


def onnx_is_current(model_dir: Path) -> bool:
    """True when every stage has an ``.onnx`` exported from its current safetensors."""
    for stage in STAGES:
        side = Path(model_dir) / f"{stage}.onnx.json"
        if not (Path(model_dir) / f"{stage}.onnx").exists() or not side.exists():
            return False
        if json.loads(side.read_text())["source_sha256"] != sha256_file(Path(model_dir) / f"{stage}.safetensors"):
            return False
    return True


class OrtModel:
    """An ONNX Runtime session behind the call interface of a PyTorch module: tensor in,
    tensor out (``eval`` is accepted and does nothing)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.path = Path(path)

    def eval(self) -> OrtModel:
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])


class OpenVinoModel:
    """An OpenVINO CPU model compiled from an ``.onnx`` graph, behind the same call
    interface as :class:`OrtModel`. Precision is pinned to float32 (see the module note)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.path = Path(path)

    def eval(self) -> OpenVinoModel:
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        self.request.infer({0: arr})
        return torch.from_numpy(np.array(self.request.get_output_tensor(0).data, copy=True))


GRAPH_RUNTIMES = {"onnx": ("onnxruntime", OrtModel), "openvino": ("openvino", OpenVinoModel)}


def runtime_available(runtime: str) -> bool:
    """True when the Python package behind ``runtime`` ("onnx" or "openvino") imports."""
    import importlib.util

    return importlib.util.find_spec(GRAPH_RUNTIMES[runtime][0]) is not None


def onnxruntime_available() -> bool:
    return runtime_available("onnx")
