"""Exact latency percentiles, distribution-free confidence intervals, and a trial's summary.

Percentiles are computed from every sample (numpy's default linear interpolation), never from a
histogram. Every value returned is a plain Python int/float/bool/None/list/dict, JSON-serializable
with allow_nan=False: a statistic that does not exist (no samples) is None, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from workers.records import OUTCOME_DROPPED, OUTCOME_ERROR, OUTCOME_OK, OUTCOME_PENDING, ColdStart
from workers.spec import SLOSpec

SUMMARY_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}


def _f(x) -> float | None:
    """A finite Python float, or None (for NaN, inf or a missing value)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def latency_summary(latency_ms: np.ndarray) -> dict:
    """p50, p90, p95, p99, p999, max, mean of all samples (None for each when there are none)."""
    x = np.asarray(latency_ms, dtype=np.float64)
    keys = (*SUMMARY_PERCENTILES, "max", "mean")
    if x.size == 0:
        return dict.fromkeys(keys)
    qs = np.percentile(x, list(SUMMARY_PERCENTILES.values()))
    out = {k: _f(v) for k, v in zip(SUMMARY_PERCENTILES, qs, strict=True)}
    out["max"] = _f(x.max())
    out["mean"] = _f(x.mean())
    return out


def window_latency(latency_ms: np.ndarray) -> dict:
    """p50, p95, p99 of one window's samples (None each when empty). Cheap: one partition."""
    x = np.asarray(latency_ms, dtype=np.float64)
    if x.size == 0:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(x, [50.0, 95.0, 99.0])
    return {"p50": _f(p50), "p95": _f(p95), "p99": _f(p99)}


def percentile_ci(latency_ms: np.ndarray, percentile: float, confidence: float = 0.95
                  ) -> tuple[float, float] | None:
    """Distribution-free confidence interval for a percentile, from order statistics.

    Method: with n i.i.d. samples and q = percentile / 100, the number K of samples below the true
    q-quantile is Binomial(n, q). Take ranks (1-based) l = binom.ppf(a/2, n, q) and
    u = binom.ppf(1 - a/2, n, q) + 1 with a = 1 - confidence; then P(x_(l) <= true quantile <= x_(u))
    = P(l <= K <= u - 1) >= confidence, whatever the latency distribution (continuous case). The ranks
    are conservative: the coverage is at least `confidence`, usually a little more.

    Returns None when the sample is too small to bound the percentile at that confidence (l < 1 or
    u > n: e.g. p99 needs n >= ~300 for a 95 % interval), rather than a clamped interval that would
    silently cover less. The bounds are clamped to contain the point estimate (numpy's linear
    interpolation), which can otherwise sit a fraction of a rank outside for tiny n.
    """
    from scipy.stats import binom

    x = np.asarray(latency_ms, dtype=np.float64)
    n = int(x.size)
    if n < 2 or not 0.0 < percentile < 100.0 or not 0.0 < confidence < 1.0:
        return None
    q = percentile / 100.0
    alpha = 1.0 - confidence
    lo_rank = int(binom.ppf(alpha / 2.0, n, q))
    hi_rank = int(binom.ppf(1.0 - alpha / 2.0, n, q)) + 1
    if lo_rank < 1 or hi_rank > n:
        return None
    xs = np.partition(x, [lo_rank - 1, hi_rank - 1])  # two order statistics; no full sort of millions
    point = float(np.percentile(x, percentile))
    lo = min(float(xs[lo_rank - 1]), point)
    hi = max(float(xs[hi_rank - 1]), point)
    return (lo, hi)


def _pct_key(percentile: float) -> str:
    return f"p{percentile:g}".replace(".", "")


def _counts(outcome: np.ndarray) -> tuple[int, int, int, int]:
    ok = int(np.count_nonzero(outcome == OUTCOME_OK))
    errors = int(np.count_nonzero(outcome == OUTCOME_ERROR))
    dropped = int(np.count_nonzero(outcome == OUTCOME_DROPPED))
    pending = int(np.count_nonzero(outcome == OUTCOME_PENDING))
    return ok, errors, dropped, pending


def _group(rows: dict[str, np.ndarray], mask: np.ndarray | None, slo: SLOSpec, run_s: float) -> dict:
    """Counts, latency and SLO figures over the rows selected by mask (all rows when None)."""
    outcome = rows["outcome"] if mask is None else rows["outcome"][mask]
    intended = rows["intended_s"] if mask is None else rows["intended_s"][mask]
    completed_s = rows["completed_s"] if mask is None else rows["completed_s"][mask]
    ok_mask = outcome == OUTCOME_OK
    requests = int(outcome.size)
    ok, errors, dropped, pending = _counts(outcome)
    latency = (completed_s[ok_mask] - intended[ok_mask]) * 1000.0
    good = int(np.count_nonzero(latency <= slo.latency_ms))
    return {
        "requests": requests,
        "completed": ok,
        # Rows still pending after the run never got served: for the user they were dropped.
        "dropped": dropped + pending,
        "errors": errors,
        "latency_ms": latency_summary(latency),
        "slo_percentile_ms": _f(np.percentile(latency, slo.percentile)) if latency.size else None,
        "violation_rate": _f((requests - good) / requests) if requests else None,
        "throughput_rps": _f(ok / run_s) if run_s > 0 else None,
        "goodput_rps": _f(good / run_s) if run_s > 0 else None,
        "good": good,
        "_latency": latency,
    }


def _p50_max(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "max": None}
    arr = np.asarray(values, dtype=np.float64)
    return {"p50": _f(np.percentile(arr, 50.0)), "max": _f(arr.max())}


def _slo_verdict(g: dict, slo: SLOSpec) -> tuple[bool, list[str]]:
    """Whether the SLO was met, and one sentence per failed condition."""
    key = _pct_key(slo.percentile)
    reasons: list[str] = []
    if g["completed"] == 0:
        reasons.append("no request completed")
        return False, reasons
    p = g["slo_percentile_ms"]
    if p is None or p > slo.latency_ms:
        reasons.append(f"{key} latency {p:.1f} ms is above the {slo.latency_ms:g} ms target")
    v = g["violation_rate"]
    if v is None or v > slo.max_violation_rate:
        reasons.append(f"{v * 100:.2f} % of requests were late, dropped or failed; at most "
                       f"{slo.max_violation_rate * 100:g} % allowed")
    if slo.min_throughput_rps is not None:
        t = g["throughput_rps"] or 0.0
        if t < slo.min_throughput_rps:
            reasons.append(f"throughput {t:.1f} req/s is below the required {slo.min_throughput_rps:g} req/s")
    return not reasons, reasons


def _mean_ms(x: np.ndarray) -> float | None:
    return _f(x.mean() * 1000.0) if x.size else None


def summarize(rows: dict[str, np.ndarray], *, function_names: Sequence[str], slo: SLOSpec, run_s: float,
              cold_starts: Sequence[ColdStart], n_batches: int) -> dict:
    """The trial's summary from its per-request rows (columns of workers.records.ROW_COLUMNS).

    Latency = completed_s - intended_s of requests with outcome ok (open loop: measured from the
    intended arrival). A request violates the SLO when it is not ok (dropped, error, never served) or
    its latency is above slo.latency_ms; violation_rate is over all requests. Throughput counts ok
    requests; goodput counts ok requests within the latency threshold; both over run_s.
    """
    g = _group(rows, None, slo, run_s)
    latency = g.pop("_latency")
    g.pop("good")
    slo_met, reasons = _slo_verdict(g, slo)
    ci = percentile_ci(latency, slo.percentile) if latency.size else None

    during = [c for c in cold_starts if c.during_load]
    prestarts = [c for c in cold_starts if not c.during_load]

    outcome = rows["outcome"]
    ok_mask = outcome == OUTCOME_OK
    served = g["completed"] + g["errors"]
    breakdown = _breakdown(rows, ok_mask)

    per_function: dict[str, dict] = {}
    fcol = rows["function"]
    for i, name in enumerate(function_names):
        fg = _group(rows, fcol == i, slo, run_s)
        fg.pop("_latency")
        fg.pop("good")
        fg["cold_starts"] = sum(1 for c in during if c.function == i)
        per_function[str(name)] = fg

    return {
        "requests": g["requests"],
        "completed": g["completed"],
        "dropped": g["dropped"],
        "errors": g["errors"],
        "latency_ms": g["latency_ms"],
        "slo_percentile_ms": g["slo_percentile_ms"],
        "slo_percentile_ci_ms": [ci[0], ci[1]] if ci else None,
        "violation_rate": g["violation_rate"],
        "slo_met": bool(slo_met),
        "slo_reasons": reasons,
        "throughput_rps": g["throughput_rps"],
        "goodput_rps": g["goodput_rps"],
        "cold_starts": len(during),
        "cold_start_ms": _p50_max([c.duration_ms for c in during]),
        "prestarts": len(prestarts),
        "prestart_ms": _p50_max([c.duration_ms for c in prestarts]),
        "mean_batch_size": _f(served / n_batches) if n_batches > 0 else None,
        "breakdown_ms": breakdown,
        "per_function": per_function,
    }


def _breakdown(rows: dict[str, np.ndarray], ok_mask: np.ndarray) -> dict:
    """Mean of each latency component over completed requests, in ms (None each when none completed).

    dispatch_lag + cold_start + batch_wait + queue_wait + compute = mean latency, up to the clipping
    of queue_wait at 0 (which absorbs clock jitter between the recorded timestamps).
    """
    intended = rows["intended_s"][ok_mask]
    sent = rows["sent_s"][ok_mask]
    start = rows["batch_start_s"][ok_mask]
    done = rows["completed_s"][ok_mask]
    cold = rows["cold_wait_s"][ok_mask].astype(np.float64)
    bwait = rows["batch_wait_s"][ok_mask].astype(np.float64)
    queue = np.clip((start - sent) - cold - bwait, 0.0, None)
    return {
        "dispatch_lag": _mean_ms(sent - intended),
        "cold_start": _mean_ms(cold),
        "batch_wait": _mean_ms(bwait),
        "queue_wait": _mean_ms(queue),
        "compute": _mean_ms(done - start),
    }
