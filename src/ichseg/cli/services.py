"""``ichseg dicom-node`` and ``ichseg serve``: the hospital's ways in (a PACS or scanner pushes
head CTs to the node; people and programs upload to the REST service and its viewer)."""

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


def _token(args: argparse.Namespace) -> str | None:
    import os

    if args.token_file:
        try:
            return Path(args.token_file).read_text().strip() or None
        except OSError as exc:
            raise ValueError(f"{args.token_file}: cannot read the token ({exc.strerror})") from exc
    return os.environ.get("ICHSEG_API_TOKEN") or None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ichseg.services.jobs import PredictionSlots
    from ichseg.services.rest import Service, ServiceConfig, create_app

    slots = PredictionSlots(1)  # one prediction at a time, whoever asked for it
    node = None
    if args.dicom_port:
        from ichseg.services.dicom_node import Destination, DicomNode, NodeConfig

        node = DicomNode(
            NodeConfig(
                store=Path(args.store) / "dicom-node",
                ae_title=args.ae_title,
                host=args.host,
                port=args.dicom_port,
                destination=Destination.parse(args.destination) if args.destination else None,
                model_dir=args.model,
                runtime=args.runtime,
            ),
            slots,
        )
        node.start(worker=False)  # the service's one worker serves the node's series too
    service = Service(
        ServiceConfig(
            store=args.store,
            token=_token(args),
            no_auth=args.no_auth,
            host=args.host,
            max_upload_bytes=int(args.max_upload_mb * 2**20),
            max_active_jobs=args.max_jobs,
            model_dir=args.model,
            runtime=args.runtime,
        ),
        slots,
        node,
    )
    print(f"ichseg service on http://{args.host}:{args.port}/ (viewer at /, API at /v1, docs at /docs)", flush=True)
    try:
        uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="warning")
    finally:
        if node is not None:
            node.stop()
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

    s = sub.add_parser("serve", help="the REST service with jobs and the viewer (FastAPI)", allow_abbrev=False)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--store", type=Path, required=True, help="folder for uploads, jobs and answers")
    s.add_argument("--token-file", type=Path, default=None, help="the bearer token (else $ICHSEG_API_TOKEN)")
    s.add_argument("--no-auth", action="store_true", help="no token (loopback only)")
    s.add_argument("--max-upload-mb", type=float, default=1024.0, help="larger uploads get 413")
    s.add_argument("--max-jobs", type=int, default=16, help="queued + running jobs before 429")
    s.add_argument("--dicom-port", type=int, default=None, help="also run the DICOM node on this port (one shared queue)")
    s.add_argument("--ae-title", default="ICHSEG", help="with --dicom-port: the node's AE title")
    s.add_argument("--destination", default=None, metavar="AE@HOST:PORT", help="with --dicom-port: where SEG and SR go")
    s.add_argument("--model", type=Path, default=None, help="model bundle folder (default: the shipped model)")
    s.add_argument("--runtime", default="auto", help="inference runtime (as predict)")
    s.set_defaults(func=cmd_serve)
