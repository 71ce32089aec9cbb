"""Command line: ``ichseg index | train | evaluate | predict | cv | cv-table | release | run``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _demo_data():  # imported lazily: keeps the synthetic module out of CLI start-up
    """The embedded default dataset of ``ichseg run``: big enough that 4 held-out patients
    show learning, small enough to train in a few minutes."""
    from ichseg.data.synthetic import SyntheticConfig

    return SyntheticConfig(n_patients=24, slices_per_patient=16, seed=0)


def _config(args: argparse.Namespace, default_preset: str):
    from ichseg.config import RunConfig, from_dict, load_json, preset

    if getattr(args, "config", None):
        cfg = from_dict(RunConfig, load_json(args.config))
    else:
        cfg = preset(args.preset or default_preset)
    if getattr(args, "epochs", None):
        cfg = dataclasses.replace(
            cfg,
            train_unet=dataclasses.replace(cfg.train_unet, epochs=args.epochs),
            train_classifier=dataclasses.replace(cfg.train_classifier, epochs=min(args.epochs, cfg.train_classifier.epochs)),
        )
    if getattr(args, "device", None):
        cfg = dataclasses.replace(
            cfg,
            train_unet=dataclasses.replace(cfg.train_unet, device=args.device),
            train_classifier=dataclasses.replace(cfg.train_classifier, device=args.device),
        )
    return cfg


def cmd_index(args: argparse.Namespace) -> int:
    from ichseg.experiments.workflow import index_stage

    res = index_stage(args.data, args.out, skip_bad=args.skip_bad, expected_size_px=args.image_size or None)
    pos = sum(r.hemorrhage for r in res.records)
    print(
        f"{len(res.records)} slices, {len({r.patient_id for r in res.records})} patients, {pos} with hemorrhage "
        f"-> {Path(args.out) / 'index.csv'}"
    )
    if res.disagreements:
        print(f"{len(res.disagreements)} mask/No_Hemorrhage disagreement(s) -> {Path(args.out) / 'label_disagreements.csv'}:")
        for d in res.disagreements:
            print(f"  patient {d.patient_id} slice {d.slice}: {d.detail}")
    else:
        print("mask-derived labels agree with No_Hemorrhage on every slice")
    if res.skipped:
        print(f"{len(res.skipped)} slice(s) skipped (--skip-bad)")
    return 0


def _train(args: argparse.Namespace, cfg, data: Path, out: Path) -> None:
    import torch.distributed as dist

    from ichseg.experiments.workflow import bundle_stage, prepare, train_stage

    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank > 0:  # under torchrun: process 0 indexes and preprocesses, the others reuse its cache
        dist.barrier()
    prep = prepare(
        data,
        out,
        cfg,
        skip_bad=args.skip_bad,
        progress=not args.no_progress and rank == 0,
        expected_size_px=args.image_size or None,
    )
    if rank == 0 and dist.is_initialized():
        dist.barrier()
    stages = ["classifier", "unet"] if args.stage == "both" else [args.stage]
    for which in stages:
        t0 = time.perf_counter()
        res = train_stage(prep, which, resume=args.resume, progress=not args.no_progress)
        if rank > 0:
            continue
        print(
            f"{which}: best validation {'Dice' if which == 'unet' else 'ROC AUC'} {res.best_score:.4f} at epoch "
            f"{res.best_epoch}, {res.epochs_run} epochs, {res.seconds:.0f} s"
            f"{' (early stop)' if res.stopped_early else ''} [{time.perf_counter() - t0:.0f} s this call]"
        )
    if rank > 0:
        return
    if args.stage == "both" or all((out / "train" / w / "best.json").exists() for w in ("classifier", "unet")):
        print(f"model bundle -> {bundle_stage(out, cfg, prep=prep)}")


def cmd_train(args: argparse.Namespace) -> int:
    _train(args, _config(args, "cpu"), Path(args.data), Path(args.out))
    return 0


def _evaluate(
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
    from ichseg.data.ctich import build_index
    from ichseg.data.splits import load_split, select
    from ichseg.evaluate.report import ensure_caches, evaluate_records, example_figure, write_report
    from ichseg.infer.pipeline import load_bundle

    bundle = load_bundle(model_dir)
    if screen_threshold is not None:
        value = None if screen_threshold == "none" else float(screen_threshold)
        bundle = dataclasses.replace(bundle, pipeline=dataclasses.replace(bundle.pipeline, screen_threshold=value))
    records = build_index(data, skip_bad=skip_bad, expected_size_px=image_size).records
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


def _print_metrics(m: dict, out: Path) -> None:
    s, p = m["slice"], m["pixel"]
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(
        f"{m['slices']} slices: recall {f(s['recall'])}, precision {f(s['precision'])}, specificity {f(s['specificity'])} "
        f"(TP {s['tp']} TN {s['tn']} FP {s['fp']} FN {s['fn']}); Dice {f(p['dice_global'])}, IoU {f(p['iou_global'])}, "
        f"mean Dice on slices with blood {f(p['dice_mean_positive'])}"
    )
    print(f"report -> {out / 'metrics.json'}, {out / 'metrics.md'}")


def _model_dir(args: argparse.Namespace) -> Path:
    """``--model`` or, when none is named, the model shipped inside the package."""
    from ichseg.infer.shipped import default_model_dir

    return Path(args.model) if args.model else default_model_dir()


def cmd_evaluate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    m = _evaluate(
        _model_dir(args),
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
    _print_metrics(m, out)
    return 0


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
    bundle = load_bundle(_model_dir(args), runtime=args.runtime, precision=args.precision)
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
    bundle = load_bundle(_model_dir(args), runtime=args.runtime, precision=args.precision)
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

    summary = predict_batch(
        args.path,
        args.out,
        _model_dir(args),
        workers=args.workers,
        runtime=args.runtime,
        precision=args.precision,
        overlays=not args.no_overlays,
        on_result=on_result,
    )
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
    model_dir = _model_dir(args)
    for path in export_onnx(model_dir):
        print(f"exported {path}")
    if args.int8:
        from ichseg.experiments.bench import pick_calibration

        print(f"exported {export_int8_unet(model_dir, pick_calibration(args.data, {}))}")
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
    model_dir = _model_dir(args)
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


def cmd_convert(args: argparse.Namespace) -> int:
    from ichseg.data.convert import convert_patient_detailed, summary_lines

    result = convert_patient_detailed(Path(args.patient), args.to, Path(args.out))
    print("\n".join(summary_lines(result)))
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


def cmd_run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.data is None:
        from ichseg.data.synthetic import generate_dataset

        data = out / "synthetic-data"
        if not (data / "Patients_CT").exists():
            generate_dataset(data, _demo_data())
            print(f"generated the embedded synthetic dataset -> {data}")
        cfg = _config(args, "demo")
    else:
        data = Path(args.data)
        cfg = _config(args, "cpu")
    t0 = time.perf_counter()
    args.stage = "both"
    _train(args, cfg, data, out)
    m = _evaluate(
        out / "model",
        data,
        out / "evaluation",
        split=out / "split.json",
        part="val",
        cache=out / "cache",
        skip_bad=args.skip_bad,
        progress=not args.no_progress,
        image_size=args.image_size or None,
        train_examples=True,
    )
    _print_metrics(m, out / "evaluation")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    from ichseg.experiments.folds import train_fold

    cfg = _config(args, "cpu")
    if cfg.cv_inner_validation:  # two stages, each fold calibrated on its inner validation patients
        from ichseg.experiments.crossval import run_fold
    else:  # a fold-ensemble member: fixed length, operating point chosen on the pooled folds
        from ichseg.experiments.ensemble import run_member_fold as run_fold
    common = {
        "progress": not args.no_progress,
        "skip_bad": args.skip_bad,
        "expected_size_px": args.image_size or None,
    }
    for fold in args.fold or range(args.folds):
        if not 0 <= fold < args.folds:
            raise ValueError(f"--fold {fold} is not in 0..{args.folds - 1}")
        done = Path(args.results) / args.name / f"fold{fold}.json"
        if done.exists() and not args.redo:
            print(f"fold {fold}: {done} exists, skipped (--redo to evaluate it again)")
            continue
        if args.train_only:
            t0 = time.perf_counter()
            train_fold(Path(args.data), Path(args.out), cfg, args.name, fold, args.folds, **common)
            print(f"fold {fold}: trained ({(time.perf_counter() - t0) / 60:.1f} min this call)")
            continue
        path = run_fold(Path(args.data), Path(args.out), cfg, args.name, fold, args.folds, Path(args.results), **common)
        print(f"fold {fold} -> {path}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from ichseg.experiments.folds import is_ensemble_dir
    from ichseg.experiments.release import install, train_release

    t0 = time.perf_counter()
    if args.recalibrate is not None:
        from ichseg.experiments.assemble import recalibrate

        s = recalibrate(Path(args.recalibrate), Path(args.cv), policy=args.policy)
        print(f"{args.recalibrate}: operating point {s['operating_point']} (pooled {s['pooled']['slice']})")
        return 0
    if is_ensemble_dir(Path(args.cv)) and args.single:  # one network on every patient, the CV's own rule
        from ichseg.experiments.single import release_single

        bundle = release_single(
            Path(args.data),
            Path(args.cv_work),
            Path(args.cv),
            Path(args.out) / "model",
            policy=args.policy,
            progress=not args.no_progress,
            skip_bad=args.skip_bad,
            expected_size_px=args.image_size or None,
        )
        print(f"single network -> {bundle} ({(time.perf_counter() - t0) / 60:.1f} min)")
        if args.install:
            print(f"installed as the shipped model -> {install(bundle)}")
        return 0
    if is_ensemble_dir(Path(args.cv)):  # the fold members are the model: assembled, not retrained
        from ichseg.experiments.assemble import assemble

        bundle = assemble(
            Path(args.cv),
            Path(args.cv_work),
            Path(args.out) / "model",
            data_dir=Path(args.data),
            expected_size_px=args.image_size or None,
            policy=args.policy,
        )
        print(f"fold ensemble -> {bundle} ({(time.perf_counter() - t0) / 60:.1f} min)")
        if args.install:
            print(f"installed as the shipped model -> {install(bundle)}")
        return 0
    bundle = train_release(
        Path(args.data),
        Path(args.out),
        _config(args, "hires"),
        Path(args.cv),
        resume=args.resume,
        progress=not args.no_progress,
        skip_bad=args.skip_bad,
        expected_size_px=args.image_size or None,
    )
    print(f"model bundle -> {bundle} ({(time.perf_counter() - t0) / 60:.1f} min)")
    if args.install:
        print(f"installed as the shipped model -> {install(bundle)}")
    return 0


def cmd_cv_table(args: argparse.Namespace) -> int:
    from ichseg.experiments.crossval import markdown, policy_table, summarize
    from ichseg.experiments.folds import is_ensemble_dir

    print(markdown(summarize(Path(args.results))), end="")
    policies = policy_table(Path(args.results))
    if policies.count("\n") > 2:
        print("\nOperating-point policies (each fold chooses on its inner validation patients; held-out metrics):\n")
        print(policies, end="")
    for cfg_dir in sorted(p for p in Path(args.results).iterdir() if p.is_dir() and is_ensemble_dir(p)):
        from ichseg.experiments.ensemble import markdown as ensemble_markdown
        from ichseg.experiments.ensemble import summarize_members

        summary = summarize_members(cfg_dir, args.policy)
        print(f"\n## {cfg_dir.name} (fold ensemble, {summary['folds']}/{summary['of']} folds)\n")
        print(ensemble_markdown(summary), end="")
        if args.json:
            from ichseg.files import atomic_write_text

            path = Path(args.json) / f"{cfg_dir.name}.json"
            atomic_write_text(path, __import__("json").dumps(summary, indent=1) + "\n")
            print(f"\nsummary -> {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ichseg import __version__
    from ichseg.config import PRESETS
    from ichseg.infer.runtimes import GRAPH_RUNTIMES

    p = argparse.ArgumentParser(
        prog="ichseg", description="Intracranial hemorrhage detection and segmentation on head CT.", allow_abbrev=False
    )
    p.add_argument("--version", action="version", version=f"ichseg {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, third-party libraries' too")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, data_required: bool = True) -> None:
        sp.add_argument(
            "--data", type=Path, required=data_required, default=None, help="CT-ICH-layout folder (Patients_CT/, CSVs)"
        )
        sp.add_argument("--skip-bad", action="store_true", help="warn about and leave out bad slices instead of stopping")
        sp.add_argument("--image-size", type=int, default=650, help="expected source image size in px (0: any size)")
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")

    s = sub.add_parser("index", help="scan a CT-ICH folder into index.csv", allow_abbrev=False)
    common(s)
    s.add_argument("--out", type=Path, required=True, help="folder for index.csv and label_disagreements.csv")
    s.set_defaults(func=cmd_index)

    def train_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--preset", choices=PRESETS, default=None, help="named configuration (see README)")
        sp.add_argument("--config", type=Path, default=None, help="RunConfig JSON (overrides --preset)")
        sp.add_argument("--epochs", type=int, default=None, help="cap the number of epochs")
        sp.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
        sp.add_argument(
            "--device", choices=("cpu", "cuda", "auto"), default=None, help="where to train (default: the configuration's, cpu)"
        )

    s = sub.add_parser("train", help="index, preprocess, split and train (classifier, U-Net or both)", allow_abbrev=False)
    common(s)
    train_opts(s)
    s.add_argument("--out", type=Path, required=True, help="work folder (caches, split, checkpoints, model/)")
    s.add_argument("--stage", choices=("classifier", "unet", "both"), default="both")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="metrics.json, tables and figures for a model on CT-ICH-layout data", allow_abbrev=False)
    common(s)
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

    s = sub.add_parser("cv", help="k-fold cross-validation by patient; one JSON per fold", allow_abbrev=False)
    common(s)
    train_opts(s)
    s.add_argument("--out", type=Path, required=True, help="work folder (caches, per-fold runs)")
    s.add_argument("--name", required=True, help="configuration name (results/cv/NAME/fold<k>.json)")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--fold", type=int, action="append", default=None, help="run only this fold (repeatable)")
    s.add_argument("--results", type=Path, default=Path("results/cv"), help="where fold JSONs go")
    s.add_argument("--train-only", action="store_true", help="train the folds' networks, evaluate later")
    s.add_argument("--redo", action="store_true", help="evaluate folds whose JSON exists again (training is reused)")
    s.set_defaults(func=cmd_cv)

    s = sub.add_parser(
        "convert",
        help="a CT-ICH patient folder (brain and bone JPGs) as a synthetic DICOM series or NIfTI volume in HU",
        allow_abbrev=False,
    )
    s.add_argument("patient", type=Path, help="Patients_CT/<ID> (brain/ and bone/ JPGs; *_HGE_Seg.jpg masks become mask.nii.gz)")
    s.add_argument("--to", choices=("dicom", "nifti"), required=True)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser(
        "stress",
        help="rerun a fold ensemble's CV on perturbed inputs (brightness, contrast, gamma, noise, blur)",
        allow_abbrev=False,
    )
    common(s)
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

    s = sub.add_parser("cv-table", help="rebuild the CV table from fold JSONs (no training)", allow_abbrev=False)
    s.add_argument("--results", type=Path, default=Path("results/cv"))
    s.add_argument("--policy", default=None, help="operating-point policy of fold ensembles (ichseg.evaluate.oof.POLICIES)")
    s.add_argument("--json", type=Path, default=None, help="folder for each fold ensemble's summary JSON")
    s.set_defaults(func=cmd_cv_table)

    s = sub.add_parser(
        "release", help="train one configuration on every patient with its CV epochs and operating point", allow_abbrev=False
    )
    common(s)
    train_opts(s)
    s.add_argument("--out", type=Path, required=True, help="work folder (caches, checkpoints, model/)")
    s.add_argument("--cv", type=Path, required=True, help="the configuration's fold JSONs (e.g. results/cv/hires)")
    s.add_argument("--cv-work", type=Path, default=Path("runs/cv"), help="fold ensembles: the cv --out folder with the members")
    s.add_argument("--policy", default=None, help="fold ensembles: operating-point policy (default scan_safe_f2_dice)")
    s.add_argument("--install", action="store_true", help="copy the bundle into the package as the shipped default")
    s.add_argument(
        "--single",
        action="store_true",
        help="fold ensembles: instead of the K members, train one network on every patient (the rule the folds measured; "
        "trains under --cv-work/<name>/all)",
    )
    s.add_argument(
        "--recalibrate",
        type=Path,
        default=None,
        metavar="MODEL",
        help="fold ensembles: choose MODEL's operating point again from --cv (weights untouched) and stop",
    )
    s.set_defaults(func=cmd_release)

    s = sub.add_parser("run", help="index → preprocess → train both stages → evaluate → figures", allow_abbrev=False)
    common(s, data_required=False)
    train_opts(s)
    s.add_argument("--out", type=Path, default=Path("ichseg-run"), help="work folder (default ./ichseg-run)")
    s.set_defaults(func=cmd_run)
    return p


def _init_distributed(args: argparse.Namespace) -> None:
    """Join the process group when launched by torchrun (it sets WORLD_SIZE, RANK,
    LOCAL_RANK, MASTER_*). Only ``train`` runs distributed: CPU processes on gloo, or, when
    the configuration trains on a GPU, one GPU per process (that of LOCAL_RANK) on NCCL."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if args.command != "train":
        raise SystemExit(f"ichseg {args.command} does not run under torchrun; only `ichseg train` does")
    import torch
    import torch.distributed as dist

    from ichseg.train.loop import resolve_device

    gpu = resolve_device(_config(args, "cpu").train_unet.device).type == "cuda"  # "cuda" without a GPU: an error
    if gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if gpu else "gloo")
    if dist.get_rank() > 0:
        args.no_progress = True


TORCH_COMMANDS = ("train", "evaluate", "cv", "release", "run", "export")


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """ichseg's own progress at INFO (DEBUG with -v, WARNING with -q); every other library
    (highdicom, WeasyPrint, fontTools, OpenVINO, ...) at WARNING unless -v, so the answer is
    not buried under their chatter and stays the last thing printed."""
    own = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ichseg").setLevel(own)
    if not verbose:  # WeasyPrint's font notes (fontTools vs HarfBuzz) are for its developers, not for a reader
        for name in ("weasyprint", "fontTools"):
            logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in TORCH_COMMANDS:  # predict and bench load PyTorch only if their runtime needs it
        import torch

        # Flush denormal floats to zero before torch starts its worker threads (they inherit
        # the setting): late in training, denormal gradients make backward passes ~5× slower.
        torch.set_flush_denormal(True)
    _init_distributed(args)
    configure_logging(verbose=args.verbose, quiet=args.quiet)
    from ichseg.errors import DatasetError

    try:
        return int(args.func(args) or 0)
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"ichseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ichseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
