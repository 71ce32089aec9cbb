"""Jobs of the REST service, on disk: what was uploaded, its state, and where its answer is.

A job is ``queued`` → ``running`` → ``done`` / ``failed``, or ``cancelled`` by DELETE. A
job exists once its upload is stored and unpacked (a refused upload makes none). While it
runs, its ``stage`` says which part of the work it is in (:data:`STAGES`): the worker
sets it as it goes, so a client sees how far a job got, not a guessed percentage. The
table lives in SQLite beside the uploads (``root/jobs.sqlite``), so a restarted server
finds every job; :meth:`JobStore.recover` queues again the ones a dead process was running.
Predictions go through one :class:`PredictionSlots` that the DICOM node shares when both run
in one process (``ichseg serve --dicom-port``), so the two never load the CPU twice over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    input TEXT NOT NULL,
    kind TEXT,
    error TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    summary TEXT
);
"""
ACTIVE = ("queued", "running")
#: What a job is doing, in order: waiting; claimed by the worker, which loads the model if
#: this is the process's first job and waits for a prediction slot; reading the input;
#: running the model, which also writes its files (masks, NIfTI, SEG, SR, report); writing
#: the viewer's slices; and the end state. A job not running reports its state (done, failed, cancelled) as its stage.
STAGES = ("queued", "starting", "reading", "predicting", "writing", "done")


class PredictionSlots:
    """How many predictions may run at once in this process (one per core pair is plenty on a
    2-core machine): a semaphore the REST worker and the DICOM node's worker both take."""

    def __init__(self, n: int = 1) -> None:
        self._sem = threading.BoundedSemaphore(max(1, n))

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._sem:
            yield


class JobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            columns = {r["name"] for r in db.execute("PRAGMA table_info(jobs)")}
            if "stage" not in columns:  # a store written before stages existed
                db.execute("ALTER TABLE jobs ADD COLUMN stage TEXT")
                db.execute("ALTER TABLE jobs ADD COLUMN stage_since REAL")

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.root / "jobs.sqlite", timeout=30)
        db.row_factory = sqlite3.Row
        try:
            with db:
                yield db
        finally:
            db.close()

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def new_id(self) -> str:
        return secrets.token_hex(8)

    def add(self, job_id: str, input_path: Path) -> None:
        now = time.time()
        with self._lock, self._db() as db:
            db.execute(
                "INSERT INTO jobs (id, state, input, created, updated) VALUES (?, 'queued', ?, ?, ?)",
                (job_id, str(input_path), now, now),
            )

    def active(self) -> int:
        with self._db() as db:
            return db.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')").fetchone()[0]

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["summary"] = json.loads(out["summary"]) if out["summary"] else None
        return out

    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT id, state, kind, error, created, updated FROM jobs ORDER BY created DESC LIMIT ?", (limit,))
            return [dict(r) for r in rows.fetchall()]

    def claim(self) -> dict[str, Any] | None:
        with self._lock, self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY created LIMIT 1").fetchone()
            if row is None:
                return None
            now = time.time()
            db.execute(
                "UPDATE jobs SET state = 'running', stage = 'starting', stage_since = ?, updated = ? WHERE id = ?",
                (now, now, row["id"]),
            )
            return dict(row)

    def set_stage(self, job_id: str, stage: str) -> None:
        """Record the stage a running job reached; a job cancelled meanwhile keeps its state."""
        assert stage in STAGES, stage
        now = time.time()
        with self._lock, self._db() as db:
            db.execute(
                "UPDATE jobs SET stage = ?, stage_since = ?, updated = ? WHERE id = ? AND state = 'running'",
                (stage, now, now, job_id),
            )

    @staticmethod
    def progress(job: dict[str, Any]) -> dict[str, Any]:
        """``{"stage", "since"}`` of a job row: the recorded stage while it runs, else its state."""
        if job.get("state") == "running" and job.get("stage"):
            return {"stage": job["stage"], "since": job.get("stage_since")}
        return {"stage": job.get("state"), "since": job.get("updated")}

    def set(self, job_id: str, state: str, *, error: str | None = None, kind: str | None = None, summary: Any = None) -> None:
        with self._lock, self._db() as db:
            db.execute(
                "UPDATE jobs SET state = ?, error = ?, kind = COALESCE(?, kind), summary = COALESCE(?, summary), updated = ? "
                "WHERE id = ?",
                (state, error, kind, json.dumps(summary) if summary is not None else None, time.time(), job_id),
            )

    def cancel(self, job_id: str) -> str | None:
        """Cancel a job; returns its state before (None if unknown). A running job is marked
        ``cancelled`` now and its answer is thrown away when the prediction returns."""
        with self._lock, self._db() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["state"] in ACTIVE:
                db.execute("UPDATE jobs SET state = 'cancelled', updated = ? WHERE id = ?", (time.time(), job_id))
            return row["state"]

    def recover(self) -> int:
        with self._lock, self._db() as db:
            return db.execute("UPDATE jobs SET state = 'queued', updated = ? WHERE state = 'running'", (time.time(),)).rowcount


def run_job(store: JobStore, job: dict[str, Any], predict) -> None:
    """Run one claimed job: ``predict(input_path, results_dir, stage) -> (kind, summary)``,
    where ``stage(name)`` records the stage the prediction reached. The answer is written to
    a temporary folder and renamed into place, so a reader never sees half."""
    jid = job["id"]
    results = store.job_dir(jid) / "results"
    partial = store.job_dir(jid) / ".results-partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        kind, summary = predict(Path(job["input"]), partial, lambda name: store.set_stage(jid, name))
    except Exception as exc:  # the job fails, the service does not
        log.warning("job %s failed: %s", jid, exc)
        shutil.rmtree(partial, ignore_errors=True)
        if (store.get(jid) or {}).get("state") == "running":
            store.set(jid, "failed", error=f"{type(exc).__name__}: {exc}")
        return
    if (store.get(jid) or {}).get("state") != "running":  # cancelled meanwhile: the answer is dropped
        shutil.rmtree(partial, ignore_errors=True)
        return
    shutil.rmtree(results, ignore_errors=True)
    partial.rename(results)
    store.set(jid, "done", kind=kind, summary=summary)
