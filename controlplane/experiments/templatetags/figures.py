"""Template filters for figures: `{% load figures %}`, then `{{ v|usd_sig }}` or `{{ v|usd_per_1k:"short" }}`.

Thin wrappers over `controlplane.experiments.figures`, the one implementation pages, API and reports share.
"""

from django import template

from .. import figures

register = template.Library()


@register.filter
def usd_sig(value) -> str:
    """Dollars with three significant figures under $1 ("—" when there is no figure)."""
    return figures.format_usd(value)


@register.filter
def usd_per_1k(value, style: str = "") -> str:
    """A cost per 1,000 requests with its unit, per 1 M requests when tiny; `"short"` for table cells."""
    return figures.format_usd_per_1k(value, short=style == "short")
