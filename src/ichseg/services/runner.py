"""One study, whatever it is, through the shipped pipeline: what the services run per job,
plus the plain CT slices the viewer draws the masks over."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def predict_any(
    bundle, path: Path, out_dir: Path, *, head_check: bool = True, stage: Callable[[str], None] | None = None
) -> tuple[str, dict[str, Any]]:
    """Predict a DICOM series folder, a NIfTI volume or a folder of slice images into
    ``out_dir``; returns (kind, summary), the summary as ``summary.json`` holds it. Also
    writes ``viewer/<name>.png``: each slice's brain window, named as its mask. ``stage`` is
    told each step as it begins (``reading``, ``predicting``, ``writing``: the stages of
    :data:`ichseg.services.jobs.STAGES`), so a job can say where it is."""
    from ichseg.infer.volume import detect_input, predict_volume
    from ichseg.io.hu import hu_to_windows

    stage = stage or (lambda name: None)
    stage("reading")
    kind = detect_input(Path(path))
    out_dir = Path(out_dir)
    if kind in ("dicom", "nifti"):
        if kind == "dicom":
            from ichseg.io.dicom import read_dicom_series

            volume = read_dicom_series(Path(path))
        else:
            from ichseg.io.nifti import read_nifti

            volume = read_nifti(Path(path))
        stage("predicting")
        summary = predict_volume(bundle, volume, out_dir, head_check=head_check)
        stage("writing")
        brain = hu_to_windows(volume.hu)[0]  # masks are named 0001, 0002, ... in slice order
        _write_viewer_slices(out_dir, list(zip(slice_names(out_dir), brain, strict=True)))
        return kind, summary
    from ichseg.data.cache import read_grey_u8
    from ichseg.infer.predict import find_inputs, predict_path

    stage("predicting")  # predict_path reads the slices itself
    predict_path(bundle, Path(path), out_dir)
    stage("writing")
    _write_viewer_slices(out_dir, [(s.name, read_grey_u8(s.brain)) for s in find_inputs(Path(path))])
    summary = out_dir / "summary.json"
    return kind, json.loads(summary.read_text()) if summary.exists() else {}


def slice_names(out_dir: Path) -> list[str]:
    """The slices of an answer, in order: the names of its ``masks/<name>_mask.png``."""
    names = [p.name[: -len("_mask.png")] for p in (Path(out_dir) / "masks").glob("*_mask.png")]
    return sorted(names, key=lambda n: (int(n) if n.isdigit() else float("inf"), n))


def _write_viewer_slices(out_dir: Path, slices: list[tuple[str, np.ndarray]]) -> None:
    from ichseg.files import atomic_write_png

    for name, img in slices:
        atomic_write_png(Path(out_dir) / "viewer" / f"{name}.png", np.asarray(img, np.uint8))
