"""A real head CT shipped with the package, so ``ichseg`` can be tried without downloading data.

The study is CT-ICH patient 049 (35-year-old man; epidural and intraparenchymal
hemorrhage on 9 of 33 slices, skull fracture), its brain- and bone-window slices only:
the ground-truth masks are not shipped. Credit and licence (CC BY 4.0) are in
``NOTICE.md`` beside this file. The shipped model was trained on this patient, so its
predictions here show how the tool works, not how accurate it is.

The folder has the CT-ICH patient layout (``brain/<n>.jpg``, ``bone/<n>.jpg``), which
``ichseg predict`` and :func:`ichseg.data.convert.convert_patient` read as they are.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_PATIENT_ID = "049"
SAMPLE_DIR_NAME = f"ct-ich-{SAMPLE_PATIENT_ID}"


def sample_study_dir() -> Path:
    """The sample study's folder (``.../ichseg/sample/ct-ich-049``, holding ``brain/`` and
    ``bone/``). Raises FileNotFoundError when the package was installed without its data
    files (the package-data globs in pyproject.toml)."""
    path = Path(__file__).resolve().parent / SAMPLE_DIR_NAME
    if not (path / "brain").is_dir() or not any((path / "brain").glob("*.jpg")):
        raise FileNotFoundError(f"{path}: sample study missing; the package was installed without its data files")
    return path
