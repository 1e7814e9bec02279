"""How money is written on pages, in the API's text and in reports: one implementation, used everywhere.

Costs of a serverless PoC are tiny per request, so a fixed number of decimals hides the differences that
matter (three variants all at `$0.0002` per 1,000 requests). Amounts under $1 keep three significant
figures; a cost per 1,000 requests under $0.001 is written per 1 M requests instead.
"""

from __future__ import annotations

import math
from numbers import Real

SIGNIFICANT = 3
PER_MILLION_BELOW_USD = 0.001  # a cost per 1,000 requests under this is written per 1 M requests
MISSING = "—"


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (Real, str)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def format_usd(value, sig: int = SIGNIFICANT) -> str:
    """US dollars: `sig` significant figures under $1 ($0.000234, $0.0700), cents from $1 ($12.35), whole
    dollars with separators from $1,000 ($12,346). None, NaN and non-numbers are "—"."""
    number = _number(value)
    if number is None:
        return MISSING
    sign = "-" if number < 0 else ""
    size = abs(number)
    if size == 0:
        return "$0"
    if size >= 1000:
        return f"{sign}${size:,.0f}"
    if size >= 1:
        return f"{sign}${size:,.2f}"
    rounded = float(f"{size:.{sig}g}")  # round first: 0.0009996 becomes 0.001, shown with 3 figures, not 4
    if rounded >= 1:
        return f"{sign}${rounded:,.2f}"
    decimals = sig - 1 - math.floor(math.log10(rounded))
    return f"{sign}${rounded:.{decimals}f}"


def per_requests(per_1k_usd) -> tuple[float, str] | None:
    """A cost per 1,000 requests as (amount, unit): unit "1,000" or, when under $0.001, "1 M" (amount x 1000)."""
    number = _number(per_1k_usd)
    if number is None:
        return None
    if number != 0 and abs(number) < PER_MILLION_BELOW_USD:
        return number * 1000.0, "1 M"
    return number, "1,000"


def format_usd_per_1k(per_1k_usd, *, short: bool = False) -> str:
    """A cost per 1,000 requests with its unit: "$0.0123 per 1,000 requests", or "$0.234 per 1 M requests"
    when it is under $0.001 per 1,000. `short`: "$0.0123/1k", "$0.234/1M" (for table cells)."""
    scaled = per_requests(per_1k_usd)
    if scaled is None:
        return MISSING
    amount, unit = scaled
    if short:
        return f"{format_usd(amount)}/{'1k' if unit == '1,000' else '1M'}"
    return f"{format_usd(amount)} per {unit} requests"
