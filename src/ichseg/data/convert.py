"""Turn a CT-ICH patient folder (windowed JPGs) into a synthetic CT in HU: DICOM or NIfTI.

Why: CT-ICH ships 8-bit window images, hospitals ship DICOM and NIfTI in HU. Converting a
real CT-ICH patient gives test input for the DICOM/NIfTI readers and the whole HU path
(read → window → model → mask writers) on real anatomy with a known ground-truth mask.

The HU are **reconstructed**, not measured: :func:`ichseg.data.windows.windows_to_hu`
inverts the estimated windows (brain window where it is not saturated, 0.47 HU per grey
level; bone window elsewhere, 12.5 HU per level; bone-window black is −1000). Every
output says so (DICOM ImageComments and DerivationDescription, NIfTI descrip), and
the DICOM images are typed DERIVED\\SECONDARY\\AXIAL with LossyImageCompression 01,
because that is what they are.

Geometry, which CT-ICH does not record either:

* slices 5 mm apart and 5 mm thick (the dataset's stated thickness), CT-ICH slice 1 the
  most inferior (checked on the images: slice 1 shows the skull base, the last the
  vertex), so slice ``n`` sits at z = (n − 1) × 5 mm;
* in-plane pixel spacing ``CT_ICH_PIXEL_SPACING_MM`` = 0.35 mm, i.e. a 227 mm field of view for
  650 pixels. Measured, not assumed (:func:`estimate_pixel_spacing`): over the 45 adult
  patients the outer skull is a median 519 px long (front–back) and 411 px wide; adult
  skulls are ≈ 180 mm long and ≈ 141 mm wide, giving 0.347 and 0.343 mm/px. Uncertain by
  about ±10 % (head sizes vary, and the JPGs are screen captures whose zoom may differ
  between patients);
* axial, head first supine, image rows running anterior → posterior and columns the
  patient's right → left (DICOM ImageOrientationPatient 1\\0\\0\\0\\1\\0), centred on the
  field of view.

Why it is long: the DICOM and NIfTI writers of a converted patient share its geometry and
HU reconstruction, and must stay identical in both so the two readers can be tested
against each other.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np

from ichseg.data.ctich import MASK_SUFFIX, read_mask_px
from ichseg.errors import DatasetError
from ichseg.io.hu import BONE_WINDOW, BRAIN_WINDOW, windows_to_hu
from ichseg.io.volume import Volume, affine_from_dicom

log = logging.getLogger(__name__)

CT_ICH_PIXEL_SPACING_MM = 0.35
"""In-plane spacing given to CT-ICH's 650-px slices (see the module docstring)."""
SLICE_THICKNESS_MM = 5.0
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMAGE_TYPE = ["DERIVED", "SECONDARY", "AXIAL"]
"""DERIVED\\SECONDARY: the pixels were computed from JPGs, not acquired (DICOM PS3.3
C.7.6.1.1.2); AXIAL as the CT Image module requires for value 3."""
HU_NOTE = (
    "HU reconstructed from CT-ICH 8-bit windowed JPGs (brain C{bc:g}/W{bw:g}, bone C{oc:g}/W{ow:g}, estimated): not scanner HU"
)
NIFTI_DESCRIP = "HU reconstructed from CT-ICH windowed JPGs, not scanner HU"
_SLICE_RE = re.compile(r"^(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


def hu_note() -> str:
    """The sentence every converted file carries."""
    return HU_NOTE.format(bc=BRAIN_WINDOW.center, bw=BRAIN_WINDOW.width, oc=BONE_WINDOW.center, ow=BONE_WINDOW.width)


@dataclass
class ConversionResult:
    """What :func:`convert_patient_detailed` wrote."""

    patient_id: str
    to: str
    out_dir: Path
    image: Path  # the DICOM series folder, or ct.nii.gz
    mask: Path
    n_slices: int
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    mask_voxels: int
    mask_slices: int
    series_uid: str | None
    brain_only_slices: list[int]


def _slice_files(patient_dir: Path) -> list[tuple[int, Path, Path | None, Path | None]]:
    """(slice number, brain JPG, bone JPG or None, mask JPG or None), by slice number."""
    brain_dir, bone_dir = patient_dir / "brain", patient_dir / "bone"
    if not brain_dir.is_dir():
        raise DatasetError(f"{patient_dir}: no brain/ folder (a CT-ICH patient folder has brain/ and bone/)")
    out = []
    for p in brain_dir.iterdir():
        m = _SLICE_RE.match(p.name)
        if not m:
            continue
        n = int(m.group(1))
        bone = bone_dir / p.name
        masks = [q for q in brain_dir.glob(f"{n}{MASK_SUFFIX}.*") if q.suffix.lower() in (".jpg", ".jpeg", ".png")]
        out.append((n, p, bone if bone.is_file() else None, masks[0] if masks else None))
    if not out:
        raise DatasetError(f"{brain_dir}: no slice images (<n>.jpg)")
    out.sort(key=lambda t: t[0])
    numbers = [t[0] for t in out]
    missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if missing:
        raise DatasetError(f"{brain_dir}: slice numbers are not contiguous, missing {missing}; a volume would have a gap")
    return out


def ctich_id(folder_name: str) -> str:
    """A CT-ICH patient number from its folder's name: "049" for ``049`` and for the shipped
    sample's ``ct-ich-049``."""
    return folder_name.removeprefix("ct-ich-")


def ctich_volume(
    patient_dir: Path | str,
    pixel_spacing_mm: float = CT_ICH_PIXEL_SPACING_MM,
    slice_thickness_mm: float = SLICE_THICKNESS_MM,
) -> tuple[Volume, np.ndarray, list[int]]:
    """A CT-ICH patient as (Volume in reconstructed HU, bool mask (N, H, W), slice numbers
    that had no bone window). The volume's geometry is the one in the module docstring."""
    from ichseg.data.cache import read_grey_u8

    patient_dir = Path(patient_dir)
    files = _slice_files(patient_dir)
    slices, masks, brain_only = [], [], []
    shape = None
    for n, brain_path, bone_path, mask_path in files:
        brain = read_grey_u8(brain_path)
        if shape is None:
            shape = brain.shape
        elif brain.shape != shape:
            raise DatasetError(f"{brain_path}: image is {brain.shape[1]}×{brain.shape[0]}, slice 1 is {shape[1]}×{shape[0]}")
        bone = None
        if bone_path is None:
            log.warning("%s: no bone-window twin; HU from the brain window alone (saturation gives -1000/+1000)", brain_path)
            brain_only.append(n)
        else:
            bone = read_grey_u8(bone_path)
            if bone.shape != brain.shape:
                raise DatasetError(
                    f"{bone_path}: image is {bone.shape[1]}×{bone.shape[0]}, its brain twin {brain.shape[1]}×{brain.shape[0]}"
                )
        slices.append(windows_to_hu(brain, bone))
        if mask_path is not None:
            m = read_mask_px(mask_path)
            if m.shape != brain.shape:
                raise DatasetError(f"{mask_path}: mask is {m.shape[1]}×{m.shape[0]}, its slice {brain.shape[1]}×{brain.shape[0]}")
            masks.append(m)
        else:
            masks.append(np.zeros(brain.shape, bool))
    assert shape is not None
    rows, cols = shape
    d = float(pixel_spacing_mm)
    first = np.array([-(cols - 1) / 2 * d, -(rows - 1) / 2 * d, (files[0][0] - 1) * slice_thickness_mm])
    affine = affine_from_dicom(first, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], (d, d), np.array([0.0, 0.0, slice_thickness_mm]))
    pid = ctich_id(patient_dir.name)
    volume = Volume(
        hu=np.stack(slices),
        spacing_mm=(slice_thickness_mm, d, d),
        affine_ras=affine,
        source=str(patient_dir),
        patient_id=f"CT-ICH-{pid}",
        patient_name=f"CT-ICH^{pid}",  # family name CT-ICH, given name the patient number
        modality="CT",
        extra={"patient_number": pid, "slice_numbers": [t[0] for t in files], "brain_files": [str(t[1]) for t in files]},
    )
    return volume, np.stack(masks), brain_only


def _ct_dataset(
    volume: Volume,
    k: int,
    hu_i16: np.ndarray,
    uids: dict[str, str],
    when: datetime,
    slice_number: int,
    comment: str,
) -> object:
    """One CT Image Storage dataset (slice ``k`` of ``volume``)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "ICHSEG_CONVERT"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = IMAGE_TYPE
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "ichseg (converted from PhysioNet CT-ICH)"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"CT-ICH patient {volume.extra.get('patient_number', '')} (synthetic HU)"
    ds.SeriesDescription = "Head CT, HU reconstructed from brain+bone window JPGs"
    ds.DerivationDescription = comment[:1024]
    ds.PatientName = volume.patient_name or ""
    ds.PatientID = volume.patient_id or ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "CT-ICH (PhysioNet): anonymized by the dataset's authors"
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = f"{volume.spacing_mm[0]:g}"
    ds.KVP = ""  # unknown: the dataset does not record it
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = slice_number
    ds.ImagePositionPatient = [f"{v:.4f}" for v in volume.image_position_lps(k)]
    ds.ImageOrientationPatient = [f"{v:g}" for v in volume.image_orientation_lps]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{volume.image_position_lps(k)[2]:.4f}"
    ds.ImageComments = comment[:10240]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(hu_i16.shape[0]), int(hu_i16.shape[1])
    ds.PixelSpacing = [f"{volume.pixel_spacing[0]:g}", f"{volume.pixel_spacing[1]:g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.WindowCenter = [f"{BRAIN_WINDOW.center:g}", f"{BONE_WINDOW.center:g}"]
    ds.WindowWidth = [f"{BRAIN_WINDOW.width:g}", f"{BONE_WINDOW.width:g}"]
    ds.WindowCenterWidthExplanation = ["BRAIN", "BONE"]
    ds.LossyImageCompression = "01"  # the source JPGs were lossy-compressed
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = np.ascontiguousarray(hu_i16, dtype="<i2").tobytes()
    return ds


def write_ct_series(volume: Volume, series_dir: Path, comment: str | None = None) -> tuple[str, list[Path]]:
    """Write ``volume`` as a CT Image Storage series (one file per slice, ``slice_<n>.dcm``)
    into ``series_dir``, replacing it as a whole: the files go to a temporary sibling folder
    that is renamed into place, so a reader never sees half a series. Returns the
    SeriesInstanceUID and the files."""
    from pydicom.uid import generate_uid

    series_dir = Path(series_dir)
    series_dir.parent.mkdir(parents=True, exist_ok=True)
    hu = np.clip(np.rint(volume.hu), -32768, 32767).astype(np.int16)
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    numbers = volume.extra.get("slice_numbers") or list(range(1, volume.shape[0] + 1))
    note = comment or hu_note()
    when = datetime.now()
    tmp = Path(tempfile.mkdtemp(prefix=f".{series_dir.name}.", suffix=".tmp", dir=series_dir.parent))
    try:
        names = []
        for k in range(volume.shape[0]):
            ds = _ct_dataset(volume, k, hu[k], uids, when, int(numbers[k]), note)
            name = f"slice_{int(numbers[k]):03d}.dcm"
            ds.save_as(tmp / name, enforce_file_format=True)  # type: ignore[attr-defined]
            names.append(name)
        os.chmod(tmp, 0o777 & ~_umask())
        if series_dir.exists():
            old = series_dir.with_name(f".{series_dir.name}.old-{os.getpid()}")
            os.replace(series_dir, old)
            os.replace(tmp, series_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, series_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return uids["series"], [series_dir / n for n in names]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def convert_patient_detailed(
    patient_dir: Path | str,
    to: Literal["dicom", "nifti"],
    out_dir: Path | str,
    pixel_spacing_mm: float = CT_ICH_PIXEL_SPACING_MM,
    slice_thickness_mm: float = SLICE_THICKNESS_MM,
) -> ConversionResult:
    """Convert one CT-ICH patient folder (``brain/`` and ``bone/`` JPGs, ``*_HGE_Seg.jpg``
    masks) into ``out_dir``: ``dicom/slice_<n>.dcm`` (to="dicom") or ``ct.nii.gz``
    (to="nifti"), plus ``mask.nii.gz`` (uint8, 1 = hemorrhage, all zero where CT-ICH has
    no mask) on the same grid. Files are written atomically; a rerun replaces them.
    Returns what was written (:func:`convert_patient` returns just the image path)."""
    from ichseg.io.nifti import write_mask_nifti, write_volume_nifti

    if to not in ("dicom", "nifti"):
        raise ValueError(f"to must be 'dicom' or 'nifti', got {to!r}")
    patient_dir, out_dir = Path(patient_dir), Path(out_dir)
    if not patient_dir.is_dir():
        raise DatasetError(f"{patient_dir}: no such folder")
    if pixel_spacing_mm <= 0 or slice_thickness_mm <= 0:
        raise ValueError(f"spacings must be > 0, got pixel {pixel_spacing_mm} mm, slice {slice_thickness_mm} mm")
    volume, mask, brain_only = ctich_volume(patient_dir, pixel_spacing_mm, slice_thickness_mm)
    note = hu_note()
    if brain_only:
        note += f"; slices {brain_only} had no bone window (saturated pixels set to -1000/+1000 HU)"
    out_dir.mkdir(parents=True, exist_ok=True)
    series_uid = None
    if to == "dicom":
        series_uid, _ = write_ct_series(volume, out_dir / "dicom", note)
        image = out_dir / "dicom"
    else:
        image = write_volume_nifti(volume, out_dir / "ct.nii.gz", NIFTI_DESCRIP)
    mask_path = write_mask_nifti(mask, volume, out_dir / "mask.nii.gz", "CT-ICH hemorrhage mask (1 = blood), from *_HGE_Seg.jpg")
    result = ConversionResult(
        patient_id=patient_dir.name,
        to=to,
        out_dir=out_dir,
        image=image,
        mask=mask_path,
        n_slices=volume.shape[0],
        shape=volume.shape,
        spacing_mm=volume.spacing_mm,
        mask_voxels=int(mask.sum()),
        mask_slices=int(mask.any(axis=(1, 2)).sum()),
        series_uid=series_uid,
        brain_only_slices=brain_only,
    )
    log.info("%s → %s (%s, %d slices)", patient_dir, image, to, volume.shape[0])
    return result


def convert_patient(
    patient_dir: Path | str,
    to: Literal["dicom", "nifti"],
    out_dir: Path | str,
    pixel_spacing_mm: float = CT_ICH_PIXEL_SPACING_MM,
    slice_thickness_mm: float = SLICE_THICKNESS_MM,
) -> Path:
    """As :func:`convert_patient_detailed`, returning the path to read back: the DICOM series
    folder (``out_dir/dicom``) or ``out_dir/ct.nii.gz``."""
    return convert_patient_detailed(patient_dir, to, out_dir, pixel_spacing_mm, slice_thickness_mm).image


def summary_lines(r: ConversionResult) -> list[str]:
    """What ``ichseg convert`` prints about a conversion, e.g.::

    049 → out/dicom: 34 DICOM slices, 650×650, 0.35 × 0.35 × 5 mm (series 1.2.826.0.1.3680043.8.498.…)
    mask → out/mask.nii.gz: 9 slices with blood, 15,640 voxels (9.6 mL)
    note: HU reconstructed from CT-ICH 8-bit windowed JPGs (brain C40/W120, bone C700/W3200, estimated): not scanner HU
    """
    n, h, w = r.shape
    s = r.spacing_mm
    kind = "DICOM slices" if r.to == "dicom" else "slices in NIfTI"
    series = f" (series {r.series_uid})" if r.series_uid else ""
    ml = r.mask_voxels * s[0] * s[1] * s[2] / 1000.0
    lines = [
        f"{r.patient_id} → {r.image}: {n} {kind}, {h}×{w}, {s[2]:g} × {s[1]:g} × {s[0]:g} mm{series}",
        f"mask → {r.mask}: {r.mask_slices} slices with blood, {r.mask_voxels:,} voxels ({ml:.1f} mL)",
    ]
    if r.brain_only_slices:
        lines.append(f"warning: slices {r.brain_only_slices} had no bone window; their HU come from the brain window alone")
    return [*lines, f"note: {hu_note()}"]


ADULT_SKULL_MM = {"length": 180.0, "breadth": 141.0}
"""Outer adult skull, front–back (glabella–opisthocranion) and side to side (euryon–euryon),
about the mean of the 27 men and 18 women measured (men ≈ 183 × 143, women ≈ 175 × 137 mm)."""
SKULL_BONE_GREY = 110
"""Bone-window grey above which a pixel is skull (≈ 480 HU with the estimated bone window)."""


def estimate_pixel_spacing(data_dir: Path | str, min_age: int = 18) -> dict[str, float]:
    """Measure CT-ICH's pixel size from skull sizes: per adult patient, the largest extent
    (over slices) of the skull's bounding box in px, front–back and side to side; the
    medians over patients against ``ADULT_SKULL_MM``. Adults only, since children's skulls
    are smaller. Returns the medians in px, the two mm/px estimates and the patient count."""
    import cv2

    from ichseg.data.cache import read_grey_u8
    from ichseg.data.ctich import DEMOGRAPHICS_CSV, PATIENTS_DIR, read_demographics_csv

    data_dir = Path(data_dir)
    ages = {int(r["patient_number"]): int(r.get("age", 0) or 0) for r in read_demographics_csv(data_dir / DEMOGRAPHICS_CSV)}
    lengths, breadths = [], []
    for pdir in sorted((data_dir / PATIENTS_DIR).iterdir()):
        if not pdir.is_dir() or not pdir.name.isdigit() or ages.get(int(pdir.name), 0) < min_age:
            continue
        length = breadth = 0
        for f in (pdir / "bone").glob("*.jpg"):
            skull = (read_grey_u8(f) > SKULL_BONE_GREY).astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(skull, connectivity=8)
            if n > 1:
                i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
                length = max(length, int(stats[i, cv2.CC_STAT_HEIGHT]))
                breadth = max(breadth, int(stats[i, cv2.CC_STAT_WIDTH]))
        if length:
            lengths.append(length)
            breadths.append(breadth)
    if not lengths:
        raise DatasetError(f"{data_dir}: no adult patient with bone-window slices")
    med_l, med_b = float(np.median(lengths)), float(np.median(breadths))
    return {
        "patients": float(len(lengths)),
        "skull_length_px": med_l,
        "skull_breadth_px": med_b,
        "mm_per_px_from_length": ADULT_SKULL_MM["length"] / med_l,
        "mm_per_px_from_breadth": ADULT_SKULL_MM["breadth"] / med_b,
    }


__all__ = [
    "CT_ICH_PIXEL_SPACING_MM",
    "SLICE_THICKNESS_MM",
    "ConversionResult",
    "convert_patient",
    "convert_patient_detailed",
    "ctich_volume",
    "estimate_pixel_spacing",
    "hu_note",
    "summary_lines",
    "write_ct_series",
]
