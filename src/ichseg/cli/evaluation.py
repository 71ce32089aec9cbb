"""``ichseg evaluate | stress | check-precision | bench``: how good and how fast a model is,
measured by commands whose output is committed beside the claims."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

from ichseg.cli.options import add_common, bundle_dir

log = logging.getLogger(__name__)


def evaluate_model(
    model_dir: Path,
    data: Path,
    out: Path,
    *,
    split: Path | None,
    part: str,
    cache: Path | None,
    skip_bad: bool,
    progress: bool,
    image_size: int | None,
    train_examples: bool = False,
    screen_threshold: str | None = None,
) -> dict:
    """Evaluate a bundle (optionally on one part of a split) and write report and figures.
    ``screen_threshold`` ("none" or a number) overrides a fold ensemble's screening, to
    measure what the cascade changes.

    Training time and hardware are added to the report when the bundle sits in a work
    folder made by ``train``/``run`` (``model_dir/../train``)."""
    from ichseg.data.datasets import index_dataset
    from ichseg.data.splits import load_split, select
    from ichseg.evaluate.report import ensure_caches, evaluate_records, example_figure, write_report
    from ichseg.infer.pipeline import load_bundle

    bundle = load_bundle(model_dir)
    if screen_threshold is not None:
        value = None if screen_threshold == "none" else float(screen_threshold)
        bundle = dataclasses.replace(bundle, pipeline=dataclasses.replace(bundle.pipeline, screen_threshold=value))
    records = index_dataset(data, skip_bad=skip_bad, expected_size_px=image_size).records
    cache_root = cache or (out / "cache")
    sp = load_split(split) if split else None
    eval_records = select(records, sp[part]) if sp else records
    if not eval_records:
        raise SystemExit(f"no slices to evaluate (split {split}, part {part})")
    eval_records = ensure_caches(bundle, eval_records, cache_root, skip_bad=skip_bad, progress=progress)
    ev = evaluate_records(bundle, eval_records, cache_root, progress=progress)
    ev.metrics["evaluated_part"] = part if sp else "all"
    from ichseg.experiments.folds import patient_fingerprints

    trained = set(bundle.meta.get("trained_on", {}).get("patient_fingerprints", {}).values())
    seen = sorted(pid for pid, fp in patient_fingerprints(eval_records).items() if fp in trained)
    ev.metrics["patients_seen_in_training"] = seen
    if seen:
        log.warning(
            "%d of the evaluated patients were in this model's training data: these figures are not a test result",
            len(seen),
        )
    from ichseg.experiments.workflow import hardware, training_summary

    if summary := training_summary(model_dir.parent) or bundle.meta.get("training"):
        ev.metrics["training"] = summary
    ev.metrics["hardware"] = hardware()
    write_report(ev, out)
    label = "unseen (validation) slices" if sp and part == "val" else "evaluated slices"
    example_figure(bundle, eval_records, cache_root, out / "examples_unseen.png", f"U-Net on {label}")
    if sp and train_examples:
        tr = ensure_caches(bundle, select(records, sp["train"]), cache_root, skip_bad=skip_bad)
        example_figure(bundle, tr, cache_root, out / "examples_training.png", "U-Net on training slices")
    # the training history beside a work folder's bundle, or shipped inside a released one
    hist = next(
        (h for h in (model_dir.parent / "train" / "unet" / "history.csv", model_dir / "unet_history.csv") if h.exists()), None
    )
    if hist is not None:
        from ichseg.evaluate.figures import plot_dice_history
        from ichseg.train.loop import read_history

        plot_dice_history(read_history(hist), out / "dice_per_epoch.png")
    return ev.metrics


def print_metrics(m: dict, out: Path) -> None:
    s, p = m["slice"], m["pixel"]
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(
        f"{m['slices']} slices: recall {f(s['recall'])}, precision {f(s['precision'])}, specificity {f(s['specificity'])} "
        f"(TP {s['tp']} TN {s['tn']} FP {s['fp']} FN {s['fn']}); Dice {f(p['dice_global'])}, IoU {f(p['iou_global'])}, "
        f"mean Dice on slices with blood {f(p['dice_mean_positive'])}"
    )
    print(f"report -> {out / 'metrics.json'}, {out / 'metrics.md'}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    m = evaluate_model(
        bundle_dir(args),
        Path(args.data),
        out,
        split=args.split,
        part=args.part,
        cache=args.cache,
        skip_bad=args.skip_bad,
        progress=not args.no_progress,
        image_size=args.image_size or None,
        train_examples=True,
        screen_threshold=args.screen_threshold,
    )
    print_metrics(m, out)
    return 0


def cmd_stress(args: argparse.Namespace) -> int:
    from ichseg.experiments.stress import markdown, run_stress
    from ichseg.files import atomic_write_text

    t0 = time.perf_counter()
    out = Path(args.out)
    result = run_stress(
        Path(args.cv),
        Path(args.cv_work),
        Path(args.data),
        Path(args.cv_work) / "stress" / Path(args.cv).name,  # per-fold rows: megabytes, kept with the runs
        policy=args.policy,
        expected_size_px=args.image_size or None,
        skip_bad=args.skip_bad,
        folds=args.fold,
    )
    if result is None:
        print(f"per-fold stress rows -> {Path(args.cv_work) / 'stress' / Path(args.cv).name}/ (the table needs every fold)")
        return 0
    result["seconds_this_call"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(out, __import__("json").dumps(result, indent=1) + "\n")
    print(markdown(result), end="")
    print(f"-> {out}")
    return 0


def _bench_paths(text: str) -> tuple[str, ...]:
    from ichseg.experiments.bench import PATHS as known

    paths = tuple(p.strip() for p in text.split(","))
    unknown = [p for p in paths if p not in known]
    if unknown or not paths:
        raise argparse.ArgumentTypeError(f"unknown path(s) {unknown}; choose from {', '.join(known)}")
    return paths


def cmd_check_precision(args: argparse.Namespace) -> int:
    """Run the bundle at float32 and bf16 on real studies; with --record, allow bf16 for
    ``predict --precision auto`` when they agree (ichseg.evaluate.precision)."""
    from ichseg.evaluate.precision import compare_precisions, spread_patients, write_record

    studies = [Path(p) for p in args.study] if args.study else spread_patients(Path(args.data), args.patients)
    if not studies:
        raise SystemExit("check-precision needs --data or --study")
    model_dir = bundle_dir(args)
    r = compare_precisions(model_dir, studies, runtime=args.runtime, repeats=args.repeats)
    if args.out:
        from ichseg.files import atomic_write_text

        atomic_write_text(Path(args.out), json.dumps(r, indent=1) + "\n")
    for name, row in r["studies"].items():
        print(
            f"{name}: Dice {row['dice']:.4f} over {row['slices']} slices, {len(row['verdict_differs'])} verdict(s) differ, "
            f"fp32 {row['fp32_s']:.2f} s, bf16 {row['bf16_s']:.2f} s"
        )
    if args.record:
        print(f"recorded -> {write_record(model_dir, r)}")
    print(f"bf16 on {r['runtime']}: {'PASSED' if r['passed'] else 'NOT passed'}: {r['reason']}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ichseg.config import save_json
    from ichseg.experiments.bench import markdown, pick_calibration, pick_studies, run_bench
    from ichseg.experiments.workflow import hardware

    out = Path(args.out)
    if args.train_steps:
        from ichseg.config import preset
        from ichseg.train.speed import markdown as step_table
        from ichseg.train.speed import measure

        result = measure(preset(args.train_preset).unet, tuple(int(v) for v in args.train_steps.split(",")))
        save_json(result, out / "train_steps.json")
        print(step_table(result), end="")
        print(f"-> {out / 'train_steps.json'}")
        return 0
    studies = pick_studies(args.data, out)
    report = run_bench(
        studies,
        out,
        repeats=args.repeats,
        baseline_repeats=args.baseline_repeats,
        model_dir=args.model,
        threads=args.threads,
        paths=args.paths,
        calibration=pick_calibration(args.data, studies),
        rounds=args.rounds,
    )
    report["hardware"] = hardware()
    save_json(report, out / "bench.json")
    for label, study in studies.items():
        print(f"{label} study: {study}")
    print(markdown(report), end="")
    print(f"-> {out / 'bench.json'}")
    return 0


def register(sub) -> None:
    """Add this group's subcommands to the parser."""
    from ichseg.config import PRESETS

    s = sub.add_parser("evaluate", help="metrics.json, tables and figures for a model on CT-ICH-layout data", allow_abbrev=False)
    add_common(s)
    s.add_argument("--model", type=Path, default=None, help="model bundle folder (default: the shipped model)")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--split", type=Path, default=None, help="split.json: evaluate only its --part patients")
    s.add_argument("--part", choices=("train", "val"), default="val")
    s.add_argument("--cache", type=Path, default=None, help="preprocessing cache folder to reuse (default OUT/cache)")
    s.add_argument(
        "--screen-threshold",
        default=None,
        help="fold ensembles: override the screening threshold ('none': all members everywhere)",
    )
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser(
        "stress",
        help="rerun a fold ensemble's CV on perturbed inputs (brightness, contrast, gamma, noise, blur)",
        allow_abbrev=False,
    )
    add_common(s)
    s.add_argument("--cv", type=Path, required=True, help="the ensemble's fold JSONs (e.g. results/cv/robust)")
    s.add_argument("--cv-work", type=Path, default=Path("runs/cv"), help="the cv --out folder with the members and cache")
    s.add_argument("--policy", default=None, help="operating-point policy (default scan_safe_f2_dice)")
    s.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the stress JSON (e.g. results/stress/robust.json); per-fold rows go to CV_WORK/stress/",
    )
    s.add_argument("--fold", type=int, action="append", default=None, help="only compute this fold's rows (repeatable)")
    s.set_defaults(func=cmd_stress)

    s = sub.add_parser(
        "check-precision", help="do bf16 masks agree with float32 on real studies? (--record lets predict use bf16)"
    )
    s.add_argument("--data", type=Path, default=None, help="CT-ICH folder: --patients studies spread over its IDs")
    s.add_argument("--patients", type=int, default=5, help="how many studies to take from --data")
    s.add_argument("--study", action="append", default=None, help="a study folder (repeatable; instead of --data)")
    s.add_argument("--model", type=Path, default=None, help="model bundle (default: the shipped model)")
    s.add_argument("--runtime", choices=("torch", "openvino"), default="openvino")
    s.add_argument("--repeats", type=int, default=1, help="timed runs per study and precision (after one warm-up)")
    s.add_argument("--out", type=Path, default=None, help="write the full result (per study) as JSON here")
    s.add_argument("--record", action="store_true", help="write precision.json into the bundle")
    s.set_defaults(func=cmd_check_precision)

    s = sub.add_parser("bench", help="time a study end to end: the paper's U-Net vs the shipped pipeline", allow_abbrev=False)
    s.add_argument("--data", type=Path, default=None, help="CT-ICH folder to take a ~30-slice study from (default: generated)")
    s.add_argument("--out", type=Path, required=True, help="folder for bench.json and the outputs")
    s.add_argument("--model", type=Path, default=None, help="model bundle (default: the shipped model)")
    s.add_argument("--repeats", type=int, default=3, help="timed runs per study per path in each round")
    s.add_argument("--rounds", type=int, default=3, help="fresh processes per path, the paths taking turns")
    s.add_argument("--baseline-repeats", type=int, default=2, help="timed runs of the (slow) baseline")
    s.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    s.add_argument(
        "--paths",
        type=_bench_paths,
        default=None,
        help="comma-separated subset of baseline,torch,onnx,openvino,onnx-int8,torch-bf16,openvino-bf16 "
        "(default: all installed; the bf16 ones where the CPU has bf16)",
    )
    s.add_argument(
        "--train-steps",
        default=None,
        metavar="PX,PX",
        help="instead: seconds per sample of a training step at these input sizes (e.g. 192,256,384), fp32 and bf16",
    )
    s.add_argument("--train-preset", choices=PRESETS, default="robust-384", help="whose U-Net --train-steps times")
    s.set_defaults(func=cmd_bench)
