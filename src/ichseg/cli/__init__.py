"""Command line: ``ichseg <command>``, one small module per command group (:mod:`.data`, :mod:`.adapt`,
:mod:`.training`, :mod:`.predict`, :mod:`.evaluation`, :mod:`.services`), shared options in :mod:`.options`."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TextIO

from ichseg.cli.options import run_config

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from ichseg import __version__

    p = argparse.ArgumentParser(
        prog="ichseg", description="Intracranial hemorrhage detection and segmentation on head CT.", allow_abbrev=False
    )
    p.add_argument("--version", action="version", version=f"ichseg {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, third-party libraries' too")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True)
    from ichseg.cli import adapt, data, evaluation, predict, services, training

    for group in (data, training, adapt, predict, evaluation, services):
        group.register(sub)
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

    gpu = resolve_device(run_config(args, "cpu").train_unet.device).type == "cuda"  # "cuda" without a GPU: an error
    if gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if gpu else "gloo")
    if dist.get_rank() > 0:
        args.no_progress = True


def bars_only_on_terminal(args: argparse.Namespace, stream: TextIO) -> None:
    """Turn progress bars off unless ``stream`` is a terminal: a bar redrawn into a log file
    (``nohup ichseg cv … > log``) is megabytes of carriage returns that bury the log lines."""
    if hasattr(args, "no_progress") and not stream.isatty():
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
    bars_only_on_terminal(args, sys.stderr)
    configure_logging(verbose=args.verbose, quiet=args.quiet)
    from ichseg.errors import DatasetError, EngineUnavailable

    try:
        return int(args.func(args) or 0)
    except (DatasetError, EngineUnavailable, FileNotFoundError, ValueError) as exc:
        print(f"ichseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ichseg: interrupted", file=sys.stderr)
        return 130
