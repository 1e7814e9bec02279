"""Honest latency percentiles, a confidence interval that holds under autocorrelation, and a trial's summary.

Percentiles are computed from every sample (numpy's default linear interpolation), never from a
histogram. The headline figures count **every** request: one that was dropped, errored or never
finished (outcome != ok) has a latency beyond the run, +inf, so it pushes the tail up instead of
vanishing from it. A percentile whose rank falls among those requests is None ("beyond the run").

Every value returned is a plain Python int/float/bool/None/list/dict, JSON-serializable with
allow_nan=False: a statistic that does not exist (no samples, beyond the run) is None, never NaN or inf.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from workers.histograms import CI_DIGITS, GroupTally, UnitHistograms
from workers.records import OUTCOME_DROPPED, OUTCOME_ERROR, OUTCOME_OK, OUTCOME_PENDING, ColdStart
from workers.spec import SLOSpec

SUMMARY_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}

CI_CONFIDENCE = 0.95
CI_METHOD = "moving-block bootstrap"
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20_240_601  # fixed: the same rows always give the same interval
MIN_CI_SECONDS = 10  # fewer one-second blocks than this cannot say how the tail varies over time
MAX_CI_UNITS = 3600  # longer runs make their blocks of ceil(seconds / 3600)-second units
_UNSET = object()


def _f(x) -> float | None:
    """A finite Python float, or None (for NaN, inf or a missing value)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def min_samples(percentile: float, confidence: float = CI_CONFIDENCE) -> int:
    """Fewest requests that can bound a percentile at this confidence: n >= ln((1 - c) / 2) / ln(q).

    With fewer, even the largest sample has a chance above (1 - c) / 2 of lying below the true
    percentile, so no interval from the data can reach the stated confidence. p50 needs 6, p90 36,
    p95 72, p99 368 and p99.9 3,688 requests for 95 %.
    """
    q = percentile / 100.0
    if not 0.0 < q < 1.0:
        return 1
    return math.ceil(math.log((1.0 - confidence) / 2.0) / math.log(q) - 1e-9)


def _rank_plan(n_total: int, m: int, percentiles: Sequence[float]) -> list[tuple[float, int, int] | None]:
    """For each percentile of n_total values (m finite, the rest +inf), numpy's linear interpolation point
    h = (n_total - 1) * q and the 0-based ranks around it; None when one of them is +inf or n_total is 0."""
    plan: list[tuple[float, int, int] | None] = []
    for p in percentiles:
        h = (n_total - 1) * p / 100.0
        lo, hi = math.floor(h), math.ceil(h)
        plan.append((h, lo, hi) if n_total > 0 and hi < m else None)
    return plan


def _plan_values(xs: np.ndarray, plan: list) -> list[float | None]:
    """Values of a rank plan from xs partitioned at its ranks (numpy's lerp, so it matches np.percentile)."""
    out: list[float | None] = []
    for item in plan:
        if item is None:
            out.append(None)
            continue
        h, lo, hi = item
        a, b, frac = float(xs[lo]), float(xs[hi]), h - lo
        out.append(_f(a + (b - a) * frac if frac < 0.5 else b - (b - a) * (1.0 - frac)))
    return out


def _partitioned(x: np.ndarray, *plans: list) -> np.ndarray:
    """x partitioned at every rank the plans need: one O(n) pass, however many percentiles."""
    wanted = sorted({i for plan in plans for item in plan if item for i in item[1:]})
    return np.partition(x, wanted) if wanted else x


def tail_percentiles(finite: np.ndarray, n_total: int, percentiles: Sequence[float]) -> list[float | None]:
    """Percentiles of n_total values of which `finite` are the finite ones and the rest are +inf.

    numpy's linear interpolation between the two order statistics around rank (n_total - 1) * q; None
    when either of them is +inf (the percentile lies beyond the run) or when there are no values.
    With no +inf values this is np.percentile.
    """
    x = np.asarray(finite, dtype=np.float64)
    plan = _rank_plan(n_total, int(x.size), percentiles)
    return _plan_values(_partitioned(x, plan), plan)


def _summary_from(x: np.ndarray, xs: np.ndarray, plan: list, unfinished: int | None) -> dict:
    k = int(unfinished or 0)
    n = int(x.size) + k
    keys = (*SUMMARY_PERCENTILES, "max", "mean")
    if n == 0:
        out = dict.fromkeys(keys)
    else:
        out = dict(zip(SUMMARY_PERCENTILES, _plan_values(xs, plan), strict=True))
        out["max"] = _f(x.max()) if k == 0 else None
        out["mean"] = _f(x.mean()) if k == 0 else None
    if unfinished is not None:
        out["unfinished_share"] = _f(k / n) if n else None
        out["unfinished"] = k
    return out


def latency_summary(latency_ms: np.ndarray, unfinished: int | None = None) -> dict:
    """p50, p90, p95, p99, p999, max, mean (None for each when there are no samples).

    unfinished=None: the figures of the given samples only (completed requests). unfinished=k: the
    figures of all requests, the given completed ones plus k that never finished (+inf); a percentile
    whose rank falls among the unfinished is None, max and mean are None when k > 0, and the result
    adds `unfinished` (k) and `unfinished_share` (k / all requests).
    """
    x = np.asarray(latency_ms, dtype=np.float64)
    plan = _rank_plan(int(x.size) + int(unfinished or 0), int(x.size), list(SUMMARY_PERCENTILES.values()))
    return _summary_from(x, _partitioned(x, plan), plan, unfinished)


def latency_figures(latency_ms: np.ndarray, unfinished: int, percentile: float) -> tuple[dict, dict, float | None]:
    """All-request summary, completed-only summary and the all-request `percentile`, from one partition."""
    x = np.asarray(latency_ms, dtype=np.float64)
    m = int(x.size)
    pcts = list(SUMMARY_PERCENTILES.values())
    plan_all = _rank_plan(m + unfinished, m, [*pcts, percentile])
    plan_done = _rank_plan(m, m, pcts)
    xs = _partitioned(x, plan_all, plan_done)
    every = _summary_from(x, xs, plan_all[:-1], unfinished)
    return every, _summary_from(x, xs, plan_done, None), _plan_values(xs, plan_all[-1:])[0]


def window_latency(latency_ms: np.ndarray) -> dict:
    """p50, p95, p99 of one window's samples (None each when empty). Cheap: one partition."""
    x = np.asarray(latency_ms, dtype=np.float64)
    if x.size == 0:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(x, [50.0, 95.0, 99.0])
    return {"p50": _f(p50), "p95": _f(p95), "p99": _f(p99)}


def percentile_ci(latency_ms: np.ndarray, percentile: float, confidence: float = 0.95
                  ) -> tuple[float, float] | None:
    """The i.i.d. order-statistic interval for a percentile. NOT what the summary reports.

    It assumes independent samples: with n of them and q = percentile / 100, the count below the true
    q-quantile is Binomial(n, q), and the order statistics at its a/2 and 1 - a/2 quantiles bound the
    percentile. Latencies of one run are not independent (a queue that builds up delays many requests
    in a row): on M/M/1 queues its nominal 95 % covers the true p99 in about half the runs at load 0.5
    and 12 % at load 0.85 (tests/workers/test_ci_coverage.py). Kept for that comparison; the summary uses
    `block_bootstrap_ci`. Returns None when n is too small for the order statistics to exist.
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


# ---- moving-block bootstrap ---------------------------------------------------------------------------
def _flat_top(t: np.ndarray) -> np.ndarray:
    a = np.abs(t)
    return np.where(a <= 0.5, 1.0, np.where(a <= 1.0, 2.0 * (1.0 - a), 0.0))


def politis_white_block_length(series: np.ndarray) -> float:
    """Automatic block length for a moving/circular block bootstrap (Politis & White 2004, with the
    correction of Patton, Politis & White 2009), in units of the series' steps.

    m = the smallest lag after which K = max(5, ceil(log10 n)) autocorrelations in a row are below
    2 * sqrt(log10(n) / n); M = 2m (at least 2); flat-top lag window of width M; then
    b = (2 G^2 / D)^(1/3) n^(1/3) with G = sum lambda(k/M) |k| R(k), D = 4/3 (sum lambda(k/M) R(k))^2,
    capped at min(3 sqrt(n), n / 3). White noise gives b ~ 1; a slowly decaying correlation gives a
    long block.
    """
    x = np.asarray(series, dtype=np.float64)
    n = int(x.size)
    if n < 4:
        return 1.0
    x = x - x.mean()
    r0 = float(x @ x) / n
    if r0 <= 0.0:
        return 1.0
    kn = max(5, math.ceil(math.log10(n)))
    m_max = min(math.ceil(math.sqrt(n)) + kn, n - 1)
    acv = np.array([float(x[k:] @ x[:n - k]) / n for k in range(m_max + 1)])
    rho = np.abs(acv[1:] / r0)  # rho[j] is the autocorrelation at lag j + 1
    crit = 2.0 * math.sqrt(math.log10(n) / n)
    insignificant = rho < crit
    m_hat = None
    for m in range(0, max(0, m_max - kn) + 1):
        if insignificant[m:m + kn].all():
            m_hat = m
            break
    if m_hat is None:  # no quiet stretch: take the last significant lag
        significant = np.flatnonzero(~insignificant)
        m_hat = int(significant[-1]) + 1 if significant.size else 1
    big_m = min(2 * max(m_hat, 1), m_max)
    k = np.arange(-big_m, big_m + 1)
    lam = _flat_top(k / big_m)
    r = acv[np.abs(k)]
    g = float(np.sum(lam * np.abs(k) * r))
    d = 4.0 / 3.0 * float(np.sum(lam * r)) ** 2
    b_max = math.ceil(min(3.0 * math.sqrt(n), n / 3.0))
    if d <= 0.0:
        return float(b_max)
    b = (2.0 * g * g / d) ** (1.0 / 3.0) * n ** (1.0 / 3.0)
    return float(min(max(b, 1.0), b_max))


def block_bootstrap_ci(latency_ms: np.ndarray, intended_s: np.ndarray, percentile: float, *,
                       confidence: float = CI_CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, estimate: float | None | object = _UNSET
                       ) -> tuple[list[float | None] | None, dict]:
    """Confidence interval for a percentile of all requests that holds when latencies are correlated in time.

    latency_ms: one value per request, +inf for a request that never finished; intended_s: its
    intended arrival (run clock); estimate: the percentile of latency_ms if already known (None: beyond
    the run). Returns ([low, high], info) or (None, info with a `reason`). A bound that lies beyond the
    run (+inf) is None.

    Method: a studentized moving-block bootstrap test, inverted over thresholds. The true q-quantile is
    the t where F(t) = q. For a candidate t, C(t) - q n (C: latencies <= t) is the sum over the B seconds
    of v_s(t) = (requests of second s with latency <= t) - q * (requests of second s), and
    T(t) = (C(t) - q n) / SE(t), with SE(t) the moving-block standard error
    sqrt(B / L * variance of the sums of v(t) over the B - L + 1 runs of L consecutive seconds).
    The distribution of T at t comes from `resamples` moving-block resamples of v(t) (seeded; each
    draws floor(B / L) runs of L seconds): T* = (sum of the drawn run sums - its bootstrap mean) /
    sqrt(k * variance of the drawn run sums). t is in the interval when T*_(a/2) <= T(t) <= T*_(1-a/2);
    the two ends are found by bisection over the order statistics near the estimate. Studentizing, at
    each t, is what makes it hold for tails: a run that saw few long queue excursions has a small SE,
    and at thresholds above its estimate the resampled T* has a long right tail (resamples that drew
    none of the few excursions), which lets the upper bound reach well above the estimate.

    Block length L from the data: Politis & White's rule (`politis_white_block_length`) applied to the
    per-second series v(estimate), at least 1 and at most B / 3.

    Assumptions: the per-second process is stationary and its dependence dies out well within the run
    (true of a stable queue observed over many of its excursions; not of a queue that grows for the
    whole run); at least MIN_CI_SECONDS seconds and min_samples(percentile) requests.
    """
    x = np.asarray(latency_ms, dtype=np.float64)
    t_arr = np.asarray(intended_s, dtype=np.float64)
    n = int(x.size)
    q = percentile / 100.0
    alpha = 1.0 - confidence
    info: dict = {"method": CI_METHOD, "interval": "studentized (bootstrap-t) test inverted over thresholds",
                  "block_s": None, "resamples": int(resamples), "confidence": confidence, "seconds": 0}
    if n == 0:
        return None, {**info, "reason": "no requests"}
    need_n = min_samples(percentile, confidence)
    if n < need_n:
        return None, {**info, "reason": f"{n} requests; a {_pct_key(percentile)} needs at least {need_n}"}
    sec = np.floor(t_arr).astype(np.int64)
    sec -= int(sec.min())
    n_sec = int(sec.max()) + 1
    info["seconds"] = n_sec
    if n_sec < MIN_CI_SECONDS:
        return None, {**info, "reason": f"arrivals span {n_sec} s; the block bootstrap needs at least "
                                        f"{MIN_CI_SECONDS} one-second blocks"}
    # The unit of time the blocks are made of: one second, or longer for runs of more than MAX_CI_UNITS
    # seconds (so the work and memory stay bounded; longer units only make the interval more cautious).
    unit = math.ceil(n_sec / MAX_CI_UNITS)
    if unit > 1:
        sec //= unit
    n_units = int(sec.max()) + 1

    finite = np.isfinite(x)
    fin = x[finite]
    fsec = sec[finite]
    m = int(fin.size)
    point = tail_percentiles(fin, n, [percentile])[0] if estimate is _UNSET else estimate
    q_per_unit = q * np.bincount(sec, minlength=n_units).astype(np.float64)
    at_point = fin <= point if point is not None else np.ones(m, dtype=bool)
    block, evaluate = _block_test(np.bincount(fsec[at_point], minlength=n_units) - q_per_unit, q_per_unit, q,
                                  alpha, resamples, seed)
    info["block_s"] = block * unit
    if m == 0:
        return [None, None], info

    # Candidates: finite order statistics in a window of ranks around the estimate, widened until both
    # ends of the interval are provably inside it (or it reaches the ends of the data).
    spread = math.sqrt(q * (1.0 - q) / n) * math.sqrt(block) * 20.0 + 20.0 / n
    down = up = spread
    for _ in range(40):
        ra = max(0, math.floor((q - down) * n))
        rb = min(m - 1, math.ceil((q + up) * n))
        ra = min(ra, rb)  # a window wholly among the unfinished starts at the largest finite value
        xa, xb = (float(val) for val in np.partition(fin, [ra, rb])[[ra, rb]])
        below = fin < xa
        base = np.bincount(fsec[below], minlength=n_units).astype(np.float64)
        inside = ~below & (fin <= xb)
        order = np.argsort(fin[inside], kind="stable")
        w = fin[inside][order]
        wsec = fsec[inside][order]

        def at(j: int, pivot: bool = True, w=w, wsec=wsec, base=base) -> tuple[float, float, float]:
            """T and the pivot's quantiles at the candidate threshold w[j]."""
            cut = int(np.searchsorted(w, w[j], side="right"))
            return evaluate(base + np.bincount(wsec[:cut], minlength=n_units), pivot)

        first, last = at(0), at(w.size - 1)
        widen_down = first[0] >= first[1] and ra > 0
        widen_up = last[0] <= last[2] and rb < m - 1
        if not (widen_down or widen_up):
            break
        down = down * 4.0 if widen_down else down
        up = up * 4.0 if widen_up else up

    fine = max(1, w.size // 16)
    lo_j = _first_reaching(at, w.size, first, last, fine, 1)
    hi_j = _first_reaching(at, w.size, first, last, fine, 2)
    lo_b = None if lo_j is None else float(w[lo_j])
    hi_b = None if hi_j is None else float(w[hi_j])
    if point is None:
        hi_b = None
    else:  # contain the estimate
        lo_b = point if lo_b is None else min(lo_b, point)
        hi_b = None if hi_b is None else max(hi_b, point)
    return [_f(lo_b), _f(hi_b)], info


def block_bootstrap_ci_binned(units: UnitHistograms, percentile: float, *, seconds: int, estimate: float | None,
                              confidence: float = CI_CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                              seed: int = BOOTSTRAP_SEED) -> tuple[list[float | None] | None, dict]:
    """block_bootstrap_ci from per-unit histograms instead of a row per request (simulated runs): the same test, the
    same block rule and resamples, inverted over the histograms' bucket edges instead of the order statistics. A
    bound is known to its bucket (2 significant digits) and rounded outwards: the low bound to its bucket's lowest
    value, the high bound to its highest. seconds: the span of the arrivals (floor of the last one + 1)."""
    n = int(units.requests.sum())
    q = percentile / 100.0
    alpha = 1.0 - confidence
    info: dict = {"method": CI_METHOD, "interval": "studentized (bootstrap-t) test inverted over thresholds",
                  "block_s": None, "resamples": int(resamples), "confidence": confidence, "seconds": int(seconds),
                  "thresholds": f"HDR histogram buckets, {CI_DIGITS} significant digits, bounds rounded outwards"}
    if n == 0:
        return None, {**info, "reason": "no requests"}
    need_n = min_samples(percentile, confidence)
    if n < need_n:
        return None, {**info, "reason": f"{n} requests; a {_pct_key(percentile)} needs at least {need_n}"}
    if seconds < MIN_CI_SECONDS:
        return None, {**info, "reason": f"arrivals span {seconds} s; the block bootstrap needs at least "
                                        f"{MIN_CI_SECONDS} one-second blocks"}
    q_per_unit = q * units.requests.astype(np.float64)
    per_bucket = units.counts.sum(axis=0)
    used = np.flatnonzero(per_bucket)  # candidate thresholds: the buckets that hold a latency
    cum = np.cumsum(units.counts[:, used], axis=1, dtype=np.int64) if used.size else None
    if estimate is None or not used.size:
        j_point = used.size - 1
    else:
        j_point = int(np.searchsorted(used, units.bucket_of(estimate), side="right")) - 1
    at_point = cum[:, j_point] if cum is not None and j_point >= 0 else np.zeros(units.n_units)
    block, evaluate = _block_test(at_point - q_per_unit, q_per_unit, q, alpha, resamples, seed)
    info["block_s"] = block * units.unit_s
    if not used.size:
        return [None, None], info

    def at(j: int, pivot: bool = True) -> tuple[float, float, float]:
        return evaluate(cum[:, j].astype(np.float64), pivot)

    first, last = at(0), at(used.size - 1)
    fine = 1  # buckets span the whole range of latencies: evaluate the pivot at every step, never interpolate it
    lo_j = _first_reaching(at, used.size, first, last, fine, 1)
    hi_j = _first_reaching(at, used.size, first, last, fine, 2)
    lo_b = None if lo_j is None else units.bucket_range_ms(used[lo_j])[0]
    hi_b = None if hi_j is None else units.bucket_range_ms(used[hi_j])[1]
    if estimate is None:
        hi_b = None
    else:
        lo_b = estimate if lo_b is None else min(lo_b, estimate)
        hi_b = None if hi_b is None else max(hi_b, estimate)
    return [_f(lo_b), _f(hi_b)], info


def _block_test(series_at_point: np.ndarray, q_per_unit: np.ndarray, q: float, alpha: float, resamples: int,
                seed: int):
    """The block length (Politis & White on the per-unit series at the estimate) and evaluate(counts_le, pivot):
    T(t) from the per-unit counts of latencies <= t, and the a/2 and 1 - a/2 quantiles of its moving-block
    resampled T* (NaN when pivot is False). Shared by the per-request and the per-unit-histogram intervals."""
    n_units = int(q_per_unit.size)
    block = int(round(politis_white_block_length(series_at_point)))
    block = max(1, min(block, n_units // 3))
    # How often each resample drew each run of L units (float32: small counts are exact), so that a
    # resampled total is one matrix-vector product; einsum, not BLAS, whose threads crawl on a busy host.
    k = n_units // block
    n_runs = n_units - block + 1
    rng = np.random.default_rng(seed)
    draws = np.zeros((resamples, n_runs), dtype=np.float32)
    for r0 in range(0, resamples, 250):
        chunk = min(resamples, r0 + 250) - r0
        flat = (np.arange(chunk)[:, None] * n_runs + rng.integers(0, n_runs, size=(chunk, k))).ravel()
        draws[r0:r0 + chunk] = np.bincount(flat, minlength=chunk * n_runs).reshape(chunk, n_runs)

    def resampled(per_run: np.ndarray) -> np.ndarray:
        return np.einsum("ij,j->i", draws, per_run.astype(np.float32)).astype(np.float64)

    lo_q, hi_q = alpha / 2.0, 1.0 - alpha / 2.0

    def evaluate(counts_le: np.ndarray, pivot: bool) -> tuple[float, float, float]:
        """T(t), and the a/2 and 1 - a/2 quantiles of T* at t (NaN when pivot is False)."""
        csum = np.concatenate(([0.0], np.cumsum(counts_le - q_per_unit)))
        sums = csum[block:] - csum[:-block]
        num = float(csum[-1])
        se = math.sqrt(n_units / block * float(sums.var(ddof=1)))
        t_obs = num / se if se > 0 else (0.0 if num == 0 else math.copysign(math.inf, num))
        if not pivot:
            return t_obs, math.nan, math.nan
        centred = sums - sums.mean()
        dev = resampled(centred)  # a resample's total minus its bootstrap mean
        square = resampled(centred * centred)
        se_star = np.sqrt(np.clip(k * (square - dev * dev / k) / (k - 1), 0.0, None))
        with np.errstate(divide="ignore", invalid="ignore"):
            t_star = np.where(se_star > 0, dev / se_star, np.where(dev == 0, 0.0, np.sign(dev) * 1e12))
        lo, hi = np.quantile(t_star, [lo_q, hi_q])
        return t_obs, float(lo), float(hi)
    return block, evaluate


def _first_reaching(at, size: int, first: tuple, last: tuple, fine: int, side: int) -> int | None:
    """Smallest candidate index j with T(t_j) >= the pivot's quantile at t_j (side 1: a/2, side 2: 1 - a/2), by
    bisection over the candidates (sorted thresholds; at(j, pivot) evaluates one); None when not even the largest
    reaches it (the bound lies beyond the run)."""
    if last[0] < last[side]:
        return None
    if first[0] >= first[side]:
        return 0
    lo, hi = 0, size - 1  # invariant: T < its quantile at lo, T >= its quantile at hi
    level_lo, level_hi = first[side], last[side]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if hi - lo > fine:
            t_obs, *levels = at(mid)
            level = levels[side - 1]
        else:  # close in: the pivot's quantiles change slowly, interpolate them between lo and hi
            t_obs = at(mid, pivot=False)[0]
            level = level_lo + (level_hi - level_lo) * (mid - lo) / (hi - lo)
        if t_obs >= level:
            hi, level_hi = mid, level
        else:
            lo, level_lo = mid, level
    return hi


def repeats_interval(values: Sequence[float | None]) -> dict:
    """An interval across repeats of a trial, from each repeat's SLO percentile (None = beyond the run).

    Method: [min, max] of the n repeats. For n independent repeats, the range covers the median of the
    repeat-to-repeat distribution with probability 1 - 2^(1 - n) (distribution-free: each repeat lies
    below the median with probability 1/2): 75 % for 3 repeats, 93.8 % for 5, 98.4 % for 7. A bound
    that is None lies beyond the run (a repeat whose percentile fell among unfinished requests).
    """
    vals = [math.inf if v is None else float(v) for v in values]
    n = len(vals)
    out = {"method": "min-max of repeats", "n": n, "low": None, "high": None, "median": None,
           "confidence": None, "beyond_run": sum(1 for v in values if v is None)}
    if n == 0:
        return out
    arr = np.asarray(vals, dtype=np.float64)
    out["low"] = _f(arr.min())
    out["high"] = _f(arr.max())
    out["median"] = _f(np.median(arr))
    out["confidence"] = 1.0 - 2.0 ** (1 - n) if n >= 2 else None
    return out


# ---- the summary --------------------------------------------------------------------------------------
def _pct_key(percentile: float) -> str:
    return f"p{percentile:g}".replace(".", "")


def _counts(outcome: np.ndarray) -> tuple[int, int, int, int]:
    ok = int(np.count_nonzero(outcome == OUTCOME_OK))
    errors = int(np.count_nonzero(outcome == OUTCOME_ERROR))
    dropped = int(np.count_nonzero(outcome == OUTCOME_DROPPED))
    pending = int(np.count_nonzero(outcome == OUTCOME_PENDING))
    return ok, errors, dropped, pending


def _group(rows: dict[str, np.ndarray], mask: np.ndarray | None, slo: SLOSpec, arrival_s: float) -> dict:
    """Counts, latency and SLO figures over the rows selected by mask (all rows when None)."""
    outcome = rows["outcome"] if mask is None else rows["outcome"][mask]
    intended = rows["intended_s"] if mask is None else rows["intended_s"][mask]
    completed_s = rows["completed_s"] if mask is None else rows["completed_s"][mask]
    ok_mask = outcome == OUTCOME_OK
    requests = int(outcome.size)
    ok, errors, dropped, pending = _counts(outcome)
    latency = (completed_s[ok_mask] - intended[ok_mask]) * 1000.0
    on_time = latency <= slo.latency_ms
    good = int(np.count_nonzero(on_time))
    in_window = completed_s[ok_mask] <= arrival_s
    done_in_window = int(np.count_nonzero(in_window))
    good_in_window = int(np.count_nonzero(in_window & on_time))
    every, done, at_slo = latency_figures(latency, requests - ok, slo.percentile)
    return {
        "requests": requests,
        "completed": ok,
        # Rows still pending after the run never got served: for the user they were dropped.
        "dropped": dropped + pending,
        "errors": errors,
        "latency_ms": every,
        "latency_completed_ms": done,
        "slo_percentile_ms": at_slo,
        "violation_rate": _f((requests - good) / requests) if requests else None,
        "throughput_rps": _f(done_in_window / arrival_s) if arrival_s > 0 else None,
        "goodput_rps": _f(good_in_window / arrival_s) if arrival_s > 0 else None,
        "completed_in_drain": ok - done_in_window,
        "_latency": latency,
    }


def _p50_max(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "max": None}
    arr = np.asarray(values, dtype=np.float64)
    return {"p50": _f(np.percentile(arr, 50.0)), "max": _f(arr.max())}


def _ms(v: float | None) -> str:
    return "beyond the run" if v is None else f"{v:.1f} ms"


def slo_verdict(g: dict, ci: list | None, ci_info: dict, slo: SLOSpec) -> dict:
    """Met, not met or inconclusive, with one sentence per condition that failed or could not be decided.

    not_met: the SLO percentile's interval lies wholly above the target, or the share of late, dropped
    or failed requests exceeds the allowed share, or throughput is below min_throughput_rps.
    inconclusive (when none of those): the interval straddles the target, or there is no interval
    (too few requests for the percentile, n < min_samples, or too short a run).
    met: the interval lies wholly at or below the target and every other condition holds.
    """
    key = _pct_key(slo.percentile)
    failed: list[str] = []
    unsure: list[str] = []
    if g["completed"] == 0:
        return {"verdict": "not_met", "reasons": ["no request completed"]}
    if ci is None:
        unsure.append(f"no confidence interval for the {key}: {ci_info.get('reason', 'not computed')}")
    else:
        lo, hi = ci
        span = f"{_ms(lo)} – {_ms(hi)}" if lo is not None else "beyond the run"
        if lo is None or lo > slo.latency_ms:
            failed.append(f"{key} latency {_ms(g['slo_percentile_ms'])} (95 % interval {span}) is above the "
                          f"{slo.latency_ms:g} ms target")
        elif hi is None or hi > slo.latency_ms:
            unsure.append(f"{key} latency {_ms(g['slo_percentile_ms'])}: its 95 % interval {span} straddles the "
                          f"{slo.latency_ms:g} ms target")
    v = g["violation_rate"]
    if v is None or v > slo.max_violation_rate:
        failed.append(f"{(v or 0.0) * 100:.2f} % of requests were late, dropped or failed; at most "
                      f"{slo.max_violation_rate * 100:g} % allowed")
    if slo.min_throughput_rps is not None:
        t = g["throughput_rps"] or 0.0
        if t < slo.min_throughput_rps:
            failed.append(f"throughput {t:.1f} req/s is below the required {slo.min_throughput_rps:g} req/s")
    verdict = "not_met" if failed else "inconclusive" if unsure else "met"
    return {"verdict": verdict, "reasons": failed + unsure}


def _mean_ms(x: np.ndarray) -> float | None:
    return _f(x.mean() * 1000.0) if x.size else None


def summarize(rows: dict[str, np.ndarray], *, function_names: Sequence[str], slo: SLOSpec, arrival_s: float,
              end_s: float | None = None, cold_starts: Sequence[ColdStart], n_batches: int,
              seed: int = BOOTSTRAP_SEED) -> dict:
    """The trial's summary from its per-request rows (columns of workers.records.ROW_COLUMNS).

    Latency = completed_s - intended_s (open loop: measured from the intended arrival); a request that
    is not ok (dropped, error, never served) has latency +inf. `latency_ms` and `slo_percentile_ms`
    count every request; `latency_completed_ms` only the completed ones. A request violates the SLO when
    it is not ok or its latency is above slo.latency_ms; violation_rate is over all requests.

    arrival_s: the arrival window is run clock 0..arrival_s; end_s: when the drain ended (default: the
    last completion). Throughput = ok requests completed within the arrival window / arrival_s; goodput
    the same for those within the latency target. What completed later is `completed_in_drain`.
    """
    arrival_s = float(arrival_s)
    g = _group(rows, None, slo, arrival_s)
    g.pop("_latency")
    outcome = rows["outcome"]
    ok_mask = outcome == OUTCOME_OK
    if end_s is None:
        done = rows["completed_s"][ok_mask]
        end_s = max(arrival_s, float(done.max())) if done.size else arrival_s
    all_latency = np.full(outcome.size, np.inf)
    all_latency[ok_mask] = (rows["completed_s"][ok_mask] - rows["intended_s"][ok_mask]) * 1000.0
    ci, ci_info = block_bootstrap_ci(all_latency, rows["intended_s"], slo.percentile, seed=seed,
                                     estimate=g["slo_percentile_ms"])
    verdict = slo_verdict(g, ci, ci_info, slo)

    during = [c for c in cold_starts if c.during_load]
    prestarts = [c for c in cold_starts if not c.during_load]
    served = g["completed"] + g["errors"]
    breakdown = _breakdown(rows, ok_mask)

    per_function: dict[str, dict] = {}
    fcol = rows["function"]
    only = len(function_names) == 1 and not np.any(fcol)
    for i, name in enumerate(function_names):
        fg = dict(g) if only else _group(rows, fcol == i, slo, arrival_s)  # one function: the same figures
        fg.pop("_latency", None)
        fg["cold_starts"] = sum(1 for c in during if c.function == i)
        per_function[str(name)] = fg

    return _summary(g, ci, ci_info, verdict, arrival_s=arrival_s, end_s=end_s, during=during, prestarts=prestarts,
                    served=served, n_batches=n_batches, breakdown=breakdown, per_function=per_function)


def _summary(g: dict, ci, ci_info: dict, verdict: dict, *, arrival_s: float, end_s: float, during: list,
             prestarts: list, served: int, n_batches: int, breakdown: dict, per_function: dict) -> dict:
    """The summary's keys, in order, from the whole run's group figures (summarize and summarize_streamed)."""
    return {
        **{k: g[k] for k in ("requests", "completed", "dropped", "errors", "latency_ms", "latency_completed_ms",
                             "slo_percentile_ms")},
        "slo_percentile_ci_ms": ci,
        "slo_percentile_ci": ci_info,
        "violation_rate": g["violation_rate"],
        "slo_verdict": verdict,
        "slo_met": verdict["verdict"] == "met",
        "slo_reasons": list(verdict["reasons"]),
        "throughput_rps": g["throughput_rps"],
        "goodput_rps": g["goodput_rps"],
        "arrival_s": _f(arrival_s),
        "drain_s": _f(max(0.0, float(end_s) - arrival_s)),
        "completed_in_drain": g["completed_in_drain"],
        "cold_starts": len(during),
        "cold_start_ms": _p50_max([c.duration_ms for c in during]),
        "prestarts": len(prestarts),
        "prestart_ms": _p50_max([c.duration_ms for c in prestarts]),
        "mean_batch_size": _f(served / n_batches) if n_batches > 0 else None,
        "breakdown_ms": breakdown,
        "per_function": per_function,
    }


def _group_streamed(t: GroupTally, requests: int, slo: SLOSpec, arrival_s: float) -> dict:
    """_group's figures from a GroupTally (histogram percentiles: see workers.histograms for their precision)."""
    h = t.hist
    ok = h.n
    k = requests - ok
    pcts = list(SUMMARY_PERCENTILES.values())
    *every_p, at_slo = h.percentiles([*pcts, slo.percentile], requests)
    done_p = h.percentiles(pcts, ok)
    exact = {"max": _f(h.max_ms) if ok else None, "mean": _f(h.sum_ms / ok) if ok else None}
    every = {**dict(zip(SUMMARY_PERCENTILES, every_p, strict=True)),
             **(exact if k == 0 else dict.fromkeys(exact)),
             "unfinished_share": _f(k / requests) if requests else None, "unfinished": k}
    return {
        "requests": requests,
        "completed": ok,
        "dropped": requests - ok - t.errors,  # pending after the run included, as in _group
        "errors": t.errors,
        "latency_ms": every,
        "latency_completed_ms": {**dict(zip(SUMMARY_PERCENTILES, done_p, strict=True)), **exact},
        "slo_percentile_ms": at_slo,
        "violation_rate": _f((requests - t.good) / requests) if requests else None,
        "throughput_rps": _f(t.done_in_window / arrival_s) if arrival_s > 0 else None,
        "goodput_rps": _f(t.good_in_window / arrival_s) if arrival_s > 0 else None,
        "completed_in_drain": ok - t.done_in_window,
    }


def summarize_streamed(stream, *, function_names: Sequence[str], slo: SLOSpec, arrival_s: float, end_s: float,
                       cold_starts: Sequence[ColdStart], n_batches: int, requests: Sequence[int],
                       seconds: int, seed: int = BOOTSTRAP_SEED) -> dict:
    """summarize() for a run recorded without a row per request (workers.recorder.Recorder(stream=True), what the
    simulated driver uses): the same keys, counts exact, latency percentiles from HDR histograms (3 significant
    digits), max and mean exact, the SLO percentile's interval from per-unit histograms (block_bootstrap_ci_binned).
    requests: sent requests per function; seconds: the span of their arrivals."""
    arrival_s = float(arrival_s)
    total = int(sum(requests))
    g = _group_streamed(stream.all, total, slo, arrival_s)
    ci, ci_info = block_bootstrap_ci_binned(stream.units, slo.percentile, seconds=seconds,
                                            estimate=g["slo_percentile_ms"], seed=seed)
    verdict = slo_verdict(g, ci, ci_info, slo)
    during = [c for c in cold_starts if c.during_load]
    prestarts = [c for c in cold_starts if not c.during_load]
    ok = g["completed"]
    per_function: dict[str, dict] = {}
    for i, name in enumerate(function_names):
        fg = _group_streamed(stream.functions[i], int(requests[i]), slo, arrival_s)
        fg["cold_starts"] = sum(1 for c in during if c.function == i)
        per_function[str(name)] = fg
    parts = stream.breakdown_sums
    return {
        **_summary(g, ci, ci_info, verdict, arrival_s=arrival_s, end_s=end_s, during=during, prestarts=prestarts,
                   served=ok + g["errors"], n_batches=n_batches,
                   breakdown={k: (_f(v / ok * 1000.0) if ok else None) for k, v in parts.items()},
                   per_function=per_function),
        "latency_histogram": {"format": "HdrHistogram V2 compressed base64", "unit": "us",
                              "significant_digits": 3, "encoded": stream.all.hist.encode()},
    }


def _breakdown(rows: dict[str, np.ndarray], ok_mask: np.ndarray) -> dict:
    """Mean of each latency component over completed requests, in ms (None each when none completed).

    Per request: dispatch_lag (sent - intended) + cold_start (measured part of its cold wait) +
    platform_delay_modelled (the MODELLED part of its cold wait) + batch_wait + queue_wait (the rest of
    the time before its batch started) + compute = its latency, exactly; so the means add up to the mean
    latency. queue_wait is not clipped: cold and batch waits lie inside [sent, batch start] by
    construction, so it is never negative beyond the float32 rounding of the stored waits (~1 us).
    """
    intended = rows["intended_s"][ok_mask]
    sent = rows["sent_s"][ok_mask]
    start = rows["batch_start_s"][ok_mask]
    done = rows["completed_s"][ok_mask]
    cold = rows["cold_wait_s"][ok_mask].astype(np.float64)
    modelled = rows["modelled_wait_s"][ok_mask].astype(np.float64) if "modelled_wait_s" in rows \
        else np.zeros_like(cold)
    bwait = rows["batch_wait_s"][ok_mask].astype(np.float64)
    queue = (start - sent) - cold - bwait
    return {
        "dispatch_lag": _mean_ms(sent - intended),
        "cold_start": _mean_ms(cold - modelled),
        "platform_delay_modelled": _mean_ms(modelled),
        "batch_wait": _mean_ms(bwait),
        "queue_wait": _mean_ms(queue),
        "compute": _mean_ms(done - start),
    }
