"""``ichseg train | run | cv | cv-table | release``: training, cross-validation and the
shipped bundle (the experiments of :mod:`ichseg.experiments`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ichseg.cli.evaluation import evaluate_model, print_metrics
from ichseg.cli.options import add_common, add_train_opts, demo_data, run_config


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
    _train(args, run_config(args, "cpu"), Path(args.data), Path(args.out))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.data is None:
        from ichseg.data.synthetic import generate_dataset

        data = out / "synthetic-data"
        if not (data / "Patients_CT").exists():
            generate_dataset(data, demo_data())
            print(f"generated the embedded synthetic dataset -> {data}")
        cfg = run_config(args, "demo")
    else:
        data = Path(args.data)
        cfg = run_config(args, "cpu")
    t0 = time.perf_counter()
    args.stage = "both"
    _train(args, cfg, data, out)
    m = evaluate_model(
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
    print_metrics(m, out / "evaluation")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    from ichseg.experiments.folds import train_fold

    cfg = run_config(args, "cpu")
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


def _install_if_asked(args: argparse.Namespace, bundle: Path) -> None:
    """``--install``: copy ``bundle`` into the package as the shipped ``--install-as`` model."""
    if args.install:
        from ichseg.experiments.release import install
        from ichseg.infer.shipped import SHIPPED_MODELS

        print(f"installed as the shipped {args.install_as} model -> {install(bundle, SHIPPED_MODELS[args.install_as])}")


def cmd_release(args: argparse.Namespace) -> int:
    from ichseg.experiments.folds import is_ensemble_dir
    from ichseg.experiments.release import train_release

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
        _install_if_asked(args, bundle)
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
        _install_if_asked(args, bundle)
        return 0
    bundle = train_release(
        Path(args.data),
        Path(args.out),
        run_config(args, "hires"),
        Path(args.cv),
        resume=args.resume,
        progress=not args.no_progress,
        skip_bad=args.skip_bad,
        expected_size_px=args.image_size or None,
    )
    print(f"model bundle -> {bundle} ({(time.perf_counter() - t0) / 60:.1f} min)")
    _install_if_asked(args, bundle)
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


def register(sub) -> None:
    """Add this group's subcommands to the parser."""
    s = sub.add_parser("train", help="index, preprocess, split and train (classifier, U-Net or both)", allow_abbrev=False)
    add_common(s)
    add_train_opts(s)
    s.add_argument("--out", type=Path, required=True, help="work folder (caches, split, checkpoints, model/)")
    s.add_argument("--stage", choices=("classifier", "unet", "both"), default="both")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("cv", help="k-fold cross-validation by patient; one JSON per fold", allow_abbrev=False)
    add_common(s)
    add_train_opts(s)
    s.add_argument("--out", type=Path, required=True, help="work folder (caches, per-fold runs)")
    s.add_argument("--name", required=True, help="configuration name (results/cv/NAME/fold<k>.json)")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--fold", type=int, action="append", default=None, help="run only this fold (repeatable)")
    s.add_argument("--results", type=Path, default=Path("results/cv"), help="where fold JSONs go")
    s.add_argument("--train-only", action="store_true", help="train the folds' networks, evaluate later")
    s.add_argument("--redo", action="store_true", help="evaluate folds whose JSON exists again (training is reused)")
    s.set_defaults(func=cmd_cv)

    s = sub.add_parser("cv-table", help="rebuild the CV table from fold JSONs (no training)", allow_abbrev=False)
    s.add_argument("--results", type=Path, default=Path("results/cv"))
    s.add_argument("--policy", default=None, help="operating-point policy of fold ensembles (ichseg.evaluate.oof.POLICIES)")
    s.add_argument("--json", type=Path, default=None, help="folder for each fold ensemble's summary JSON")
    s.set_defaults(func=cmd_cv_table)

    s = sub.add_parser(
        "release", help="train one configuration on every patient with its CV epochs and operating point", allow_abbrev=False
    )
    add_common(s)
    add_train_opts(s)
    s.add_argument("--out", type=Path, required=True, help="work folder (caches, checkpoints, model/)")
    s.add_argument("--cv", type=Path, required=True, help="the configuration's fold JSONs (e.g. results/cv/hires)")
    s.add_argument("--cv-work", type=Path, default=Path("runs/cv"), help="fold ensembles: the cv --out folder with the members")
    s.add_argument("--policy", default=None, help="fold ensembles: operating-point policy (default scan_safe_f2_dice)")
    s.add_argument("--install", action="store_true", help="copy the bundle into the package as a shipped model")
    s.add_argument(
        "--install-as",
        choices=("full", "lite"),
        default="full",
        help="with --install: the default where bf16 runs (full) or where only float32 runs (lite)",
    )
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
    add_common(s, data_required=False)
    add_train_opts(s)
    s.add_argument("--out", type=Path, default=Path("ichseg-run"), help="work folder (default ./ichseg-run)")
    s.set_defaults(func=cmd_run)
