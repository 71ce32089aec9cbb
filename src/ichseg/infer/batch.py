"""Many studies in one call: a bounded pool of worker processes, results streamed as each
study finishes, and restartable after a kill.

Each study is written into ``OUT/.partial-<name>/`` and renamed to ``OUT/<name>/`` only
when all of its files are written, with ``study.json`` last: a folder under its final name
is complete, and a rerun skips exactly those. ``OUT/studies.csv`` is rebuilt from the
finished folders at the end, so it never disagrees with them.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from ichseg.files import atomic_write, atomic_write_text

log = logging.getLogger(__name__)
STUDY_FIELDS = ("study", "slices", "segmented_slices", "positive_slices", "study_hemorrhage", "seconds", "error")


def find_studies(root: Path) -> list[Path]:
    """Sub-folders of ``root`` that are studies (hold a ``brain/`` folder or slice images)."""
    from ichseg.infer.predict import IMAGE_EXTS

    root = Path(root)
    out = []
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        if (p / "brain").is_dir() or any(f.suffix.lower() in IMAGE_EXTS for f in p.iterdir()):
            out.append(p)
    return out


def is_batch_root(path: Path) -> bool:
    """A folder with no slice images of its own but study sub-folders."""
    from ichseg.infer.predict import IMAGE_EXTS

    path = Path(path)
    if not path.is_dir() or (path / "brain").is_dir() or path.name == "brain":
        return False
    if any(f.suffix.lower() in IMAGE_EXTS for f in path.iterdir() if f.is_file()):
        return False
    return bool(find_studies(path))


_BUNDLE = None


def _die_with_parent(parent_pid: int) -> None:
    """Make this worker end when the batch's parent does, however it ends: Linux's
    PR_SET_PDEATHSIG for a parent killed outright (even by SIGKILL), and a watchdog
    thread (any OS, and the case where the parent died before the call). Ctrl-C reaches
    the whole process group; the parent alone decides what it means."""
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="ichseg-parent-watch").start()


def _init_worker(model_dir: str, runtime: str, threads: int, precision: str = "fp32", parent_pid: int = 0) -> None:
    global _BUNDLE
    from ichseg.infer.pipeline import load_bundle

    if parent_pid:
        _die_with_parent(parent_pid)

    _BUNDLE = load_bundle(Path(model_dir), runtime=runtime, threads=threads, precision=precision)


def _predict_study(study: str, out_root: str, overlays: bool) -> dict[str, Any]:
    return predict_one_study(_BUNDLE, study, out_root, overlays)


def predict_one_study(bundle, study: str, out_root: str, overlays: bool) -> dict[str, Any]:
    """Predict one study into a partial folder, then publish it under its final name; the
    study's row of ``studies.csv`` (``error`` set, and nothing published, if it failed).
    Every engine (this process pool, :mod:`ichseg.infer.ray_batch`) runs exactly this."""
    from ichseg.infer.predict import predict_path

    name = Path(study).name
    final, partial = Path(out_root) / name, Path(out_root) / f".partial-{name}"
    shutil.rmtree(partial, ignore_errors=True)
    t0 = time.perf_counter()
    try:
        rows = predict_path(bundle, Path(study), partial, write_overlays=overlays)
        pos = sum(r["hemorrhage"] for r in rows)
        seg = sum(r["segmented"] for r in rows)
        row = {"study": name, "slices": len(rows), "segmented_slices": seg, "positive_slices": pos}
        row |= {"study_hemorrhage": int(pos > 0), "error": ""}
    except Exception as exc:  # one bad study must not stop the batch; it is reported and retried next run
        shutil.rmtree(partial, ignore_errors=True)
        return {
            "study": name,
            "slices": 0,
            "segmented_slices": 0,
            "positive_slices": 0,
            "study_hemorrhage": "",
            "seconds": 0.0,
            "error": str(exc),
        }
    row["seconds"] = round(time.perf_counter() - t0, 3)
    atomic_write_text(partial / "study.json", json.dumps(row) + "\n")
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    return row


def done_rows(out_root: Path) -> dict[str, dict[str, Any]]:
    """Finished studies under ``out_root`` (those with ``study.json``)."""
    out = {}
    for f in sorted(Path(out_root).glob("*/study.json")):
        row = json.loads(f.read_text())
        out[row["study"]] = row
    return out


def predict_batch(
    root: Path,
    out_root: Path,
    model_dir: Path,
    *,
    workers: int = 1,
    runtime: str = "torch",
    precision: str = "fp32",
    overlays: bool = True,
    on_result: Callable[[dict[str, Any], int, int], None] | None = None,
) -> dict[str, Any]:
    """Predict every study under ``root`` not yet finished in ``out_root``.

    ``workers`` processes share the CPU cores (threads per network = cores // workers); at most
    ``2 × workers`` studies are queued at once, so memory stays bounded however many
    studies there are. ``on_result(row, done, total)`` is called as each study finishes.
    """
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    studies = find_studies(root)
    finished = done_rows(out_root)
    todo = [s for s in studies if s.name not in finished]
    threads = max(1, (os.cpu_count() or 1) // max(workers, 1))
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    if todo:
        # spawn, not fork: a forked copy of a process whose OpenMP threads are running can hang
        ctx = multiprocessing.get_context("spawn")
        init = (str(model_dir), runtime, threads, precision, os.getpid())
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=init)
        previous = _terminate_as_interrupt()
        try:
            for row in _bounded(pool, todo, str(out_root), overlays, 2 * workers):
                rows.append(row)
                if row["error"]:
                    log.error("study %s failed: %s", row["study"], row["error"])
                if on_result is not None:
                    on_result(row, len(finished) + len(rows), len(studies))
        except BaseException:  # Ctrl-C, SIGTERM, an error: no worker may outlive the batch
            _stop_workers(pool)
            raise
        else:
            pool.shutdown(wait=True)
        finally:
            _restore(previous)
    return batch_summary(out_root, studies, finished, rows, time.perf_counter() - t0)


def batch_summary(
    out_root: Path, studies: list[Path], finished: dict[str, Any], rows: list[dict[str, Any]], seconds: float
) -> dict[str, Any]:
    """Rebuild ``studies.csv`` from the finished folders (plus this run's failures) and say
    what the run did; shared by every engine."""
    finished_rows = list(done_rows(out_root).values())
    _write_table(finished_rows + [r for r in rows if r["error"]], Path(out_root) / "studies.csv")
    ok = [r for r in rows if not r["error"]]
    return {
        "studies": len(studies),
        "skipped_already_done": len(finished),
        "predicted": len(ok),
        "failed": len(rows) - len(ok),
        "seconds": seconds,
        "studies_per_minute": 60 * len(ok) / seconds if ok and seconds else None,
        "cost_fit": cost_fit(finished_rows),
    }


def _terminate_as_interrupt():
    """SIGTERM handled as Ctrl-C in the main thread (so the pool is stopped on the way out);
    returns the handler it replaced (None off the main thread, where none can be set)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, interrupt)


def _restore(previous) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End every worker now: queued studies are cancelled, running ones killed. Their
    ``.partial-`` folders stay unpublished and are redone by the next run."""
    procs = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
    log.warning("batch interrupted: %d worker(s) stopped; a rerun predicts the studies not yet finished", len(procs))


def cost_fit(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Least-squares ``seconds ≈ intercept + per_slice·slices + per_segmented·segmented``
    over finished studies: what a study costs as it grows and as more of it is segmented
    (the U-Net runs only on slices the gate passes). None with fewer than 3 distinct
    studies or when the counts do not vary enough to separate the terms."""
    import numpy as np

    ok = [r for r in rows if not r.get("error") and "segmented_slices" in r]
    if len(ok) < 3:
        return None
    a = np.array([[1.0, r["slices"], r["segmented_slices"]] for r in ok])
    if np.linalg.matrix_rank(a) < 3:
        return None
    coef, *_ = np.linalg.lstsq(a, np.array([r["seconds"] for r in ok]), rcond=None)
    return {
        "intercept_s": float(coef[0]),
        "per_slice_s": float(coef[1]),
        "per_segmented_slice_s": float(coef[2]),
        "studies": len(ok),
    }


def _bounded(pool: ProcessPoolExecutor, studies: list[Path], out: str, overlays: bool, limit: int) -> Iterator[dict[str, Any]]:
    pending: set[Future] = set()
    queue = list(studies)
    while queue or pending:
        while queue and len(pending) < limit:
            pending.add(pool.submit(_predict_study, str(queue.pop(0)), out, overlays))
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for f in done:
            yield f.result()


def _write_table(rows: list[dict[str, Any]], path: Path) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=STUDY_FIELDS, lineterminator="\n", extrasaction="ignore")
            w.writeheader()
            w.writerows(sorted(rows, key=lambda r: r["study"]))

    atomic_write(path, write)
