"""Exact percentiles, distribution-free CIs with the coverage they claim, and the trial summary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from workers.records import OUTCOME_DROPPED, OUTCOME_ERROR, OUTCOME_OK, ColdStart, empty_rows
from workers.spec import SLOSpec
from workers.statistics import latency_summary, percentile_ci, summarize, window_latency


def test_latency_summary_matches_numpy_and_is_ordered():
    x = np.random.default_rng(0).lognormal(2.0, 0.7, size=5000)
    s = latency_summary(x)
    for k, q in [("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99), ("p999", 99.9)]:
        assert s[k] == pytest.approx(float(np.percentile(x, q)), rel=1e-12)
        assert type(s[k]) is float
    assert s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["p999"] <= s["max"]
    assert s["mean"] == pytest.approx(x.mean())
    assert latency_summary(np.array([])) == dict.fromkeys(["p50", "p90", "p95", "p99", "p999", "max", "mean"])


def test_window_latency():
    assert window_latency(np.array([])) == {"p50": None, "p95": None, "p99": None}
    w = window_latency(np.arange(101, dtype=float))
    assert w == {"p50": 50.0, "p95": 95.0, "p99": 99.0}


def test_ci_contains_estimate_and_narrows():
    rng = np.random.default_rng(1)
    small, big = rng.exponential(10.0, 500), rng.exponential(10.0, 50_000)
    for x in (small, big):
        lo, hi = percentile_ci(x, 99.0)
        assert lo <= float(np.percentile(x, 99.0)) <= hi
    w_small = np.subtract(*percentile_ci(small, 99.0)[::-1])
    w_big = np.subtract(*percentile_ci(big, 99.0)[::-1])
    assert w_big < w_small / 3


def test_ci_none_when_too_few_samples():
    assert percentile_ci(np.arange(50, dtype=float), 99.0) is None
    assert percentile_ci(np.array([]), 50.0) is None
    assert percentile_ci(np.arange(1000, dtype=float), 99.9) is None  # 0.1 % of 1000 is 1 sample
    assert percentile_ci(np.arange(20, dtype=float), 50.0) is not None


def test_ci_coverage_by_simulation():
    # Exponential(1): the true p99 is ln(100). A 95 % interval should cover it in >= ~90 % of trials.
    rng = np.random.default_rng(2)
    true_p99 = np.log(100.0)
    hits = 0
    for _ in range(200):
        lo, hi = percentile_ci(rng.exponential(1.0, 500), 99.0)
        hits += lo <= true_p99 <= hi
    assert hits / 200 >= 0.90


def make_rows(specs):
    """Rows from (function, intended, sent, batch_start, completed, outcome, cold_wait, batch_wait)."""
    rows = empty_rows(len(specs))
    for i, (f, it, se, bs, co, oc, cw, bw) in enumerate(specs):
        rows["function"][i] = f
        rows["intended_s"][i] = it
        rows["sent_s"][i] = se
        rows["batch_start_s"][i] = bs
        rows["completed_s"][i] = co
        rows["outcome"][i] = oc
        rows["cold_wait_s"][i] = cw
        rows["batch_wait_s"][i] = bw
        rows["batch_size"][i] = 1 if oc in (OUTCOME_OK, OUTCOME_ERROR) else 0
    return rows


NAN = float("nan")
# Function 0: latencies 10, 20, 30, 200 ms (one late), one dropped. Function 1: 5 ms, one error.
ROWS = [
    (0, 0.0, 0.001, 0.002, 0.010, OUTCOME_OK, 0.0, 0.0),
    (0, 1.0, 1.001, 1.005, 1.020, OUTCOME_OK, 0.0, 0.002),
    (0, 2.0, 2.002, 2.010, 2.030, OUTCOME_OK, 0.0, 0.0),
    (0, 3.0, 3.001, 3.150, 3.200, OUTCOME_OK, 0.120, 0.0),
    (0, 4.0, 4.001, NAN, NAN, OUTCOME_DROPPED, 0.0, 0.0),
    (1, 5.0, 5.001, 5.002, 5.005, OUTCOME_OK, 0.0, 0.0),
    (1, 6.0, 6.001, 6.002, 6.004, OUTCOME_ERROR, 0.0, 0.0),
]


def summary(slo=None, cold_starts=(), n_batches=6, run_s=10.0):
    return summarize(make_rows(ROWS), function_names=["a", "b"], slo=slo or SLOSpec(99.0, 100.0, 0.01),
                     run_s=run_s, cold_starts=list(cold_starts), n_batches=n_batches)


def test_summarize_counts_and_rates():
    s = summary()
    assert (s["requests"], s["completed"], s["dropped"], s["errors"]) == (7, 5, 1, 1)
    # Not ok: dropped + error = 2; ok but late: the 200 ms one -> 3 of 7.
    assert s["violation_rate"] == pytest.approx(3 / 7)
    assert s["throughput_rps"] == pytest.approx(0.5)
    assert s["goodput_rps"] == pytest.approx(0.4)
    lat = np.array([10.0, 20.0, 30.0, 200.0, 5.0])
    assert s["latency_ms"]["p50"] == pytest.approx(np.percentile(lat, 50))
    assert s["slo_percentile_ms"] == pytest.approx(np.percentile(lat, 99))
    assert s["slo_percentile_ci_ms"] is None  # 5 samples cannot bound a p99
    assert s["mean_batch_size"] == pytest.approx(6 / 6)
    assert s["slo_met"] is False
    assert any("p99 latency" in r for r in s["slo_reasons"])
    assert any("late, dropped or failed" in r for r in s["slo_reasons"])

    a, b = s["per_function"]["a"], s["per_function"]["b"]
    assert (a["requests"], a["completed"], a["dropped"], a["errors"]) == (5, 4, 1, 0)
    assert a["violation_rate"] == pytest.approx(2 / 5) and a["goodput_rps"] == pytest.approx(0.3)
    assert (b["requests"], b["completed"], b["errors"]) == (2, 1, 1)
    assert b["latency_ms"]["max"] == pytest.approx(5.0)


def test_summarize_breakdown():
    bd = summary()["breakdown_ms"]
    ok = [r for r in ROWS if r[5] == OUTCOME_OK]
    assert bd["dispatch_lag"] == pytest.approx(np.mean([(r[2] - r[1]) * 1e3 for r in ok]))
    assert bd["cold_start"] == pytest.approx(120.0 / 5, rel=1e-5)
    assert bd["batch_wait"] == pytest.approx(2.0 / 5, rel=1e-4)
    assert bd["compute"] == pytest.approx(np.mean([(r[4] - r[3]) * 1e3 for r in ok]))
    queue = np.mean([max(0.0, (r[3] - r[2]) - r[6] - r[7]) * 1e3 for r in ok])
    assert bd["queue_wait"] == pytest.approx(queue, rel=1e-4)
    mean_latency = np.mean([(r[4] - r[1]) * 1e3 for r in ok])
    assert sum(bd.values()) == pytest.approx(mean_latency, rel=1e-3)


def test_summarize_slo_met_and_throughput_condition():
    lenient = SLOSpec(percentile=50.0, latency_ms=250.0, max_violation_rate=0.5)
    s = summary(lenient)
    assert s["slo_met"] is True and s["slo_reasons"] == []
    s = summary(SLOSpec(percentile=50.0, latency_ms=250.0, max_violation_rate=0.5, min_throughput_rps=1.0))
    assert s["slo_met"] is False
    assert s["slo_reasons"] == ["throughput 0.5 req/s is below the required 1 req/s"]


def test_summarize_cold_starts():
    cs = [ColdStart(0, 1, -2.0, -1.5, 100.0, during_load=False),
          ColdStart(0, 2, 3.0, 3.12, 50.0, during_load=True),
          ColdStart(1, 3, 4.0, 4.3, 80.0, during_load=True)]
    s = summary(cold_starts=cs)
    assert s["cold_starts"] == 2 and s["prestarts"] == 1
    assert s["cold_start_ms"] == {"p50": pytest.approx(210.0), "max": pytest.approx(300.0)}
    assert s["prestart_ms"]["max"] == pytest.approx(500.0)
    assert s["per_function"]["a"]["cold_starts"] == 1 and s["per_function"]["b"]["cold_starts"] == 1
    assert summary()["cold_start_ms"] == {"p50": None, "max": None}


def test_summarize_empty_and_nothing_completed():
    rows = make_rows([(0, 0.0, 0.0, NAN, NAN, OUTCOME_DROPPED, 0.0, 0.0)])
    s = summarize(rows, function_names=["a"], slo=SLOSpec(), run_s=1.0, cold_starts=[], n_batches=0)
    assert s["slo_met"] is False and s["slo_reasons"] == ["no request completed"]
    assert s["violation_rate"] == 1.0 and s["mean_batch_size"] is None
    assert s["breakdown_ms"] == dict.fromkeys(["dispatch_lag", "cold_start", "batch_wait", "queue_wait", "compute"])
    e = summarize(empty_rows(0), function_names=["a"], slo=SLOSpec(), run_s=1.0, cold_starts=[], n_batches=0)
    assert e["requests"] == 0 and e["violation_rate"] is None and e["slo_met"] is False
    json.dumps(s, allow_nan=False)
    json.dumps(e, allow_nan=False)


def test_summary_is_json_serializable_with_plain_types():
    rng = np.random.default_rng(3)
    n = 2000
    intended = np.sort(rng.random(n) * 10)
    lat = rng.exponential(0.02, n)
    rows = make_rows([(i % 2, t, t + 1e-4, t + 1e-3, t + dt, OUTCOME_OK, 0.0, 0.0)
                      for i, (t, dt) in enumerate(zip(intended, lat, strict=True))])
    s = summarize(rows, function_names=["a", "b"], slo=SLOSpec(99.0, 50.0), run_s=10.0,
                  cold_starts=[ColdStart(0, 0, 0.0, 0.5, 1.0, True)], n_batches=500)
    text = json.dumps(s, allow_nan=False)
    assert json.loads(text) == s
    assert s["slo_percentile_ci_ms"][0] <= s["slo_percentile_ms"] <= s["slo_percentile_ci_ms"][1]

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        else:
            assert v is None or type(v) in (int, float, bool, str), (v, type(v))

    walk(s)
