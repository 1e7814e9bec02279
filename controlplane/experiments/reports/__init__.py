"""Meeting-ready reports of a comparison: every figure comes from the comparison selector
(`comparison.experiment_comparison` / `compare_trials`) and is written as the comparison page writes it.

    data = comparison.experiment_comparison(experiment=exp, run=2)
    pdf = render_report(data, experiment=exp, run=2, author=user, fmt="pdf", paper="Letter")

`RENDERERS` maps a format to its renderer; `manage.py export_report`, the export task and the API look formats
up here, so a new format is one entry. A renderer is called as
`render(comparison, *, experiment, run, author, **options) -> bytes` (options: `paper` "A4" | "Letter",
`generated` a datetime for the title page).

Modules: `charts` (matplotlib charts as SVG and PNG, shared by every document), `html` (the self-contained
HTML file and the context of the template `reports/report.html`), `pdf` (the same template through WeasyPrint).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Renderer:
    render: Callable[..., bytes]
    content_type: str
    extension: str  # with its dot


def _html(comparison: dict, **kw) -> bytes:
    from .html import render_html

    return render_html(comparison, **kw)


def _pdf(comparison: dict, **kw) -> bytes:
    from .pdf import render_pdf

    return render_pdf(comparison, **kw)


def _pptx(comparison: dict, **kw) -> bytes:
    from .slides import render_pptx

    return render_pptx(comparison, **kw)


def _csv(comparison: dict, **kw) -> bytes:
    from .tabular import render_csv

    return render_csv(comparison, **kw)


def _json(comparison: dict, **kw) -> bytes:
    from .tabular import render_json

    return render_json(comparison, **kw)


def _zip(comparison: dict, **kw) -> bytes:
    from .tabular import render_zip

    return render_zip(comparison, **kw)


RENDERERS: dict[str, Renderer] = {
    "html": Renderer(_html, "text/html; charset=utf-8", ".html"),
    "pdf": Renderer(_pdf, "application/pdf", ".pdf"),
    # slides (python-pptx), tabular formats and the zip of everything: reports/slides.py, reports/tabular.py
    "pptx": Renderer(_pptx, "application/vnd.openxmlformats-officedocument.presentationml.presentation", ".pptx"),
    "csv": Renderer(_csv, "text/csv; charset=utf-8", ".csv"),
    "json": Renderer(_json, "application/json", ".json"),
    "zip": Renderer(_zip, "application/zip", ".zip"),
}


def render_report(comparison: dict, *, experiment=None, run: int | None = None, author=None, fmt: str = "html",
                  **options) -> bytes:
    """The comparison as a document in `fmt` (a key of RENDERERS), as bytes."""
    try:
        renderer = RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"unknown report format {fmt!r} (known: {', '.join(RENDERERS)})") from None
    return renderer.render(comparison, experiment=experiment, run=run, author=author, **options)
