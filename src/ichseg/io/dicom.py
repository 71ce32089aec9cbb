"""Reading a head-CT DICOM series from a folder into a :class:`~ichseg.io.volume.Volume`.

Hospitals hand over folders, not clean series: files with any names in nested folders, a
DICOMDIR, the scout (localizer) images, dose reports, other series of the same study,
sometimes a file that was cut short in the copy. :func:`read_dicom_series` walks the
folder, picks the axial CT series (or the one asked for), and refuses with a one-line
error naming the file whenever the volume would be wrong rather than merely incomplete:
a missing slice, mixed sizes, a truncated slice (a change of slice spacing is read). Anything that is not part of
the series is skipped with a warning that names it.

Policy for broken files: a file whose header cannot be read far enough to know its series
is skipped with a warning (it may be anything); if it was a slice of the chosen series,
the gap it leaves is reported as a missing slice, unless it was the first or last slice,
which the warning then explains. A file whose header names the chosen series but whose
header or pixel data is incomplete is an error.

Compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, RLE) are decoded by pydicom's
pixel handlers; JPEG family decoders come from ``pylibjpeg``, ``pylibjpeg-libjpeg`` and
``pylibjpeg-openjpeg``.

Why it is long: reading a hospital's folder is a chain of checks (file scan, series
choice, geometry, spacing gaps, tilt, truncation) that each refuse with a named file;
every check is short, but they share the per-file header cache.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.errors import DatasetError
from ichseg.io.volume import Volume, affine_from_dicom

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
GAP_FACTOR = 1.5
"""A step between consecutive slice positions above this × both neighbouring steps (the
one neighbour at either end) is a missing slice. A change of spacing (e.g. 4 mm through
the posterior fossa, 7 mm above, a common sequential head protocol) is not: the step after
the change is as large as the change."""
SPACING_TOLERANCE = 0.05
"""Steps that differ from the median by more than this fraction (and by 0.01 mm) make the
series one of variable spacing: read, with each slice's own position kept."""
ORIENTATION_TOLERANCE = 1e-3
"""Largest difference between direction cosines still counted as the same orientation."""


class DicomError(DatasetError):
    """A DICOM folder or file that cannot give a correct volume; the message names it."""


@dataclass
class _Header:
    """What the header of one file says (pixel data not read)."""

    path: Path
    series_uid: str
    sop_instance_uid: str | None
    sop_class_uid: str | None
    modality: str
    image_type: tuple[str, ...]
    rows: int | None
    columns: int | None
    orientation: np.ndarray | None  # 6 direction cosines
    position: np.ndarray | None  # ImagePositionPatient
    pixel_spacing: tuple[float, float] | None
    frames: int
    problem: str | None  # set when the file is incomplete
    ds: Any = field(repr=False, default=None)
    kernel: str = ""  # ConvolutionKernel, upper case ("" when absent)
    thickness_mm: float | None = None  # SliceThickness
    anonymous: bool = False  # no SeriesInstanceUID: grouped by folder and geometry instead
    frame: int | None = None  # a frame of a multi-frame (Enhanced CT) instance, 0-based
    frames_total: int = 1  # how many frames that instance holds

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type

    @property
    def normal(self) -> np.ndarray | None:
        if self.orientation is None:
            return None
        n = np.cross(self.orientation[:3], self.orientation[3:])
        norm = np.linalg.norm(n)
        return n / norm if norm > 0 else None


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        out = np.array([float(v) for v in value], np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.all(np.isfinite(out)) else None


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return list(value) if hasattr(value, "__iter__") else [value]


def _positive_float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def _read_header(path: Path) -> _Header | None:
    """Parse one file's header; None (with a warning naming it) for files that are not
    usable DICOM images of any series."""
    import pydicom

    if path.name.upper() == "DICOMDIR":
        log.warning("%s: DICOMDIR (a directory index, not an image); skipped", path)
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        log.warning("%s: cannot be read (%s); skipped", path, exc)
        return None
    has_magic = len(head) == 132 and head[128:132] == b"DICM"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=not has_magic)
        except Exception as exc:  # pydicom raises many types on garbage; all mean "cannot parse"
            if has_magic:
                log.warning("%s: DICOM file whose header cannot be parsed (%s); skipped", path, exc)
            else:
                log.warning("%s: not a DICOM file; skipped", path)
            return None
    problems = [str(w.message) for w in caught]
    try:
        media_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "")) if hasattr(ds, "file_meta") else ""
        if media_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
            log.warning("%s: DICOMDIR (a directory index, not an image); skipped", path)
            return None
        series_uid = str(ds.get("SeriesInstanceUID", "") or "")
        # an empty SOPInstanceUID (some anonymisers blank it) is still named in the file meta
        media_uid = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "")) if hasattr(ds, "file_meta") else ""
        sop_uid = str(ds.get("SOPInstanceUID", "") or "") or media_uid or None
        looks_like_image = all(k in ds for k in ("Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient"))
        if not has_magic and (sop_uid is None or not (series_uid or looks_like_image)):
            log.warning("%s: not a DICOM file; skipped", path)
            return None
        anonymous = False
        if not series_uid:
            if not looks_like_image:
                why = "; ".join(problems) or "no SeriesInstanceUID"
                log.warning("%s: incomplete DICOM header (%s), its series is unknown; skipped", path, why)
                return None
            # an anonymised export that dropped the UID: its folder and geometry stand for it
            orient = ",".join(f"{float(v):.3f}" for v in ds.ImageOrientationPatient)
            series_uid = f"no-uid:{path.parent}|{ds.Rows}x{ds.Columns}|{orient}|{ds.get('PixelSpacing', '')}"
            anonymous = True
        if sop_uid is None and anonymous and has_magic:  # no UID anywhere: the file stands for itself (no SEG cites it)
            sop_uid = f"no-uid:{path}"
        modality = str(ds.get("Modality", "") or "")
        image_type = tuple(str(v).upper() for v in (ds.get("ImageType") or []))
        rows, columns = ds.get("Rows"), ds.get("Columns")
        spacing = _floats(ds.get("PixelSpacing") or [], 2)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        hdr = _Header(
            path=path,
            series_uid=series_uid,
            sop_instance_uid=sop_uid,
            sop_class_uid=str(ds.get("SOPClassUID", "") or "") or None,
            modality=modality,
            image_type=image_type,
            rows=int(rows) if rows is not None else None,
            columns=int(columns) if columns is not None else None,
            orientation=_floats(ds.get("ImageOrientationPatient") or [], 6),
            position=_floats(ds.get("ImagePositionPatient") or [], 3),
            pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing is not None else None,
            frames=frames,
            problem="; ".join(problems) or None,
            ds=ds,
            kernel=" ".join(str(v) for v in _as_list(ds.get("ConvolutionKernel"))).upper(),
            thickness_mm=_positive_float(ds.get("SliceThickness")),
            anonymous=anonymous,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # malformed element values
        log.warning("%s: DICOM header with malformed values (%s); skipped", path, exc)
        return None
    return hdr


def _scan(folder: Path) -> tuple[list[_Header], int]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    headers = [h for h in (_read_header(p) for p in files) if h is not None]
    return [f for h in headers for f in expand_frames(h)], len(files)


def expand_frames(h: _Header) -> list[_Header]:
    """A multi-frame instance as one header per frame, each with the geometry its
    functional groups give (:mod:`ichseg.io.dicom_frames`); a single-frame one as it is."""
    if h.frames <= 1 or h.ds is None or "PerFrameFunctionalGroupsSequence" not in h.ds:
        return [h]
    from ichseg.io.dicom_frames import frame_geometry

    out = []
    for k in range(h.frames):
        g = frame_geometry(h.ds, k)
        spacing = _floats(g["pixel_spacing"] or [], 2)
        out.append(
            dataclasses.replace(
                h,
                frames=1,
                frame=k,
                frames_total=h.frames,
                position=_floats(g["position"] or [], 3),
                orientation=_floats(g["orientation"] or [], 6),
                pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing is not None else None,
                thickness_mm=_positive_float(g["thickness"]) or h.thickness_mm,
            )
        )
    log.info("%s: multi-frame CT, %d frames read as slices", h.path, h.frames)
    return out


def _describe_files(headers: list[_Header], limit: int = 3) -> str:
    names = ", ".join(str(h.path) for h in headers[:limit])
    more = f" and {len(headers) - limit} more" if len(headers) > limit else ""
    return names + more


def _is_axial(headers: list[_Header]) -> bool:
    n = next((h.normal for h in headers if h.normal is not None), None)
    return n is not None and int(np.argmax(np.abs(n))) == 2


def _choose_series(folder: Path, headers: list[_Header], series_uid: str | None) -> tuple[list[_Header], str]:
    """The series to read and why it was chosen."""
    groups: dict[str, list[_Header]] = defaultdict(list)
    for h in headers:
        groups[h.series_uid].append(h)
    if series_uid is not None:
        if series_uid not in groups:
            found = ", ".join(f"{uid} ({g[0].modality or '?'}, {len(g)} files)" for uid, g in groups.items()) or "none"
            raise DicomError(f"{folder}: no series with SeriesInstanceUID {series_uid} (found: {found})")
        chosen = groups[series_uid]
        if chosen[0].modality != "CT":
            raise DicomError(f"{folder}: series {series_uid} is modality {chosen[0].modality or 'unknown'}, not CT")
        for uid, g in groups.items():
            if uid != series_uid:
                log.warning("%s: series %s not asked for; skipped: %s", folder, uid, _describe_files(g))
        kept = [h for h in chosen if not h.is_localizer]
        for h in chosen:
            if h.is_localizer:
                log.warning("%s: localizer image (ImageType %s); skipped", h.path, "\\".join(h.image_type))
        if not kept:
            raise DicomError(f"{folder}: series {series_uid} holds only localizer images")
        return kept, f"series {series_uid}, as asked: {describe_series(kept)}"

    candidates: list[tuple[tuple[int, float, int, int], str, list[_Header]]] = []
    reasons: list[str] = []
    singles: list[tuple[str, list[_Header]]] = []  # one-image series: key images, or a lone slice
    for uid, g in groups.items():
        if g[0].anonymous:
            log.warning(
                "%s: %d files without SeriesInstanceUID, grouped as one series by folder and geometry", g[0].path.parent, len(g)
            )
        modality = g[0].modality or "unknown"
        if modality != "CT":
            log.warning("%s: modality %s, not CT; skipped", _describe_files(g), modality)
            reasons.append(f"{modality} series ({len(g)} files)")
            continue
        images = []
        for h in g:
            if h.is_localizer:
                log.warning("%s: localizer image (ImageType %s); skipped", h.path, "\\".join(h.image_type))
            else:
                images.append(h)
        if not images:
            reasons.append(f"CT localizer series ({len(g)} files)")
            continue
        if len(images) == 1 and images[0].frames == 1:
            broken = images[0].problem
            if not broken:
                try:
                    _read_pixels(images[0])
                except DicomError as exc:  # a file cut short is not a key image: say so
                    broken = str(exc).removeprefix(f"{images[0].path}: ")
            if broken:
                log.warning("%s: the only image of series %s is broken (%s); skipped", images[0].path, uid, broken)
                reasons.append(f"{images[0].path}: {broken}")
            else:
                singles.append((uid, images))
            continue
        thick = series_thickness_mm(images)
        soft = int(not is_sharp_kernel(images[0].kernel))
        rank = (int(_is_axial(images)), -abs(thick - PREFERRED_THICKNESS_MM), soft, len(images))
        candidates.append((rank, uid, images))
    if not candidates and len(singles) == 1:  # a folder holding one CT slice: that slice is the study
        uid, images = singles[0]
        log.warning("%s: a single CT slice; its volumes are for this one slice", images[0].path)
        return images, f"the only CT image: {describe_series(images)}"
    for uid, images in singles:
        log.warning("%s: single-slice CT series %s (a localizer or a key image); skipped", images[0].path, uid)
        reasons.append("single-slice CT series")
    if not candidates:
        found = "; ".join(reasons) if reasons else "no DICOM images"
        raise DicomError(f"{folder}: no axial CT series to read ({found})")
    candidates.sort(key=lambda c: c[0], reverse=True)
    rank, uid, images = candidates[0]
    if not rank[0]:
        log.warning("%s: no axial CT series; reading the non-axial series %s (%d images)", folder, uid, len(images))
    for _, other_uid, other in candidates[1:]:
        log.warning("%s: other CT series %s (%s) skipped: %s", folder, other_uid, describe_series(other), _describe_files(other))
    reason = f"the only CT series: {describe_series(images)}"
    if len(candidates) > 1:
        others = "; ".join(f"{describe_series(g)}" for _, _, g in candidates[1:])
        reason = (
            f"of {len(candidates)} CT series, the axial one closest to 5 mm, soft-tissue kernel first: "
            f"{describe_series(images)} (not: {others})"
        )
        log.warning("%s: read %s", folder, reason)
    return images, reason


PREFERRED_THICKNESS_MM = 5.0
"""The slice thickness the model was trained on (CT-ICH): given several series, the one closest to it is read."""
SHARP_KERNEL_WORDS = ("BONE", "LUNG", "EDGE", "SHARP", "DETAIL", "HIGH")


def is_sharp_kernel(kernel: str) -> bool:
    """Whether a ConvolutionKernel names a bone or sharp reconstruction: GE's BONE/BONEPLUS/
    LUNG/EDGE/DETAIL, words like SHARP, or a Siemens kernel of sharpness 60 or above
    (H60s, Hr64, J70h, Br64...). Soft-tissue ("STANDARD", "SOFT", "H30s", "Hr38") is not."""
    k = kernel.upper()
    if any(w in k for w in SHARP_KERNEL_WORDS):
        return True
    import re

    m = re.search(r"\b[A-Z][A-Z]?(\d{2})[A-Z]?\b", k)
    return bool(m) and int(m.group(1)) >= 60


def series_thickness_mm(images: list[_Header]) -> float:
    """A series' slice thickness: SliceThickness where given, else the median step."""
    given = [h.thickness_mm for h in images if h.thickness_mm is not None]
    if given:
        return float(np.median(given))
    normal = next((h.normal for h in images if h.normal is not None), None)
    pos = sorted(float(h.position @ normal) for h in images if h.position is not None and normal is not None)
    return float(np.median(np.diff(pos))) if len(pos) > 1 else 0.0


def describe_series(images: list[_Header]) -> str:
    """One line: how many images, how thick, which kernel, its description."""
    h = images[0]
    desc = str(h.ds.get("SeriesDescription", "") or "") if h.ds is not None else ""
    kern = f", kernel {h.kernel}" if h.kernel else ""
    return f"{len(images)} images, {series_thickness_mm(images):.3g} mm{kern}" + (f", '{desc}'" if desc else "")


def _check_series(folder: Path, series: list[_Header]) -> tuple[list[_Header], np.ndarray, np.ndarray]:
    """Validate one series' headers; return them in slice order with their positions along the
    normal and the normal itself."""
    by_uid: dict[tuple[str, int | None], _Header] = {}
    unique = []
    for h in series:
        key = (str(h.sop_instance_uid), h.frame)  # the frames of one Enhanced CT share its UID
        if h.sop_instance_uid is not None and key in by_uid:
            log.warning("%s: same SOPInstanceUID as %s (a copy); skipped", h.path, by_uid[key].path)
            continue
        if h.sop_instance_uid is not None:
            by_uid[key] = h
        unique.append(h)
    series = unique
    for h in series:
        if h.frames > 1:
            raise DicomError(f"{h.path}: multi-frame image ({h.frames} frames) without per-frame geometry")
        missing = [
            name
            for name, value in (
                ("Rows", h.rows),
                ("Columns", h.columns),
                ("ImageOrientationPatient", h.orientation),
                ("ImagePositionPatient", h.position),
                ("PixelSpacing", h.pixel_spacing),
                ("SOPInstanceUID", h.sop_instance_uid),
            )
            if value is None
        ]
        if missing:
            extra = f" ({h.problem})" if h.problem else ""
            raise DicomError(f"{h.path}: truncated or incomplete DICOM header, missing {', '.join(missing)}{extra}")
        if h.normal is None:
            raise DicomError(f"{h.path}: ImageOrientationPatient {list(h.orientation)} has parallel row and column directions")
    first = series[0]
    for h in series[1:]:
        if (h.rows, h.columns) != (first.rows, first.columns):
            raise DicomError(
                f"{h.path}: image is {h.rows}×{h.columns} (rows × columns) but {first.path} is {first.rows}×{first.columns}"
            )
        if not np.allclose(h.orientation, first.orientation, atol=ORIENTATION_TOLERANCE):
            raise DicomError(
                f"{h.path}: ImageOrientationPatient {np.round(h.orientation, 4).tolist()} differs from "
                f"{np.round(first.orientation, 4).tolist()} in {first.path} (mixed orientations in one series)"
            )
        if not np.allclose(h.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-4):
            raise DicomError(
                f"{h.path}: PixelSpacing {list(h.pixel_spacing)} mm differs from {list(first.pixel_spacing)} in {first.path}"
            )
    normal = first.normal
    assert normal is not None
    z = np.array([float(h.position @ normal) for h in series])
    order = np.argsort(z, kind="stable")
    series = [series[i] for i in order]
    z = z[order]
    if len(series) > 1:
        steps = np.diff(z)
        dup = np.flatnonzero(steps < 1e-3)
        if len(dup):
            i = int(dup[0])
            raise DicomError(
                f"{series[i + 1].path}: same slice position ({z[i]:.3f} mm along the normal) as {series[i].path} "
                "(two acquisitions or duplicate slices in one series)"
            )
        i = first_gap(steps)
        if i is not None:
            near = [float(steps[j]) for j in (i - 1, i + 1) if 0 <= j < len(steps)]
            raise DicomError(
                f"{folder}: missing slice(s) between {series[i].path.name} and {series[i + 1].path.name}: their positions are "
                f"{steps[i]:.2f} mm apart, the steps beside it {' and '.join(f'{v:.2f}' for v in near) or 'none'} mm"
            )
    return series, z, normal


def first_gap(steps: np.ndarray) -> int | None:
    """The index of the first step (between slice i and i + 1) that is a missing slice:
    more than ``GAP_FACTOR`` × each neighbouring step; None when there is none. With a
    single step there is nothing to compare and no gap can be told."""
    steps = np.asarray(steps, np.float64)
    for i in range(len(steps)):
        near = [steps[j] for j in (i - 1, i + 1) if 0 <= j < len(steps)]
        if near and steps[i] > GAP_FACTOR * max(near):
            return i
    return None


def spacing_runs(steps: np.ndarray) -> list[tuple[float, int]]:
    """Consecutive runs of about equal steps as (step mm, count): e.g. [(4.0, 14), (7.0, 12)]."""
    runs: list[tuple[float, int]] = []
    for st in np.asarray(steps, np.float64):
        if runs and abs(st - runs[-1][0]) <= max(0.01, SPACING_TOLERANCE * runs[-1][0]):
            v, n = runs[-1]
            runs[-1] = ((v * n + st) / (n + 1), n + 1)
        else:
            runs.append((float(st), 1))
    return runs


_FRAME_CACHE: dict[str, tuple[Any, np.ndarray]] = {}  # the multi-frame instance being read: decoded once


def _read_pixels(h: _Header) -> tuple[np.ndarray, Any]:
    """HU of one slice (float32), and its full dataset; errors name the file. A frame of
    a multi-frame instance is cut from the instance, decoded once for all its frames."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    if h.frame is not None:
        from ichseg.io.dicom_frames import frame_hu

        key = str(h.path)
        if key not in _FRAME_CACHE:
            _FRAME_CACHE.clear()
            try:
                ds = pydicom.dcmread(h.path)
                _FRAME_CACHE[key] = (ds, np.asarray(ds.pixel_array).reshape(h.frames_total, h.rows, h.columns))
            except Exception as exc:
                raise DicomError(f"{h.path}: cannot read multi-frame pixel data ({exc})") from exc
        ds, pixels = _FRAME_CACHE[key]
        return frame_hu(ds, pixels, h.frame), ds

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(h.path)
        except Exception as exc:
            raise DicomError(f"{h.path}: cannot read DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        why = "; ".join(str(w.message) for w in caught)
        raise DicomError(f"{h.path}: no pixel data (file truncated?{' ' + why if why else ''})")
    ts = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
    if ts is not None and not ts.is_compressed:
        expected = h.rows * h.columns * int(ds.get("BitsAllocated", 16) or 16) // 8 * int(ds.get("SamplesPerPixel", 1) or 1)
        got = len(ds.PixelData)
        if got < expected:
            raise DicomError(f"{h.path}: truncated file, pixel data has {got} of {expected} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types; the message is what matters
        name = getattr(ts, "name", ts)
        hint = " (are pylibjpeg, pylibjpeg-libjpeg and pylibjpeg-openjpeg installed?)" if "decoder" in str(exc).lower() else ""
        raise DicomError(f"{h.path}: cannot decode pixel data, transfer syntax {name}: {exc}{hint}") from exc
    if pixels.shape != (h.rows, h.columns):
        raise DicomError(f"{h.path}: pixel data has shape {pixels.shape}, header says {h.rows}×{h.columns}")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DicomError(f"{h.path}: {ds.SamplesPerPixel} samples per pixel; a CT slice is greyscale")
    hu = apply_modality_lut(pixels, ds).astype(np.float32)
    return hu, ds


def read_dicom_series(folder: Path | str, series_uid: str | None = None) -> Volume:
    """Read the head-CT series in ``folder`` (searched recursively) as a Volume in HU.

    Without ``series_uid`` the series is the CT series with axial slices and the most
    images, leaving out localizers (ImageType LOCALIZER) and single-image series; every
    file left out is named in a warning. Slices are ordered by ImagePositionPatient
    projected on the slice normal (row × column direction of ImageOrientationPatient),
    not by file name or InstanceNumber; HU = stored value × RescaleSlope + RescaleIntercept
    (or the Modality LUT). Raises :class:`DicomError` (a ValueError) naming the file or
    folder for: no folder, no DICOM, no CT; a missing slice (a step > 1.5 × the steps
    beside it: :func:`first_gap`); mixed sizes, orientations or pixel spacings; a truncated
    slice; undecodable pixel data. Variable slice spacing is read (a 2-D model needs no
    uniform grid), with each slice's position in ``extra["slice_positions_mm"]``; a gantry
    tilt is read in each slice's own plane, with a sheared affine.
    """
    folder = Path(folder)
    if not folder.exists():
        raise DicomError(f"{folder}: no such folder")
    if folder.is_file():
        raise DicomError(f"{folder}: a file; give the folder that holds the series")
    headers, n_files = _scan(folder)
    if n_files == 0:
        raise DicomError(f"{folder}: empty folder, no DICOM files")
    if not headers:
        if n_files == 1:
            only = next(p for p in folder.rglob("*") if p.is_file())
            raise DicomError(f"{only}: not a DICOM file (no DICOM preamble or header), the only file in {folder}")
        raise DicomError(f"{folder}: no DICOM image among its {n_files} files")
    chosen, why = _choose_series(folder, headers, series_uid)
    series, z, normal = _check_series(folder, chosen)

    slices = []
    datasets = []
    for h in series:
        if h.problem:
            log.warning("%s: header read with warnings: %s", h.path, h.problem)
        hu, ds = _read_pixels(h)
        slices.append(hu)
        datasets.append(ds)
    _FRAME_CACHE.clear()
    first = series[0]
    n = len(series)
    extra: dict[str, Any] = {"series_choice": why}
    agent = " ".join(str(v) for v in _as_list(datasets[0].get("ContrastBolusAgent"))).strip()
    if agent:  # the model is for non-contrast head CT: said with the answer (infer.clinical.study_cautions)
        extra["contrast_agent"] = agent
    if n > 1:
        step = (series[-1].position - first.position) / (n - 1)
        slice_spacing = float(np.median(np.diff(z)))
        runs = spacing_runs(np.diff(z))
        if len(runs) > 1:  # e.g. 4 mm then 7 mm: each slice keeps its own position and extent
            extra["slice_positions_mm"] = [float(v) for v in z - z[0]]
            log.warning(
                "%s: variable slice spacing (%s); each slice's own position and extent are used for volumes, "
                "mask.nii.gz has the mean step",
                folder,
                ", ".join(f"{n_} steps of {v:.2f} mm" for v, n_ in runs),
            )
        tilt = np.degrees(np.arccos(np.clip(abs(step @ normal) / np.linalg.norm(step), -1, 1)))
        if tilt > 0.5:
            log.warning("%s: slices step %.1f° off their normal (gantry tilt); the affine is sheared to match", folder, tilt)
    else:
        ds0 = datasets[0]
        slice_spacing = float(ds0.get("SliceThickness") or ds0.get("SpacingBetweenSlices") or 1.0)
        step = normal * slice_spacing
        log.warning("%s: a single slice; slice spacing taken as %.3g mm from its header", first.path, slice_spacing)
    assert first.orientation is not None and first.pixel_spacing is not None and first.position is not None
    affine = affine_from_dicom(first.position, first.orientation[:3], first.orientation[3:], first.pixel_spacing, step)
    ds0 = datasets[0]
    vol = Volume(
        hu=np.stack(slices),
        spacing_mm=(slice_spacing, first.pixel_spacing[0], first.pixel_spacing[1]),
        affine_ras=affine,
        source=str(folder),
        series_uid=first.series_uid,
        sop_instance_uids=[str(h.sop_instance_uid) for h in series],
        files=[str(h.path) for h in series],
        sop_class_uid=first.sop_class_uid or (CT_IMAGE_STORAGE if first.modality == "CT" else None),
        study_instance_uid=str(ds0.get("StudyInstanceUID", "") or "") or None,
        frame_of_reference_uid=str(ds0.get("FrameOfReferenceUID", "") or "") or None,
        patient_id=str(ds0.get("PatientID", "") or "") or None,
        patient_name=str(ds0.get("PatientName", "") or "") or None,
        study_description=str(ds0.get("StudyDescription", "") or "") or None,
        series_description=str(ds0.get("SeriesDescription", "") or "") or None,
        modality=first.modality,
        extra=extra,
    )
    log.info("%s: series %s, %s", folder, first.series_uid, vol.describe())
    return vol
