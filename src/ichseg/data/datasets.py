"""One entry to every dataset layout ichseg trains and evaluates on.

CT-ICH's JPG layout is read by :mod:`ichseg.data.ctich`; labelled volumes in HU (nnU-Net,
CT-ICH's NIfTI release, a CSV of pairs) by :mod:`ichseg.data.volumes`. Both give the same
slice index, so every stage after indexing is the same for all of them.
"""

from __future__ import annotations

from pathlib import Path

from ichseg.data.ctich import IndexResult, build_index
from ichseg.data.volumes import detect_layout, index_volumes


def index_dataset(
    path: Path, *, expected_size_px: int | None = 650, skip_bad: bool = False, patients: list[str] | None = None
) -> IndexResult:
    """The slice index of the dataset at ``path``, whatever its layout
    (:func:`ichseg.data.volumes.detect_layout`). ``expected_size_px`` checks CT-ICH's JPGs;
    rendered volumes are always on the model's 650-px frame."""
    if detect_layout(Path(path)) == "ctich-jpg":
        return build_index(path, expected_size_px=expected_size_px, skip_bad=skip_bad, patients=patients)
    return index_volumes(path, skip_bad=skip_bad, patients=patients)
