"""``ichseg finetune``: adapt a bundle to a site's labelled scans (:mod:`ichseg.experiments.finetune`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ichseg.cli.options import add_common


def cmd_finetune(args: argparse.Namespace) -> int:
    from ichseg.experiments.finetune import FinetuneConfig, finetune
    from ichseg.infer.shipped import default_model_dir

    ft = FinetuneConfig(
        epochs=args.epochs or FinetuneConfig.epochs,
        samples_per_epoch=args.samples_per_epoch,
        learning_rate=args.learning_rate,
        held_out_fraction=args.held_out,
        seed=args.seed,
        rehearsal_ratio=args.rehearsal_ratio,
        freeze_batchnorm=args.keep_batchnorm,
        rechoose_threshold=args.rechoose_threshold,
    )
    r = finetune(
        args.model or default_model_dir(),
        args.data,
        args.out,
        ft,
        skip_bad=args.skip_bad,
        progress=not args.no_progress,
        expected_size_px=args.image_size or None,
        rehearse=args.rehearse,
    )
    b, a = r["held_out"]["before"], r["held_out"]["after"]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    print(f"fine-tuned {r['members']} U-Net(s) on {len(r['finetune_patients'])} patients -> {args.out}")
    if "rechosen_threshold" in r:
        c = r["rechosen_threshold"]
        print(f"mask threshold re-chosen on the fine-tuning patients: {c['base_mask_threshold']} -> {c['mask_threshold']}")
    print(f"held out {len(r['held_out_patients'])} patients: " + "; ".join(f"{k} {fmt(b[k])} -> {fmt(a[k])}" for k in b))
    return 0


def register(sub) -> None:
    """Add this group's subcommands to the parser."""
    s = sub.add_parser(
        "finetune", help="adapt a model bundle to a site's labelled scans, scored before and after", allow_abbrev=False
    )
    add_common(s)
    s.add_argument("--model", type=Path, default=None, help="the bundle to start from (default: the shipped model)")
    s.add_argument("--out", type=Path, required=True, help="the fine-tuned bundle (finetune.json beside it)")
    s.add_argument("--epochs", type=int, default=None, help="epochs of the fixed schedule (default 4)")
    s.add_argument("--samples-per-epoch", type=int, default=256)
    s.add_argument("--learning-rate", type=float, default=1e-4)
    s.add_argument("--held-out", type=float, default=0.3, help="share of the site's patients held out for scoring")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--rehearse",
        type=Path,
        default=None,
        help="a dataset the base model knows (e.g. CT-ICH) mixed into every epoch, so it keeps what it learned",
    )
    s.add_argument("--rehearsal-ratio", type=float, default=1.0, help="rehearsal slices per site slice (default 1)")
    s.add_argument(
        "--keep-batchnorm",
        action="store_true",
        help="keep the base model's batch-norm statistics while the weights train "
        "(measured: more of the recall a new scanner cost comes back, at some precision; docs/RESULTS.md)",
    )
    s.add_argument(
        "--rechoose-threshold",
        action="store_true",
        help="after fine-tuning, choose the mask threshold again on the fine-tuning patients "
        "(the rest of the operating point kept); held-out scores at both points",
    )
    s.set_defaults(func=cmd_finetune)
