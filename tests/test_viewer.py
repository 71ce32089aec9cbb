"""The viewer page of ``ichseg serve`` in headless Chromium (Debian's ``chromium`` driven by
Selenium through ``chromedriver``): it asks for the token, lists the jobs, scrolls the slices,
and draws the outline with the opacity asked for (on a hand-made job, whose pixels are
known); and it uploads the shipped sample study through the page, follows the real job to
the end and shows its answer. Screenshots go to ``ICHSEG_SCREENSHOTS`` when that is set;
README's ``docs/results/viewer.png`` is ``viewer-sample.png`` of
``ICHSEG_SCREENSHOTS=/tmp/shots pytest tests/test_viewer.py -k sample`` (looked at)."""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import os
import shutil
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER) and os.environ.get("CI") == "true":
    raise RuntimeError("Debian's chromium and chromium-driver are required in CI (.ci/run installs them)")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")
TOKEN = "viewer-test-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _finished_job(store: Path) -> str:
    """A done job with 12 slices, blood drawn on slices 5-7 (no model run: the page is tested)."""
    import cv2

    from ichseg.files import atomic_write_png
    from ichseg.services.jobs import JobStore

    jobs = JobStore(store)
    jid = jobs.new_id()
    results = jobs.job_dir(jid) / "results"
    rows = []
    for k in range(12):
        name = f"{k + 1:04d}"
        ct = np.zeros((256, 256), np.uint8)
        cv2.circle(ct, (128, 128), 100, 110, -1)
        mask = np.zeros((256, 256), np.uint8)
        if 4 <= k <= 6:
            cv2.circle(mask, (160, 110), 20, 255, -1)
        atomic_write_png(results / "viewer" / f"{name}.png", ct)
        atomic_write_png(results / "masks" / f"{name}_mask.png", mask)
        rows.append({"slice": k + 1, "hemorrhage_probability": 0.95 if 4 <= k <= 6 else 0.05, "hemorrhage": int(4 <= k <= 6)})
    with open(results / "predictions.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = {
        "hemorrhage": True,
        "total_volume_ml": 3.2,
        "scan_probability": 0.95,
        "positive_slices": [5, 6, 7],
        "operating_point": {"head_threshold": 0.8},
        "lesions": [{"label": 1, "volume_ml": 3.2, "abc2_ml": 3.0, "slices": [5, 6, 7], "subtype": None}],
    }
    (results / "summary.json").write_text(json.dumps(summary))
    jobs.add(jid, store / "nothing")
    jobs.set(jid, "done", kind="dicom", summary=summary)
    return jid


@contextlib.contextmanager
def _serving(store: Path) -> Iterator[str]:
    """``ichseg serve``'s app under uvicorn on a free loopback port, its worker running (so an
    upload is predicted by the shipped model); stopped on exit."""
    import uvicorn

    from ichseg.services.rest import Service, ServiceConfig, create_app

    port = _free_port()
    service = Service(ServiceConfig(store=store, token=TOKEN))
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@pytest.fixture
def served(tmp_path: Path):
    jid = _finished_job(tmp_path / "store")
    with _serving(tmp_path / "store") as base:
        yield base, jid


@contextlib.contextmanager
def _chromium(width: int = 1200, height: int = 1000):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service as DriverService

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=DriverService(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_viewer_lists_scrolls_and_draws_the_outline(served, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, jid = served
    shots = Path(os.environ.get("ICHSEG_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with _chromium() as driver:
        driver.get(base + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(ec.text_to_be_present_in_element((By.ID, "msg"), "cannot list jobs"))  # no token yet: 401
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "save").click()
        item = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, f'#jobs li[data-id="{jid}"]')))
        assert driver.find_element(By.ID, "msg").text == ""  # the token worked: the complaint is gone
        item.click()
        wait.until(ec.visibility_of_element_located((By.ID, "viewer")))
        wait.until(ec.text_to_be_present_in_element((By.ID, "slicename"), "0005"))  # opens on the first bleeding slice
        assert driver.find_element(By.ID, "verdict").text == "Hemorrhage detected"
        assert "3.2" in driver.find_element(By.ID, "lesions").text

        def red_alpha() -> int:  # the mask canvas' alpha at the blood's centre (160, 110 of 256 → ×2)
            time.sleep(0.5)
            return driver.execute_script(
                "return document.getElementById('mask').getContext('2d').getImageData(320, 220, 1, 1).data[3];"
            )

        assert abs(red_alpha() - 0.45 * 255) <= 2
        driver.save_screenshot(str(shots / "viewer-outline.png"))
        driver.execute_script("const o = document.getElementById('opacity'); o.value = 90; o.dispatchEvent(new Event('input'));")
        assert abs(red_alpha() - 0.9 * 255) <= 2
        driver.find_element(By.ID, "outline").click()
        assert red_alpha() == 0
        driver.find_element(By.ID, "outline").click()
        driver.execute_script("const s = document.getElementById('slice'); s.value = 0; s.dispatchEvent(new Event('input'));")
        wait.until(ec.text_to_be_present_in_element((By.ID, "slicename"), "0001"))
        assert red_alpha() == 0  # slice 1 has no blood
        bars = driver.find_elements(By.CSS_SELECTOR, "#plot rect.bar")
        assert len(bars) == 12 and [b.get_attribute("fill") for b in bars].count("#c62828") == 3
        driver.save_screenshot(str(shots / "viewer-slice1.png"))


def test_sample_study_uploaded_through_the_page_is_followed_and_shown(tmp_path: Path) -> None:
    """The shipped sample (CT-ICH 049, converted to a DICOM series as ``ichseg predict
    --sample`` does) uploaded with the page's form: the page shows the job's stages while
    the shipped model runs, then the CT with the outline, the lesion table and the
    downloads of the real answer."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from ichseg.data.convert import convert_patient
    from ichseg.sample import sample_study_dir

    series = convert_patient(sample_study_dir(), "dicom", tmp_path / "conv")
    upload = tmp_path / "ct-ich-049-dicom.zip"
    with zipfile.ZipFile(upload, "w") as zf:
        for f in sorted(series.glob("*.dcm")):
            zf.write(f, f"049/{f.name}")
    shots = Path(os.environ.get("ICHSEG_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with _serving(tmp_path / "store") as base, _chromium(1280, 1000) as driver:
        driver.get(base + "/")
        wait = WebDriverWait(driver, 30)
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "save").click()
        driver.find_element(By.ID, "file").send_keys(str(upload))
        driver.find_element(By.CSS_SELECTOR, "#upload button").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "msg"), "queued"))
        jid = driver.find_element(By.ID, "msg").text.split()[1]
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, f'#jobs li[data-id="{jid}"]'))).click()
        WebDriverWait(driver, 240).until(ec.visibility_of_element_located((By.ID, "viewer")))  # the model ran
        assert driver.find_element(By.ID, "detail").text == f"Job {jid}: done"
        assert driver.find_element(By.ID, "verdict").text == "Hemorrhage detected"  # CT-ICH 049 bleeds
        assert driver.find_element(By.ID, "slicename").text.endswith("/33)")
        rows = driver.find_elements(By.CSS_SELECTOR, "#lesions tr")
        assert len(rows) >= 2 and float(rows[1].find_elements(By.TAG_NAME, "td")[1].text) > 0  # a lesion, with a volume
        files = [b.text for b in driver.find_elements(By.CSS_SELECTOR, "#files button")]
        assert {"summary.json", "report.html", "mask.nii.gz", "segmentation.dcm", "measurements.dcm"} <= set(files), files
        driver.execute_script(  # to the slice the model is surest of: the tallest bar of the plot
            "const bars = [...document.querySelectorAll('#plot rect.bar')];"
            "const top = bars.reduce((a, b) => +b.getAttribute('height') > +a.getAttribute('height') ? b : a);"
            "const s = document.getElementById('slice'); s.value = top.dataset.k; s.dispatchEvent(new Event('input'));"
        )
        time.sleep(1.0)  # the slice's two images load and the mask is drawn
        lit = driver.execute_script(  # red pixels on the mask canvas: the outline is drawn on this slice
            "const d = document.getElementById('mask').getContext('2d').getImageData(0, 0, 512, 512).data;"
            "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;"
        )
        assert lit > 0
        width, height = driver.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight];"
        )
        shot = driver.execute_cdp_cmd(  # the whole page, below the fold too: CT, plot, lesions and downloads
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            },
        )
        (shots / "viewer-sample.png").write_bytes(base64.b64decode(shot["data"]))
