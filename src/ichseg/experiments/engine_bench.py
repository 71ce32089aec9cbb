"""Studies per minute of the two batch engines on the same studies: the local process pool
and Ray with 1 and 2 actors (``python -m ichseg.experiments.engine_bench``).

Each engine predicts the same ``--studies`` studies of ``--data`` (CT-ICH layout, the first
ones by ID) into a fresh folder; the figure is ``predicted × 60 / seconds`` as each engine
reports it, Ray's start-up excluded (a cohort run pays it once), model loading included.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def run(data: Path, n: int, runtime: str = "auto", work: Path | None = None) -> dict[str, Any]:
    import ray

    from ichseg.infer.batch import predict_batch
    from ichseg.infer.ray_batch import predict_batch_ray
    from ichseg.infer.shipped import default_model_dir

    work = Path(work or tempfile.mkdtemp(prefix="ichseg-engines-"))
    cohort = work / "cohort"
    for p in sorted((Path(data) / "Patients_CT").iterdir())[:n]:
        shutil.copytree(p, cohort / p.name)
    model = default_model_dir()
    out: dict[str, Any] = {"studies": n, "runtime": runtime}
    s = predict_batch(cohort, work / "local", model, workers=1, runtime=runtime, overlays=False)
    out["local pool, 1 worker"] = {"studies_per_minute": s["studies_per_minute"], "seconds": s["seconds"]}
    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    out["ray_start_s"] = time.perf_counter() - t0
    try:
        for actors in (1, 2):
            cpus = 2.0 / actors
            s = predict_batch_ray(
                cohort, work / f"ray{actors}", model, actors=actors, cpus_per_actor=cpus, runtime=runtime, overlays=False
            )
            rate = {"studies_per_minute": s["studies_per_minute"], "seconds": s["seconds"]}
            out[f"ray, {actors} actor(s) × {cpus:g} CPU"] = rate
    finally:
        ray.shutdown()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ichseg.experiments.engine_bench", allow_abbrev=False)
    p.add_argument("--data", type=Path, required=True, help="CT-ICH-layout folder")
    p.add_argument("--studies", type=int, default=10)
    p.add_argument("--runtime", default="auto")
    p.add_argument("--out", type=Path, default=None, help="write the result here as JSON")
    args = p.parse_args(argv)
    import ray

    from ichseg.experiments.workflow import hardware

    result = run(args.data, args.studies, args.runtime) | {"hardware": {**hardware(), "ray": ray.__version__}}
    text = json.dumps(result, indent=1)
    if args.out:
        from ichseg.files import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
