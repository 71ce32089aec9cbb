"""NIfTI volumes in and masks out (nibabel).

A NIfTI file can store its axes in any order and direction; its affine says how. The
model wants axial slices displayed as a radiologist sees them, so :func:`read_nifti`
permutes and flips the array (never resamples: the voxel values are untouched) into
LPS voxel order, which makes ``hu[k, r, c]`` an axial slice ``k`` (inferior → superior)
with rows running anterior → posterior and columns the patient's right → left, exactly
as a DICOM axial series is displayed; the affine is updated to match. Oblique volumes
take the nearest axes (nibabel's ``io_orientation``).

Masks are written back on the input's own grid: for a NIfTI input with the input's exact
affine and axis order (the permutation is undone), for a DICOM input with the series'
affine; see :func:`write_mask_nifti`. All writes are atomic (temp file, then rename).
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np

from ichseg.errors import DatasetError
from ichseg.files import atomic_write_bytes
from ichseg.io.volume import Volume

log = logging.getLogger(__name__)

DISPLAY_AXCODES = ("L", "P", "S")
"""nibabel axis codes of the stored (column, row, slice) order: columns towards the
patient's Left, rows towards Posterior, slices towards Superior (DICOM's axial display)."""


class NiftiError(DatasetError):
    """A NIfTI file that cannot give a correct volume; the message names it."""


def _inverse_ornt(transform: np.ndarray) -> np.ndarray:
    """Inverse of a nibabel orientation transform (axis permutation with flips)."""
    inv = np.zeros_like(transform)
    for i, (axis, flip) in enumerate(transform):
        inv[int(axis)] = [i, flip]
    return inv


def read_nifti(path: Path | str) -> Volume:
    """Read a 3D ``.nii`` / ``.nii.gz`` as a Volume in HU (scl_slope/scl_inter applied).

    The array is reoriented (permuted and flipped, not resampled) to ``DISPLAY_AXCODES``
    so slices lie along the axis closest to superior–inferior. Raises :class:`NiftiError`
    (a ValueError) naming the file for: no file, not NIfTI, a 4D series (more than one
    volume), a non-invertible or non-finite affine.
    """
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    path = Path(path)
    if not path.is_file():
        raise NiftiError(f"{path}: no such file")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, gzip errors, ...
        raise NiftiError(f"{path}: not a readable NIfTI file ({exc})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise NiftiError(f"{path}: {type(img).__name__}, not NIfTI")
    shape = img.shape
    if len(shape) > 3 and int(np.prod(shape[3:])) > 1:
        raise NiftiError(f"{path}: 4D NIfTI of shape {shape} ({int(np.prod(shape[3:]))} volumes); one 3D CT volume expected")
    affine = np.asarray(img.affine, np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise NiftiError(f"{path}: affine is not invertible (zero scale or degenerate axes): {np.round(affine, 4).tolist()}")
    hdr = img.header
    if int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) == 0:
        log.warning("%s: qform_code and sform_code are 0 (no orientation); axes taken as they are stored", path)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # truncated files fail here, not at load
        raise NiftiError(f"{path}: cannot read the voxel data ({exc})") from exc
    if data.ndim > 3:
        data = data.reshape(data.shape[:3])  # (X, Y, Z, 1): one volume
    while data.ndim < 3:
        data = data[..., None]  # a single slice

    transform = ornt_transform(io_orientation(affine), axcodes2ornt(DISPLAY_AXCODES))
    stored = apply_orientation(data, transform)
    new_affine = affine @ inv_ornt_aff(transform, data.shape)
    zooms = np.linalg.norm(new_affine[:3, :3], axis=0)  # (column, row, slice) spacing
    hu = np.ascontiguousarray(stored.transpose(2, 1, 0))
    descrip = hdr["descrip"].tobytes().split(b"\0")[0].decode("latin-1", "replace").strip()
    vol = Volume(
        hu=hu,
        spacing_mm=(float(zooms[2]), float(zooms[1]), float(zooms[0])),
        affine_ras=new_affine,
        source=str(path),
        modality="CT",
        source_affine=affine,
        source_axes=transform,
        extra={"source_shape": tuple(int(s) for s in data.shape), "nifti_header": hdr.copy(), "descrip": descrip},
    )
    log.info("%s", vol.describe())
    return vol


def _nifti_bytes(img: object, path: Path) -> bytes:
    raw = img.to_bytes()  # type: ignore[attr-defined]
    return gzip.compress(raw, compresslevel=6, mtime=0) if path.name.endswith(".gz") else raw


def _check_suffix(path: Path) -> None:
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise ValueError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")


def _on_source_grid(volume: Volume, data_crs: np.ndarray) -> tuple[np.ndarray, np.ndarray, object | None]:
    """(data in the file's voxel order, affine, source NIfTI header or None) for an array in
    (column, row, slice) order on ``volume``'s grid."""
    from nibabel.orientations import apply_orientation

    if volume.source_affine is not None and volume.source_axes is not None:
        data = apply_orientation(data_crs, _inverse_ornt(np.asarray(volume.source_axes)))
        expected = tuple(volume.extra.get("source_shape", data.shape))
        if tuple(data.shape) != expected:
            raise ValueError(f"{volume.source}: mask maps to shape {data.shape}, the source volume is {expected}")
        return np.ascontiguousarray(data), np.asarray(volume.source_affine, np.float64), volume.extra.get("nifti_header")
    return np.ascontiguousarray(data_crs), volume.affine_ras, None


def _write(path: Path, volume: Volume, data_crs: np.ndarray, descrip: str, dtype: type) -> None:
    """Build the image on the source grid and write it atomically. A NIfTI source's header
    is reused for its qform and sform fields verbatim, so the affine comes back bit for bit;
    otherwise both are set from the affine with code 1 (scanner anatomical)."""
    import nibabel as nib

    data, affine, source_header = _on_source_grid(volume, data_crs)
    data = data.astype(dtype)
    if source_header is not None:
        hdr = source_header.copy()
        hdr.set_data_dtype(dtype)
        hdr.set_slope_inter(None, None)
        hdr["cal_min"], hdr["cal_max"] = 0, 0
        img = nib.Nifti1Image(data, None, header=hdr)
    else:
        img = nib.Nifti1Image(data, affine)
        img.header.set_data_dtype(dtype)
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = descrip.encode("latin-1", "replace")[:79]
    atomic_write_bytes(path, _nifti_bytes(img, path))


def write_mask_nifti(mask: np.ndarray, volume: Volume, path: Path | str, descrip: str = "ichseg mask (1 = hemorrhage)") -> Path:
    """Write a (slices, rows, columns) mask as uint8 0/1 NIfTI on ``volume``'s grid, atomically.

    For a NIfTI input the file has the input's own axis order, shape and affine (bit for
    bit: the original affine is written as the sform, as it was read), so it overlays the
    CT in any viewer; for a DICOM input it has the series' RAS affine.
    """
    path = Path(path)
    _check_suffix(path)
    m = np.asarray(mask)
    if m.shape != volume.shape:
        raise ValueError(f"{path}: mask shape {m.shape} differs from the volume's {volume.shape} (slices, rows, columns)")
    _write(path, volume, (m > 0).astype(np.uint8).transpose(2, 1, 0), descrip, np.uint8)
    return path


def write_label_nifti(labels: np.ndarray, volume: Volume, path: Path | str, descrip: str = "label classes") -> Path:
    """As :func:`write_mask_nifti` for a (slices, rows, columns) uint8 class volume whose
    values are kept (0 = background), as nnU-Net's ``labelsTr`` holds them."""
    path = Path(path)
    _check_suffix(path)
    m = np.asarray(labels)
    if m.shape != volume.shape:
        raise ValueError(f"{path}: label shape {m.shape} differs from the volume's {volume.shape} (slices, rows, columns)")
    if m.min(initial=0) < 0 or m.max(initial=0) > 255:
        raise ValueError(f"{path}: label values {int(m.min())}..{int(m.max())} do not fit uint8")
    _write(path, volume, m.astype(np.uint8).transpose(2, 1, 0), descrip, np.uint8)
    return path


def write_volume_nifti(volume: Volume, path: Path | str, descrip: str = "") -> Path:
    """Write the volume's HU as int16 NIfTI (rounded, as CT stores them), atomically, on the
    same grid rules as :func:`write_mask_nifti`."""
    path = Path(path)
    _check_suffix(path)
    hu = np.clip(np.rint(volume.hu), -32768, 32767).astype(np.int16)
    _write(path, volume, hu.transpose(2, 1, 0), descrip, np.int16)
    return path
