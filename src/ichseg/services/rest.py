"""``ichseg serve``: the REST service (FastAPI) with jobs, and the viewer it serves.

- ``POST /v1/studies`` (multipart ``file``: a zip of a DICOM series or of slice images, or a
  NIfTI) → 202 ``{"job_id": ...}``; 413 over the upload limit or for a zip bomb, 400 for a
  path that climbs out of the upload, 415 for another kind of file, 429 with Retry-After
  when the queue is full;
- ``GET /v1/jobs`` and ``GET /v1/jobs/{id}`` (state, ``progress`` — the stage a running
  job is in and since when, :data:`ichseg.services.jobs.STAGES` — error, summary, result
  files);
  ``GET /v1/jobs/{id}/files/{name}`` (one of those files); ``DELETE /v1/jobs/{id}``;
- ``GET /healthz`` (no token); ``GET /`` the viewer (no token: it asks for one).

Every ``/v1`` call needs ``Authorization: Bearer <token>`` (compared in constant time)
unless the service was started with ``no_auth``, which is allowed on loopback only.
Jobs are on disk (:mod:`ichseg.services.jobs`): a restarted service resumes them. (No
``from __future__ import annotations`` here: FastAPI reads the handlers' annotations at
runtime, and the handlers are defined inside :func:`create_app`.)
"""

import hmac
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ichseg.services.jobs import JobStore, PredictionSlots, run_job
from ichseg.services.uploads import BodyLimit, UploadError, safe_unzip, upload_kind

log = logging.getLogger(__name__)

#: The files of an answer that GET .../files/{name} hands out (nothing else in the folder).
RESULT_FILES = (
    "summary.json",
    "report.html",
    "report.pdf",
    "mask.nii.gz",
    "segmentation.dcm",
    "measurements.dcm",
    "predictions.csv",
    "predictions.json",
)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: What a multipart body may hold beyond the file itself (boundaries, part headers).
ENVELOPE_BYTES = 1 << 20


@dataclass
class ServiceConfig:
    store: Path
    token: str | None = None
    no_auth: bool = False
    host: str = "127.0.0.1"
    max_upload_bytes: int = 1 << 30
    max_unpacked_bytes: int = 2 << 30
    max_active_jobs: int = 16
    model_dir: Path | None = None
    runtime: str = "auto"
    head_check: bool = True
    poll_s: float = 0.5


class Service:
    """The state behind the app: the job store, the bundle (loaded once) and the worker."""

    def __init__(self, config: ServiceConfig, slots: PredictionSlots | None = None, node=None) -> None:
        if not config.no_auth and not config.token:
            raise ValueError("the service needs a token (--token-file or ICHSEG_API_TOKEN), or --no-auth on loopback")
        if config.no_auth and config.host not in LOOPBACK:
            raise ValueError(f"--no-auth is allowed on loopback only, not on {config.host}")
        self.config = config
        self.jobs = JobStore(config.store)
        self.slots = slots or PredictionSlots(1)
        self.node = node  # a DicomNode whose queue this service's worker also serves (one worker, one queue order)
        self._bundle = None
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    def start(self) -> None:
        n = self.jobs.recover()
        if n:
            log.info("re-queued %d job(s) interrupted by the last shutdown", n)
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="ichseg-rest-worker", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=120)

    def _predict(self, path: Path, out: Path, stage=None):
        from ichseg.services.runner import predict_any

        if self._bundle is None:
            from ichseg.infer.pipeline import load_bundle
            from ichseg.infer.shipped import default_model_dir

            model_dir = self.config.model_dir or default_model_dir(self.config.runtime)
            self._bundle = load_bundle(model_dir, runtime=self.config.runtime)
        with self.slots.slot():
            return predict_any(self._bundle, path, out, head_check=self.config.head_check, stage=stage)

    def _work(self) -> None:
        while not self._stop.is_set():
            busy = False
            job = self.jobs.claim()
            if job is not None:
                run_job(self.jobs, job, self._predict)
                busy = True
            if self.node is not None and self.node.step():  # the DICOM node's series take turns with uploads
                busy = True
            if not busy:
                self._stop.wait(self.config.poll_s)

    def authorised(self, header: str | None) -> bool:
        if self.config.no_auth:
            return True
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), str(self.config.token).encode())

    def describe(self, job: dict[str, Any]) -> dict[str, Any]:
        results = self.jobs.job_dir(job["id"]) / "results"
        files = [n for n in RESULT_FILES if (results / n).is_file()] if job["state"] == "done" else []
        keep = ("id", "state", "kind", "error", "created", "updated")
        out = {k: job.get(k) for k in keep}
        return {**out, "progress": JobStore.progress(job), "summary": job.get("summary"), "files": files}


def create_app(service: Service):
    """The FastAPI app over ``service`` (its worker is started and stopped with the app)."""
    import contextlib

    from fastapi import Depends, FastAPI, HTTPException, Request, UploadFile
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start()
        yield
        service.stop()

    app = FastAPI(title="ichseg", version=_version(), lifespan=lifespan)
    # counted as the body streams in: a chunked upload has no Content-Length to check
    # and an upload without the token is refused before its body is read
    app.add_middleware(
        BodyLimit, path="/v1/studies", limit=service.config.max_upload_bytes + ENVELOPE_BYTES, authorised=service.authorised
    )

    def auth(request: Request) -> None:
        if not service.authorised(request.headers.get("authorization")):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "active_jobs": service.jobs.active()}

    @app.get("/", response_class=HTMLResponse)
    def viewer() -> str:
        from ichseg.services.viewer import VIEWER_HTML

        return VIEWER_HTML

    @app.post("/v1/studies", status_code=202, dependencies=[Depends(auth)])
    async def submit(file: UploadFile) -> JSONResponse:
        cfg = service.config  # a body over the limit never gets here: BodyLimit answered 413
        if service.jobs.active() >= cfg.max_active_jobs:
            return JSONResponse({"detail": "the queue is full; try again later"}, status_code=429, headers={"Retry-After": "30"})
        try:
            kind = upload_kind(file.filename or "")
        except UploadError as exc:
            raise HTTPException(exc.status, str(exc)) from exc
        jid = service.jobs.new_id()
        jdir = service.jobs.job_dir(jid)
        (jdir / "upload").mkdir(parents=True)
        raw = jdir / "upload" / ("study.zip" if kind == "zip" else Path(file.filename or "volume.nii.gz").name)
        size = 0
        try:
            with open(raw, "wb") as out:
                while chunk := await file.read(1 << 20):
                    size += len(chunk)
                    if size > cfg.max_upload_bytes:
                        raise UploadError(f"upload over {cfg.max_upload_bytes} bytes", 413)
                    out.write(chunk)
            if kind == "zip":
                target = safe_unzip(raw, jdir / "input", max_unpacked_bytes=cfg.max_unpacked_bytes)
                raw.unlink()
            else:
                target = raw
        except UploadError as exc:
            shutil.rmtree(jdir, ignore_errors=True)  # a refused upload leaves nothing behind
            raise HTTPException(exc.status, str(exc)) from exc
        service.jobs.add(jid, target)
        return JSONResponse({"job_id": jid, "state": "queued"}, status_code=202, headers={"Location": f"/v1/jobs/{jid}"})

    @app.get("/v1/jobs", dependencies=[Depends(auth)])
    def jobs() -> list[dict[str, Any]]:
        return service.jobs.list()

    def job_or_404(job_id: str) -> dict[str, Any]:
        job = service.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    @app.get("/v1/jobs/{job_id}", dependencies=[Depends(auth)])
    def job(job_id: str) -> dict[str, Any]:
        return service.describe(job_or_404(job_id))

    @app.get("/v1/jobs/{job_id}/files/{name}", dependencies=[Depends(auth)])
    def job_file(job_id: str, name: str) -> FileResponse:
        job = job_or_404(job_id)
        if name not in service.describe(job)["files"]:
            raise HTTPException(404, f"job {job_id} has no file {name}")
        return FileResponse(service.jobs.job_dir(job_id) / "results" / name, filename=name)

    def done_dir(job_id: str) -> Path:
        job = job_or_404(job_id)
        if job["state"] != "done":
            raise HTTPException(409, f"job {job_id} is {job['state']}")
        return service.jobs.job_dir(job_id) / "results"

    @app.get("/v1/jobs/{job_id}/slices", dependencies=[Depends(auth)])
    def slices(job_id: str) -> dict[str, Any]:
        """The viewer's index: slice names in order, each slice's hemorrhage probability and
        the threshold the verdict used."""
        import csv

        from ichseg.services.runner import slice_names

        out = done_dir(job_id)
        names = slice_names(out)
        prob: list[float] = [0.0] * len(names)
        table = out / "predictions.csv"
        if table.exists():
            with open(table, newline="") as fh:
                rows = list(csv.DictReader(fh))
            col = next((c for c in ("hemorrhage_probability", "classifier_probability") if rows and c in rows[0]), None)
            if col and len(rows) == len(names):
                prob = [float(r[col]) for r in rows]
        op = (service.jobs.get(job_id).get("summary") or {}).get("operating_point") or {}
        return {"slices": names, "probability": prob, "threshold": op.get("head_threshold")}

    @app.get("/v1/jobs/{job_id}/slices/{name}/{layer}.png", dependencies=[Depends(auth)])
    def slice_png(job_id: str, name: str, layer: str) -> FileResponse:
        from ichseg.services.runner import slice_names

        out = done_dir(job_id)
        if name not in slice_names(out) or layer not in ("ct", "mask"):
            raise HTTPException(404, f"job {job_id} has no slice {name}/{layer}")
        path = out / "viewer" / f"{name}.png" if layer == "ct" else out / "masks" / f"{name}_mask.png"
        if not path.is_file():
            raise HTTPException(404, f"job {job_id}: no {layer} image of slice {name}")
        return FileResponse(path, media_type="image/png")

    @app.delete("/v1/jobs/{job_id}", dependencies=[Depends(auth)])
    def cancel(job_id: str) -> dict[str, Any]:
        before = service.jobs.cancel(job_id)
        if before is None:
            raise HTTPException(404, f"no job {job_id}")
        return {"id": job_id, "was": before, "state": service.jobs.get(job_id)["state"]}

    return app


def _version() -> str:
    from ichseg import __version__

    return __version__
