"""The viewer page of ``ichseg serve`` in headless Chromium (Debian's ``chromium`` driven by
Selenium through ``chromedriver``): it asks for the token, lists the jobs, scrolls the slices,
and draws the outline with the opacity asked for. Screenshots go to ``ICHSEG_SCREENSHOTS``
when that is set (they were looked at when the viewer was written)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import threading
import time
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


@pytest.fixture
def served(tmp_path: Path):
    import uvicorn

    from ichseg.services.rest import Service, ServiceConfig, create_app

    jid = _finished_job(tmp_path / "store")
    port = _free_port()
    service = Service(ServiceConfig(store=tmp_path / "store", token=TOKEN))
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", jid
    server.should_exit = True
    thread.join(timeout=30)


def test_viewer_lists_scrolls_and_draws_the_outline(served, tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service as DriverService
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, jid = served
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=DriverService(DRIVER), options=opts)
    shots = Path(os.environ.get("ICHSEG_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    try:
        driver.set_page_load_timeout(60)
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
    finally:
        driver.quit()
