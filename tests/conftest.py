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


def assert_figure(path: Path, min_bytes: int = 5_000, min_px: int = 100) -> None:
    """``path`` is a figure: a PNG that decodes, at least ``min_px`` on each side and
    ``min_bytes`` long, that is not one flat colour (a blank canvas)."""
    import numpy as np
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name}: not a PNG"
    assert path.stat().st_size >= min_bytes, f"{path.name}: {path.stat().st_size} bytes"
    with Image.open(path) as im:
        im.load()
        pixels = np.asarray(im.convert("L"))
    assert min(pixels.shape) >= min_px, f"{path.name}: {pixels.shape}"
    assert np.unique(pixels).size >= 16, f"{path.name}: nearly flat"
