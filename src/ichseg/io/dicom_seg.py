"""DICOM outputs a PACS can store and a viewer can show over the CT: the hemorrhage mask as a
DICOM Segmentation (SEG) and its volumes as a DICOM Structured Report (SR, TID 1500).

Built with highdicom, which fills in the many required attributes (patient/study copied
from the source CT, frame-by-frame references back to the source instances, plane
positions) that hand-made objects routinely get wrong.

Codes (SNOMED CT, as in DICOM CID 7150 / CID 7151 and highdicom's ``codes``):

- segmented property category: 49755003 "Morphologically Altered Structure"
  (pydicom: ``codes.SCT.MorphologicallyAbnormalStructure``);
- segmented property type: 50960005 "Hemorrhage" (``codes.SCT.Hemorrhage``);
- anatomic region: 69536005 "Head" (not "Brain": epidural and subdural blood lies
  outside the brain);
- SR measurement: 118565006 "Volume" in UCUM "ml", with method DCM 126030 "Sum of
  segmented voxel method for volume" for the voxel-count volumes and DCM 126029 "LWH method
  for volume of ellipsoid" for ABC/2 (which is that method with π/6 rounded to 1/2).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ichseg import __version__
from ichseg.files import atomic_write

if TYPE_CHECKING:
    import highdicom as hd
    from pydicom import Dataset

log = logging.getLogger(__name__)


class Lesion(Protocol):
    """What the SR writer reads of a lesion (``ichseg.report.lesions.Lesion`` has it): the
    format knows the fields it writes, not how a report finds or measures lesions."""

    @property
    def label(self) -> int: ...
    @property
    def slices(self) -> Sequence[int]: ...
    @property
    def volume_ml(self) -> float: ...
    @property
    def abc2_ml(self) -> float: ...


SEGMENT_NUMBER = 1
SEGMENT_LABEL = "Hemorrhage"


def _codes() -> dict:
    """The coded concepts used, in one place (imported lazily: highdicom is an optional dependency)."""
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    return {
        "category": codes.SCT.MorphologicallyAbnormalStructure,  # 49755003
        "type": codes.SCT.Hemorrhage,  # 50960005
        "region": codes.SCT.Head,  # 69536005
        "volume": codes.SCT.Volume,  # 118565006
        "ml": CodedConcept("ml", "UCUM", "milliliter"),
        "voxel_method": codes.DCM.SumOfSegmentedVoxelMethodForVolume,  # 126030
        "ellipsoid_method": codes.DCM.LWHMethodForVolumeOfEllipsoid,  # 126029
        "ai": codes.DCM.ArtificialIntelligence,  # 123110
        "device": codes.DCM.Device,  # 121007
        "procedure": codes.LN.HeadCT,  # 24725-4
    }


def index_to_patient_affine(source_datasets: Sequence[Dataset]) -> np.ndarray:
    """4×4 affine from (slice, row, column, 1) voxel indices to DICOM patient coordinates
    (LPS, mm), for datasets sorted like the mask's slices.

    Row and column directions come from Image Orientation (Patient) and Pixel Spacing; the
    slice step is the mean step between the first and last Image Position (Patient), so it
    follows the given order (and gantry tilt) rather than assuming a normal; one slice falls
    back on the normal × Slice Thickness."""
    first = source_datasets[0]
    iop = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    along_row, along_col = iop[:3], iop[3:]  # direction of increasing column index, of increasing row index
    dy, dx = (float(v) for v in first.PixelSpacing)  # between rows, between columns
    origin = np.asarray(first.ImagePositionPatient, dtype=np.float64)
    if len(source_datasets) > 1:
        last = np.asarray(source_datasets[-1].ImagePositionPatient, dtype=np.float64)
        step = (last - origin) / (len(source_datasets) - 1)
    else:
        step = np.cross(along_row, along_col) * float(getattr(first, "SliceThickness", 1.0) or 1.0)
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = along_col * dy
    affine[:3, 2] = along_row * dx
    affine[:3, 3] = origin
    return affine


# Patient and study attributes that highdicom copies from the first source into a SEG or SR.
# They are type 2 in a CT image (present, possibly empty), but anonymisers often delete them
# outright; highdicom then stops with an AttributeError.
TYPE2_COPIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)  # fmt: skip


def with_type2_attributes(datasets: Sequence[Dataset]) -> list[Dataset]:
    """``datasets`` where each lacking one of :data:`TYPE2_COPIED` is replaced by a copy that
    holds it empty (the value DICOM gives an unknown type-2 attribute). The inputs are not
    changed: a writer takes what it writes as arguments and leaves them as they were."""
    import pydicom

    out = []
    for ds in datasets:
        missing = [k for k in TYPE2_COPIED if k not in ds]
        if missing:
            copy = pydicom.Dataset()
            for element in ds:
                copy.add(element)
            copy.file_meta = getattr(ds, "file_meta", pydicom.Dataset())
            for k in missing:
                setattr(copy, k, "")
            ds = copy
        out.append(ds)
    return out


def _check_inputs(mask: np.ndarray, source_datasets: Sequence[Dataset]) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be (slices, rows, columns), got shape {mask.shape}")
    if len(source_datasets) != mask.shape[0]:
        raise ValueError(f"mask has {mask.shape[0]} slices but {len(source_datasets)} source datasets were given")
    for k, ds in enumerate(source_datasets):
        if (int(ds.Rows), int(ds.Columns)) != mask.shape[1:]:
            h, w = mask.shape[1:]
            raise ValueError(f"source slice {k + 1} ({ds.SOPInstanceUID}) is {ds.Rows}×{ds.Columns}, the mask is {h}×{w}")
    return mask


def write_segmentation(
    mask: np.ndarray,
    source_datasets: Sequence[Dataset],
    path: Path,
    *,
    algorithm_name: str = "ichseg",
    algorithm_version: str = __version__,
    series_number: int = 901,
    series_description: str = "ichseg hemorrhage segmentation",
    manufacturer: str = "ichseg",
    manufacturer_model_name: str = "ichseg",
    device_serial_number: str = "none",
) -> Dataset:
    """Write the mask as a binary DICOM SEG with one segment, "Hemorrhage", and return it.

    mask: bool (N, Rows, Columns), slice k drawn on ``source_datasets[k]`` (single-frame
    CT instances sorted in the mask's order). Only frames that contain blood are stored
    (highdicom ``omit_empty_frames``), each referencing its source instance.

    An all-empty mask: a SEG must hold at least one frame (Number of Frames is type 1 and
    the Multi-frame module requires a value greater than zero), so a SEG with no frames is
    not valid DICOM. We still write one, with a single all-zero frame on the middle slice,
    because "the algorithm ran and found no blood" is a result a PACS should keep (and the
    SR's 0 mL refers to it); writing all N empty frames (highdicom's own fallback) would
    say the same at N times the size.
    """
    import highdicom as hd

    mask = _check_inputs(mask, source_datasets)
    source_datasets = with_type2_attributes(source_datasets)
    c = _codes()
    algorithm = hd.AlgorithmIdentificationSequence(name=algorithm_name, version=algorithm_version, family=c["ai"])
    description = hd.seg.SegmentDescription(
        segment_number=SEGMENT_NUMBER,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=c["category"],
        segmented_property_type=c["type"],
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=hd.UID(),
        tracking_id="Hemorrhage",
        anatomic_regions=[c["region"]],
        display_color=hd.color.CIELabColor.from_string("red"),
    )
    pixels = mask.astype(np.uint8)
    plane_positions = None
    if not mask.any():
        middle = len(source_datasets) // 2
        pixels = pixels[middle : middle + 1]
        plane_positions = [
            hd.PlanePositionSequence(
                coordinate_system=hd.CoordinateSystemNames.PATIENT,
                image_position=[float(v) for v in source_datasets[middle].ImagePositionPatient],
            )
        ]
        log.info("empty mask: writing a SEG with one all-zero frame (slice %d)", middle + 1)
    seg = hd.seg.Segmentation(
        source_images=list(source_datasets),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=manufacturer_model_name,
        software_versions=f"{algorithm_name} {algorithm_version}",
        device_serial_number=device_serial_number,
        content_label="HEMORRHAGE",
        content_description="Intracranial hemorrhage, automatic (research software)",
        series_description=series_description,
        plane_positions=plane_positions,
        omit_empty_frames=plane_positions is None,
    )
    atomic_write(Path(path), lambda tmp: seg.save_as(tmp, enforce_file_format=True))
    log.info("wrote DICOM SEG %s (%d frame(s))", path, int(seg.NumberOfFrames))
    return seg


def _frame_sources(seg_dataset: Dataset) -> list[tuple[int, str, str]]:
    """(1-based frame number, source SOP Class UID, source SOP Instance UID) for each frame."""
    out = []
    for number, frame in enumerate(seg_dataset.PerFrameFunctionalGroupsSequence, start=1):
        for derivation in getattr(frame, "DerivationImageSequence", []):
            for source in getattr(derivation, "SourceImageSequence", []):
                out.append((number, str(source.ReferencedSOPClassUID), str(source.ReferencedSOPInstanceUID)))
    return out


def seg_frame_numbers(seg_dataset: Dataset) -> dict[str, list[int]]:
    """1-based SEG frame numbers by the SOP Instance UID of the source slice each one is drawn on."""
    out: dict[str, list[int]] = {}
    for number, _, instance_uid in _frame_sources(seg_dataset):
        out.setdefault(instance_uid, []).append(number)
    return out


def _referenced_segment(seg_dataset: Dataset, instance_uids: set[str] | None) -> hd.sr.ReferencedSegment:
    """The SR content item pointing at the hemorrhage segment, with the source CT instances
    (all, or those in ``instance_uids``) that its frames are drawn on.

    It never lists frame numbers: the Image SOP Instance Reference macro forbids Referenced
    Segment Number next to Referenced Frame Number, and TID 1411 wants the segment. Built by
    hand rather than with ``ReferencedSegment.from_segmentation``, which (highdicom 0.28)
    looks for the Segment Identification in every frame's functional groups, while a
    one-segment SEG carries it once in the shared functional groups."""
    import highdicom as hd

    sources, seen = [], set()
    for _, class_uid, instance_uid in _frame_sources(seg_dataset):
        if (instance_uids is None or instance_uid in instance_uids) and instance_uid not in seen:
            seen.add(instance_uid)
            sources.append(
                hd.sr.SourceImageForSegmentation(referenced_sop_class_uid=class_uid, referenced_sop_instance_uid=instance_uid)
            )
    common = {
        "sop_class_uid": str(seg_dataset.SOPClassUID),
        "sop_instance_uid": str(seg_dataset.SOPInstanceUID),
        "segment_number": SEGMENT_NUMBER,
    }
    if sources:
        return hd.sr.ReferencedSegment(**common, source_images=sources)
    series_uid = str(seg_dataset.ReferencedSeriesSequence[0].SeriesInstanceUID)
    return hd.sr.ReferencedSegment(**common, source_series=hd.sr.SourceSeriesForSegmentation(series_uid))


def write_measurements_sr(
    seg_dataset: Dataset,
    source_datasets: Sequence[Dataset],
    lesions: Sequence[Lesion],
    total_volume_ml: float,
    path: Path,
    *,
    algorithm_name: str = "ichseg",
    algorithm_version: str = __version__,
    series_number: int = 902,
    manufacturer: str = "ichseg",
) -> Dataset:
    """Write a TID 1500 Measurement Report (Comprehensive 3D SR) with the hemorrhage volumes.

    One volumetric measurement group for all hemorrhage (the SEG's segment, its tracking UID
    reused so the two link up) holding the total volume, then one group per lesion holding
    its voxel volume and its ABC/2 estimate, all in mL. The SEG has a single segment, so a
    lesion's group references that segment together with the source CT slices the lesion
    lies on (another lesion may share a slice; the tracking identifier "Lesion k, slices a-b"
    names which one is meant). The report is marked complete but not verified: no human
    has reviewed it.
    """
    import highdicom as hd

    c = _codes()
    algo = hd.sr.AlgorithmIdentification(name=algorithm_name, version=algorithm_version)
    frames_by_uid = seg_frame_numbers(seg_dataset)
    segment = seg_dataset.SegmentSequence[SEGMENT_NUMBER - 1]
    total_group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=str(segment.TrackingUID), identifier="All hemorrhage"),
        referenced_segment=_referenced_segment(seg_dataset, None),
        finding_type=c["type"],
        algorithm_id=algo,
        measurements=[
            hd.sr.Measurement(name=c["volume"], value=float(total_volume_ml), unit=c["ml"], method=c["voxel_method"]),
        ],
    )
    groups = [total_group]
    for les in lesions:
        uids = {str(source_datasets[s - 1].SOPInstanceUID) for s in les.slices}
        if not uids & frames_by_uid.keys():
            raise ValueError(f"lesion {les.label} (slices {les.slices}) has no frame in the SEG: wrong SEG or source order?")
        span = f"{les.slices[0]}-{les.slices[-1]}" if len(les.slices) > 1 else f"{les.slices[0]}"
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"Lesion {les.label}, slices {span}"),
                referenced_segment=_referenced_segment(seg_dataset, uids),
                finding_type=c["type"],
                algorithm_id=algo,
                measurements=[
                    hd.sr.Measurement(name=c["volume"], value=float(les.volume_ml), unit=c["ml"], method=c["voxel_method"]),
                    hd.sr.Measurement(name=c["volume"], value=float(les.abc2_ml), unit=c["ml"], method=c["ellipsoid_method"]),
                ],
            )
        )
    observer = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=c["device"],
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=hd.UID(), name=algorithm_name, manufacturer_name=manufacturer, model_name=algorithm_name
            ),
        )
    )
    report = hd.sr.MeasurementReport(observation_context=observer, procedure_reported=c["procedure"], imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*with_type2_attributes(source_datasets), seg_dataset],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description="ichseg hemorrhage volumes",
    )
    atomic_write(Path(path), lambda tmp: sr.save_as(tmp, enforce_file_format=True))
    log.info("wrote DICOM SR %s (%d lesion(s), %.2f mL)", path, len(lesions), total_volume_ml)
    return sr
