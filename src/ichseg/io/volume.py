"""One CT volume in Hounsfield units, whatever file format it came from.

Every reader (:func:`ichseg.io.dicom.read_dicom_series`, :func:`ichseg.io.nifti.read_nifti`,
the CT-ICH converter) returns a :class:`Volume`, so windowing, the model and the mask
writers see one array layout and one geometry convention, stated here once:

* ``hu[k, r, c]`` is float32 HU at slice ``k``, row ``r``, column ``c``. Slice 0 is the
  first along the slice normal (for an axial head CT in the usual orientation, the most
  inferior slice); rows and columns are the image as displayed.
* ``affine_ras`` (4×4 float64) maps the voxel index **(c, r, k, 1)** (column, row, slice:
  NIfTI's (i, j, k) order) to **RAS+** millimetres: +x towards the patient's Right, +y
  Anterior, +z Superior (nibabel's and NIfTI's world).
* DICOM's patient coordinates are **LPS+**: +x towards the patient's Left, +y Posterior,
  +z Superior. The two differ by negating x and y: ``lps = diag(-1, -1, 1) · ras``, so
  ``affine_lps = FLIP_XY @ affine_ras`` and back (:func:`ras_to_lps`, :func:`lps_to_ras`;
  the operation is its own inverse).

For a DICOM series, column 0 of ``affine_lps`` is the row direction cosine (DICOM's first
three ImageOrientationPatient values) × the column spacing, column 1 the column direction
cosine × the row spacing, column 2 the step between consecutive ImagePositionPatient, and
column 3 the ImagePositionPatient of slice 0. A NIfTI file of this volume stores
``hu.transpose(2, 1, 0)`` with ``affine_ras`` as its affine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pydicom import Dataset

FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])
"""RAS+ ↔ LPS+ for 4×4 affines (left-multiply) and homogeneous points."""


def ras_to_lps(affine_ras: np.ndarray) -> np.ndarray:
    """A voxel → RAS+ affine as a voxel → DICOM LPS+ affine."""
    return FLIP_XY @ np.asarray(affine_ras, np.float64)


def lps_to_ras(affine_lps: np.ndarray) -> np.ndarray:
    """A voxel → DICOM LPS+ affine as a voxel → RAS+ affine."""
    return FLIP_XY @ np.asarray(affine_lps, np.float64)


def affine_from_dicom(
    image_position_first: np.ndarray,
    row_cosine: np.ndarray,
    column_cosine: np.ndarray,
    pixel_spacing_rc: tuple[float, float],
    slice_step_lps: np.ndarray,
) -> np.ndarray:
    """The voxel (c, r, k, 1) → RAS+ affine of a DICOM series.

    ``row_cosine`` / ``column_cosine`` are ImageOrientationPatient[:3] / [3:] (the
    directions of increasing column / row index), ``pixel_spacing_rc`` is PixelSpacing
    (between rows, between columns), ``slice_step_lps`` the vector from one slice's
    ImagePositionPatient to the next's (it carries any gantry-tilt shear).
    """
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(row_cosine, np.float64) * float(pixel_spacing_rc[1])
    lps[:3, 1] = np.asarray(column_cosine, np.float64) * float(pixel_spacing_rc[0])
    lps[:3, 2] = np.asarray(slice_step_lps, np.float64)
    lps[:3, 3] = np.asarray(image_position_first, np.float64)
    return lps_to_ras(lps)


@dataclass(frozen=True)
class Volume:
    """A CT volume in HU with its geometry and, for DICOM, what a DICOM SEG writer must cite.

    ``spacing_mm`` is (between slices, between rows, between columns). ``files`` are the
    source files in slice order (one per slice for DICOM, the single file for NIfTI), so a
    writer can re-read the pydicom datasets (:meth:`source_datasets`). ``source_affine`` and
    ``source_axes`` record, for NIfTI, the file's own affine and how its axes were permuted
    and flipped into this layout, so a mask can be written back on the exact original grid.
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    affine_ras: np.ndarray
    source: str
    series_uid: str | None = None
    sop_instance_uids: list[str] | None = None
    files: list[str] | None = None
    sop_class_uid: str | None = None
    study_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    study_description: str | None = None
    series_description: str | None = None
    modality: str | None = None
    source_affine: np.ndarray | None = None
    source_axes: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        hu = np.asarray(self.hu)
        if hu.ndim != 3:
            raise ValueError(f"{self.source}: a Volume needs (slices, rows, columns) HU, got shape {hu.shape}")
        if hu.dtype != np.float32:
            object.__setattr__(self, "hu", hu.astype(np.float32))
        affine = np.asarray(self.affine_ras, np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"{self.source}: affine_ras must be 4×4, got {affine.shape}")
        object.__setattr__(self, "affine_ras", affine)
        object.__setattr__(self, "spacing_mm", tuple(float(s) for s in self.spacing_mm))
        for name in ("sop_instance_uids", "files"):
            values = getattr(self, name)
            if values is not None and len(values) != hu.shape[0]:
                raise ValueError(f"{self.source}: {len(values)} {name} for {hu.shape[0]} slices")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns)."""
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def affine_lps(self) -> np.ndarray:
        """Voxel (c, r, k, 1) → DICOM LPS+ millimetres."""
        return ras_to_lps(self.affine_ras)

    @property
    def image_orientation_lps(self) -> list[float]:
        """DICOM ImageOrientationPatient: unit row cosine then unit column cosine (LPS)."""
        a = self.affine_lps
        row = a[:3, 0] / np.linalg.norm(a[:3, 0])
        col = a[:3, 1] / np.linalg.norm(a[:3, 1])
        return [float(v) for v in (*row, *col)]

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """DICOM PixelSpacing: (between rows, between columns) in mm."""
        return self.spacing_mm[1], self.spacing_mm[2]

    def image_position_lps(self, k: int) -> list[float]:
        """DICOM ImagePositionPatient of slice ``k``: the centre of its first pixel, LPS mm."""
        return [float(v) for v in (self.affine_lps @ np.array([0.0, 0.0, float(k), 1.0]))[:3]]

    def slice_normal_lps(self) -> np.ndarray:
        """Unit normal of the slices (row cosine × column cosine), LPS."""
        o = np.asarray(self.image_orientation_lps)
        n = np.cross(o[:3], o[3:])
        return n / np.linalg.norm(n)

    def slice_positions_mm(self) -> np.ndarray:
        """(N,) each slice's position along the slice normal, from slice 0: a reader that
        knows them (``extra["slice_positions_mm"]``, e.g. a series with two spacings) says
        so; otherwise the uniform ``k × spacing``."""
        given = self.extra.get("slice_positions_mm")
        if given is not None:
            return np.asarray(given, np.float64)
        return np.arange(self.shape[0], dtype=np.float64) * self.spacing_mm[0]

    def slice_extents_mm(self) -> np.ndarray:
        """(N,) how much of the scan each slice stands for along the normal: half the step to
        each neighbour (the end slices: their one step, as if continued). For a uniform
        series every extent is the spacing; with two spacings the slices at the change get
        the mean of theirs, and the extents add up to the scanned length."""
        z = self.slice_positions_mm()
        if len(z) < 2:
            return np.full(len(z), self.spacing_mm[0])
        steps = np.diff(z)
        before = np.concatenate([[steps[0]], steps])
        after = np.concatenate([steps, [steps[-1]]])
        return (before + after) / 2

    def voxel_to_ras(self, ijk: np.ndarray) -> np.ndarray:
        """(..., 3) voxel indices (c, r, k) → (..., 3) RAS+ mm."""
        ijk = np.asarray(ijk, np.float64)
        return ijk @ self.affine_ras[:3, :3].T + self.affine_ras[:3, 3]

    def windows(self) -> tuple[np.ndarray, np.ndarray]:
        """(brain_u8, bone_u8), each (N, H, W): the two 8-bit windows the model was trained
        on (:func:`ichseg.data.windows.hu_to_windows`)."""
        from ichseg.io.hu import hu_to_windows

        return hu_to_windows(self.hu)

    def source_datasets(self, stop_before_pixels: bool = True) -> list[Dataset]:
        """The source DICOM datasets in slice order (re-read from ``files``), for writers
        that reference them (DICOM SEG). Raises ValueError for a volume not read from DICOM."""
        if self.files is None or self.sop_instance_uids is None:
            raise ValueError(f"{self.source}: not read from a DICOM series; no source datasets")
        import pydicom

        return [pydicom.dcmread(f, stop_before_pixels=stop_before_pixels) for f in self.files]

    def describe(self) -> str:
        """One line for logs: shape, spacing and source."""
        n, h, w = self.shape
        s = self.spacing_mm
        return f"{Path(self.source).name}: {n} slices of {h}×{w}, {s[2]:.3g} × {s[1]:.3g} × {s[0]:.3g} mm (col × row × slice)"
