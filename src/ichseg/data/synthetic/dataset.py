"""A whole synthetic data set: bleeds planned per patient, slices rendered, and the CT-ICH
file layout written (JPGs, masks, both CSVs)."""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np

from ichseg.data.synthetic.anatomy import (
    _CONDITION_NAMES,
    _MIN_LESION_PX,
    DEMOGRAPHICS_HEADER,
    DIAGNOSIS_HEADER,
    EPIDURAL,
    INTRAPARENCHYMAL,
    INTRAVENTRICULAR,
    SUBARACHNOID,
    SUBDURAL,
    SUBTYPES,
    Bleed,
    SyntheticConfig,
    _PatientPlan,
)
from ichseg.data.synthetic.render import (
    _encode_jpeg,
    _noise_bank,
    _render,
    random_head,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- planning

# Relative frequency of subtypes and median peak lesion area (px at 650 px).
_KIND_WEIGHTS = {
    INTRAPARENCHYMAL: 0.32,
    SUBDURAL: 0.2,
    EPIDURAL: 0.16,
    SUBARACHNOID: 0.17,
    INTRAVENTRICULAR: 0.15,
}
_KIND_MEDIAN_AREA = {
    INTRAPARENCHYMAL: 2400.0,
    SUBDURAL: 2400.0,
    EPIDURAL: 2700.0,
    SUBARACHNOID: 900.0,
    INTRAVENTRICULAR: 1200.0,
}


def _patient_ids(rng: np.random.Generator, config: SyntheticConfig) -> list[int]:
    """Consecutive IDs from ``first_id`` with occasional gaps, like a real subset."""
    ids = []
    current = config.first_id
    for _ in range(config.n_patients):
        ids.append(current)
        current += 1 + (1 if rng.random() < 0.2 else 0)
    return ids


def _span(rng: np.random.Generator, valid: list[int], length: int) -> list[int]:
    length = max(1, min(length, len(valid)))
    start = int(rng.integers(0, len(valid) - length + 1))
    return valid[start : start + length]


def _valid_slices(n: int, lo: float, hi: float) -> list[int]:
    pos = [(k + 0.5) / n for k in range(n)]
    valid = [k for k, t in enumerate(pos) if lo <= t <= hi]
    if not valid:  # very short stacks: fall back to the middle slice
        valid = [min(range(n), key=lambda k: abs(pos[k] - 0.5 * (lo + hi)))]
    return valid


def _plan_bleed(rng: np.random.Generator, kind: str, n_slices: int, near: list[int] | None) -> dict[int, Bleed]:
    """Plans one bleed across consecutive slices, largest in the middle of its span."""
    if kind == INTRAVENTRICULAR:
        valid = _valid_slices(n_slices, 0.44, 0.66)
    else:
        valid = _valid_slices(n_slices, 0.22, 0.8)
    length = round(n_slices * rng.uniform(0.2, 0.36))
    if near:
        # A second bleed in the same patient overlaps the first one's slices.
        centre = near[len(near) // 2]
        valid = sorted(valid, key=lambda k: abs(k - centre))[: max(length + 2, 1)]
        valid.sort()
    slices = _span(rng, valid, length)
    peak = float(np.clip(_KIND_MEDIAN_AREA[kind] * rng.lognormal(0.0, 0.75), 300.0, 14000.0))
    if kind in (EPIDURAL, SUBDURAL):
        theta = float(rng.choice([0.0, np.pi]) + rng.uniform(-0.9, 0.9))
    else:
        theta = float(rng.uniform(-np.pi, np.pi))
    rho = float(rng.uniform(0.2, 0.6))
    drift = float(rng.uniform(-0.05, 0.05))
    shape_seed = int(rng.integers(0, 2**31 - 1))
    plan = {}
    for i, k in enumerate(slices):
        profile = 0.2 + 0.8 * math.sin(math.pi * (i + 0.5) / len(slices))
        profile *= float(rng.lognormal(0.0, 0.25))
        plan[k] = Bleed(
            kind=kind,
            theta=theta + drift * i,
            rho=rho,
            area_px=max(_MIN_LESION_PX * 1.3, peak * profile),
            shape_seed=shape_seed,
        )
    return plan


def _plan_dataset(config: SyntheticConfig) -> list[_PatientPlan]:
    """Decides, per patient, head shape, bleeds per slice and fractures."""
    root_seq = np.random.SeedSequence(config.seed)
    plan_rng = np.random.default_rng(root_seq.spawn(1)[0])
    ids = _patient_ids(plan_rng, config)
    n_bleeding = round(config.n_patients * config.hemorrhage_fraction)
    bleeding = set(plan_rng.choice(config.n_patients, size=n_bleeding, replace=False).tolist())
    kinds = list(_KIND_WEIGHTS)
    weights = np.array([_KIND_WEIGHTS[k] for k in kinds])
    weights /= weights.sum()
    n = config.slices_per_patient

    plans = []
    for index, number in enumerate(ids):
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, 1, index]))
        plan = _PatientPlan(
            number=number,
            age=int(rng.integers(1, 73)),
            gender="Male" if rng.random() < 0.6 else "Female",
            head=random_head(rng),
            bleeds=[() for _ in range(n)],
            fractures=[None] * n,
        )
        patient_kinds: list[str] = []
        first_span: list[int] | None = None
        bleed_at: dict[str, list[int]] = {}
        if index in bleeding:
            n_kinds = 2 if rng.random() < 0.3 else 1
            patient_kinds = [str(k) for k in rng.choice(kinds, size=n_kinds, replace=False, p=weights)]
            for kind in patient_kinds:
                per_slice = _plan_bleed(rng, kind, n, first_span)
                bleed_at[kind] = sorted(per_slice)
                if first_span is None:
                    first_span = sorted(per_slice)
                for k, bleed in per_slice.items():
                    plan.bleeds[k] = plan.bleeds[k] + (bleed,)
        # Fractures mostly accompany epidural bleeds, occasionally other trauma.
        if EPIDURAL in patient_kinds:
            p_fracture = 0.7
        elif patient_kinds:
            p_fracture = 0.2
        else:
            p_fracture = 0.08
        if rng.random() < p_fracture:
            if EPIDURAL in bleed_at:
                centre = bleed_at[EPIDURAL][len(bleed_at[EPIDURAL]) // 2]
                theta_f = plan.bleeds[centre][0].theta if plan.bleeds[centre] else 0.0
                for b in plan.bleeds[centre]:
                    if b.kind == EPIDURAL:
                        theta_f = b.theta
                theta_f += float(rng.uniform(-0.15, 0.15))
            else:
                centre = int(rng.choice(_valid_slices(n, 0.3, 0.75)))
                theta_f = float(rng.uniform(-np.pi, np.pi))
            length = int(rng.integers(2, 5))
            for k in range(max(0, centre - length // 2), min(n, centre - length // 2 + length)):
                plan.fractures[k] = theta_f
        plans.append(plan)
    return plans


# --------------------------------------------------------------------------- writing


def _demographics_row(plan: _PatientPlan, kinds: set[str], fracture: bool) -> str:
    flags = ["1" if kind in kinds else "" for kind in SUBTYPES]
    if kinds:
        condition = "+ ".join(_CONDITION_NAMES[k] for k in SUBTYPES if k in kinds) + " "
    else:
        condition = "Normal CT"
    return ",".join([str(plan.number), str(plan.age), f'"{plan.gender}"', *flags, "1" if fracture else "", f'"{condition}"', ""])


def generate_dataset(
    root: Path,
    config: SyntheticConfig = SyntheticConfig(),  # noqa: B008  (a frozen dataclass: immutable)
    *,
    overwrite: bool = False,
) -> Path:
    """Writes the dataset under root (created if missing) and returns root.

    Deterministic for a given config (same bytes for the same seed), so tests can
    compare files and demos are reproducible.  Refuses to touch an existing
    ``root/Patients_CT`` (FileExistsError) unless ``overwrite=True``, in which case that
    folder is deleted first so no stale patients remain.
    """
    started = time.perf_counter()
    root = Path(root)
    patients_dir = root / "Patients_CT"
    if patients_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{patients_dir} already exists; pass overwrite=True to replace it")
        logger.info("overwriting existing %s", patients_dir)
        shutil.rmtree(patients_dir)
    patients_dir.mkdir(parents=True)

    plans = _plan_dataset(config)
    noise_bank = _noise_bank(np.random.default_rng(np.random.SeedSequence([config.seed, 3])), config.size_px)
    n = config.slices_per_patient
    diagnosis = [DIAGNOSIS_HEADER]
    demographics = [DEMOGRAPHICS_HEADER]
    n_positive = 0
    for index, plan in enumerate(plans):
        patient_dir = patients_dir / f"{plan.number:03d}"
        brain_dir = patient_dir / "brain"
        bone_dir = patient_dir / "bone"
        brain_dir.mkdir(parents=True)
        bone_dir.mkdir()
        patient_kinds: set[str] = set()
        patient_fracture = False
        for k in range(n):
            rng = np.random.default_rng(np.random.SeedSequence([config.seed, 2, index, k]))
            result = _render(
                rng,
                config.size_px,
                (k + 0.5) / n,
                plan.head,
                plan.bleeds[k],
                plan.fractures[k],
                noise_bank,
            )
            number = k + 1
            (brain_dir / f"{number}.jpg").write_bytes(_encode_jpeg(result.brain))
            (bone_dir / f"{number}.jpg").write_bytes(_encode_jpeg(result.bone))
            positive = bool(result.kinds)
            if positive:
                n_positive += 1
                mask_u8 = result.mask.astype(np.uint8) * np.uint8(255)
                (brain_dir / f"{number}_HGE_Seg.jpg").write_bytes(_encode_jpeg(mask_u8))
            patient_kinds |= result.kinds
            patient_fracture |= result.fracture
            flags = ["1" if kind in result.kinds else "0" for kind in SUBTYPES]
            diagnosis.append(
                ",".join([str(plan.number), str(number), *flags, "0" if positive else "1", "1" if result.fracture else "0"])
            )
        demographics.append(_demographics_row(plan, patient_kinds, patient_fracture))

    with open(root / "hemorrhage_diagnosis.csv", "w", encoding="utf-8-sig", newline="") as fh:
        fh.write("\n".join(diagnosis) + "\n")
    with open(root / "patient_demographics.csv", "w", encoding="utf-8", newline="") as fh:
        fh.write("\n".join(demographics) + "\n")

    total = len(plans) * n
    logger.info(
        "wrote synthetic CT-ICH data set to %s: %d patients, %d slices (%d with hemorrhage) in %.2f s",
        root,
        len(plans),
        total,
        n_positive,
        time.perf_counter() - started,
    )
    return root
