"""``ichseg bench``: seconds per study, end to end, against the paper's U-Net on every slice.

Every path runs in a fresh Python process (``python -m ichseg.experiments.bench --worker ...``) so
that each reports its own cold start (import + model load) and peak memory, and no path
warms caches for another. All paths process the same study: a ~30-slice patient of
``../shared/ct-ich`` when given, else a generated one. The paper's baseline uses its
U-Net (512×512, 32 filters) with random He-initialised weights: the timing does not
depend on the weights.

Why it is long: the worker that runs in the timed child process and the parent that starts
it, merges rounds and checks the targets speak one private protocol (argv and a JSON
file); they are kept together so it cannot drift.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.infer.runtimes import GRAPH_RUNTIMES, runtime_available

log = logging.getLogger(__name__)
# every runtime at float32; "<runtime>-bf16" the same at bf16 (on CPUs that run it)
BF16_PATHS = ("torch-bf16", "openvino-bf16")
PATHS = ("baseline", "torch", *GRAPH_RUNTIMES, *BF16_PATHS)
TARGETS = {"median_s": 2.0, "speedup_vs_baseline": 25.0, "cold_start_s": 2.0, "peak_rss_mb": 1024.0, "mask_dice": 0.995}
#: `ichseg predict STUDY` as a whole process (interpreter start, imports, model load,
#: prediction, outputs written), per study label: the accuracy issue's speed rule.
WHOLE_PROCESS_S = {"typical": 3.0, "heavy": 6.0}


def whole_process_seconds(study: Path, model_dir: Path, runtime: str, out_dir: Path, repeats: int = 3) -> list[float]:
    """Wall-clock seconds of ``ichseg predict`` on ``study`` in a fresh process, ``repeats``
    times: what a user who runs the command once waits."""
    times = []
    for k in range(repeats):
        cmd = [sys.executable, "-m", "ichseg.cli", "predict", str(study), "--out", str(Path(out_dir) / f"run{k}")]
        cmd += ["--model", str(model_dir), "--runtime", runtime, "--no-progress"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"ichseg predict {study} failed:\n{proc.stderr[-2000:]}")
    return times


def _slice_count(patient: Path) -> int:
    return sum(1 for f in (patient / "brain").glob("*.jpg") if "_HGE_Seg" not in f.name)


def peak_rss_mb() -> float:
    """This process's peak resident memory. On Linux from ``VmHWM`` (the high-water mark of
    this program's own address space), because ``ru_maxrss`` survives ``exec``: a worker
    started by a big parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pick_studies(data_dir: Path | None, work_dir: Path, n_slices: int = 30) -> dict[str, Path]:
    """The studies to time, by role.

    With CT-ICH: "typical", the patient whose slice count is closest to ``n_slices`` (ties:
    lowest ID), and "heavy", among patients within 3 slices of ``n_slices`` the one with the
    most ground-truth blood slices (the gate passes most slices there, so the U-Net does
    most work); both are chosen from the data alone, not from any model's output. Without
    data: one generated ``n_slices``-slice study with blood, "generated"."""
    if data_dir is not None and (Path(data_dir) / "Patients_CT").is_dir():
        folders = sorted(p for p in (Path(data_dir) / "Patients_CT").iterdir() if (p / "brain").is_dir())
        counts = {p: _slice_count(p) for p in folders}
        typical = min(folders, key=lambda p: (abs(counts[p] - n_slices), p.name))
        near = [p for p in folders if abs(counts[p] - n_slices) <= 3] or folders
        heavy = max(near, key=lambda p: (sum(1 for _ in (p / "brain").glob("*_HGE_Seg.jpg")), -counts[p], p.name))
        return {"typical": typical, "heavy": heavy} if heavy != typical else {"typical": typical}
    from ichseg.data.synthetic import SyntheticConfig, generate_dataset

    root = Path(work_dir) / "generated-study"
    if not (root / "Patients_CT").exists():
        generate_dataset(root, SyntheticConfig(n_patients=1, slices_per_patient=n_slices, hemorrhage_fraction=1.0, seed=7))
    return {"generated": next((root / "Patients_CT").iterdir())}


def pick_calibration(data_dir: Path | None, studies: dict[str, Path], n: int = 4) -> list[Path]:
    """Studies to calibrate int8 quantisation on: ``n`` CT-ICH patients spread over the
    sorted IDs, never a benchmark study (calibrating on the timed study would flatter its
    agreement); without data, the benchmark studies themselves (said in the report)."""
    if data_dir is None or not (Path(data_dir) / "Patients_CT").is_dir():
        return list(studies.values())
    timed = {Path(s).resolve() for s in studies.values()}
    folders = [
        p for p in sorted((Path(data_dir) / "Patients_CT").iterdir()) if (p / "brain").is_dir() and p.resolve() not in timed
    ]
    return [folders[i] for i in np.unique(np.linspace(0, len(folders) - 1, min(n, len(folders))).round().astype(int))]


def split_path(path: str) -> tuple[str, str]:
    """A bench path as (runtime, precision): "openvino-bf16" → ("openvino", "bf16")."""
    if path.endswith("-bf16"):
        return path[: -len("-bf16")], "bf16"
    return path, "fp32"


def available_paths() -> tuple[str, ...]:
    """The baseline, PyTorch, each graph runtime that is installed here, and the bf16 paths
    where the CPU advertises bf16 (the worker still probes it before trusting it)."""
    from ichseg.hardware import advertises_bf16

    out = []
    for p in PATHS:
        runtime, precision = split_path(p)
        if precision == "bf16" and not advertises_bf16():
            continue
        if runtime in ("baseline", "torch") or runtime_available(runtime):
            out.append(p)
    return tuple(out)


def flops_per_slice(model, in_channels: int, size_px: int) -> float:
    """Forward-pass FLOPs of one slice (multiply-add = 2 FLOPs), counted by PyTorch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, in_channels, size_px, size_px))
    return float(counter.get_total_flops())


def _baseline_once(study: Path, out: Path, model) -> None:
    """Read every slice, resize to 512, run the paper's U-Net, threshold, write the masks
    at the source size: what a one-stage 512×512 pipeline does per study."""
    import cv2
    import torch

    from ichseg.data.cache import read_grey_u8, resize_image_u8
    from ichseg.files import atomic_write_png
    from ichseg.infer.predict import find_inputs

    with torch.inference_mode():
        for s in find_inputs(study):
            img = read_grey_u8(s.brain)
            x = torch.from_numpy(resize_image_u8(img, 512)).float().div_(255)[None, None]
            prob = torch.sigmoid(model(x))[0, 0].numpy()
            mask = cv2.resize((prob >= 0.5).astype(np.uint8), img.shape[::-1], interpolation=cv2.INTER_NEAREST)
            atomic_write_png(out / "masks" / f"{s.name}_mask.png", mask * 255)


def worker(
    path: str, studies: dict[str, Path], out: Path, repeats: int, model_dir: Path | None, threads: int | None
) -> dict[str, Any]:
    """Time one path ``repeats`` times per study in this (fresh) process; the import and
    model load before the first call is the cold start."""
    t_start = time.perf_counter()
    if path == "baseline":
        import torch

        if threads:
            torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
        from ichseg.config import UNetConfig
        from ichseg.models import build_model

        torch.manual_seed(0)
        model = build_model(UNetConfig()).eval()
        run = lambda study, o: _baseline_once(study, o, model)  # noqa: E731

        def forward(x: np.ndarray) -> None:
            with torch.inference_mode():
                model(torch.from_numpy(x))

        shape = (1, 1, 512, 512)  # the baseline runs one slice per call
    else:  # a graph runtime never imports PyTorch: that is part of its cold start and memory
        from ichseg.infer.pipeline import load_bundle
        from ichseg.infer.predict import predict_path
        from ichseg.infer.shipped import default_model_dir

        runtime, precision = split_path(path)
        bundle = load_bundle(model_dir or default_model_dir(), runtime=runtime, threads=threads, precision=precision)
        run = lambda study, o: predict_path(bundle, study, o, write_overlays=True)  # noqa: E731
        forward = bundle.unet
        u = bundle.unet_config
        shape = (8, u.in_channels, u.input_size_px, u.input_size_px)  # one segment() call: 4 slices + mirrors
    cold = time.perf_counter() - t_start  # import + model load, nothing else
    per_study = {}
    for label, study in studies.items():
        times = []
        for k in range(repeats):
            t0 = time.perf_counter()
            run(study, out / label / f"run{k}")
            times.append(time.perf_counter() - t0)
        first = out / label / "run0"
        n = segmented = sum(1 for _ in (first / "masks").glob("*_mask.png"))  # the baseline segments every slice
        if path != "baseline":  # the pipeline only those its gate passes
            segmented = sum(r["segmented"] for r in json.loads((first / "predictions.json").read_text())["slices_detail"])
        per_study[label] = {
            "slices": n,
            "segmented_slices": segmented,
            "seconds": times,
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
        }
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    forward(x)  # warm-up
    calls = []
    for _ in range(5):
        t0 = time.perf_counter()
        forward(x)
        calls.append(time.perf_counter() - t0)
    return {
        "path": path,
        "cold_start_s": cold,
        # the segmenter alone, as the pipeline calls it: seconds per slice-forward
        "segmenter_forward_s_per_slice": statistics.median(calls) / shape[0],
        "peak_rss_mb": peak_rss_mb(),
        "torch_imported": "torch" in sys.modules,
        "precision": "fp32" if path == "baseline" else bundle.meta["precision"],
        "studies": per_study,
    }


def segmenter_gflop(model_dir: Path | None) -> tuple[float, int]:
    """(GFLOP per U-Net forward, forwards per slice): for ``None`` the baseline, the paper's
    U-Net at 512×512 once per slice; else the bundle's U-Net, twice per slice with flip TTA.
    The same for every runtime of one bundle: they run the same network."""
    from ichseg.config import UNetConfig
    from ichseg.infer.pipeline import load_bundle
    from ichseg.models import build_model

    if model_dir is None:
        return flops_per_slice(build_model(UNetConfig()), 1, 512) / 1e9, 1
    bundle = load_bundle(model_dir, runtime="torch")
    u = bundle.unet_config
    return flops_per_slice(bundle.unet.module, u.in_channels, u.input_size_px) / 1e9, 2 if bundle.pipeline.tta_flip else 1


def run_bench(
    studies: dict[str, Path],
    out_dir: Path,
    *,
    repeats: int = 5,
    baseline_repeats: int = 2,
    model_dir: Path | None = None,
    paths: tuple[str, ...] | None = None,
    threads: int | None = None,
    calibration: list[Path] | None = None,
    rounds: int = 1,
) -> dict[str, Any]:
    """Run each path in its own process on every study and gather the figures: ratios
    against the baseline on the same study, agreement of each graph runtime with PyTorch,
    and which targets the default runtime (what ``predict --runtime auto`` picks) meets.

    With ``rounds`` > 1 every path but the baseline runs that many times in a fresh process
    each, the paths taking turns; medians are over all rounds' runs, cold start is the
    median over rounds and peak memory the largest.

    The graph runtimes need ONNX graphs exported from the bundle's weights; when the
    bundle has none, a copy is exported under ``out_dir`` and the bundle is not touched;
    the same for the int8 U-Net of "onnx-int8", calibrated on ``calibration`` (default: the
    benchmark studies)."""
    from ichseg.infer.onnx_export import export_int8_unet, export_onnx, onnx_is_current
    from ichseg.infer.pipeline import resolve_runtime
    from ichseg.infer.shipped import default_model_dir

    paths = paths or available_paths()
    model_dir = Path(model_dir) if model_dir else default_model_dir()
    graph_dir = model_dir
    need_fp32 = any(split_path(p)[0] in ("onnx", "openvino", "onnx-int8") for p in paths) and not onnx_is_current(model_dir)
    need_int8 = "onnx-int8" in paths and not onnx_is_current(model_dir, "onnx-int8")
    if need_fp32 or need_int8:
        import shutil

        graph_dir = Path(out_dir) / "model-onnx"
        shutil.copytree(model_dir, graph_dir, dirs_exist_ok=True)
        if need_fp32:
            export_onnx(graph_dir)
        if need_int8:
            export_int8_unet(graph_dir, calibration or list(studies.values()))
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
    for k in range(rounds):  # paths take turns, so a slow spell of a shared machine hits all of them
        for path in paths:
            if path == "baseline" and k:
                continue  # one round: its seconds per study dwarf any drift
            cmd = [sys.executable, "-m", "ichseg.experiments.bench", "--worker", path, "--out", str(out_dir / path / f"round{k}")]
            cmd += [arg for label, study in studies.items() for arg in ("--study", f"{label}={study}")]
            cmd += ["--repeats", str(baseline_repeats if path == "baseline" else repeats)]
            if path != "baseline":
                cmd += ["--model", str(model_dir if split_path(path)[0] == "torch" else graph_dir)]
            if threads:
                cmd += ["--threads", str(threads)]
            log.info("bench: %s, round %d", path, k + 1)
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"bench path {path} failed:\n{proc.stderr[-2000:]}")
            runs[path].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    results = {path: _merge_rounds(rs) for path, rs in runs.items()}
    gflop = {kind: segmenter_gflop(None if kind == "baseline" else model_dir) for kind in {_kind(p) for p in paths}}
    for path, r in results.items():
        per_forward, forwards = gflop[_kind(path)]
        r["segmenter_gflop_per_forward"] = per_forward
        r["segmenter_gflop_per_slice"] = per_forward * forwards
        r["segmenter_only_gflop_per_s"] = per_forward / r["segmenter_forward_s_per_slice"]
        r["threads"] = threads or "runtime default"
    for path, r in results.items():
        for label, st in r["studies"].items():
            # the segmenter's work over the whole study's time: a lower bound on the
            # segmenter's own rate, since reading, the classifier and writing are in the time
            st["segmenter_gflop_per_s"] = r["segmenter_gflop_per_slice"] * st["segmented_slices"] / st["median_s"]
            base = results.get("baseline", {}).get("studies", {}).get(label)
            st["speedup_vs_baseline"] = base["median_s"] / st["median_s"] if base else None
            if path not in ("torch", "baseline") and "torch" in results:
                st["agreement_vs_torch"] = agreement(
                    out_dir / "torch" / "round0" / label / "run0", out_dir / path / "round0" / label / "run0"
                )
    from ichseg.infer.pipeline import bundle_precision

    runtime = resolve_runtime(graph_dir, "auto")
    # what `predict` runs by default: the auto runtime, at bf16 where validated and usable
    default = runtime + ("-bf16" if bundle_precision(graph_dir, runtime, "auto")[0] == "bf16" else "")
    report = {"studies": {k: str(v) for k, v in studies.items()}, "default_runtime": default, "results": results}
    if default in results:
        for label, study in studies.items():
            times = whole_process_seconds(study, graph_dir, runtime, Path(out_dir) / "whole-process" / label, max(rounds, 3))
            results[default]["studies"][label]["whole_process_s"] = statistics.median(times)
            results[default]["studies"][label]["whole_process_s_all"] = times
        report["targets"] = check_targets(results[default])
    return report


def _kind(path: str) -> str:
    """Which segmenter a path runs: the baseline's, or the bundle's (every runtime)."""
    return "baseline" if path == "baseline" else "pipeline"


def _merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One path's figures over its rounds (each a fresh process)."""
    first = rounds[0]
    studies = {}
    for label, st in first["studies"].items():
        times = [t for r in rounds for t in r["studies"][label]["seconds"]]
        studies[label] = {
            **st,
            "seconds": times,
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
        }
    colds = [r["cold_start_s"] for r in rounds]
    return {
        **first,
        "rounds": len(rounds),
        "cold_start_s": statistics.median(colds),
        "cold_start_s_all": colds,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in rounds),
        "segmenter_forward_s_per_slice": statistics.median(r["segmenter_forward_s_per_slice"] for r in rounds),
        "studies": studies,
    }


def check_targets(result: dict[str, Any]) -> dict[str, dict[str, bool]]:
    """Each of the issue's targets (``TARGETS``) against one path's figures, per study:
    ``{study: {target: met, ..., "all": ...}}``. Cold start and peak memory are per
    process, so the same for every study; agreement holds trivially for PyTorch itself; a
    missing baseline fails the ratio. The issue sets the targets for a 30-slice study;
    the "heavy" study is a stress case, reported against the same figures."""
    out = {}
    for label, st in result["studies"].items():
        t = {
            "median_s": st["median_s"] <= TARGETS["median_s"],
            "speedup_vs_baseline": (st["speedup_vs_baseline"] or 0) >= TARGETS["speedup_vs_baseline"],
            "cold_start_s": result["cold_start_s"] <= TARGETS["cold_start_s"],
            "peak_rss_mb": result["peak_rss_mb"] <= TARGETS["peak_rss_mb"],
            "mask_dice": st.get("agreement_vs_torch", {"mask_dice": 1.0})["mask_dice"] >= TARGETS["mask_dice"],
        }
        if "whole_process_s" in st and label in WHOLE_PROCESS_S:
            t["whole_process_s"] = st["whole_process_s"] <= WHOLE_PROCESS_S[label]
        out[label] = {**t, "all": all(t.values())}
    return out


def agreement(ref_dir: Path, other_dir: Path) -> dict[str, float]:
    """How far a fast path's outputs are from the PyTorch path's on the same study: Dice of
    all masks together (1.0 when both are empty), largest probability difference, and
    slices whose verdict differs."""
    import cv2

    inter = total = 0
    for m in sorted((Path(ref_dir) / "masks").glob("*_mask.png")):
        a = cv2.imread(str(m), cv2.IMREAD_GRAYSCALE) > 127
        b = cv2.imread(str(Path(other_dir) / "masks" / m.name), cv2.IMREAD_GRAYSCALE) > 127
        inter += int((a & b).sum())
        total += int(a.sum() + b.sum())
    ra, rb = (json.loads((Path(d) / "predictions.json").read_text())["slices_detail"] for d in (ref_dir, other_dir))
    keys = ("classifier_probability", "unet_max_probability")
    return {
        "mask_dice": 2 * inter / total if total else 1.0,
        "max_probability_difference": max((abs(x[k] - y[k]) for x, y in zip(ra, rb, strict=True) for k in keys), default=0.0),
        "verdicts_differing": sum(x["hemorrhage"] != y["hemorrhage"] for x, y in zip(ra, rb, strict=True)),
    }


def markdown(report: dict[str, Any]) -> str:
    """The table ``ichseg bench`` prints: one row per study and path."""
    lines = [
        "| study | path | slices (segmented) | median s/study | min–max s | × vs baseline | cold start s | peak RSS MB | "
        "segmenter GFLOP/slice | GFLOP/s (whole study) | GFLOP/s (segmenter alone) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    labels = list(next(iter(report["results"].values()))["studies"])
    for label in labels:
        for r in report["results"].values():
            st = r["studies"][label]
            ratio = f"{st['speedup_vs_baseline']:.1f}" if st["speedup_vs_baseline"] else "–"
            lines.append(
                f"| {label} | {r['path']} | {st['slices']} ({st['segmented_slices']}) | {st['median_s']:.2f} | "
                f"{st['min_s']:.2f}–{st['max_s']:.2f} | {ratio} | {r['cold_start_s']:.2f} | {r['peak_rss_mb']:.0f} | "
                f"{r['segmenter_gflop_per_slice']:.1f} | {st['segmenter_gflop_per_s']:.0f} | "
                f"{r['segmenter_only_gflop_per_s']:.0f} |"
            )
    lines.append("")
    for label in labels:
        for r in report["results"].values():
            a = r["studies"][label].get("agreement_vs_torch")
            if a:
                lines.append(
                    f"{label}, {r['path']} vs torch: mask Dice {a['mask_dice']:.4f}, largest probability difference "
                    f"{a['max_probability_difference']:.1e}, {a['verdicts_differing']} slice verdict(s) differ."
                )
    for label in labels:
        st = report["results"].get(report.get("default_runtime"), {}).get("studies", {}).get(label, {})
        if "whole_process_s" in st:
            lines.append(
                f"{label}, `ichseg predict` as a whole process on {report['default_runtime']}: median "
                f"{st['whole_process_s']:.2f} s over {len(st['whole_process_s_all'])} runs "
                f"(target ≤ {WHOLE_PROCESS_S.get(label)} s)."
            )
    if "targets" in report:
        lines.append(f"\ntargets: {TARGETS}, whole process {WHOLE_PROCESS_S}")
        for label, t in report["targets"].items():
            failed = [k for k, ok in t.items() if k != "all" and not ok]
            verdict = "all met" if t["all"] else "NOT met: " + ", ".join(failed)
            lines.append(f"{label} study, default runtime ({report['default_runtime']}): {verdict}")
    return "\n".join(lines) + "\n"


def _study_arg(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=PATH")
    return label, Path(path)


def _main() -> None:
    p = argparse.ArgumentParser(prog="python -m ichseg.experiments.bench", allow_abbrev=False)
    p.add_argument("--worker", choices=PATHS, required=True)
    p.add_argument("--study", type=_study_arg, action="append", required=True, help="LABEL=PATH, repeatable")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    print(json.dumps(worker(a.worker, dict(a.study), a.out, a.repeats, a.model, a.threads)))


if __name__ == "__main__":
    _main()
