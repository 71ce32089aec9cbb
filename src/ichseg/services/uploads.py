"""What an upload may be, and how it is unpacked without trusting it.

Accepted: a ``.zip`` (a DICOM series, or a folder of slice images), or a ``.nii`` /
``.nii.gz`` volume. A zip is refused, before anything is written, when a member name is
absolute or climbs out (``../``), is a link, when there are too many members, or when it
would expand beyond ``max_unpacked_bytes`` or by more than ``max_ratio`` (a zip bomb). The
sizes are counted while extracting too, not only read from the zip's own headers, which
may lie.
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath


class UploadError(ValueError):
    """A refused upload; ``status`` is the HTTP status it deserves."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def upload_kind(filename: str) -> str:
    name = filename.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".zip"):
        return "zip"
    raise UploadError(f"{filename!r}: expected a .zip (DICOM series or slice images) or a .nii/.nii.gz volume", 415)


def safe_unzip(
    archive: Path, dest: Path, *, max_unpacked_bytes: int = 2 << 30, max_members: int = 20000, max_ratio: float = 200.0
) -> Path:
    """Extract ``archive`` into ``dest``; returns the folder to read (the single top folder,
    if the zip holds one). Raises :class:`UploadError` naming the offending member."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise UploadError(f"not a zip file ({exc})") from exc
    with zf:
        members = zf.infolist()
        if len(members) > max_members:
            raise UploadError(f"{len(members)} members in the zip (at most {max_members})", 413)
        declared = 0
        for m in members:
            p = PurePosixPath(m.filename.replace("\\", "/"))
            if p.is_absolute() or ".." in p.parts or (p.parts and p.parts[0].endswith(":")):
                raise UploadError(f"{m.filename!r}: a path outside the upload")
            if stat.S_ISLNK(m.external_attr >> 16):
                raise UploadError(f"{m.filename!r}: a link")
            declared += m.file_size
            if m.compress_size and m.file_size / m.compress_size > max_ratio and m.file_size > 1 << 20:
                raise UploadError(f"{m.filename!r}: expands {m.file_size / m.compress_size:.0f}× (a zip bomb?)", 413)
        if declared > max_unpacked_bytes:
            raise UploadError(f"the zip expands to {declared} bytes (at most {max_unpacked_bytes})", 413)
        written = 0
        dest.mkdir(parents=True, exist_ok=True)
        for m in members:
            target = dest.joinpath(*PurePosixPath(m.filename.replace("\\", "/")).parts)
            if m.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(m) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > max_unpacked_bytes:  # the headers lied
                        raise UploadError(f"the zip expands beyond {max_unpacked_bytes} bytes", 413)
                    out.write(chunk)
    entries = [e for e in dest.iterdir() if not e.name.startswith((".", "__MACOSX"))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest
