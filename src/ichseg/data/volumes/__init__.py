"""Labelled CT volumes in HU (nnU-Net/Decathlon folders, CT-ICH's NIfTI release, a CSV of
pairs) as a slice index like CT-ICH's: :func:`index_volumes`.

Each case is rendered once into a store (:mod:`ichseg.data.volumes.render`), under
``$ICHSEG_CACHE/volumes`` (default ``~/.cache/ichseg/volumes``), never into the dataset's
own folder, which may be read-only or shared.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ichseg.data.ctich import IndexResult
from ichseg.data.volumes.labels import LabelMap, binary_map, map_from_dataset_json
from ichseg.data.volumes.layout import LAYOUTS, Case, dataset_json, detect_layout, list_cases
from ichseg.data.volumes.render import RENDER_FORMAT, render_case
from ichseg.errors import DatasetError
from ichseg.files import sha256_text

__all__ = ["LAYOUTS", "Case", "detect_layout", "index_volumes", "store_root"]

log = logging.getLogger(__name__)


def store_root() -> Path:
    """Where rendered volume datasets live: ``$ICHSEG_CACHE/volumes``, else
    ``~/.cache/ichseg/volumes``."""
    base = os.environ.get("ICHSEG_CACHE") or str(Path.home() / ".cache" / "ichseg")
    return Path(base) / "volumes"


def label_map_for(path: Path, layout: str) -> LabelMap:
    """Class names from ``dataset.json`` for nnU-Net folders; binary for the others."""
    if layout == "nnunet":
        return map_from_dataset_json(dataset_json(path), str(Path(path) / "dataset.json"))
    return binary_map(f"{layout} layout (binary masks)")


def index_volumes(
    path: Path, *, skip_bad: bool = False, patients: list[str] | None = None, store: Path | None = None
) -> IndexResult:
    """The slice index of a labelled-volume dataset (see the module docstring). Every bad
    case is named together (or, with ``skip_bad``, left out with a warning); ``meta`` says
    the layout, the label mapping and each case's rendering."""
    path = Path(path).resolve()
    layout = detect_layout(path)
    if layout == "ctich-jpg":
        raise DatasetError(f"{path}: CT-ICH's JPG layout, not labelled volumes (read by ichseg.data.ctich)")
    label_map = label_map_for(path, layout)
    cases, problems = list_cases(path, layout)
    if patients is not None:
        wanted = set(patients)
        cases = [c for c in cases if c.case_id in wanted]
    if not cases:
        raise DatasetError(f"{path}: no cases" + (f" among {sorted(patients)}" if patients is not None else ""))
    store = Path(store) if store is not None else store_root() / sha256_text(str(path))[:16]
    records, skipped, info = [], [], {}
    for case in cases:
        try:
            recs, info[case.case_id] = render_case(case, label_map, store)
            records += recs
        except DatasetError as exc:
            problems.append(str(exc))
    if problems and not skip_bad:
        shown = "\n  ".join(problems[:50])
        raise DatasetError(f"{len(problems)} problem(s) in {path} (use --skip-bad to leave these cases out):\n  {shown}")
    for msg in problems:
        log.warning("skipping: %s", msg)
        skipped.append(msg)
    if not records:
        raise DatasetError(f"{path}: no usable cases")
    meta: dict[str, Any] = {
        "layout": layout,
        "path": str(path),
        "label_map": label_map.describe(),
        "render_format": RENDER_FORMAT,
        "store": str(store),
        "cases": info,
        "skipped": skipped,
    }
    return IndexResult(records, [], skipped, meta)
