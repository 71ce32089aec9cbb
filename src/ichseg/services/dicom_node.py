"""``ichseg dicom-node``: a DICOM node (pynetdicom) that a scanner or PACS pushes head CTs to,
and that sends the answer back into the same study.

- answers C-ECHO; accepts CT Image Storage and Enhanced CT Image Storage by C-STORE (no
  other storage SOP class is negotiated, so a PACS pushing MR or SR to it is refused at
  association time); calling AE titles may be limited to an allow-list;
- each instance is written to disk (atomically) and recorded in the node's
  :class:`~ichseg.services.queue.StudyQueue`; a malformed instance gets a failure status,
  is logged, and the node keeps serving;
- a series is complete once it received nothing for ``stable_s`` seconds; a worker thread
  reads it (:func:`ichseg.io.dicom.read_dicom_series`), runs the shipped pipeline
  (:func:`ichseg.infer.volume.predict_volume`) and sends the DICOM SEG and SR it wrote back
  to the destination by C-STORE. Both reference the source study, so they land in it.

Each CT series is answered on its own. ``ichseg predict`` given a study folder reads one
series (the axial one closest to 5 mm, soft-tissue kernel first:
``ichseg.io.dicom._choose_series``); the node does not, because a study's series arrive
independently and each is complete at its own time, so choosing among them would mean
holding every series until the whole study had gone quiet and guessing when that is. A
study pushed with, say, a 5 mm soft-tissue series and a 0.625 mm bone series therefore gets
two SEG + SR pairs, each referencing its own series (a thin series is read as ~5 mm slabs;
a bone-kernel one is predicted too, though the model was trained on soft-tissue images).
To have one answer per study, route only the series you want to the node (e.g. an Orthanc
Lua rule or a PACS routing rule on SeriesDescription or SliceThickness).

The queue is on disk: killed at any moment, the node restarted on the same ``--store``
finishes what it had received or queued. Nothing here imports training code.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ichseg.files import atomic_write
from ichseg.services.queue import SeriesJob, StudyQueue

log = logging.getLogger(__name__)

CT_STORAGE = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1")  # CT, Enhanced CT Image Storage
RESULT_FILES = ("segmentation.dcm", "measurements.dcm")

# C-STORE statuses (PS3.4 B.2.3)
SUCCESS = 0x0000
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700


@dataclass(frozen=True)
class Destination:
    """Where results go: ``AE@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        try:
            ae, rest = text.split("@", 1)
            host, port = rest.rsplit(":", 1)
            return cls(ae, host, int(port))
        except ValueError as exc:
            raise ValueError(f"--destination {text!r}: expected AE@HOST:PORT") from exc


@dataclass
class NodeConfig:
    """A node's settings (``ichseg dicom-node`` flags)."""

    store: Path
    ae_title: str = "ICHSEG"
    host: str = "127.0.0.1"
    port: int = 11112
    destination: Destination | None = None
    stable_s: float = 5.0
    allowed_aes: tuple[str, ...] = ()
    model_dir: Path | None = None
    runtime: str = "auto"
    head_check: bool = True
    poll_s: float = 0.5
    max_associations: int = 32  # pynetdicom's default is 10: a PACS flushing its queue opens more


def _ae_text(value: object) -> str:
    return (value.decode() if isinstance(value, bytes) else str(value or "")).strip()


class DicomNode:
    """The node: a pynetdicom server plus one worker thread; :meth:`start`, :meth:`stop`."""

    def __init__(self, config: NodeConfig, slots=None) -> None:
        from ichseg.services.jobs import PredictionSlots

        self.config = config
        self.slots = slots or PredictionSlots(1)
        self.queue = StudyQueue(Path(config.store))
        self.results = Path(config.store) / "results"
        self._server = None
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._bundle = None
        self.processed: list[str] = []  # series UIDs, in the order this process finished them

    # ----------------------------------------------------------------- network side

    def _ae(self):
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.config.ae_title)
        ae.add_supported_context(Verification)
        for uid in CT_STORAGE:
            ae.add_supported_context(uid)
        if self.config.allowed_aes:
            ae.require_calling_aet = list(self.config.allowed_aes)
        ae.maximum_pdu_size = 0
        ae.maximum_associations = self.config.max_associations
        return ae

    def handle_store(self, event) -> int:
        """C-STORE: keep a CT instance on disk and in the queue; anything else a failure status."""
        calling = _ae_text(event.assoc.requestor.ae_title)
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            missing = [k for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID") if not ds.get(k)]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
            if str(ds.get("Modality", "")).upper() != "CT" or "PixelData" not in ds:
                raise ValueError(f"not a CT image (Modality {ds.get('Modality')!r})")
            if not ds.file_meta.TransferSyntaxUID.is_compressed:  # a cut-short pixel buffer: refuse now, not later
                need = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8 * int(ds.get("NumberOfFrames", 1) or 1)
                if len(ds.PixelData) < need:
                    raise ValueError(f"truncated pixel data ({len(ds.PixelData)} of {need} bytes)")
        except Exception as exc:  # a malformed instance must not take the node down
            log.warning("C-STORE from %s refused: %s", calling, exc)
            return CANNOT_UNDERSTAND
        sop, study, series = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        if self.queue.has_instance(sop):
            log.info("C-STORE from %s: %s already stored (duplicate, ignored)", calling, sop)
            return SUCCESS
        path = self.queue.instance_path(study, series, sop)
        try:
            atomic_write(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))
        except OSError as exc:
            log.error("C-STORE from %s: cannot write %s: %s", calling, path, exc)
            return OUT_OF_RESOURCES
        self.queue.add_instance(sop, study, series, path, calling)
        return SUCCESS

    def start(self, *, worker: bool = True) -> None:
        """Serve on (host, port) in background threads and, unless ``worker`` is False (some
        other loop calls :meth:`step`), start the worker."""
        from pynetdicom import evt

        recovered = self.queue.recover()
        if recovered:
            log.info("re-queued %d series interrupted by the last shutdown", recovered)
        handlers = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_C_ECHO, lambda event: SUCCESS)]
        self._server = self._ae().start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        self._stop.clear()
        if worker:
            self._worker = threading.Thread(target=self._work, name="ichseg-node-worker", daemon=True)
            self._worker.start()
        log.info("DICOM node %s listening on %s:%d", self.config.ae_title, self.config.host, self.config.port)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._worker is not None:
            self._worker.join(timeout=120)
            self._worker = None

    # ----------------------------------------------------------------- worker side

    def _work(self) -> None:
        while not self._stop.is_set():
            if not self.step():
                self._stop.wait(self.config.poll_s)

    def step(self) -> bool:
        """Queue the series that became stable and process the oldest queued one; False when
        there was nothing to do. The node's own worker calls this in a loop; ``ichseg serve
        --dicom-port`` calls it from the one worker that also runs the REST jobs."""
        self.queue.promote_stable(self.config.stable_s)
        job = self.queue.claim()
        if job is None:
            return False
        try:
            out = self.process(job)
        except Exception as exc:  # the job fails, the node does not
            log.exception("series %s failed", job.series_uid)
            self.queue.fail(job.series_uid, f"{type(exc).__name__}: {exc}")
            return True
        self.queue.finish(job.series_uid, out)
        self.processed.append(job.series_uid)
        return True

    def _load_bundle(self):
        if self._bundle is None:
            from ichseg.infer.pipeline import load_bundle
            from ichseg.infer.shipped import default_model_dir

            model_dir = self.config.model_dir or default_model_dir(self.config.runtime)
            self._bundle = load_bundle(model_dir, runtime=self.config.runtime)
        return self._bundle

    def process(self, job: SeriesJob) -> Path:
        """Predict one series into ``results/<series>/`` and send its SEG and SR back."""
        from ichseg.infer.volume import predict_volume
        from ichseg.io.dicom import read_dicom_series

        t0 = time.perf_counter()
        volume = read_dicom_series(job.folder, series_uid=job.series_uid)
        out = self.results / job.series_uid
        with self.slots.slot():
            summary = predict_volume(self._load_bundle(), volume, out, head_check=self.config.head_check)
        log.info(
            "series %s: %s, %.1f mL (%d instances, %.1f s)",
            job.series_uid,
            "HEMORRHAGE" if summary["hemorrhage"] else "no hemorrhage",
            summary["total_volume_ml"],
            job.instances,
            time.perf_counter() - t0,
        )
        if self.config.destination is not None:
            send_files([out / n for n in RESULT_FILES if (out / n).exists()], self.config.destination, self.config.ae_title)
        return out


def send_files(paths: list[Path], dest: Destination, calling_ae: str = "ICHSEG") -> None:
    """C-STORE ``paths`` to ``dest`` in one association; an error names what was refused."""
    from pydicom import dcmread
    from pynetdicom import AE

    datasets = [dcmread(p) for p in paths]
    if not datasets:
        return
    ae = AE(ae_title=calling_ae)
    for uid in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(uid)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        raise ConnectionError(f"{dest.ae_title}@{dest.host}:{dest.port}: association refused or unreachable")
    try:
        for p, ds in zip(paths, datasets, strict=True):
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code != SUCCESS:
                raise ConnectionError(f"{dest.ae_title} refused {p.name} (status {code if code is None else hex(code)})")
    finally:
        assoc.release()
