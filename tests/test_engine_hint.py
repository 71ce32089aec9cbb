"""Without Ray installed, ``ichseg predict COHORT --engine ray`` says how to install it in one
line (exit status 2), and the CLI still lets an unrelated ImportError through. Runs whether
or not Ray is installed: Ray is made unimportable (``sys.modules["ray"] = None``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ichseg.cli import main
from ichseg.errors import EngineUnavailable
from ichseg.infer.ray_batch import INSTALL_HINT, predict_batch_ray


@pytest.fixture
def no_ray(monkeypatch):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)


def _predict(cohort: Path, out: Path, *extra: str) -> int:
    return main(["predict", str(cohort), "--out", str(out), "--no-progress", "--no-overlays", "--runtime", "torch", *extra])


def test_the_engine_raises_its_own_error_with_the_hint(no_ray, tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="ichseg\\[ray\\]") as err:
        predict_batch_ray(tmp_path, tmp_path / "o", tmp_path)
    assert isinstance(err.value.__cause__, ImportError) and "pip install" in INSTALL_HINT


def test_the_cli_prints_the_install_hint_as_one_line(no_ray, tiny_data: Path, tmp_path: Path, capsys) -> None:
    # with the progress bar on: the hint must still be the only line
    assert main(["predict", str(tiny_data / "Patients_CT"), "--out", str(tmp_path / "out"), "--engine", "ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ichseg: error: {INSTALL_HINT}"), err
    assert not (tmp_path / "out" / "studies.csv").exists()


def test_an_unrelated_import_error_is_not_swallowed(monkeypatch, tiny_data: Path, tmp_path: Path) -> None:
    import ichseg.infer.batch

    def broken(*args, **kwargs):
        raise ImportError("No module named 'something_else'")

    monkeypatch.setattr(ichseg.infer.batch, "predict_batch", broken)
    with pytest.raises(ImportError, match="something_else"):
        _predict(tiny_data / "Patients_CT", tmp_path / "out")
