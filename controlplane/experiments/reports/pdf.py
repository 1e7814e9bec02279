"""The PDF report: the HTML report's own template, laid out by WeasyPrint.

Why WeasyPrint: the PDF must say what the HTML says, so it is the same template and the same context (one
place for wording and figures); WeasyPrint prints HTML + CSS with paged media (`@page` size A4 or Letter,
page numbers in the margin boxes) and inline SVG charts as vectors, with no browser. matplotlib + reportlab
would need a second layout of every section. It needs Pango (Debian: libpango-1.0-0, libpangoft2-1.0-0)
and a font (fonts-dejavu-core): `make report-deps` installs them.
"""

from __future__ import annotations

from django.template.loader import render_to_string

from .html import TEMPLATE, report_context


def render_pdf(comparison: dict, *, experiment=None, run: int | None = None, author=None, paper: str = "A4",
               **options) -> bytes:
    """The report as PDF bytes, on A4 or Letter paper, with page numbers."""
    import weasyprint  # imported here: it loads Pango, a second or so, which the HTML report does not need

    context = report_context(comparison, experiment=experiment, run=run, author=author, paper=paper,
                             generated=options.get("generated"), svg_text="text")
    # The charts as SVG images (data: URIs), not inline elements: WeasyPrint then draws each with its SVG
    # renderer (vectors still) instead of cascading the page's CSS through thousands of SVG nodes (3x faster).
    context["charts_as_images"] = True
    html = render_to_string(TEMPLATE, context)
    # base_url None and a fetcher that serves data: URIs only: the report loads nothing from anywhere
    document = weasyprint.HTML(string=html, base_url=None, url_fetcher=_data_only())
    return document.write_pdf()


def _data_only():
    """A URL fetcher that serves data: URIs (the charts) and refuses every other address."""
    from weasyprint import urls

    if hasattr(urls, "URLFetcher"):  # WeasyPrint 66+
        return urls.URLFetcher(allowed_protocols=("data",))

    def fetch(url: str, *args, **kwargs):
        if not url.startswith("data:"):
            raise ValueError(f"the report loads nothing from outside the file ({url[:60]})")
        return urls.default_url_fetcher(url, *args, **kwargs)

    return fetch
