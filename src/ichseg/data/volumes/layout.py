"""Which labelled-volume layout a folder holds, and its (image, label) cases.

Three layouts are read:

- **nnU-Net / Medical Segmentation Decathlon**: ``dataset.json`` with the label names,
  ``imagesTr/<case>_0000.nii.gz`` and ``labelsTr/<case>.nii.gz`` (nnU-Net v2; the file
  ending from ``dataset.json``), or the Decathlon's ``"training"`` list of
  ``{"image", "label"}`` pairs (nnU-Net v1 / MSD);
- **CT-ICH's NIfTI release** (PhysioNet CT-ICH v1.3.1, the seed paper's "Raw_Ct_Scans"):
  ``ct_scans/<ID>.nii`` and ``masks/<ID>.nii``, binary;
- **a CSV of pairs**: a ``.csv`` file with columns ``image`` and ``label`` (or ``mask``) and
  optionally ``case``, paths relative to the CSV's folder, binary labels.

CT-ICH's own JPG layout (``Patients_CT/``) is not a volume layout; :func:`detect_layout`
names it so the caller can use :mod:`ichseg.data.ctich`.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ichseg.errors import DatasetError

NIFTI_ENDINGS = (".nii.gz", ".nii")
LAYOUTS = ("ctich-jpg", "nnunet", "ctich-nifti", "csv")


@dataclass(frozen=True)
class Case:
    """One labelled volume: ``case_id`` names the patient everywhere downstream (splits,
    tables, reports), ``label`` is None when the layout lists an image without one."""

    case_id: str
    image: Path
    label: Path | None


def detect_layout(path: Path) -> str:
    """The layout at ``path`` (one of :data:`LAYOUTS`), or a :class:`DatasetError` that says
    what was expected."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return "csv"
    if not path.is_dir():
        raise DatasetError(f"{path}: no such folder (or .csv of image/label pairs)")
    if (path / "Patients_CT").is_dir():
        return "ctich-jpg"
    if (path / "dataset.json").is_file() and ((path / "imagesTr").is_dir() or "training" in _json(path / "dataset.json")):
        return "nnunet"
    if (path / "ct_scans").is_dir() and (path / "masks").is_dir():
        return "ctich-nifti"
    raise DatasetError(
        f"{path}: not a dataset layout ichseg reads: expected Patients_CT/ (CT-ICH JPGs), dataset.json with "
        "imagesTr/ and labelsTr/ (nnU-Net), ct_scans/ and masks/ (CT-ICH NIfTI), or a .csv of image,label pairs"
    )


def _json(path: Path) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    return body


def dataset_json(root: Path) -> dict[str, Any]:
    """The nnU-Net ``dataset.json`` of ``root``."""
    return _json(Path(root) / "dataset.json")


def _nifti_stem(name: str) -> str | None:
    for end in NIFTI_ENDINGS:
        if name.endswith(end):
            return name[: -len(end)]
    return None


def nnunet_cases(root: Path) -> tuple[list[Case], list[str]]:
    """Cases of an nnU-Net/MSD folder and the problems found (images with other channels
    are read from channel 0000 only: a CT dataset has one)."""
    root = Path(root)
    meta = dataset_json(root)
    problems: list[str] = []
    if isinstance(meta.get("training"), list) and meta["training"] and isinstance(meta["training"][0], dict):
        cases = []
        for item in meta["training"]:
            image, label = item.get("image"), item.get("label")
            if not image:
                problems.append(f"{root / 'dataset.json'}: a training entry without an image: {item}")
                continue
            img = (root / image).resolve()
            stem = _nifti_stem(img.name) or img.stem
            cases.append(Case(stem, img, (root / label).resolve() if label else None))
        return cases, problems
    ending = str(meta.get("file_ending", ".nii.gz"))
    channels = meta.get("channel_names") or meta.get("modality") or {"0": "CT"}
    if len(channels) > 1:
        problems.append(f"{root / 'dataset.json'}: {len(channels)} input channels {channels}; ichseg reads one CT channel (0000)")
    images = sorted((root / "imagesTr").glob(f"*_0000{ending}"))
    if not images:
        raise DatasetError(f"{root / 'imagesTr'}: no <case>_0000{ending} images")
    out = []
    for img in images:
        case = img.name[: -len(f"_0000{ending}")]
        label = root / "labelsTr" / f"{case}{ending}"
        out.append(Case(case, img, label if label.is_file() else None))
    stray = {_nifti_stem(p.name) for p in (root / "labelsTr").glob(f"*{ending}")} - {c.case_id for c in out}
    problems += [f"{root / 'labelsTr' / f'{s}{ending}'}: a label with no image imagesTr/{s}_0000{ending}" for s in sorted(stray)]
    return out, problems


def ctich_nifti_cases(root: Path) -> tuple[list[Case], list[str]]:
    """Cases of CT-ICH's NIfTI release (``ct_scans/<ID>.nii``, ``masks/<ID>.nii``)."""
    root = Path(root)
    images = {s: p for p in (root / "ct_scans").iterdir() if (s := _nifti_stem(p.name))}
    masks = {s: p for p in (root / "masks").iterdir() if (s := _nifti_stem(p.name))}
    if not images:
        raise DatasetError(f"{root / 'ct_scans'}: no .nii/.nii.gz volumes")
    problems = [f"{masks[s]}: a mask with no image in ct_scans/" for s in sorted(set(masks) - set(images))]
    return [Case(s, images[s], masks.get(s)) for s in sorted(images, key=_natural)], problems


def csv_cases(path: Path) -> tuple[list[Case], list[str]]:
    """Cases of a CSV with ``image`` and ``label`` (or ``mask``) columns, optional ``case``."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: not a readable CSV ({exc})") from exc
    if not rows:
        raise DatasetError(f"{path}: no rows")
    cols = {c.strip().lower(): c for c in rows[0]}
    label_col = cols.get("label") or cols.get("mask")
    if "image" not in cols or label_col is None:
        raise DatasetError(f"{path}: needs columns image and label (or mask); has {list(rows[0])}")
    out, problems, seen = [], [], set()
    for k, row in enumerate(rows, start=2):
        image = (path.parent / row[cols["image"]].strip()).resolve()
        lab = row[label_col].strip()
        case = (row.get(cols["case"], "") if "case" in cols else "").strip() or _nifti_stem(image.name) or image.stem
        if case in seen:
            problems.append(f"{path}: line {k}: case {case!r} listed twice")
            continue
        seen.add(case)
        out.append(Case(case, image, (path.parent / lab).resolve() if lab else None))
    return out, problems


def list_cases(path: Path, layout: str) -> tuple[list[Case], list[str]]:
    """The cases of a volume layout and the problems found while listing them."""
    if layout == "nnunet":
        return nnunet_cases(path)
    if layout == "ctich-nifti":
        return ctich_nifti_cases(path)
    if layout == "csv":
        return csv_cases(path)
    raise ValueError(f"{layout!r} is not a volume layout (nnunet, ctich-nifti, csv)")


def _natural(s: str) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s))
