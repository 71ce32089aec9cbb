"""CT-ICH's JPG layout as an nnU-Net v2 dataset folder of NIfTI volumes in HU.

Each patient becomes ``imagesTr/<ID>_0000.nii.gz`` (HU reconstructed from its two windows,
:mod:`ichseg.data.convert`) and ``labelsTr/<ID>.nii.gz``. CT-ICH labels subtypes per slice
(``hemorrhage_diagnosis.csv``), not per voxel; so a slice's blood takes its subtype's class
where the CSV flags exactly one, and the generic class "hemorrhage" where it flags none or
several (those slices' subtype flags do not survive the export). ``dataset.json`` names the
classes, so :mod:`ichseg.data.volumes` maps them back. The case id is CT-ICH's patient
number, so splits and folds are the same patients as on the JPG layout.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.credits import DATASET_CREDIT
from ichseg.data.convert import NIFTI_DESCRIP, ctich_volume
from ichseg.data.ctich import DIAGNOSIS_CSV, PATIENTS_DIR, SUBTYPES, read_diagnosis_csv
from ichseg.errors import DatasetError
from ichseg.files import atomic_write_text

log = logging.getLogger(__name__)

CLASSES = {"background": 0, **{s: k + 1 for k, s in enumerate(SUBTYPES)}, "hemorrhage": len(SUBTYPES) + 1}


def slice_classes(mask: np.ndarray, flags: dict[str, int]) -> np.ndarray:
    """A slice's boolean blood mask (H, W) as class values: the one flagged subtype's, else
    the generic "hemorrhage" class."""
    named = [s for s in SUBTYPES if flags.get(s)]
    value = CLASSES[named[0]] if len(named) == 1 else CLASSES["hemorrhage"]
    return mask.astype(np.uint8) * np.uint8(value)


def export_nnunet(data_dir: Path, out_dir: Path, patients: list[str] | None = None) -> dict[str, Any]:
    """Write the nnU-Net folder for ``data_dir``'s patients (all, or ``patients``) into
    ``out_dir``; returns ``dataset.json``'s body. Files are written atomically; a rerun
    replaces them."""
    from ichseg.io.nifti import write_label_nifti, write_volume_nifti

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    root = data_dir / PATIENTS_DIR
    if not root.is_dir():
        raise DatasetError(f"{data_dir}: no {PATIENTS_DIR}/ (the CT-ICH JPG layout is what this exports)")
    labels = read_diagnosis_csv(data_dir / DIAGNOSIS_CSV)
    dirs = sorted(p for p in root.iterdir() if (p / "brain").is_dir())
    if patients is not None:
        wanted = {p.zfill(3) for p in patients}
        dirs = [p for p in dirs if p.name.zfill(3) in wanted]
    if not dirs:
        raise DatasetError(f"{root}: no patient folders" + (f" among {patients}" if patients else ""))
    for pdir in dirs:
        volume, mask, _ = ctich_volume(pdir)
        numbers = volume.extra["slice_numbers"]
        pnum = int(pdir.name)
        classes = np.stack([slice_classes(mask[k], labels.get((pnum, n), {})) for k, n in enumerate(numbers)])
        write_volume_nifti(volume, out_dir / "imagesTr" / f"{pdir.name}_0000.nii.gz", NIFTI_DESCRIP)
        write_label_nifti(classes, volume, out_dir / "labelsTr" / f"{pdir.name}.nii.gz", "CT-ICH blood by subtype class")
        log.info("%s -> %s (%d slices)", pdir, out_dir / "imagesTr" / f"{pdir.name}_0000.nii.gz", len(numbers))
    body = {
        "channel_names": {"0": "CT"},
        "labels": CLASSES,
        "numTraining": len(dirs),
        "file_ending": ".nii.gz",
        "name": "CT-ICH (exported by ichseg)",
        "description": "HU reconstructed from CT-ICH's brain and bone window JPGs; blood by the subtype the slice's "
        "CSV row flags (generic 'hemorrhage' where it flags none or several)",
        "licence": "CC BY 4.0",
        "reference": DATASET_CREDIT,
    }
    atomic_write_text(out_dir / "dataset.json", json.dumps(body, indent=1) + "\n")
    return body
