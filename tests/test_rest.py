"""``ichseg serve``'s REST service in process (FastAPI's TestClient): tokens, refusals that
leave nothing behind, the bounded queue, cancelling, and a job that a restarted service
finishes, with the viewer's slice endpoints on the answer."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from ichseg.services.jobs import STAGES
from ichseg.services.rest import Service, ServiceConfig, create_app

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def sample_zip() -> bytes:
    """The packaged sample study (CT-ICH 049: brain/ and bone/ JPGs) as a zip."""
    from ichseg.sample import sample_study_dir

    root = sample_study_dir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(root.rglob("*.jpg")):
            zf.write(f, f"049/{f.relative_to(root)}")
    return buf.getvalue()


def client(store: Path, **kw) -> TestClient:
    return TestClient(create_app(Service(ServiceConfig(store=store, token=TOKEN, **kw))))


def test_tokens_are_required_and_compared(tmp_path: Path) -> None:
    c = client(tmp_path)  # no `with`: the worker does not start
    assert c.get("/healthz").json()["status"] == "ok"
    assert c.get("/v1/jobs").status_code == 401
    assert c.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/v1/jobs", headers={"Authorization": TOKEN}).status_code == 401  # not a bearer header
    assert c.get("/v1/jobs", headers=AUTH).json() == []
    assert "ichseg viewer" in c.get("/").text and "http://" not in c.get("/").text.replace("http://www.w3.org/2000/svg", "")
    with pytest.raises(ValueError, match="token"):
        Service(ServiceConfig(store=tmp_path))
    with pytest.raises(ValueError, match="loopback"):
        Service(ServiceConfig(store=tmp_path, no_auth=True, host="0.0.0.0"))


def test_an_upload_without_the_token_is_refused_and_makes_no_job(tmp_path: Path) -> None:
    c = client(tmp_path)
    body = {"file": ("a.zip", _zip_with("1.jpg", b"x"))}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + TOKEN}):
        r = c.post("/v1/studies", files=body, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (headers, r.text)
    assert c.get("/v1/jobs", headers=AUTH).json() == []
    assert not (tmp_path / "jobs").exists() or not list((tmp_path / "jobs").iterdir())
    assert c.post("/v1/studies", files=body, headers=AUTH).status_code == 202  # the same upload, with the token


def _zip_with(name: str, data: bytes, compress: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("filename", "body", "status"),
    [
        ("study.zip", _zip_with("../../etc/evil.dcm", b"x"), 400),  # climbs out of the upload
        ("study.zip", _zip_with("/abs/evil.dcm", b"x"), 400),
        ("bomb.zip", _zip_with("zeros.bin", b"\0" * (64 << 20), compress=True), 413),  # 64 MB from ~64 kB
        ("notes.txt", b"hello", 415),
        ("study.zip", b"not a zip at all", 400),
        ("big.nii.gz", b"\0" * (3 << 20), 413),  # over this service's 2 MB limit
    ],
    ids=["traversal", "absolute", "zip-bomb", "wrong-kind", "not-a-zip", "oversized"],
)
def test_bad_uploads_are_refused_and_leave_nothing(tmp_path: Path, filename: str, body: bytes, status: int) -> None:
    c = client(tmp_path, max_upload_bytes=2 << 20)
    r = c.post("/v1/studies", files={"file": (filename, body)}, headers=AUTH)
    assert r.status_code == status, r.text
    assert c.get("/v1/jobs", headers=AUTH).json() == []
    assert not list((tmp_path / "jobs").glob("*")) if (tmp_path / "jobs").exists() else True
    assert not (tmp_path.parent / "etc").exists()


def test_a_full_queue_says_when_to_come_back_and_a_queued_job_can_be_cancelled(tmp_path: Path) -> None:
    c = client(tmp_path, max_active_jobs=1)
    first = c.post("/v1/studies", files={"file": ("a.zip", _zip_with("1.jpg", b"x"))}, headers=AUTH)
    assert first.status_code == 202 and first.headers["location"] == f"/v1/jobs/{first.json()['job_id']}"
    second = c.post("/v1/studies", files={"file": ("b.zip", _zip_with("1.jpg", b"x"))}, headers=AUTH)
    assert second.status_code == 429 and int(second.headers["retry-after"]) > 0
    jid = first.json()["job_id"]
    assert c.delete(f"/v1/jobs/{jid}", headers=AUTH).json() == {"id": jid, "was": "queued", "state": "cancelled"}
    assert c.get(f"/v1/jobs/{jid}", headers=AUTH).json()["state"] == "cancelled"
    assert c.delete("/v1/jobs/nope", headers=AUTH).status_code == 404


def test_a_job_reports_the_stage_it_is_in_and_a_cancel_is_not_overwritten(tmp_path: Path) -> None:
    from ichseg.services.jobs import JobStore, run_job

    store = JobStore(tmp_path)
    seen: list[str] = []

    def predict(path: Path, out: Path, stage):  # looks at the job from outside, as GET /v1/jobs/{id} does
        for name in ("reading", "predicting", "writing"):
            stage(name)
            seen.append(JobStore.progress(store.get(jid))["stage"])
        out.mkdir(parents=True)
        return "images", {"hemorrhage": False}

    jid = store.new_id()
    store.add(jid, tmp_path / "in")
    assert JobStore.progress(store.get(jid))["stage"] == "queued"
    job = store.claim()
    assert JobStore.progress(store.get(jid))["stage"] == "starting"
    run_job(store, job, predict)
    assert seen == ["reading", "predicting", "writing"]
    assert store.get(jid)["state"] == "done" and JobStore.progress(store.get(jid))["stage"] == "done"

    def cancelled_midway(path: Path, out: Path, stage):
        stage("reading")
        store.cancel(jid2)  # DELETE arrives while the model runs
        stage("predicting")
        return "images", {}

    jid2 = store.new_id()
    store.add(jid2, tmp_path / "in2")
    run_job(store, store.claim(), cancelled_midway)
    assert store.get(jid2)["state"] == "cancelled" and JobStore.progress(store.get(jid2))["stage"] == "cancelled"
    assert not (store.job_dir(jid2) / "results").exists()


def test_a_chunked_upload_over_the_limit_is_cut_off_while_it_streams(tmp_path: Path) -> None:
    """No Content-Length to check: the body is counted as it arrives and answered 413 at the
    limit, before the multipart parser spooled it all; no job, no job folder."""
    import socket
    import threading

    import httpx
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    service = Service(ServiceConfig(store=tmp_path, token=TOKEN, max_upload_bytes=1 << 20))
    handled = []  # the handler draws a job id once the multipart parser has the whole file
    new_id = service.jobs.new_id
    service.jobs.new_id = lambda: handled.append(1) or new_id()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    sent = 0

    def body():  # a multipart upload of 8 MB of zeros, in 256 kB chunks, with no declared length
        nonlocal sent
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.nii.gz"\r\n\r\n'
        for _ in range(32):
            sent += 256 << 10
            yield b"\0" * (256 << 10)
        yield b"\r\n--xyz--\r\n"

    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        headers = {**AUTH, "Content-Type": "multipart/form-data; boundary=xyz"}
        r = httpx.post(base + "/v1/studies", content=body(), headers=headers, timeout=60)
        assert r.status_code == 413, r.text
        assert not handled  # cut off in the stream: the handler never saw this upload
        assert (
            "content-length" not in {k.lower() for k in r.request.headers} and r.request.headers["transfer-encoding"] == "chunked"
        )
        assert httpx.get(base + "/v1/jobs", headers=AUTH, timeout=10).json() == []
        assert not (tmp_path / "jobs").exists() or not list((tmp_path / "jobs").iterdir())
        # without the token: 401 before the app (and its multipart parser) sees any of it
        sent = 0
        r = httpx.post(
            base + "/v1/studies", content=body(), headers={"Content-Type": "multipart/form-data; boundary=xyz"}, timeout=60
        )
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and not handled, r.text
        small = httpx.post(base + "/v1/studies", files={"file": ("a.zip", _zip_with("1.jpg", b"x"))}, headers=AUTH, timeout=60)
        assert small.status_code == 202 and len(handled) == 1  # the service serves on
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_a_job_left_by_a_stopped_service_is_finished_by_the_next_one(tmp_path: Path) -> None:
    before = client(tmp_path)  # accepts the upload, never runs it (as if it died)
    r = before.post("/v1/studies", files={"file": ("049.zip", sample_zip())}, headers=AUTH)
    assert r.status_code == 202
    jid = r.json()["job_id"]
    with client(tmp_path) as after:  # a restart on the same store: its worker picks the job up
        deadline = time.monotonic() + 300
        stages = []
        while (job := after.get(f"/v1/jobs/{jid}", headers=AUTH).json())["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, "the job did not finish"
            stages.append(job["progress"]["stage"])
            time.sleep(0.2)
        assert job["state"] == "done" and job["kind"] == "images" and job["progress"]["stage"] == "done", job
        order = [STAGES.index(st) for st in stages]  # whatever was seen, it was seen in order
        assert order == sorted(order), stages
        assert job["summary"]["hemorrhage"] is True and {"summary.json", "report.html", "predictions.csv"} <= set(job["files"])
        report = after.get(f"/v1/jobs/{jid}/files/report.html", headers=AUTH)
        assert report.status_code == 200 and "not a medical device" in report.text.lower()
        assert after.get(f"/v1/jobs/{jid}/files/../../jobs.sqlite", headers=AUTH).status_code == 404
        sl = after.get(f"/v1/jobs/{jid}/slices", headers=AUTH).json()
        assert len(sl["slices"]) == len(sl["probability"]) == 33 and max(sl["probability"]) > 0.5
        png = after.get(f"/v1/jobs/{jid}/slices/{sl['slices'][16]}/ct.png", headers=AUTH)
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert after.get(f"/v1/jobs/{jid}/slices/{sl['slices'][16]}/mask.png", headers=AUTH).status_code == 200
        assert after.get(f"/v1/jobs/{jid}/slices/nope/ct.png", headers=AUTH).status_code == 404


def test_server_killed_mid_job_finishes_it_after_a_restart(tmp_path: Path) -> None:
    """``ichseg serve`` as its own process, SIGKILLed while it predicts; started again on the
    same store, it finishes the job."""
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "token").write_text(TOKEN)
    cmd = [sys.executable, "-m", "ichseg.cli", "serve", "--store", str(tmp_path / "store"), "--port", str(port)]
    cmd += ["--token-file", str(tmp_path / "token")]
    base = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                time.sleep(0.2)
        proc.kill()
        raise TimeoutError("ichseg serve did not come up")

    server = start()
    try:
        r = httpx.post(base + "/v1/studies", files={"file": ("049.zip", sample_zip())}, headers=AUTH, timeout=60)
        jid = r.json()["job_id"]
        deadline = time.monotonic() + 120  # the model loads first: running, stage "starting"
        while (job := httpx.get(f"{base}/v1/jobs/{jid}", headers=AUTH, timeout=10).json())["progress"]["stage"] in STAGES[:3]:
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        # the model is running on the 33 slices (seconds of work): killed in the middle of it
        assert job["state"] == "running" and job["progress"]["stage"] == "predicting", job
        server.kill()
        server.wait(timeout=30)
        server = start()
        deadline = time.monotonic() + 300
        while (job := httpx.get(f"{base}/v1/jobs/{jid}", headers=AUTH, timeout=10).json())["state"] != "done":
            assert job["state"] in ("queued", "running") and time.monotonic() < deadline, job
            time.sleep(0.5)
        assert "summary.json" in job["files"] and job["summary"]["hemorrhage"] is True
    finally:
        server.kill()
        server.wait(timeout=30)
