"""A labelled HU volume as the slices the networks read: CT-ICH's two 8-bit windows in the
model's 650-px frame, 5 mm slabs for thin series, and the blood mask on the same frame.

This is the prediction path's preprocessing (:func:`ichseg.infer.volume.predict_volume`:
:func:`ichseg.io.hu.hu_to_windows`, :func:`ichseg.data.slabs.slab_index` and
:func:`ichseg.data.frame.to_frame`) applied to a training volume, so what is trained on is
what is predicted on. The slices are written once as lossless PNGs into a store keyed by
the dataset's path, with the source files' SHA-256 and :data:`RENDER_FORMAT` in each case's
``render.json``: a rerun reuses them, a changed file is rendered again. From there the
slice index, caches, splits, CV, evaluation and the stress test run unchanged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.data.ctich import SUBTYPES, SliceRecord
from ichseg.data.frame import frame_for, to_frame
from ichseg.data.slabs import average_slabs, slab_index
from ichseg.data.volumes.labels import LabelMap, check_values, slab_truth
from ichseg.data.volumes.layout import Case
from ichseg.errors import DatasetError
from ichseg.files import atomic_write_png, atomic_write_text, sha256_file

log = logging.getLogger(__name__)

RENDER_FORMAT = 1  # bump when what a rendered slice means changes
GRID_TOLERANCE_MM = 0.01


def _read(path: Path, what: str):
    from ichseg.io.nifti import read_nifti

    vol = read_nifti(path)
    if vol.hu.shape[0] < 1:
        raise DatasetError(f"{path}: {what} has no slices")
    return vol


def _same_grid(image, label, image_path: Path, label_path: Path) -> None:
    if image.hu.shape != label.hu.shape:
        raise DatasetError(
            f"{label_path}: label grid {tuple(label.hu.shape)} (slices, rows, columns) differs from its image "
            f"{image_path.name} {tuple(image.hu.shape)}"
        )
    if not np.allclose(image.affine_ras, label.affine_ras, atol=GRID_TOLERANCE_MM):
        raise DatasetError(
            f"{label_path}: label affine differs from its image {image_path.name} (more than {GRID_TOLERANCE_MM} mm): "
            f"{np.round(label.affine_ras, 3).tolist()} vs {np.round(image.affine_ras, 3).tolist()}"
        )


def render_case(case: Case, label_map: LabelMap, store: Path) -> tuple[list[SliceRecord], dict[str, Any]]:
    """The slice records of one case (rendered into ``store/<case>/`` unless its
    ``render.json`` says the same sources were rendered the same way) and what the run's
    ``dataset.json`` says about it. Raises :class:`DatasetError` naming the file."""
    from ichseg.io.hu import hu_to_windows

    if case.label is None:
        raise DatasetError(f"{case.image}: case {case.case_id!r} has no label file")
    for p in (case.image, case.label):
        if not Path(p).is_file():
            raise DatasetError(f"{p}: no such file (case {case.case_id!r})")
        if Path(p).stat().st_size == 0:
            raise DatasetError(f"{p}: empty file (case {case.case_id!r})")
    out = Path(store) / case.case_id
    sources = {"image": sha256_file(case.image), "label": sha256_file(case.label)}
    stamp = {"format": RENDER_FORMAT, "sources": sources, "label_map": label_map.describe()}
    done = out / "render.json"
    if done.is_file():
        try:
            body = json.loads(done.read_text())
            if {k: body.get(k) for k in stamp} == stamp:
                return [SliceRecord(**r) for r in body["records"]], body["info"]
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s: unreadable, rendering %s again", done, case.case_id)
    image = _read(case.image, "image")
    label = _read(case.label, "label")
    _same_grid(image, label, case.image, case.label)
    this_map = check_values(label.hu, label_map, str(case.label))
    lab = np.rint(label.hu).astype(np.int32)
    positions = image.slice_positions_mm()
    slab = slab_index(positions)
    hu = average_slabs(image.hu, slab) if slab.max() + 1 < len(slab) else image.hu
    brain, bone = hu_to_windows(hu)
    frame = frame_for(image.hu.shape[1:], image.pixel_spacing)
    records = []
    for k in range(int(slab.max()) + 1):
        n = k + 1
        mask, flags = slab_truth(lab[slab == k], this_map)
        framed = to_frame(mask.astype(np.uint8) * 255, frame) >= 128
        atomic_write_png(out / "brain" / f"{n}.png", to_frame(brain[k], frame))
        atomic_write_png(out / "bone" / f"{n}.png", to_frame(bone[k], frame))
        mask_path = out / "brain" / f"{n}_HGE_Seg.png"
        if framed.any():
            atomic_write_png(mask_path, framed.astype(np.uint8) * 255)
        elif mask_path.exists():
            mask_path.unlink()
        hem = int(framed.any())
        records.append(
            SliceRecord(
                patient_id=case.case_id,
                slice=n,
                image_path=str(out / "brain" / f"{n}.png"),
                bone_path=str(out / "bone" / f"{n}.png"),
                mask_path=str(mask_path) if hem else "",
                hemorrhage=hem,
                fracture=0,
                **{s: flags[s] * hem for s in SUBTYPES},
            )
        )
    info = {
        "image": str(case.image),
        "label": str(case.label),
        "slices": len(slab),
        "slabs": int(slab.max() + 1),
        "spacing_mm": [round(float(s), 4) for s in image.spacing_mm],
        "frame": {"scaled_px": list(frame.scaled), "offset_px": list(frame.offset)},
        "blood_slices": sum(r.hemorrhage for r in records),
    }
    body = {**stamp, "info": info, "records": [asdict(r) for r in records]}
    atomic_write_text(done, json.dumps(body, indent=1) + "\n")
    log.info("%s: %d slices as %d slabs, %d with blood", case.case_id, info["slices"], info["slabs"], info["blood_slices"])
    return records, info
