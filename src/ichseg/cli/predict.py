"""``ichseg predict`` and ``ichseg export``: answers for a study (DICOM series, NIfTI volume,
slices or a folder of studies), and a bundle's graphs for the other runtimes."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ichseg.cli.options import bundle_dir


def cmd_predict(args: argparse.Namespace) -> int:
    from ichseg.infer.batch import is_batch_root
    from ichseg.infer.pipeline import load_bundle
    from ichseg.infer.predict import predict_path

    if args.sample:
        if args.path is not None:
            raise SystemExit("give either PATH or --sample, not both")
        from ichseg.data.convert import convert_patient
        from ichseg.sample import sample_study_dir

        args.path = convert_patient(sample_study_dir(), "dicom", Path(args.out) / "input_dicom")
        print(f"sample study (CT-ICH, CC BY 4.0) converted to a DICOM series -> {args.path}")
    if args.path is None:
        raise SystemExit("predict needs PATH (or --sample)")
    from ichseg.infer.volume import detect_input

    kind = detect_input(Path(args.path))
    if kind != "images":
        return _predict_volume(args, kind)
    if is_batch_root(args.path):
        return _predict_batch(args)
    bundle = load_bundle(bundle_dir(args), runtime=args.runtime, precision=args.precision)
    t0 = time.perf_counter()
    rows = predict_path(bundle, Path(args.path), Path(args.out), write_overlays=not args.no_overlays)
    pos = [r["slice"] for r in rows if r["hemorrhage"]]
    review = [r["slice"] for r in rows if r.get("review")]
    print(f"{len(rows)} slice(s) in {time.perf_counter() - t0:.1f} s; hemorrhage on {len(pos)}: {', '.join(pos) or 'none'}")
    if review:
        print(f"for review (the slice head suspects blood, nothing outlined): {', '.join(review)}")
    summary = Path(args.out) / "summary.json"
    if not summary.exists():
        print(f"masks, overlays, predictions.csv/json -> {args.out}")
        return 0
    s = json.loads(summary.read_text())
    print(f"masks, overlays, predictions.csv/json, summary.json, report.html -> {args.out}")
    verdict = "HEMORRHAGE" if s["hemorrhage"] else "no hemorrhage"
    n_les = len(s["lesions"])
    print(f"{verdict} (scan probability {s['scan_probability']:.2f}), {s['total_volume_ml']:.1f} mL in {n_les} lesion(s)")
    return 0


def _predict_volume(args: argparse.Namespace, kind: str) -> int:
    """A DICOM series or a NIfTI volume in HU: masks on its grid, volumes, SEG/SR, report."""
    from ichseg.infer.pipeline import load_bundle
    from ichseg.infer.volume import predict_volume

    t0 = time.perf_counter()
    if kind == "dicom":
        from ichseg.io.dicom import read_dicom_series

        volume = read_dicom_series(Path(args.path), series_uid=args.series)
    else:
        from ichseg.io.nifti import read_nifti

        volume = read_nifti(Path(args.path))
    bundle = load_bundle(bundle_dir(args), runtime=args.runtime, precision=args.precision)
    s = predict_volume(bundle, volume, Path(args.out), pdf=args.pdf, head_check=not args.no_head_check)
    verdict = "HEMORRHAGE" if s["hemorrhage"] else "no hemorrhage"
    print(f"{', '.join(s['outputs'])} -> {args.out}")
    if s.get("series_choice") and "only CT series" not in s["series_choice"]:
        print(f"series: {s['series_choice']}")
    if s.get("slabs"):
        print(f"{s['slabs']['input_slice_step_mm']:g} mm slices read as {s['slabs']['slabs']} slabs of ~5 mm (as CT-ICH's)")
    for les in s["lesions"]:
        sub = f", {les['subtype']} {les['subtype_probability']:.2f}" if les.get("subtype") else ""
        print(f"  lesion {les['label']}: {les['volume_ml']:.2f} mL (ABC/2 {les['abc2_ml']:.2f} mL), slices {les['slices']}{sub}")
    if s.get("review_slices"):
        print(f"for review (the slice head suspects blood, nothing outlined): slices {s['review_slices']}")
    for caution in s.get("cautions", []):
        print(f"caution: {caution}")
    if s.get("slices_not_read"):
        print(f"not read: slices {_ranges(s['slices_not_read'])}, {s['below_skull_base']['why']}")
    # the answer last
    print(
        f"{kind} {volume.shape[0]} slices, {s['spacing_mm'][1]:.2f}×{s['spacing_mm'][2]:.2f}×{s['spacing_mm'][0]:.1f} mm: "
        f"{verdict} (scan probability {s['scan_probability']:.2f}), {s['total_volume_ml']:.1f} mL in {len(s['lesions'])} "
        f"lesion(s) [{time.perf_counter() - t0:.1f} s]"
    )
    return 0


def _predict_batch(args: argparse.Namespace) -> int:
    """A folder of studies: a worker pool, one line per finished study, restartable."""
    from ichseg.infer.batch import predict_batch

    if args.engine == "ray":
        from ichseg.infer.ray_batch import require_ray

        require_ray()  # without Ray: its install hint, before any progress bar
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(unit="study", desc="predict")

    def on_result(row: dict, done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()
        status = f"error: {row['error']}" if row["error"] else f"{row['positive_slices']}/{row['slices']} slices positive"
        (bar.write if bar is not None else print)(f"{row['study']}: {status} ({row['seconds']:.1f} s)")

    common = {"runtime": args.runtime, "precision": args.precision, "overlays": not args.no_overlays, "on_result": on_result}
    if args.engine == "ray":
        from ichseg.infer.ray_batch import predict_batch_ray

        summary = predict_batch_ray(
            args.path,
            args.out,
            bundle_dir(args),
            address=args.address,
            actors=args.actors,
            cpus_per_actor=args.cpus_per_actor,
            gpus_per_actor=args.gpus_per_actor,
            **common,
        )
    else:
        summary = predict_batch(args.path, args.out, bundle_dir(args), workers=args.workers, **common)
    if bar is not None:
        bar.close()
    rate = summary["studies_per_minute"]
    print(
        f"{summary['predicted']} studies predicted, {summary['skipped_already_done']} already done, {summary['failed']} failed, "
        f"in {summary['seconds']:.1f} s"
        + (f" ({rate:.1f} studies/min)" if rate else "")
        + f" -> {Path(args.out) / 'studies.csv'}"
    )
    fit = summary["cost_fit"]
    if fit:
        print(
            f"cost per study (least squares over {fit['studies']} studies): {fit['intercept_s']:+.2f} s "
            f"+ {1000 * fit['per_slice_s']:.0f} ms per slice + {1000 * fit['per_segmented_slice_s']:.0f} ms per segmented slice"
        )
    return 1 if summary["failed"] else 0


def cmd_export(args: argparse.Namespace) -> int:
    from ichseg.infer.onnx_export import export_int8_unet, export_onnx

    if args.int8 and args.data is None:
        raise SystemExit("ichseg export: --int8 needs --data (CT-ICH-layout studies to calibrate on)")
    model_dir = bundle_dir(args)
    for path in export_onnx(model_dir):
        print(f"exported {path}")
    if args.int8:
        from ichseg.experiments.bench import pick_calibration

        print(f"exported {export_int8_unet(model_dir, pick_calibration(args.data, {}))}")
    return 0


def register(sub) -> None:
    """Add this group's subcommands to the parser."""
    from ichseg.infer.runtimes import GRAPH_RUNTIMES

    s = sub.add_parser(
        "predict",
        help="masks, verdicts and volumes for a DICOM series, a NIfTI volume, a slice, a patient folder or a folder of studies",
        allow_abbrev=False,
    )
    s.add_argument(
        "path",
        type=Path,
        nargs="?",
        default=None,
        help="a DICOM series folder, a .nii/.nii.gz volume in HU, an image, Patients_CT/<ID>, its brain/ folder, any "
        "folder of slices, or a folder of studies (e.g. Patients_CT)",
    )
    s.add_argument("--sample", action="store_true", help="the bundled sample study (CT-ICH), converted to a DICOM series")
    s.add_argument("--series", default=None, help="DICOM: the SeriesInstanceUID to read when a folder holds several")
    s.add_argument("--pdf", action="store_true", help="DICOM/NIfTI: also write report.pdf (needs WeasyPrint)")
    s.add_argument(
        "--no-head-check", action="store_true", help="DICOM/NIfTI: predict even when the images do not look like a head CT"
    )
    s.add_argument("--model", type=Path, default=None, help="model bundle folder (default: the shipped model)")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--no-overlays", action="store_true", help="skip overlay PNGs")
    s.add_argument("--workers", type=int, default=1, help="worker processes for a folder of studies")
    s.add_argument("--engine", choices=("local", "ray"), default="local", help="a folder of studies: this machine's pool, or Ray")
    s.add_argument("--address", default=None, help="--engine ray: 'auto' or HOST:PORT of a cluster (default: a local Ray)")
    s.add_argument("--actors", type=int, default=1, help="--engine ray: model-holding actors")
    s.add_argument("--cpus-per-actor", type=float, default=1.0, help="--engine ray: CPUs (and threads) per actor")
    s.add_argument("--gpus-per-actor", type=float, default=0.0, help="--engine ray: GPUs per actor")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument(
        "--runtime",
        choices=("torch", *GRAPH_RUNTIMES, "auto"),
        default="auto",
        help="inference back end; auto: the first installed graph runtime with current ONNX graphs "
        "(OpenVINO, then ONNX Runtime), else PyTorch",
    )
    s.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 where the CPU runs it (probed once in a child process) and the bundle's bf16 agreement "
        "check passed, else float32",
    )
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("export", help="export a model bundle's networks for another runtime", allow_abbrev=False)
    s.add_argument("--model", type=Path, default=None, help="model bundle folder (default: the shipped model)")
    s.add_argument("--onnx", action="store_true", required=True, help="write <stage>.onnx beside the safetensors")
    s.add_argument(
        "--int8",
        action="store_true",
        help="also write unet.int8.onnx (ONNX Runtime static quantisation) for --runtime onnx-int8",
    )
    s.add_argument("--data", type=Path, default=None, help="CT-ICH folder whose studies calibrate --int8")
    s.set_defaults(func=cmd_export)


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 7] as "1-3, 7"."""
    out: list[str] = []
    for n in sorted(numbers):
        if out and n == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)
