"""Load on the hospital services: many studies at once, none lost, each answered once, and
the time each took (p50/p95), measured here rather than asserted in a test.

``python -m ichseg.experiments.service_load --studies 20 --uploads 50`` starts a DICOM node
and the REST service on loopback in this process, a pynetdicom "PACS" for the answers,
pushes ``--studies`` small synthetic DICOM series to the node concurrently and makes
``--uploads`` concurrent uploads to the REST service (one worker serves both, as ``ichseg
serve --dicom-port`` runs them), then prints per-study latencies.
The studies are synthetic (``ichseg.data.synthetic``) so the run needs no dataset; the
figures describe the services' overhead and queueing, not the model's accuracy.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import statistics
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic_series(root: Path, n: int, *, size_px: int = 128, slices: int = 8) -> list[list[Path]]:
    """``n`` DICOM series of synthetic heads, each with its own study, series and instance UIDs."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    from ichseg.data.convert import convert_patient
    from ichseg.data.synthetic import SyntheticConfig, generate_dataset

    data = generate_dataset(root / "synthetic", SyntheticConfig(n_patients=2, slices_per_patient=slices, size_px=size_px, seed=5))
    patients = sorted((data / "Patients_CT").iterdir())
    bases = [sorted(convert_patient(p, "dicom", root / "conv" / p.name).glob("*.dcm")) for p in patients]
    out = []
    for k in range(n):
        study, series = generate_uid(), generate_uid()
        folder = root / "series" / f"{k:03d}"
        folder.mkdir(parents=True)
        files = []
        for f in bases[k % len(bases)]:
            ds = dcmread(f)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.PatientID = f"LOAD{k:03d}"
            path = folder / f.name
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        out.append(files)
    return out


def zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f"study/{f.relative_to(folder)}")
    return buf.getvalue()


def percentiles(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"p50_s": None, "p95_s": None, "max_s": None}
    q = statistics.quantiles(xs, n=20, method="inclusive") if len(xs) > 1 else [xs[0]] * 19
    return {"p50_s": statistics.median(xs), "p95_s": q[18], "max_s": max(xs)}


def push_studies(series: list[list[Path]], node_port: int, received: dict[str, list[float]], workers: int = 20) -> dict[str, Any]:
    """C-STORE every series to the node concurrently (one association each); waits until the
    PACS has an answer (SEG) per study. ``received`` maps study UID -> arrival times."""
    from pydicom import dcmread
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    started: dict[str, float] = {}

    def push(files: list[Path]) -> None:
        ae = AE(ae_title="LOADSCU")
        ae.add_requested_context(CTImageStorage)
        datasets = [dcmread(f) for f in files]
        started[str(datasets[0].StudyInstanceUID)] = time.perf_counter()
        assoc = ae.associate("127.0.0.1", node_port, ae_title="ICHSEG")
        if not assoc.is_established:
            raise ConnectionError("association refused")
        try:
            for ds in datasets:
                if int(assoc.send_c_store(ds).Status) != 0:
                    raise ConnectionError("store refused")
        finally:
            assoc.release()

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(push, series))
    return started


def upload_studies(base: str, token: str, blobs: list[bytes], workers: int = 50, timeout_s: float = 900) -> dict[str, Any]:
    """POST every blob concurrently; then wait until each job is done. Returns job ids per
    upload (``None`` where refused), and per-job seconds from upload to done."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    t0: dict[str, float] = {}

    def post(blob: bytes) -> str | None:
        start = time.perf_counter()
        r = httpx.post(f"{base}/v1/studies", files={"file": ("study.zip", blob)}, headers=headers, timeout=120)
        if r.status_code != 202:
            return None
        jid = r.json()["job_id"]
        t0[jid] = start
        return jid

    with ThreadPoolExecutor(workers) as pool:
        ids = list(pool.map(post, blobs))
    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(done) < len([i for i in ids if i]) and time.monotonic() < deadline:
        for jid in ids:
            if jid and jid not in done:
                state = httpx.get(f"{base}/v1/jobs/{jid}", headers=headers, timeout=60).json()["state"]
                if state in ("done", "failed", "cancelled"):
                    done[jid] = time.perf_counter() - t0[jid]
        time.sleep(0.5)
    return {"ids": ids, "seconds": done}


def run(studies: int, uploads: int, work: Path) -> dict[str, Any]:
    """Both loads against one process running the node and the service (one prediction slot)."""
    import uvicorn
    from pynetdicom import AE, evt

    from ichseg.services.dicom_node import Destination, DicomNode, NodeConfig
    from ichseg.services.jobs import PredictionSlots
    from ichseg.services.rest import Service, ServiceConfig, create_app

    series = synthetic_series(work / "data", max(studies, 1))
    received: dict[str, list[float]] = {}
    pacs_port, node_port, http_port = free_port(), free_port(), free_port()
    pacs = AE(ae_title="PACS")
    for uid in ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33"):
        pacs.add_supported_context(uid)

    def on_store(event):
        if str(event.dataset.Modality) == "SEG":
            received.setdefault(str(event.dataset.StudyInstanceUID), []).append(time.perf_counter())
        return 0x0000

    pacs_server = pacs.start_server(("127.0.0.1", pacs_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    slots = PredictionSlots(1)
    node = DicomNode(
        NodeConfig(
            store=work / "node",
            port=node_port,
            destination=Destination("PACS", "127.0.0.1", pacs_port),
            stable_s=1.0,
            head_check=False,
            runtime="auto",
        ),
        slots,
    )
    token = "load-test-token"
    config = ServiceConfig(store=work / "rest", token=token, max_active_jobs=max(uploads, 1) + 1, head_check=False)
    service = Service(config, slots, node)  # one worker serves both doors, as `ichseg serve --dicom-port`
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=http_port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    node.start(worker=False)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    result: dict[str, Any] = {}
    try:
        if studies:
            started = push_studies(series[:studies], node_port, received)
            deadline = time.monotonic() + 900
            while len(received) < studies and time.monotonic() < deadline:
                time.sleep(0.5)
            lat = [received[s][0] - t for s, t in started.items() if s in received]
            result["node"] = {
                "studies": studies,
                "answered": len(received),
                "answered_twice": sum(len(v) > 1 for v in received.values()),
                **percentiles(lat),
            }
        if uploads:
            blobs = [zip_folder(s[0].parent) for s in series[: min(uploads, len(series))]]
            blobs = [blobs[k % len(blobs)] for k in range(uploads)]
            up = upload_studies(f"http://127.0.0.1:{http_port}", token, blobs)
            states = [service.jobs.get(j)["state"] for j in up["ids"] if j]
            result["rest"] = {
                "uploads": uploads,
                "accepted": len([i for i in up["ids"] if i]),
                "done": states.count("done"),
                "failed": states.count("failed"),
                "distinct_jobs": len(set(i for i in up["ids"] if i)),
                **percentiles(list(up["seconds"].values())),
            }
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        node.stop()
        pacs_server.shutdown()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ichseg.experiments.service_load", allow_abbrev=False)
    p.add_argument("--studies", type=int, default=20, help="series pushed to the DICOM node at once")
    p.add_argument("--uploads", type=int, default=50, help="concurrent uploads to the REST service")
    p.add_argument("--out", type=Path, default=None, help="write the result here as JSON")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.studies, args.uploads, Path(tmp))
    from ichseg.experiments.workflow import hardware

    result["hardware"] = hardware()
    text = json.dumps(result, indent=1)
    if args.out:
        from ichseg.files import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
