"""What an upload may be, and how it is unpacked without trusting it.

Accepted: a ``.zip`` (a DICOM series, or a folder of slice images), or a ``.nii`` /
``.nii.gz`` volume. A zip is refused, before anything is written, when a member name is
absolute or climbs out (``../``), is a link, when there are too many members, or when it
would expand beyond ``max_unpacked_bytes`` or by more than ``max_ratio`` (a zip bomb). The
sizes are counted while extracting too, not only read from the zip's own headers, which
may lie. :class:`BodyLimit` counts the request body itself as it arrives, so an upload
that declares no Content-Length (a chunked one) is cut off at the limit too.
"""

from __future__ import annotations

import json
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


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a ``POST`` to ``path`` whose body grows past ``limit`` bytes is
    answered 413 while it streams in. A Content-Length header can be checked before reading,
    but a chunked upload declares none, and the handler's own count starts only after the
    multipart parser has spooled the whole file to a temporary file; counting the raw
    ``http.request`` messages stops it at the limit instead. The app never sees the rest:
    its answer to the cut-short body is dropped and replaced by the 413. The remainder of
    the body, up to ``drain`` bytes, is read and discarded first, because an HTTP client
    sends its whole body before it reads, and a server that closes on unread data makes
    the client see a reset connection, not the 413. A body whose Content-Length is already
    over the limit is refused before any of it is read.

    ``authorised`` (the service's token check on the Authorization header): an upload that
    fails it is answered 401 before any of its body is read, so a client without the token
    cannot make the server spool up to the limit."""

    def __init__(self, app, *, path: str, limit: int, drain: int = 64 << 20, authorised=None) -> None:
        self.app, self.path, self.limit, self.drain, self.authorised = app, path, limit, drain, authorised

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.authorised is not None and not self.authorised(headers.get(b"authorization", b"").decode("latin-1") or None):
            left = await self._discard(receive, True)  # read, never kept: the client then sees the 401
            if left is not None:
                await self._refuse(send, close=left, status=401, detail="missing or wrong bearer token")
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:  # said so up front: refused unread
            await self._refuse(send, close=True)
            return
        received, over, more = 0, False, True

        async def counted():
            nonlocal received, over, more
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                more = bool(message.get("more_body", False))
                if received > self.limit:
                    over = True
            elif message["type"] == "http.disconnect":
                more = False
            if over:
                raise _BodyTooLarge
            return message

        async def guarded(message) -> None:
            if not over:
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if not over:
            return
        more = await self._discard(receive, more)
        if more is None:
            return  # the client went away: nobody to answer
        await self._refuse(send, close=more)

    async def _discard(self, receive, more: bool) -> bool | None:
        """Read and drop the rest of the body, up to ``drain`` bytes: whether some is left
        unread (None: the client went away)."""
        drained = 0
        while more and drained < self.drain:
            message = await receive()
            if message["type"] != "http.request":
                return None
            drained += len(message.get("body", b""))
            more = bool(message.get("more_body", False))
        return more

    async def _refuse(self, send, *, close: bool, status: int = 413, detail: str | None = None) -> None:
        body = json.dumps({"detail": detail or f"upload over {self.limit} bytes"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        if close:  # the body was not read to its end: this connection cannot carry another request
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
