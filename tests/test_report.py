"""The clinician's HTML report is self-contained, says what it must, escapes what it shows,
and renders to a PDF."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from ichseg.report.html import DATASET_CREDIT, key_slice_indices, write_report_html
from ichseg.report.lesions import lesions, total_volume_ml

IN_CI = os.environ.get("CI") == "true"
SPACING_MM = (5.0, 0.45, 0.45)


def head_like_study(n: int = 8, size: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """Brain-window slices of a skull ring around grey brain, with a bright blob (blood) on
    slices 3-5."""
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot((yy - size / 2) / 0.85, xx - size / 2) / (size * 0.42)
    images = np.zeros((n, size, size), np.uint8)
    images[:] = np.where(r < 1.0, 95, 0).astype(np.uint8)
    images[:, (r >= 0.9) & (r < 1.0)] = 255
    mask = np.zeros((n, size, size), bool)
    blob = np.hypot(yy - 60, xx - 100) < 12
    for k in (2, 3, 4):
        mask[k] = blob
        images[k][blob] = 190
    return images, mask


def write_example(path: Path, *, positive: bool = True, study: str = "TEST-001") -> dict:
    images, mask = head_like_study()
    if not positive:
        mask[:] = False
    probs = np.where(mask.reshape(len(mask), -1).any(1), 0.9, 0.05)
    subtype_slices = {"intraparenchymal": probs * 0.8, "subdural": probs * 0.3}
    found = lesions(mask, SPACING_MM, subtype_slices)
    summary = {
        "hemorrhage": bool(found),
        "total_volume_ml": total_volume_ml(found),
        "lesions": found,
        "study": study,
        "scan_probability": float(probs.max()),
        "slice_threshold": 0.4,
        "spacing_mm": SPACING_MM,
    }
    keys = key_slice_indices(found, probs)
    write_report_html(
        path,
        summary=summary,
        key_slices=[(images[k], mask[k], f"Slice {k + 1}") for k in keys],
        slice_probs=probs,
        subtype_probs={"intraparenchymal": 0.72, "subdural": 0.27, "fracture": 0.05},
        model_info={"name": "ichseg test", "version": "0.1.0", "cv_metrics": {"slice recall": "0.72 [0.61, 0.84]"}},
        dataset_credit=DATASET_CREDIT,
    )
    return summary


def test_html_is_self_contained_and_says_what_it_must(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    summary = write_example(path)
    text = path.read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # written atomically, no temp file left
    # nothing to fetch: no scripts, no stylesheets or images from elsewhere
    for attr, value in re.findall(r'\b(src|href)\s*=\s*["\']([^"\']*)', text, flags=re.I):
        assert value.startswith("data:image/png;base64,"), f"{attr}={value[:60]}"
    assert not re.search(r"https?://|<script|<link|@import|url\(", text, flags=re.I)
    assert "Hemorrhage detected" in text and "No hemorrhage detected" not in text
    assert f"{summary['total_volume_ml']:.1f} mL" in text
    assert "not a medical device" in text.lower() and "not for diagnostic use" in text.lower()
    assert "doi:10.13026/w8q8-ky94" in text and "CC BY 4.0" in text and "Data, 5(1), 14" in text
    assert "66 patients" in text and "estimated" in text  # the model's limits
    assert "0.72 [0.61, 0.84]" in text  # cross-validated figures from model_info
    assert "intraparenchymal (0.72)" in text  # the lesion's subtype with its mean probability (0.9 × 0.8)
    # every inlined image is a PNG that decodes: 3 panels for the key slice
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    decoded = [cv2.imdecode(np.frombuffer(base64.b64decode(u), np.uint8), cv2.IMREAD_UNCHANGED) for u in uris]
    assert len(decoded) == 3 and all(d is not None and d.size for d in decoded)
    assert decoded[0].shape == (160, 160)  # the plain CT, at its own size


def test_negative_study_says_so(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    write_example(path, positive=False)
    text = path.read_text(encoding="utf-8")
    assert "No hemorrhage detected" in text
    assert "0.0 mL" in text
    assert "No outlined lesion" in text


def test_text_from_outside_is_escaped(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    write_example(path, study='<script>alert("x")</script> & co')
    text = path.read_text(encoding="utf-8")
    assert "<script" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in text


def test_key_slices_are_the_lesions_largest_slices_else_the_most_suspicious() -> None:
    _, mask = head_like_study()
    mask[6, 10:14, 10:14] = True  # a second, small lesion
    found = lesions(mask, SPACING_MM)
    probs = np.linspace(0, 1, len(mask))
    assert key_slice_indices(found, probs) == [2, 6]  # largest lesion first, 0-based
    assert key_slice_indices(found, probs, max_slices=1) == [2]
    assert key_slice_indices([], probs) == [len(mask) - 1]


def test_pdf_starts_with_pdf_and_has_pages(tmp_path: Path) -> None:
    try:
        import weasyprint  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: WeasyPrint installed, Pango missing
        if IN_CI:
            raise
        pytest.skip(f"WeasyPrint unavailable: {exc}")
    from ichseg.report.pdf import write_report_pdf

    html_path, pdf_path = tmp_path / "report.html", tmp_path / "report.pdf"
    write_example(html_path)
    pages = write_report_pdf(html_path, pdf_path)
    data = pdf_path.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert pages >= 1
    if shutil.which("pdfinfo"):  # poppler-utils, where installed: an independent reader agrees
        info = subprocess.run(["pdfinfo", str(pdf_path)], capture_output=True, text=True, check=True, timeout=60).stdout
        assert int(re.search(r"^Pages:\s+(\d+)", info, flags=re.M).group(1)) == pages
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.pdf"]


def test_probability_plot_is_valid_svg_with_one_bar_per_slice() -> None:
    import xml.etree.ElementTree as ET

    from ichseg.report.html import probability_plot_svg

    probs = np.array([0.05, 0.9, 0.6, 0.2, np.nan])
    root = ET.fromstring(probability_plot_svg(probs, 0.5, marked_slices=[2, 9]))
    ns = ""  # inline in HTML: no namespace (and no URL in the report)
    bars = [r for r in root.iter(f"{ns}rect") if r.find(f"{ns}title") is not None]
    want = [0.05, 0.9, 0.6, 0.2, 0.0]
    assert [b.find(f"{ns}title").text for b in bars] == [f"slice {i}: {p:.2f}" for i, p in enumerate(want, 1)]
    assert [b.get("fill") for b in bars] == ["#78909c", "#c62828", "#c62828", "#78909c", "#78909c"]  # red at or above 0.5
    heights = [float(b.get("height")) for b in bars]
    assert heights[1] > heights[2] > heights[3] > heights[0] > heights[4] == 0.0
    shaded = [r for r in root.iter(f"{ns}rect") if r.get("fill") == "#ffcdd2" and r.get("y") != "8"]
    assert len(shaded) == 1  # slice 2 only: slice 9 does not exist
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "decision threshold 0.50" in texts and "outlined blood" in texts
    assert "decision threshold" not in " ".join(t or "" for t in ET.fromstring(probability_plot_svg(probs, None)).itertext())
