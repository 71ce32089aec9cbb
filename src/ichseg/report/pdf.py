"""The HTML report as a PDF, for systems that file documents rather than web pages.

Rendered by WeasyPrint (pure Python over Pango for text layout: on Debian it needs the
``libpango-1.0-0`` and ``libpangoft2-1.0-0`` packages, a font such as ``fonts-dejavu-core``,
and, optionally, ``libharfbuzz-subset0`` to embed only the glyphs used, for smaller PDFs).
The report is self-contained, and the URL fetcher here refuses anything but inline
``data:`` URIs, so making the PDF never touches the network or the file system.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ichseg.files import atomic_write

log = logging.getLogger(__name__)


def _offline_fetcher() -> object:
    """A WeasyPrint URL fetcher that serves only data: URIs (the report inlines everything)."""
    import weasyprint

    if hasattr(weasyprint, "URLFetcher"):  # newer WeasyPrint (70 has it): a fetcher object
        return weasyprint.URLFetcher(allowed_protocols={"data"})

    def fetch(url: str, *args: object, **kwargs: object) -> dict:  # older WeasyPrint: a function
        if not url.startswith("data:"):
            raise ValueError(f"refusing to fetch {url!r}: the report must be self-contained")
        return weasyprint.default_url_fetcher(url, *args, **kwargs)

    return fetch


def write_report_pdf(html_path: Path, pdf_path: Path) -> int:
    """Render ``html_path`` (from ``write_report_html``) to ``pdf_path`` (A4), atomically;
    returns the number of pages (the PDF's page tree is compressed, so not easily read back).

    Raises ImportError with the install hint when WeasyPrint or its Pango libraries are missing."""
    try:
        from weasyprint import HTML
    except (ImportError, OSError) as exc:  # OSError: WeasyPrint installed but Pango missing
        raise ImportError(
            "PDF reports need WeasyPrint (pip install weasyprint) and Pango "
            "(apt-get install libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core)"
        ) from exc
    text = Path(html_path).read_text(encoding="utf-8")
    document = HTML(string=text, url_fetcher=_offline_fetcher()).render()
    atomic_write(Path(pdf_path), lambda tmp: document.write_pdf(target=str(tmp)))
    log.info("wrote PDF report %s (%d page(s))", pdf_path, len(document.pages))
    return len(document.pages)
