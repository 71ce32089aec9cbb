"""Reading the PhysioNet CT-ICH layout into a slice index.

The layout (``Patients_CT/<ID>/brain/<n>.jpg``, ``<n>_HGE_Seg.jpg``, ``bone/<n>.jpg`` and
two CSVs with quirks) is validated here, once, so that a bad file is reported by name
before any training starts rather than as a crash deep inside a data loader.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ichseg.credits import DATASET_CREDIT  # noqa: F401  (re-exported: the dataset's own module names its credit)
from ichseg.errors import DatasetError
from ichseg.files import atomic_write

log = logging.getLogger(__name__)

SUBTYPES = ("intraventricular", "intraparenchymal", "subarachnoid", "epidural", "subdural")
DIAGNOSIS_CSV = "hemorrhage_diagnosis.csv"
DEMOGRAPHICS_CSV = "patient_demographics.csv"
PATIENTS_DIR = "Patients_CT"
MASK_SUFFIX = "_HGE_Seg"
MASK_ON_LEVEL = 128  # JPEG masks are not strictly binary; >= this grey level is blood
_SLICE_RE = re.compile(r"^(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)
_MASK_RE = re.compile(r"^(\d+)" + MASK_SUFFIX + r"\.(jpg|jpeg|png)$", re.IGNORECASE)


@dataclass(frozen=True)
class SliceRecord:
    """One row of the slice index (``index.csv``)."""

    patient_id: str
    slice: int
    image_path: str
    bone_path: str
    mask_path: str
    hemorrhage: int
    intraventricular: int
    intraparenchymal: int
    subarachnoid: int
    epidural: int
    subdural: int
    fracture: int


INDEX_COLUMNS = tuple(f.name for f in fields(SliceRecord))


@dataclass(frozen=True)
class Disagreement:
    """A slice whose mask and ``No_Hemorrhage`` flag tell different stories."""

    patient_id: str
    slice: int
    mask_says_hemorrhage: int
    csv_says_hemorrhage: int
    detail: str


@dataclass
class IndexResult:
    """The index plus everything the caller must see rather than have silently resolved."""

    records: list[SliceRecord]
    disagreements: list[Disagreement]
    skipped: list[str]
    # what the run's dataset.json records: the layout and, for labelled volumes
    # (ichseg.data.volumes), the label mapping and each case's rendering
    meta: dict[str, object] = field(default_factory=lambda: {"layout": "ctich-jpg"})


def read_diagnosis_csv(path: Path) -> dict[tuple[int, int], dict[str, int]]:
    """Per-slice labels keyed by (patient number, slice number).

    The file starts with a UTF-8 byte-order mark, which ``utf-8-sig`` strips; without that
    the first column would be called ``\\ufeffPatientNumber``.
    """
    path = Path(path)
    required = {"PatientNumber", "SliceNumber", "No_Hemorrhage", "Fracture_Yes_No"} | {s.capitalize() for s in SUBTYPES}
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = required - set(reader.fieldnames or [])
            if missing:
                raise DatasetError(f"{path}: missing columns {sorted(missing)}")
            out: dict[tuple[int, int], dict[str, int]] = {}
            for line_no, row in enumerate(reader, start=2):
                try:
                    key = (int(row["PatientNumber"]), int(row["SliceNumber"]))
                    labels = {s: _flag(row[s.capitalize()]) for s in SUBTYPES}
                    labels["no_hemorrhage"] = _flag(row["No_Hemorrhage"])
                    labels["fracture"] = _flag(row["Fracture_Yes_No"])
                except (TypeError, ValueError) as exc:
                    raise DatasetError(f"{path}, line {line_no}: bad value ({exc})") from exc
                if key in out:
                    raise DatasetError(f"{path}, line {line_no}: duplicate row for patient {key[0]} slice {key[1]}")
                out[key] = labels
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc})") from exc
    if not out:
        raise DatasetError(f"{path}: no rows")
    return out


def read_demographics_csv(path: Path) -> list[dict[str, object]]:
    """Per-patient rows. The header holds a quoted line break (``"Age\\n(years)"``), which
    the csv module handles when the file is opened with ``newline=""``; names are
    normalised to single-line snake_case, and empty cells mean 0 for the numeric columns."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: file not found") from exc
    if not rows:
        raise DatasetError(f"{path}: empty file")
    names = [_snake(h) for h in rows[0]]
    out: list[dict[str, object]] = []
    for line in rows[1:]:
        if not any(cell.strip() for cell in line):
            continue
        rec: dict[str, object] = {}
        for name, cell in zip(names, line, strict=False):
            cell = cell.strip()
            if name in ("gender", "condition_on_file", "note"):
                rec[name] = cell
            elif cell == "":
                rec[name] = 0
            else:
                try:
                    rec[name] = int(float(cell))
                except ValueError as exc:
                    raise DatasetError(f"{path}: column {name!r} has non-numeric value {cell!r}") from exc
        out.append(rec)
    return out


def _snake(header: str) -> str:
    text = re.sub(r"\(.*?\)", "", header.replace("\n", " ")).strip().lower()
    if "fracture" in text:
        return "fracture"
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_")


def _flag(value: str) -> int:
    value = (value or "").strip()
    if value == "":
        return 0
    number = int(float(value))
    if number not in (0, 1):
        raise ValueError(f"flag must be 0 or 1, got {value!r}")
    return number


def _check_image(path: Path, expected_size_px: int | None) -> tuple[int, int]:
    """Open enough of the file to know it is a readable image of the expected size."""
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: empty file")
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            size = im.size
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from exc
    if expected_size_px is not None and size != (expected_size_px, expected_size_px):
        raise DatasetError(f"{path}: image is {size[0]}×{size[1]}, expected {expected_size_px}×{expected_size_px}")
    return size


def read_mask_px(path: Path) -> np.ndarray:
    """Binary mask (bool) of a JPEG/PNG mask file at its stored size."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"{path}: not a readable mask image ({exc})") from exc
    return arr >= MASK_ON_LEVEL


def build_index(
    data_dir: Path,
    *,
    expected_size_px: int | None = 650,
    skip_bad: bool = False,
    patients: list[str] | None = None,
) -> IndexResult:
    """Scan a CT-ICH folder into one record per brain slice.

    ``hemorrhage`` comes from the mask (non-empty mask file), subtype and fracture flags
    from ``hemorrhage_diagnosis.csv``; where the mask and ``No_Hemorrhage`` disagree the
    slice is listed in ``disagreements`` rather than silently resolved. Every problem is
    collected and reported together (or, with ``skip_bad``, the slice is left out with a
    warning), so one bad file does not hide the next.
    """
    data_dir = Path(data_dir)
    patients_dir = data_dir / PATIENTS_DIR
    if not patients_dir.is_dir():
        raise DatasetError(f"{patients_dir}: not found (expected the CT-ICH layout, {PATIENTS_DIR}/<ID>/brain/<n>.jpg)")
    labels = read_diagnosis_csv(data_dir / DIAGNOSIS_CSV)

    problems: list[str] = []
    records: list[SliceRecord] = []
    disagreements: list[Disagreement] = []
    skipped: list[str] = []
    seen_keys: set[tuple[int, int]] = set()
    patient_dirs = sorted(p for p in patients_dir.iterdir() if p.is_dir())
    if patients is not None:
        wanted = {p.zfill(3) for p in patients}
        patient_dirs = [p for p in patient_dirs if p.name.zfill(3) in wanted]
    if not patient_dirs:
        raise DatasetError(f"{patients_dir}: no patient folders")

    def problem(msg: str) -> None:
        if skip_bad:
            log.warning("skipping: %s", msg)
            skipped.append(msg)
        else:
            problems.append(msg)

    for pdir in patient_dirs:
        try:
            pnum = int(pdir.name)
        except ValueError:
            problem(f"{pdir}: patient folder name is not a number")
            continue
        brain_dir = pdir / "brain"
        if not brain_dir.is_dir():
            problem(f"{brain_dir}: missing brain folder")
            continue
        images: dict[int, Path] = {}
        masks: dict[int, Path] = {}
        for f in brain_dir.iterdir():
            if m := _SLICE_RE.match(f.name):
                images[int(m.group(1))] = f
            elif m := _MASK_RE.match(f.name):
                masks[int(m.group(1))] = f
        bones = {}
        if (pdir / "bone").is_dir():
            bones = {int(m.group(1)): f for f in (pdir / "bone").iterdir() if (m := _SLICE_RE.match(f.name))}
        for n in sorted(set(masks) - set(images)):
            problem(f"{masks[n]}: mask has no image {brain_dir / f'{n}.jpg'}")
        csv_slices = {s for (p, s) in labels if p == pnum}
        for n in sorted(csv_slices - set(images)):
            problem(f"{brain_dir / f'{n}.jpg'}: listed in {DIAGNOSIS_CSV} (patient {pnum}, slice {n}) but missing")
        for n in sorted(images):
            key = (pnum, n)
            seen_keys.add(key)
            row = labels.get(key)
            if row is None:
                problem(f"{images[n]}: no row for patient {pnum} slice {n} in {DIAGNOSIS_CSV}")
                continue
            try:
                _check_image(images[n], expected_size_px)
                mask_px = 0
                if n in masks:
                    _check_image(masks[n], expected_size_px)
                    mask_px = int(read_mask_px(masks[n]).sum())
                bone = bones.get(n)
                if bone is not None:
                    _check_image(bone, expected_size_px)
            except DatasetError as exc:
                problem(str(exc))
                continue
            except OSError as exc:
                problem(f"{images[n]}: cannot read ({exc})")
                continue
            if bone is None:
                log.warning("%s: no bone-window slice %d", pdir / "bone", n)
            hem = int(mask_px > 0)
            csv_hem = 1 - row["no_hemorrhage"]
            if hem != csv_hem:
                detail = (
                    "mask file exists but is empty"
                    if n in masks and mask_px == 0
                    else "mask present, No_Hemorrhage=1"
                    if hem
                    else "no mask, No_Hemorrhage=0"
                )
                disagreements.append(Disagreement(pdir.name, n, hem, csv_hem, detail))
            records.append(
                SliceRecord(
                    patient_id=pdir.name,
                    slice=n,
                    image_path=str(images[n]),
                    bone_path=str(bone) if bone is not None else "",
                    mask_path=str(masks[n]) if n in masks else "",
                    hemorrhage=hem,
                    fracture=row["fracture"],
                    **{s: row[s] for s in SUBTYPES},
                )
            )
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  … and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise DatasetError(
            f"{len(problems)} problem(s) in {data_dir} (use --skip-bad to leave these slices out):\n  {shown}{more}"
        )
    if not records:
        raise DatasetError(f"{data_dir}: no usable slices")
    for d in disagreements:
        log.warning("label disagreement: patient %s slice %d: %s", d.patient_id, d.slice, d.detail)
    return IndexResult(records, disagreements, skipped)


def write_index(records: list[SliceRecord], path: Path) -> None:
    """Write ``index.csv`` atomically, one row per slice, columns ``INDEX_COLUMNS``."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=INDEX_COLUMNS, lineterminator="\n")
            w.writeheader()
            for r in records:
                w.writerow(asdict(r))

    atomic_write(Path(path), write)


def write_disagreements(disagreements: list[Disagreement], path: Path) -> None:
    """Write every mask/CSV label disagreement (header only when there are none)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=[f.name for f in fields(Disagreement)], lineterminator="\n")
            w.writeheader()
            for d in disagreements:
                w.writerow(asdict(d))

    atomic_write(Path(path), write)


def read_index(path: Path) -> list[SliceRecord]:
    """Load ``index.csv``; patient IDs stay strings so ``049`` keeps its zero."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != INDEX_COLUMNS:
                raise DatasetError(f"{path}: columns {reader.fieldnames} are not {list(INDEX_COLUMNS)}")
            out = []
            for row in reader:
                ints = {k: int(row[k]) for k in INDEX_COLUMNS if k not in ("patient_id", "image_path", "bone_path", "mask_path")}
                out.append(
                    SliceRecord(
                        patient_id=row["patient_id"],
                        image_path=row["image_path"],
                        bone_path=row["bone_path"],
                        mask_path=row["mask_path"],
                        **ints,
                    )
                )
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: index not found (run `ichseg index` first)") from exc
    return out
