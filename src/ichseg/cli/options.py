"""Options and helpers that several command groups share."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

DATA_HELP = (
    "a dataset: CT-ICH JPGs (Patients_CT/, CSVs), an nnU-Net folder (dataset.json, imagesTr/, labelsTr/), "
    "CT-ICH NIfTI (ct_scans/, masks/) or a .csv of image,label pairs"
)


def demo_data():  # imported lazily: keeps the synthetic module out of CLI start-up
    """The embedded default dataset of ``ichseg run``: big enough that 4 held-out patients
    show learning, small enough to train in a few minutes."""
    from ichseg.data.synthetic import SyntheticConfig

    return SyntheticConfig(n_patients=24, slices_per_patient=16, seed=0)


def run_config(args: argparse.Namespace, default_preset: str):
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


def bundle_dir(args: argparse.Namespace) -> Path:
    """``--model`` or, when none is named, the model shipped inside the package."""
    from ichseg.infer.shipped import default_model_dir

    if args.model:
        return Path(args.model)
    return default_model_dir(getattr(args, "runtime", None) or "auto", getattr(args, "precision", None) or "auto")


def add_common(sp: argparse.ArgumentParser, data_required: bool = True) -> None:
    sp.add_argument("--data", type=Path, required=data_required, default=None, help=DATA_HELP)
    sp.add_argument("--skip-bad", action="store_true", help="warn about and leave out bad slices instead of stopping")
    sp.add_argument("--image-size", type=int, default=650, help="expected source image size in px (0: any size)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_train_opts(sp: argparse.ArgumentParser) -> None:
    from ichseg.config import PRESETS

    sp.add_argument("--preset", choices=PRESETS, default=None, help="named configuration (see README)")
    sp.add_argument("--config", type=Path, default=None, help="RunConfig JSON (overrides --preset)")
    sp.add_argument("--epochs", type=int, default=None, help="cap the number of epochs")
    sp.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    sp.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), default=None, help="where to train (default: the configuration's, cpu)"
    )
