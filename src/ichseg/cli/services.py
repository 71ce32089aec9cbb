"""``ichseg dicom-node``: the hospital's way in (a PACS or scanner pushes head CTs to it)."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path


def cmd_dicom_node(args: argparse.Namespace) -> int:
    from ichseg.services.dicom_node import Destination, DicomNode, NodeConfig

    node = DicomNode(
        NodeConfig(
            store=args.store,
            ae_title=args.ae_title,
            host=args.host,
            port=args.port,
            destination=Destination.parse(args.destination) if args.destination else None,
            stable_s=args.stable_seconds,
            allowed_aes=tuple(args.allow or ()),
            model_dir=args.model,
            runtime=args.runtime,
            head_check=not args.no_head_check,
        )
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node.start()
    print(f"DICOM node {args.ae_title} on {args.host}:{args.port}, store {args.store} (Ctrl-C stops)", flush=True)
    stop.wait()
    node.stop()
    print(f"stopped; {len(node.processed)} series processed in this run")
    return 0


def register(sub) -> None:
    """Add this group's subcommands to the parser."""
    s = sub.add_parser("dicom-node", help="a DICOM node: receives CT by C-STORE, sends SEG and SR back", allow_abbrev=False)
    s.add_argument("--ae-title", default="ICHSEG", help="this node's AE title")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    s.add_argument("--port", type=int, default=11112)
    s.add_argument("--destination", default=None, metavar="AE@HOST:PORT", help="where SEG and SR are sent (C-STORE)")
    s.add_argument("--store", type=Path, required=True, help="folder for received instances, the queue and results")
    s.add_argument("--stable-seconds", type=float, default=5.0, help="a series is complete after this long without news")
    s.add_argument("--allow", action="append", default=None, metavar="AE", help="accept only these calling AE titles")
    s.add_argument("--model", type=Path, default=None, help="model bundle folder (default: the shipped model)")
    s.add_argument("--runtime", default="auto", help="inference runtime (as predict)")
    s.add_argument("--no-head-check", action="store_true", help="predict even when a series does not look like a head CT")
    s.set_defaults(func=cmd_dicom_node)
