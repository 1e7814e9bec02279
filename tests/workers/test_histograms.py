"""Simulated runs record without a row per request: HDR histograms filled in bulk must hold what HdrHistogram's own
record_value would, and the streamed summary must match the exact summary of the same requests within the stated
precision (3 significant digits for percentiles, the interval's bounds to a 2-digit bucket)."""

from __future__ import annotations

import numpy as np
from hdrh.histogram import HdrHistogram

from workers import statistics
from workers.histograms import HIGHEST_US, LatencyHistogram, counts_index, to_us
from workers.recorder import Stream
from workers.spec import SLOSpec


def test_bulk_recording_is_hdrhistograms_own():
    rng = np.random.default_rng(3)
    lat = np.concatenate([rng.lognormal(1.0, 2.0, 20_000), [0.0, 1e-4, 0.0004, 2.048, 5e7]])
    ref = HdrHistogram(1, HIGHEST_US, 3)
    for v in to_us(lat):
        ref.record_value(int(v))
    h = LatencyHistogram()
    h.record(lat[:7000])
    h.record(lat[7000:])
    assert np.array_equal(counts_index(h.h, to_us(lat)), [ref._counts_index_for(int(v)) for v in to_us(lat)])
    assert np.array_equal(h.counts, np.ctypeslib.as_array(ref.counts))
    assert h.h.get_total_count() == ref.get_total_count()
    for p in (50.0, 90.0, 99.0, 99.9):
        assert h.percentiles([p])[0] == ref.get_value_at_percentile(p) / 1e3
    assert h.max_ms == lat.max() and abs(h.sum_ms - lat.sum()) < 1e-6 * lat.sum()
    # Beyond the run: with 2 % unfinished the p99's rank falls among them.
    assert h.percentiles([50.0, 99.0], n_total=int(lat.size * 1.02))[1] is None
    decoded = HdrHistogram.decode(h.encode())
    assert decoded.get_total_count() == lat.size


def test_the_streamed_summary_matches_the_exact_one_within_its_precision():
    """An M/M/1-like series of latencies with queue excursions: percentiles within 0.1 % (never below), counts
    exact, and the interval's bounds within a bucket or so of the per-request interval."""
    rng = np.random.default_rng(7)
    n_s, rate = 600, 80
    intended = np.sort(rng.uniform(0, n_s, n_s * rate))
    lat = np.empty(intended.size)
    w = 0.0
    gaps = np.diff(intended, prepend=0.0)
    service = rng.exponential(0.01, intended.size)
    for i in range(intended.size):  # Lindley's recursion: waits are correlated in time
        w = max(0.0, w - gaps[i]) + service[i]
        lat[i] = w * 1e3
    slo = SLOSpec(percentile=99.0, latency_ms=100.0)
    done = intended + lat / 1e3
    st = Stream(1, slo.latency_ms, float(n_s), n_s, 1)
    for a in range(0, intended.size, 5000):  # window by window
        st.completed(np.zeros(len(lat[a:a + 5000]), dtype=np.int16), lat[a:a + 5000], done[a:a + 5000],
                     intended[a:a + 5000])
    st.completed(np.empty(0, dtype=np.int16), np.empty(0), np.empty(0), np.empty(0), now=True)
    st.units.add_requests(intended)
    got = statistics.summarize_streamed(st, function_names=["f"], slo=slo, arrival_s=n_s, end_s=float(done.max()),
                                        cold_starts=[], n_batches=intended.size, requests=[intended.size],
                                        seconds=n_s)
    exact = statistics.latency_summary(lat, unfinished=0)
    for k in ("p50", "p90", "p99"):
        assert exact[k] <= got["latency_ms"][k] * (1 + 1e-9) + 1e-3 and got["latency_ms"][k] <= exact[k] * 1.001 + 1e-3
    assert got["latency_ms"]["max"] == lat.max() and abs(got["latency_ms"]["mean"] - lat.mean()) < 1e-9 * lat.mean()
    assert got["completed"] == got["requests"] == intended.size
    assert got["violation_rate"] == np.count_nonzero(lat > slo.latency_ms) / lat.size
    ci_exact, _ = statistics.block_bootstrap_ci(lat, intended, 99.0)
    lo, hi = got["slo_percentile_ci_ms"]
    print(ci_exact, [lo, hi], got["slo_percentile_ci"]["block_s"])
    assert lo <= got["slo_percentile_ms"] <= hi
    assert abs(lo - ci_exact[0]) / ci_exact[0] < 0.02 and abs(hi - ci_exact[1]) / ci_exact[1] < 0.02
