"""Shared fixtures: small CT-ICH-layout datasets generated on the fly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ichseg.data.synthetic import SyntheticConfig, generate_dataset

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "ct-ich"
SMALL_PX = 96


@pytest.fixture(scope="session")
def _tiny_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "data"
    generate_dataset(root, SyntheticConfig(n_patients=5, slices_per_patient=8, size_px=SMALL_PX, seed=3))
    return root


@pytest.fixture
def tiny_data(_tiny_master: Path, tmp_path: Path) -> Path:
    """A private copy of a 5-patient, 8-slice, 96×96 dataset that a test may damage."""
    dst = tmp_path / "data"
    shutil.copytree(_tiny_master, dst)
    return dst
