"""``ichseg predict COHORT --engine ray`` on a local Ray and on a simulated two-node cluster:
the same per-study outputs as the local process pool (masks identical), a failing study in
the middle, a rerun that skips what a killed run finished, and a worker node lost mid-run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from ichseg.cli import main  # noqa: E402


def _masks(study_dir: Path) -> dict[str, np.ndarray]:
    import cv2

    return {p.name: cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((study_dir / "masks").glob("*.png"))}


@pytest.fixture
def cohort(tiny_data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "cohort"
    for p in sorted((tiny_data / "Patients_CT").iterdir()):
        shutil.copytree(p, root / p.name)
    bad = root / "099-broken"
    (bad / "brain").mkdir(parents=True)
    (bad / "brain" / "1.jpg").write_bytes(b"not a jpeg")  # fails in the middle of the cohort
    return root


def _predict(cohort: Path, out: Path, *extra: str) -> int:
    return main(["predict", str(cohort), "--out", str(out), "--no-progress", "--no-overlays", "--runtime", "torch", *extra])


def test_ray_engine_matches_the_local_pool_and_resumes(cohort: Path, tmp_path: Path, monkeypatch) -> None:
    assert _predict(cohort, tmp_path / "local") == 1  # one failed study: exit status 1, the rest done
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # "local": a new Ray of our own even if one is still running on this machine (CI once had one);
    # 4 logical CPUs: 2 actors and the data tasks
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        assert _predict(cohort, tmp_path / "ray", "--engine", "ray", "--actors", "2") == 1
        studies = sorted(p.name for p in cohort.iterdir())
        good = [s for s in studies if s != "099-broken"]
        for s in good:
            a, b = _masks(tmp_path / "local" / s), _masks(tmp_path / "ray" / s)
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), s
            ra = json.loads((tmp_path / "local" / s / "study.json").read_text())
            rb = json.loads((tmp_path / "ray" / s / "study.json").read_text())
            assert {k: v for k, v in ra.items() if k != "seconds"} == {k: v for k, v in rb.items() if k != "seconds"}
        table = (tmp_path / "ray" / "studies.csv").read_text().splitlines()
        assert len(table) == len(studies) + 1 and any(line.startswith("099-broken,") for line in table)
        assert not (tmp_path / "ray" / "099-broken").exists() and not list((tmp_path / "ray").glob(".partial-*"))
        # a killed run: one study's folder lost, another left half-written; the rerun redoes just those
        shutil.rmtree(tmp_path / "ray" / good[0])
        shutil.rmtree(tmp_path / "ray" / good[1])
        (tmp_path / "ray" / f".partial-{good[1]}").mkdir()
        kept = {s: (tmp_path / "ray" / s / "study.json").stat().st_mtime_ns for s in good[2:]}
        assert _predict(cohort, tmp_path / "ray", "--engine", "ray") == 1
        assert all((tmp_path / "ray" / s / "study.json").stat().st_mtime_ns == t for s, t in kept.items())
        assert all((tmp_path / "ray" / s / "study.json").exists() for s in good)
    finally:
        ray.shutdown()


def test_ray_engine_on_a_two_node_cluster_survives_losing_a_node(cohort: Path, tmp_path: Path) -> None:
    """Two simulated nodes, one actor on each; when the first study comes back the worker node
    is removed (its actor and the studies queued on it with it) and a fresh node joins: Ray
    restarts the actor there and retries its studies (``max_restarts``/``max_task_retries``),
    so every study is still predicted, the failing one recorded, masks as the local pool's."""
    from ray.cluster_utils import Cluster

    from ichseg.infer.batch import predict_batch
    from ichseg.infer.ray_batch import predict_batch_ray
    from ichseg.infer.shipped import default_model_dir

    common = {"runtime": "torch", "precision": "fp32", "overlays": False}
    local = predict_batch(cohort, tmp_path / "local", default_model_dir(), **common)
    assert local["failed"] == 1
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    seen: list[str] = []

    def lose_the_worker(row: dict, done: int, total: int) -> None:
        seen.append(row["study"])
        if len(seen) == 1:  # mid-run: the other studies are queued on or running in the two actors
            assert len([n for n in ray.nodes() if n["Alive"]]) == 2
            cluster.remove_node(worker)
            cluster.add_node(num_cpus=1)  # where the lost actor can come back

    try:
        s = predict_batch_ray(cohort, tmp_path / "out", default_model_dir(), actors=2, on_result=lose_the_worker, **common)
    finally:
        ray.shutdown()
        cluster.shutdown()
    studies = sorted(p.name for p in cohort.iterdir())
    assert sorted(seen) == studies and s["engine"]["actors"] == 2
    assert s["predicted"] == len(studies) - 1 and s["failed"] == 1
    for study in studies:
        if study == "099-broken":
            assert not (tmp_path / "out" / study).exists()
            continue
        a, b = _masks(tmp_path / "local" / study), _masks(tmp_path / "out" / study)
        assert a and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), study
    table = (tmp_path / "out" / "studies.csv").read_text().splitlines()
    broken = [line for line in table if line.startswith("099-broken,")]
    assert len(table) == len(studies) + 1 and len(broken) == 1 and "not a readable image" in broken[0]
