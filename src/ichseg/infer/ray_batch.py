"""``ichseg predict COHORT --engine ray``: a folder of studies on a Ray cluster.

Ray Data maps the list of unfinished studies through :class:`StudyPredictor` actors
(``map_batches`` with a class, so each actor loads the model once) running
:func:`ichseg.infer.batch.predict_one_study`, the very function of the local process pool,
so both engines write the same per-study folders, published atomically; ``studies.csv`` is
rebuilt the same way (:func:`ichseg.infer.batch.batch_summary`). A rerun skips finished
studies; a failing study is a row with its error and the others go on; an actor lost with its
node is restarted by Ray and its study retried.

Every actor writes into ``OUT`` itself, so on a real cluster ``OUT`` and the cohort must be
on storage that every node mounts at the same path (README's recipe).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ichseg.errors import EngineUnavailable
from ichseg.infer.batch import STUDY_FIELDS, batch_summary, done_rows, find_studies, predict_one_study

log = logging.getLogger(__name__)

INSTALL_HINT = "--engine ray needs Ray: pip install 'ichseg[ray]' (or pip install 'ray[data]')"


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or :class:`ichseg.errors.EngineUnavailable` saying how
    to install it (Ray missing, or installed without its data extra)."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise EngineUnavailable(f"{INSTALL_HINT} ({exc})") from exc
    return ray


class StudyPredictor:
    """One Ray actor: the bundle loaded once, then one study per call."""

    def __init__(self, model_dir: str, runtime: str, threads: int, precision: str, out_root: str, overlays: bool) -> None:
        from ichseg.infer.pipeline import load_bundle

        self.bundle = load_bundle(Path(model_dir), runtime=runtime, threads=threads, precision=precision)
        self.out_root, self.overlays = out_root, overlays

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows = [predict_one_study(self.bundle, str(s), self.out_root, self.overlays) for s in batch["study"]]
        return {k: [r.get(k) for r in rows] for k in STUDY_FIELDS}


def predict_batch_ray(
    root: Path,
    out_root: Path,
    model_dir: Path,
    *,
    address: str | None = None,
    actors: int = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    runtime: str = "torch",
    precision: str = "fp32",
    overlays: bool = True,
    on_result: Callable[[dict[str, Any], int, int], None] | None = None,
) -> dict[str, Any]:
    """As :func:`ichseg.infer.batch.predict_batch`, on Ray. ``address``: None starts a new local
    Ray on this machine (Ray's ``"local"``: left to itself, Ray would join any cluster still
    running on the machine, and then refuses resource arguments), "auto" joins the cluster this
    machine is part of, HOST:PORT a given head node. Joins (and leaves alone) a Ray already
    initialised by the caller. Raises :class:`ichseg.errors.EngineUnavailable` (with
    :data:`INSTALL_HINT`) when Ray is not installed."""
    ray = require_ray()
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    studies = find_studies(root)
    finished = done_rows(out_root)
    todo = [s for s in studies if s.name not in finished]
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    if todo:
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ds = ray.data.from_items([{"study": str(s.resolve())} for s in todo], override_num_blocks=len(todo))
            threads = max(1, int(cpus_per_actor))
            model = str(Path(model_dir).resolve())
            out = ds.map_batches(
                StudyPredictor,
                fn_constructor_args=(model, runtime, threads, precision, str(out_root.resolve()), overlays),
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=max(1, actors)),
                num_cpus=cpus_per_actor,
                num_gpus=gpus_per_actor,
                # Ray remote options (``**ray_remote_args``): map_batches has no named parameters for
                # them up to Ray 2.60, and Ray 2.64 removes ray_remote_args (pyproject caps Ray below
                # it). Bounded on purpose: Ray Data's own default (-1) would retry forever a study
                # that crashes its worker process; with 3 the run stops with Ray's error instead.
                max_restarts=3,  # an actor lost with its node comes back ...
                max_task_retries=3,  # ... and the studies it held are run again
            )
            for row in out.iter_rows():
                row = dict(row)
                rows.append(row)
                if row["error"]:
                    log.error("study %s failed: %s", row["study"], row["error"])
                if on_result is not None:
                    on_result(row, len(finished) + len(rows), len(studies))
        finally:
            if started_here:
                ray.shutdown()
    summary = batch_summary(out_root, studies, finished, rows, time.perf_counter() - t0)
    summary["engine"] = {"name": "ray", "actors": actors, "cpus_per_actor": cpus_per_actor, "gpus_per_actor": gpus_per_actor}
    return summary
