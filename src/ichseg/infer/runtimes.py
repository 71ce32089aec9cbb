"""The back ends that run a bundle's two networks: PyTorch, ONNX Runtime and OpenVINO.

Each back end is a *network*: a callable from float32 numpy (N, C, S, S) in [0, 1] to
float32 numpy logits, so that everything around the networks (sigmoid, flip averaging,
resizing, thresholds) is one numpy code path whatever runs them. This module imports no
deep-learning package itself: the graph runtimes then start without PyTorch, which
saves about a second of cold start and 200 MB of memory per process.

The graph runtimes read the ``<stage>.onnx`` files written by ``ichseg export --onnx``
(:mod:`ichseg.infer.onnx_export`). OpenVINO compiles them for the CPU it finds.

Precision: float32 unless bf16 is asked for *and* :mod:`ichseg.hardware` finds the CPU
able (flags, then a child-process probe: some virtual machines advertise AMX and kill the
process with "Illegal instruction" when it is used, as seen on this project's machine).
PyTorch then runs under bf16 autocast and OpenVINO with ``INFERENCE_PRECISION_HINT=bf16``
(about 4x faster on AMX); ONNX Runtime stays float32 (its CPU provider has no bf16 path).
Whether a bundle may use bf16 at all is decided by its agreement check
(:mod:`ichseg.evaluate.precision`), in :func:`ichseg.infer.pipeline.load_bundle`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ichseg.files import sha256_file

STAGES = ("classifier", "unet")


class Network(Protocol):
    """What the pipeline calls: float32 (N, C, S, S) in, float32 logits (N, K, ...) out; a
    network with two outputs (a U-Net with slice heads) returns a tuple of both."""

    def __call__(self, x: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]: ...


class TorchNetwork:
    """A PyTorch module behind the numpy interface (inference mode, channels-last; bf16
    autocast when ``precision`` is "bf16")."""

    def __init__(self, module: Any, threads: int | None = None, precision: str = "fp32") -> None:
        import torch

        torch.set_flush_denormal(True)
        if threads:
            torch.set_num_threads(threads)
        self.module = module.eval()
        self.precision = precision

    def __call__(self, x: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        import torch

        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            out = self.module(t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t)
            if isinstance(out, tuple):
                return tuple(o.float().numpy() for o in out)
            return out.float().numpy()


class OrtNetwork:
    """An ONNX Runtime CPU session on an ``.onnx`` graph (float32 whatever is asked)."""

    def __init__(self, path: Path, threads: int | None = None, precision: str = "fp32") -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.path = Path(path)
        self.precision = "fp32"

    def __call__(self, x: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return out[0] if len(out) == 1 else tuple(out)


class OpenVinoNetwork:
    """An OpenVINO CPU model compiled from an ``.onnx`` graph, at float32 or bf16 (see the
    module note)."""

    def __init__(self, path: Path, threads: int | None = None, precision: str = "fp32") -> None:
        import openvino as ov

        hint = {"fp32": "f32", "bf16": "bf16"}[precision]
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        self.precision = precision
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.path = Path(path)

    def __call__(self, x: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        out = tuple(np.array(self.request.get_output_tensor(i).data, copy=True) for i in range(len(self.compiled.outputs)))
        return out[0] if len(out) == 1 else out


# runtime -> (Python package, network class, U-Net graph file); "onnx-int8" is ONNX Runtime
# with the int8 U-Net of ``ichseg export --onnx --int8`` (the classifier stays float32)
GRAPH_RUNTIMES: dict[str, tuple[str, type, str]] = {
    "onnx": ("onnxruntime", OrtNetwork, "unet.onnx"),
    "openvino": ("openvino", OpenVinoNetwork, "unet.onnx"),
    "onnx-int8": ("onnxruntime", OrtNetwork, "unet.int8.onnx"),
}


def as_network(model: Any) -> Network:
    """A network as is; a bare PyTorch module wrapped in :class:`TorchNetwork` (training and
    evaluation code pass their modules straight in)."""
    if isinstance(model, TorchNetwork | OrtNetwork | OpenVinoNetwork):
        return model
    return TorchNetwork(model)


def runtime_available(runtime: str) -> bool:
    """True when the Python package behind ``runtime`` ("onnx" or "openvino") is installed."""
    return importlib.util.find_spec(GRAPH_RUNTIMES[runtime][0]) is not None


def bundle_stages(model_dir: Path) -> tuple[str, ...]:
    """The networks a bundle holds: ("classifier", "unet"), or ("unet",) when its U-Net's
    own slice heads replace the classifier."""
    return tuple(s for s in STAGES if (Path(model_dir) / f"{s}.json").exists())


def onnx_is_current(model_dir: Path, runtime: str = "onnx") -> bool:
    """True when every graph ``runtime`` reads exists and was made from the current
    safetensors of its stage (each graph's ``.json`` sidecar holds their SHA-256)."""
    files = [("classifier", "classifier.onnx"), ("unet", GRAPH_RUNTIMES[runtime][2])]
    if json.loads((Path(model_dir) / "unet.json").read_text()).get("members") and runtime != "onnx-int8":
        files.append(("unet", "unet_screen.onnx"))  # a fold ensemble's screening member
    for stage, name in files:
        if stage not in bundle_stages(model_dir):
            continue
        graph, side = Path(model_dir) / name, Path(model_dir) / f"{name}.json"
        if not graph.exists() or not side.exists():
            return False
        if json.loads(side.read_text())["source_sha256"] != sha256_file(Path(model_dir) / f"{stage}.safetensors"):
            return False
    return True
