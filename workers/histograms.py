"""Latency histograms for simulated runs: HDR histograms (the hdrhistogram package) filled in bulk from numpy.

A simulated day is millions of requests; keeping a row per request for its summary does not fit the memory bound.
The simulated driver instead records every completed request's latency into HDR histograms as its windows are
written, and the summary's percentiles come from them (`workers.statistics.summarize_streamed`).

Precision, stated: latencies are recorded in whole microseconds at 3 significant digits (HdrHistogram's
`significant_figures=3`): two latencies in one bucket differ by at most 1 part in 1,024 (under 0.1 %). A reported
percentile is the highest value of its bucket (HdrHistogram's convention), so it is at most 0.1 % (or 1 us) above
the exact order statistic, never below it. Max and mean are exact (tracked beside the histogram).

The block-bootstrap interval of the SLO percentile needs, for a candidate threshold, how many requests of each
unit of arrival time completed within it; `UnitHistograms` keeps one coarser histogram (2 significant digits: a
bucket spans at most 1 part in 128, under 0.8 %) per unit, so the interval's bounds are known to a bucket and are
rounded outwards (the low bound down to its bucket's lowest value, the high bound up to its highest).
"""

from __future__ import annotations

import math

import numpy as np
from hdrh.histogram import HdrHistogram

HIGHEST_US = 10 * 86_400 * 10**6  # ten days: longer than any simulated run and its drain
SUMMARY_DIGITS = 3
CI_DIGITS = 2


def counts_index(h: HdrHistogram, values_us: np.ndarray) -> np.ndarray:
    """HdrHistogram's counts index of each value (its _counts_index_for, vectorised); values clipped to the
    histogram's range."""
    v = np.clip(np.asarray(values_us, dtype=np.int64), 0, h.highest_trackable_value)
    # bit length of (v | sub_bucket_mask): frexp's exponent is exact for integers below 2**53
    bits = np.frexp((v | h.sub_bucket_mask).astype(np.float64))[1].astype(np.int64)
    bucket = bits - h.unit_magnitude - (h.sub_bucket_half_count_magnitude + 1)
    sub = v >> (bucket + h.unit_magnitude)
    return ((bucket + 1) << h.sub_bucket_half_count_magnitude) + (sub - h.sub_bucket_half_count)


def to_us(latency_ms: np.ndarray) -> np.ndarray:
    return np.maximum(0, np.rint(np.asarray(latency_ms, dtype=np.float64) * 1e3)).astype(np.int64)


class LatencyHistogram:
    """One HDR histogram of latencies (recorded in us, read in ms) with the exact count, sum and max beside it."""

    def __init__(self, digits: int = SUMMARY_DIGITS):
        self.h = HdrHistogram(1, HIGHEST_US, digits)
        self.counts = np.ctypeslib.as_array(self.h.counts)  # a numpy view of the histogram's own counts
        self.n = 0
        self.sum_ms = 0.0
        self.max_ms = -math.inf
        self._lo: int | None = None
        self._hi: int | None = None

    def record(self, latency_ms: np.ndarray) -> None:
        x = np.asarray(latency_ms, dtype=np.float64)
        if x.size:
            idx = counts_index(self.h, to_us(x))
            lo, hi = int(idx.min()), int(idx.max())
            self.add(np.bincount(idx - lo, minlength=hi - lo + 1), lo, int(x.size), float(x.sum()), float(x.max()))

    def add(self, counts: np.ndarray, lo: int, n: int, sum_ms: float, max_ms: float) -> None:
        """Add counts of the buckets lo, lo + 1, ... of n latencies whose sum and max are given."""
        if n <= 0:
            return
        nz = np.flatnonzero(counts)
        hi = lo + int(nz[-1])
        lo = lo + int(nz[0])
        self.counts[lo:hi + 1] += counts[int(nz[0]):int(nz[-1]) + 1].astype(np.uint64)
        self.n += int(n)
        self.sum_ms += float(sum_ms)
        self.max_ms = max(self.max_ms, float(max_ms))
        self._lo = lo if self._lo is None else min(self._lo, lo)
        self._hi = hi if self._hi is None else max(self._hi, hi)
        self.h.set_internal_tacking_values(self._lo, self._hi, self.n)

    def percentiles(self, percentiles, n_total: int | None = None) -> list[float | None]:
        """Each percentile (HdrHistogram's rule: the highest value of the bucket holding the ceil(q n)-th value) of
        n_total values, of which the recorded ones are the finite ones and the rest lie beyond the run (+inf): a
        percentile whose rank falls among those is None, as it is when there are no values."""
        n_total = self.n if n_total is None else int(n_total)
        out: list[float | None] = []
        csum = np.cumsum(self.counts) if self.n else None
        for p in percentiles:
            rank = max(1, int(p * n_total / 100.0 + 0.5))
            if n_total == 0 or rank > self.n:
                out.append(None)
                continue
            i = int(np.searchsorted(csum, rank, side="left"))
            out.append(self.h.get_highest_equivalent_value(self.h.get_value_from_index(i)) / 1e3)
        return out

    def encode(self) -> str:
        """The histogram in HdrHistogram's compressed base64 format (any HdrHistogram library decodes it)."""
        return self.h.encode().decode("ascii")


class UnitHistograms:
    """Per unit of arrival time (one second, or longer units for runs over statistics.MAX_CI_UNITS seconds), a
    histogram of the completed requests' latencies on a 2-significant-digit HDR grid, and the count of requests
    that arrived in it. What the block bootstrap needs without a row per request."""

    def __init__(self, n_units: int, unit_s: float):
        self.grid = HdrHistogram(1, HIGHEST_US, CI_DIGITS)
        self.unit_s = float(unit_s)
        self.n_units = int(n_units)
        self.bins = int(self.grid.counts_len)
        self.counts = np.zeros((self.n_units, self.bins), dtype=np.int32)
        self.requests = np.zeros(self.n_units, dtype=np.int64)

    def units_of(self, intended_s: np.ndarray) -> np.ndarray:
        return np.clip((np.asarray(intended_s) // self.unit_s).astype(np.int64), 0, self.n_units - 1)

    def add_requests(self, intended_s: np.ndarray) -> None:
        self.requests += np.bincount(self.units_of(intended_s), minlength=self.n_units)

    def record(self, intended_s: np.ndarray, latency_ms: np.ndarray) -> None:
        if not len(latency_ms):
            return
        flat = self.units_of(intended_s) * self.bins + counts_index(self.grid, to_us(latency_ms))
        u, c = np.unique(flat, return_counts=True)
        self.counts.reshape(-1)[u] += c.astype(np.int32)

    def bucket_range_ms(self, j: int) -> tuple[float, float]:
        """The lowest and highest latency (ms) bucket j holds."""
        v = self.grid.get_value_from_index(int(j))
        return v / 1e3, self.grid.get_highest_equivalent_value(v) / 1e3

    def bucket_of(self, latency_ms: float) -> int:
        return int(counts_index(self.grid, to_us(np.asarray([latency_ms])))[0])


class GroupTally:
    """What the summary needs of one group of requests (all, or one function's) without a row per request: counts
    as integers, the completed requests' latencies in a LatencyHistogram."""

    def __init__(self):
        self.hist = LatencyHistogram()
        self.errors = 0
        self.dropped = 0
        self.good = 0  # completed within the latency target
        self.done_in_window = 0  # completed within the arrival window
        self.good_in_window = 0


def tally_completed(groups: list[GroupTally], total: GroupTally, function: np.ndarray, latency_ms: np.ndarray,
                    completed_s: np.ndarray, *, slo_latency_ms: float, arrival_s: float) -> None:
    """Add completed requests (their function, latency and completion time) to each function's tally and the total,
    in one pass: one bucket index per request, one bincount per figure."""
    lat = np.asarray(latency_ms, dtype=np.float64)
    if not lat.size:
        return
    nf = len(groups)
    fn = np.asarray(function, dtype=np.int64)
    idx = counts_index(total.hist.h, to_us(lat))
    lo, hi = int(idx.min()), int(idx.max())
    width = hi - lo + 1
    per_fn = np.bincount(fn * width + (idx - lo), minlength=nf * width).reshape(nf, width)
    on_time = lat <= slo_latency_ms
    in_window = completed_s <= arrival_s
    n = np.bincount(fn, minlength=nf)
    sums = np.bincount(fn, weights=lat, minlength=nf)
    maxes = np.full(nf, -np.inf)
    np.maximum.at(maxes, fn, lat)
    good = np.bincount(fn, weights=on_time, minlength=nf)
    done = np.bincount(fn, weights=in_window, minlength=nf)
    good_done = np.bincount(fn, weights=on_time & in_window, minlength=nf)
    for f in np.flatnonzero(n):
        g = groups[f]
        g.hist.add(per_fn[f], lo, int(n[f]), float(sums[f]), float(maxes[f]))
        g.good += int(good[f])
        g.done_in_window += int(done[f])
        g.good_in_window += int(good_done[f])
    total.hist.add(per_fn.sum(axis=0), lo, int(lat.size), float(lat.sum()), float(lat.max()))
    total.good += int(np.count_nonzero(on_time))
    total.done_in_window += int(np.count_nonzero(in_window))
    total.good_in_window += int(np.count_nonzero(on_time & in_window))
