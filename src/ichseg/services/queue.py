"""The work queue the hospital services share: received DICOM instances and the series they
make, on disk in SQLite, so that a ``kill -9`` and a restart lose no study.

A series moves ``receiving`` → ``queued`` (no new instance for ``stable_s`` seconds, as
Orthanc's "stable age") → ``running`` → ``done`` or ``failed``. An instance whose SOP
Instance UID is already stored is a duplicate and changes nothing, so a series sent twice
is processed once; a *new* instance of a finished series sends it back to ``receiving``
(the series changed, its answer must too). At start-up :meth:`StudyQueue.recover` puts the
series a dead process was running back in the queue.

Every method opens its own connection (SQLite in WAL mode, one writer at a time), so the
C-STORE handlers of the network threads and the worker may call it concurrently.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    calling_ae TEXT,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    last_received REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result_dir TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS series_state ON series (state, last_received);
"""

STATES = ("receiving", "queued", "running", "done", "failed")


@dataclass(frozen=True)
class SeriesJob:
    """One series to process: where its instances are and how many."""

    series_uid: str
    study_uid: str
    folder: Path
    instances: int
    attempts: int


class StudyQueue:
    """Instances and series of one node, in ``root/queue.sqlite``; instance files live
    under ``root/instances/<study>/<series>/`` (:meth:`instance_path`)."""

    def __init__(self, root: Path, *, max_attempts: int = 2) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_attempts = max_attempts
        self._lock = threading.Lock()
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.root / "queue.sqlite", timeout=30)
        try:
            with db:  # one transaction: committed on success, rolled back on an exception
                yield db
        finally:
            db.close()

    def series_folder(self, study_uid: str, series_uid: str) -> Path:
        return self.root / "instances" / study_uid / series_uid

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return self.series_folder(study_uid, series_uid) / f"{sop_uid}.dcm"

    def has_instance(self, sop_uid: str) -> bool:
        with self._db() as db:
            return db.execute("SELECT 1 FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone() is not None

    def add_instance(
        self, sop_uid: str, study_uid: str, series_uid: str, path: Path, calling_ae: str = "", now: float | None = None
    ) -> bool:
        """Record a stored instance; False (nothing changed) for a duplicate SOP Instance UID."""
        now = time.time() if now is None else now
        with self._lock, self._db() as db:
            try:
                db.execute(
                    "INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?)",
                    (sop_uid, study_uid, series_uid, str(path), calling_ae, now),
                )
            except sqlite3.IntegrityError:
                return False
            row = db.execute("SELECT state FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO series (series_uid, study_uid, state, last_received, updated_at) VALUES (?, ?, ?, ?, ?)",
                    (series_uid, study_uid, "receiving", now, now),
                )
            else:  # a new instance: whatever the series' state, it must be read again once complete
                db.execute(
                    "UPDATE series SET state = 'receiving', last_received = ?, updated_at = ?, attempts = 0, error = NULL "
                    "WHERE series_uid = ?",
                    (now, now, series_uid),
                )
        return True

    def promote_stable(self, stable_s: float, now: float | None = None) -> int:
        """Queue the series that received nothing for ``stable_s`` seconds; returns how many."""
        now = time.time() if now is None else now
        with self._lock, self._db() as db:
            cur = db.execute(
                "UPDATE series SET state = 'queued', updated_at = ? WHERE state = 'receiving' AND last_received <= ?",
                (now, now - stable_s),
            )
            return cur.rowcount

    def claim(self) -> SeriesJob | None:
        """The oldest queued series, now ``running``; None when nothing is queued."""
        with self._lock, self._db() as db:
            row = db.execute(
                "SELECT series_uid, study_uid, attempts FROM series WHERE state = 'queued' ORDER BY last_received LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            series_uid, study_uid, attempts = row
            db.execute(
                "UPDATE series SET state = 'running', attempts = attempts + 1, updated_at = ? WHERE series_uid = ?",
                (time.time(), series_uid),
            )
            n = db.execute("SELECT COUNT(*) FROM instances WHERE series_uid = ?", (series_uid,)).fetchone()[0]
        return SeriesJob(series_uid, study_uid, self.series_folder(study_uid, series_uid), n, attempts + 1)

    def finish(self, series_uid: str, result_dir: Path) -> None:
        self._set(series_uid, "done", result_dir=str(result_dir))

    def fail(self, series_uid: str, error: str) -> None:
        """A failed attempt: queued again while attempts remain, else ``failed`` for good."""
        with self._lock, self._db() as db:
            attempts = db.execute("SELECT attempts FROM series WHERE series_uid = ?", (series_uid,)).fetchone()[0]
            state = "queued" if attempts < self.max_attempts else "failed"
            db.execute(
                "UPDATE series SET state = ?, error = ?, updated_at = ? WHERE series_uid = ?",
                (state, error[:2000], time.time(), series_uid),
            )

    def recover(self) -> int:
        """After a crash: series left ``running`` are queued again; returns how many."""
        with self._lock, self._db() as db:
            return db.execute(
                "UPDATE series SET state = 'queued', updated_at = ? WHERE state = 'running'", (time.time(),)
            ).rowcount

    def _set(self, series_uid: str, state: str, **fields: str) -> None:
        assert state in STATES
        cols = "".join(f", {k} = ?" for k in fields)
        with self._lock, self._db() as db:
            db.execute(
                f"UPDATE series SET state = ?, updated_at = ?{cols} WHERE series_uid = ?",
                (state, time.time(), *fields.values(), series_uid),
            )

    def series(self) -> list[dict[str, object]]:
        """Every series with its state, for status pages and tests."""
        with self._db() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM series ORDER BY last_received").fetchall()
            counts = dict(db.execute("SELECT series_uid, COUNT(*) FROM instances GROUP BY series_uid").fetchall())
        return [{**dict(r), "instances": counts.get(r["series_uid"], 0)} for r in rows]
