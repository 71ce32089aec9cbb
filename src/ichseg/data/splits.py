"""Patient-level train/validation split: slices of one patient never straddle the split,
which would leak near-identical neighbouring slices into validation."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from ichseg.data.ctich import SliceRecord
from ichseg.files import atomic_write_text


def patients_with_hemorrhage(records: Sequence[SliceRecord]) -> dict[str, bool]:
    """Patient ID → whether any of its slices has blood: the stratum of every split."""
    positive: dict[str, bool] = {}
    for r in records:
        positive[r.patient_id] = positive.get(r.patient_id, False) or bool(r.hemorrhage)
    return positive


def split_patients(records: Sequence[SliceRecord], val_fraction: float = 0.2, seed: int = 0) -> dict[str, list[str]]:
    """Split patients into ``train`` and ``val``, stratified by "has any hemorrhage".

    Each stratum is shuffled with ``seed`` and cut at ``val_fraction`` (at least one patient
    of each stratum goes to each side when the stratum has two or more), so both parts hold
    patients with hemorrhage.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    positive = patients_with_hemorrhage(records)
    rng = random.Random(seed)
    train: list[str] = []
    val: list[str] = []
    for flag in (True, False):
        group = sorted(p for p, v in positive.items() if v == flag)
        rng.shuffle(group)
        n_val = round(len(group) * val_fraction)
        if len(group) >= 2:
            n_val = min(max(n_val, 1), len(group) - 1)
        val += group[:n_val]
        train += group[n_val:]
    if not val and len(train) > 1:  # tiny cohorts: strata too small to give up a patient
        val.append(train.pop())
    if not val:
        raise ValueError(f"cannot split {len(positive)} patient(s) into train and validation")
    return {"train": sorted(train), "val": sorted(val)}


def kfold_patients(records: Sequence[SliceRecord], folds: int = 5, seed: int = 0) -> list[dict[str, list[str]]]:
    """K folds by patient, stratified by "has any hemorrhage": each stratum is shuffled
    with ``seed`` and dealt round-robin, so every fold's validation part holds positive
    patients and every patient is validated exactly once."""
    if folds < 2:
        raise ValueError(f"need at least 2 folds, got {folds}")
    positive = patients_with_hemorrhage(records)
    if len(positive) < folds:
        raise ValueError(f"{len(positive)} patients cannot fill {folds} folds")
    rng = random.Random(seed)
    parts: list[list[str]] = [[] for _ in range(folds)]
    offset = 0
    for flag in (True, False):
        group = sorted(p for p, v in positive.items() if v == flag)
        rng.shuffle(group)
        for i, pid in enumerate(group):
            parts[(i + offset) % folds].append(pid)
        offset += len(group)
    everyone = set(positive)
    return [{"train": sorted(everyone - set(part)), "val": sorted(part)} for part in parts]


def save_split(split: dict[str, list[str]], path: Path, *, seed: int, val_fraction: float) -> None:
    """Write the split as JSON so evaluation and later runs use exactly the same patients."""
    body = {"seed": seed, "val_fraction": val_fraction, **split}
    atomic_write_text(Path(path), json.dumps(body, indent=1) + "\n")


def load_split(path: Path) -> dict[str, list[str]]:
    """Read a split written by :func:`save_split` and check it does not leak."""
    body = json.loads(Path(path).read_text())
    split = {"train": list(body["train"]), "val": list(body["val"])}
    overlap = set(split["train"]) & set(split["val"])
    if overlap:
        raise ValueError(f"{path}: patients in both train and val: {sorted(overlap)}")
    return split


def select(records: Sequence[SliceRecord], patients: Sequence[str]) -> list[SliceRecord]:
    """The records of the given patients, in index order."""
    keep = set(patients)
    return [r for r in records if r.patient_id in keep]
