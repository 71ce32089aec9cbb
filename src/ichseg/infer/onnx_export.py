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

import numpy as np
import torch

from ichseg.files import atomic_write, atomic_write_text, sha256_file
from ichseg.infer.runtimes import GRAPH_RUNTIMES, bundle_stages, onnx_is_current

log = logging.getLogger(__name__)
__all__ = ["export_int8_unet", "export_onnx", "onnx_is_current"]


def _write_sidecar(graph: Path, stage: str, **extra: object) -> None:
    """``<graph>.json``: the SHA-256 of the safetensors the graph was made from, which
    :func:`onnx_is_current` checks, plus anything else worth keeping with it."""
    source = graph.parent / f"{stage}.safetensors"
    body = {"source": source.name, "source_sha256": sha256_file(source), **extra}
    atomic_write_text(Path(f"{graph}.json"), json.dumps(body, indent=2) + "\n")


def export_onnx(model_dir: Path, opset: int = 18) -> list[Path]:
    """Write ``<stage>.onnx`` and ``<stage>.onnx.json`` beside each stage's safetensors."""
    from ichseg.models.weights import load_model

    model_dir = Path(model_dir)
    out = []
    for stage in bundle_stages(model_dir):
        model, cfg, meta = load_model(model_dir / stage)
        model.eval()
        x = torch.rand(2, cfg.in_channels, cfg.input_size_px, cfg.input_size_px)  # batch 2: 1 would be specialised
        path = model_dir / f"{stage}.onnx"
        outputs = ["logits", "head_logits"] if getattr(cfg, "heads", ()) and stage == "unet" else ["logits"]
        half = meta.get("storage") == "float16"

        def write(tmp: Path, model=model, x=x, outputs=outputs, half=half) -> None:
            _export(model, x, tmp, outputs, opset)
            if half:
                store_weights_fp16(tmp)

        atomic_write(path, write)
        _write_sidecar(path, stage)
        if stage == "unet" and hasattr(model, "members"):  # a fold ensemble's screening member
            from ichseg.infer.pipeline import SCREEN_GRAPH

            screen = model_dir / SCREEN_GRAPH
            atomic_write(screen, lambda tmp, m=model.members[0]: write(tmp, model=m))
            _write_sidecar(screen, stage)
            out.append(screen)
        log.info("exported %s", path)
        out.append(path)
    return out


def _export(model: torch.nn.Module, x: torch.Tensor, path: Path, outputs: list[str], opset: int) -> None:
    """One graph through PyTorch's supported exporter (``torch.export`` + onnxscript, the
    ``dynamo=True`` path; the TorchScript exporter is deprecated), batch dimension free,
    weights inside the file (one file per graph, as the sidecar's checksum expects)."""
    import contextlib
    import io
    import warnings

    batch = torch.export.Dim("batch", min=1, max=4096)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" notes: nothing of ours uses it
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(
                model,
                (x,),
                input_names=["image"],
                output_names=outputs,
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
        program.save(str(path), external_data=False)
    finally:
        quiet.setLevel(level)


def store_weights_fp16(path: Path, min_elements: int = 64) -> None:
    """Rewrite an ONNX graph in place so its large float32 weights are stored as float16,
    each followed by a Cast back to float32: half the file, the same float32 arithmetic
    (runtimes fold the Cast into a float32 constant when they load the graph). Used for
    ensembles whose safetensors are stored in float16 anyway, so nothing is lost."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    casts, keep = [], []
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and int(np.prod(init.dims)) >= min_elements:
            half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{init.name}__fp16")
            keep.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=f"{init.name}__cast"))
        else:
            keep.append(init)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_int8_unet(model_dir: Path, calibration_studies: list[Path], max_slices: int = 64) -> Path:
    """Quantise the bundle's ``unet.onnx`` to int8 (ONNX Runtime static quantisation: QDQ,
    per-channel int8 weights, uint8 activations calibrated on up to ``max_slices`` slices
    spread evenly over ``calibration_studies``) as ``unet.int8.onnx`` with a sidecar.

    Only the U-Net is quantised: it is the cost that grows with blood, while the classifier
    is cheap and its probabilities gate every slice. Whether the result keeps the accuracy
    rule is for ``ichseg bench`` to measure; the ``onnx-int8`` runtime is never chosen by
    ``auto``."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ichseg.config import load_json, load_model_config
    from ichseg.infer.predict import study_network_input

    model_dir = Path(model_dir)
    if not onnx_is_current(model_dir):
        raise FileNotFoundError(f"{model_dir}: export the float32 graphs first (ichseg export --onnx)")
    if not calibration_studies:
        raise ValueError("int8 calibration needs at least one study")
    ucfg, _ = load_model_config(model_dir / "unet")
    interp = load_json(model_dir / "pipeline.json")["preprocess"]["image_interpolation"]
    x = np.concatenate([study_network_input(Path(s), ucfg, interp) for s in calibration_studies])
    x = x[np.unique(np.linspace(0, len(x) - 1, min(max_slices, len(x))).round().astype(int))]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(x)

        def get_next(self) -> dict[str, np.ndarray] | None:
            row = next(self.rows, None)
            return None if row is None else {"image": row[None].astype(np.float32) / 255}

    path = model_dir / GRAPH_RUNTIMES["onnx-int8"][2]
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "unet.prepared.onnx"
        try:
            quant_pre_process(str(model_dir / "unet.onnx"), str(prepared))
        except (TypeError, ValueError) as err:  # onnxruntime's symbolic shape pass fails on some exports
            # (the shipped U-Net's Concat of an upsampled and a skip tensor); ONNX's own shape
            # inference and the graph optimisation are what quantisation needs from this step
            log.warning("symbolic shape inference failed (%s); quantising with ONNX shape inference only", err)
            quant_pre_process(str(model_dir / "unet.onnx"), str(prepared), skip_symbolic_shape=True)

        def write(out: Path) -> None:
            quantize_static(
                str(prepared),
                str(out),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )

        atomic_write(path, write)
    _write_sidecar(path, "unet", calibration_studies=[str(s) for s in calibration_studies], calibration_slices=len(x))
    log.info("int8 U-Net -> %s (%d calibration slices)", path, len(x))
    return path
