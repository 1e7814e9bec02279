"""Arrivals are deterministic for a seed and follow the intended statistics."""

from __future__ import annotations

import time

import numpy as np
import pytest

from workers.spec import FunctionSpec, TraceSpec, WorkloadSpec, parse_workload
from workers.workload import (
    Arrivals,
    TraceError,
    WorkloadError,
    generate_arrivals,
    parse_trace,
    rate_curve,
)

ONE = [FunctionSpec("f", "mlp-small")]


def wl(pattern, duration_s=100.0, seed=1, **params) -> WorkloadSpec:
    return WorkloadSpec(pattern=pattern, params=params, duration_s=duration_s, seed=seed)


def azure_csv(rows: list[tuple[str, dict[int, int]]]) -> str:
    """A small Azure 2019 per-minute file: rows of (HashFunction, {minute (1-based): count})."""
    header = "HashOwner,HashApp,HashFunction,Trigger," + ",".join(str(m) for m in range(1, 1441))
    lines = [header]
    for fn, counts in rows:
        values = [str(counts.get(m, 0)) for m in range(1, 1441)]
        lines.append(",".join(["owner", "app", fn, "http", *values]))
    return "\n".join(lines) + "\n"


def trace_wl(content, fmt="azure2019", duration_s=600.0, function_hash="", **params) -> WorkloadSpec:
    return WorkloadSpec(pattern="trace", params=params, duration_s=duration_s, seed=3,
                        trace=TraceSpec(format=fmt, content=content, function_hash=function_hash))


def test_same_seed_same_arrays_different_seed_differs():
    w = wl("poisson", rate_rps=50)
    a, b = generate_arrivals([w], ONE), generate_arrivals([w], ONE)
    assert np.array_equal(a.times_s, b.times_s) and np.array_equal(a.function_idx, b.function_idx)
    c = generate_arrivals([wl("poisson", seed=2, rate_rps=50)], ONE)
    d = generate_arrivals([w], ONE, seed_offset=1)
    assert not np.array_equal(a.times_s[:100], c.times_s[:100])
    assert not np.array_equal(a.times_s[:100], d.times_s[:100])


def test_arrivals_types_and_order():
    a = generate_arrivals([wl("gamma", rate_rps=200, cv=3.0)], ONE)
    assert isinstance(a, Arrivals) and len(a) == a.times_s.shape[0]
    assert a.times_s.dtype == np.float64 and a.function_idx.dtype == np.int16
    assert np.all(np.diff(a.times_s) >= 0)
    assert a.times_s[0] >= 0 and a.times_s[-1] < a.run_s == 100.0


def test_constant_is_evenly_spaced():
    a = generate_arrivals([wl("constant", duration_s=10, rate_rps=20)], ONE)
    assert len(a) == 200
    assert np.allclose(np.diff(a.times_s), 0.05)


def test_poisson_count_and_gaps():
    rate, dur = 200.0, 100.0
    a = generate_arrivals([wl("poisson", duration_s=dur, rate_rps=rate)], ONE)
    expected = rate * dur
    assert abs(len(a) - expected) < 5 * np.sqrt(expected)
    gaps = np.diff(a.times_s)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential gaps have cv 1


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_cv(cv):
    a = generate_arrivals([wl("gamma", duration_s=2000, rate_rps=50, cv=cv)], ONE)
    gaps = np.diff(a.times_s)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.12)
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.12)


def test_steps_rate_per_segment():
    a = generate_arrivals([wl("steps", duration_s=90, steps=[[0, 10], [30, 300], [60, 50]])], ONE)
    t = a.times_s
    for lo, hi, rate in [(0, 30, 10), (30, 60, 300), (60, 90, 50)]:
        n = np.count_nonzero((t >= lo) & (t < hi))
        assert abs(n - rate * 30) < 5 * np.sqrt(rate * 30) + 1, (lo, n)


def test_diurnal_peak_to_trough():
    w = wl("diurnal", duration_s=3600, mean_rate_rps=100, peak_to_trough=4.0, period_s=3600)
    t = generate_arrivals([w], ONE).times_s
    # Starts at the trough (t=0) and peaks half a period later.
    trough = np.count_nonzero((t < 120) | (t >= 3480))
    peak = np.count_nonzero((t >= 1680) & (t < 1920))
    assert peak / trough == pytest.approx(4.0, rel=0.15)
    assert len(t) == pytest.approx(100 * 3600, rel=0.02)


def test_burst_has_on_and_off_rates():
    w = wl("burst", duration_s=2000, base_rate_rps=2, burst_rate_rps=200, mean_on_s=5, mean_off_s=20)
    t = generate_arrivals([w], ONE).times_s
    per_s = np.bincount(t.astype(int), minlength=2000)
    # Mostly quiet seconds, a fraction of busy ones, overall mean ~ (2*20 + 200*5) / 25 = 41.6 req/s.
    assert np.mean(per_s < 10) > 0.6 and np.mean(per_s > 100) > 0.1
    assert len(t) / 2000 == pytest.approx(41.6, rel=0.25)


def test_compression_divides_times():
    w = wl("poisson", duration_s=1000, rate_rps=5)
    fast = WorkloadSpec(pattern="poisson", params={"rate_rps": 5}, duration_s=1000, time_compression=10, seed=1)
    a, b = generate_arrivals([w], ONE), generate_arrivals([fast], ONE)
    assert np.allclose(b.times_s * 10, a.times_s)
    assert b.run_s == 100.0


def test_split_by_weight_and_targeted_workloads():
    fns = [FunctionSpec("a", "mlp-small", weight=1), FunctionSpec("b", "cnn-small", weight=3)]
    a = generate_arrivals([wl("poisson", rate_rps=400)], fns)
    share_b = np.mean(a.function_idx == 1)
    assert share_b == pytest.approx(0.75, abs=0.02)
    w_a = WorkloadSpec(pattern="constant", params={"rate_rps": 10}, duration_s=10, seed=0, function="a")
    w_b = WorkloadSpec(pattern="poisson", params={"rate_rps": 50}, duration_s=20, seed=0, function="b")
    m = generate_arrivals([w_a, w_b], fns)
    assert np.count_nonzero(m.function_idx == 0) == 100
    assert np.all(np.diff(m.times_s) >= 0) and m.run_s == 20.0
    bad = WorkloadSpec(pattern="constant", params={"rate_rps": 1}, duration_s=10, function="zzz")
    with pytest.raises(WorkloadError, match="zzz"):
        generate_arrivals([bad], fns)


def test_same_seed_in_two_workloads_gives_independent_streams():
    fns = [FunctionSpec("a", "mlp-small"), FunctionSpec("b", "cnn-small")]
    ws = [WorkloadSpec(pattern="poisson", params={"rate_rps": 50}, duration_s=10, seed=0, function=n)
          for n in ("a", "b")]
    m = generate_arrivals(ws, fns)
    assert not np.array_equal(m.times_s[m.function_idx == 0][:50], m.times_s[m.function_idx == 1][:50])


def test_azure2019_parse_and_expansion():
    content = azure_csv([("f1", {1: 30, 2: 60, 5: 10}), ("f2", {1: 5, 11: 99}), ("f1", {3: 7})])
    data = parse_trace(content, "azure2019")
    assert data.counts_per_min[:5].tolist() == [35, 60, 7, 0, 10] and data.invocations == 211
    only = parse_trace(content, "azure2019", function_hash="f1")
    assert only.rows == 2 and only.invocations == 107
    # 10 minutes of workload: minute 11 (99 invocations) falls outside the window.
    a = generate_arrivals([trace_wl(content, duration_s=600)], ONE)
    assert len(a) == 35 + 60 + 7 + 10
    per_min = np.bincount((a.times_s // 60).astype(int), minlength=10)
    assert per_min[:5].tolist() == [35, 60, 7, 0, 10]
    # With cv the count per minute is still the trace's; only the spacing changes.
    g = generate_arrivals([trace_wl(content, duration_s=600, cv=3.0)], ONE)
    assert np.bincount((g.times_s // 60).astype(int), minlength=10)[:5].tolist() == [35, 60, 7, 0, 10]
    with pytest.raises(TraceError, match="no row has HashFunction 'nope'"):
        parse_trace(content, "azure2019", function_hash="nope")


def test_azure2019_errors_name_lines():
    good = azure_csv([("f1", {1: 3})])
    header, row = good.splitlines()
    with pytest.raises(TraceError, match=r"line 3: expected 1444 columns \(HashOwner,HashApp,HashFunction,"
                                         r"Trigger,1..1440\), found 12"):
        parse_trace(f"{header}\n{row}\n" + ",".join(["x"] * 12), "azure2019")
    with pytest.raises(TraceError, match="line 2: minute 2 is 'abc'"):
        parse_trace(f"{header}\n" + row.replace(",3,0,", ",3,abc,", 1), "azure2019")
    with pytest.raises(TraceError, match="line 2: minute 1 has a negative count"):
        parse_trace(f"{header}\n" + row.replace(",3,", ",-3,", 1), "azure2019")
    with pytest.raises(TraceError, match="line 1: header column 3"):
        parse_trace(header.replace("HashFunction", "Fn") + "\n" + row, "azure2019")
    with pytest.raises(TraceError, match="empty"):
        parse_trace("\n\n", "azure2019")
    with pytest.raises(TraceError, match="no invocations"):
        parse_trace(azure_csv([("f1", {})]), "azure2019")


def test_timestamps_formats():
    plain = parse_trace("timestamp_s\n10.5\n10.0\n12\n", "timestamps")
    assert plain.timestamps_s.tolist() == [0.0, 0.5, 2.0]
    no_header = parse_trace("3\n1\n2\n", "timestamps")
    assert no_header.timestamps_s.tolist() == [0.0, 1.0, 2.0]
    azure21 = "app,func,end_timestamp,duration\na,f,10.0,1.0\na,g,11.0,0.5\na,f,12.0,4.0\n"
    both = parse_trace(azure21, "timestamps")
    assert both.timestamps_s.tolist() == [0.0, 1.0, 2.5]  # arrivals 9.0, 10.5, 8.0 -> sorted, from 0
    f_only = parse_trace(azure21, "timestamps", function_hash="f")
    assert f_only.timestamps_s.tolist() == [0.0, 1.0]
    with pytest.raises(TraceError, match="line 3: 'abc' is not a finite number"):
        parse_trace("1\n2\nabc\n", "timestamps")
    with pytest.raises(TraceError, match="line 2: 'inf'"):
        parse_trace("1\ninf\n", "timestamps")
    with pytest.raises(TraceError, match="line 3: expected 4 columns"):
        parse_trace("app,func,end_timestamp,duration\na,f,1,0\na,f\n", "timestamps")
    with pytest.raises(TraceError, match="line 2: duration is negative"):
        parse_trace("app,func,end_timestamp,duration\na,f,1,-1\n", "timestamps")
    with pytest.raises(TraceError, match="unknown trace format"):
        parse_trace("1\n", "csv")


def test_timestamps_replayed_as_recorded():
    content = "\n".join(str(x) for x in [0.0, 0.25, 1.0, 7.5, 20.0, 31.0])
    a = generate_arrivals([trace_wl(content, fmt="timestamps", duration_s=30)], ONE)
    assert a.times_s.tolist() == [0.0, 0.25, 1.0, 7.5, 20.0]


def test_azure2019_rows_the_fast_reader_refuses_are_read_field_by_field_with_the_same_result():
    header, row = azure_csv([("f1", {1: 3, 2: 5})]).splitlines()
    plain = parse_trace(azure_csv([("f1", {1: 3, 2: 5})]), "azure2019")
    # Spellings Python's int() takes and numpy's C reader does not: the same counts, not an error.
    for spelled in (",+3,5,", ", 3 ,5,", ",3,5_0,"):
        data = parse_trace(f"{header}\n" + row.replace(",3,5,", spelled, 1), "azure2019")
        expected = 50 if "5_0" in spelled else 5
        assert data.counts_per_min[:2].tolist() == [3, expected] and data.invocations == 3 + expected
    assert plain.counts_per_min[:2].tolist() == [3, 5]
    # A trailing comma is a 1,445th column, whichever reader sees it.
    with pytest.raises(TraceError, match="line 2: expected 1444 columns"):
        parse_trace(f"{header}\n{row},", "azure2019")
    # A count numpy would saturate at int64's maximum is named as written.
    with pytest.raises(TraceError, match=r"line 2: minute 2 has 99,999,999,999,999,999,999 invocations"):
        parse_trace(f"{header}\n" + row.replace(",3,5,", ",3,99999999999999999999,", 1), "azure2019")


def test_a_trace_is_parsed_once_per_content():
    from workers.workload import clear_trace_cache, parsed_trace

    clear_trace_cache()
    trace = TraceSpec(format="azure2019", content=azure_csv([("f1", {1: 3})]))
    first = parsed_trace(trace)
    assert parsed_trace(TraceSpec(format="azure2019", content=azure_csv([("f1", {1: 3})]))) is first
    assert parsed_trace(TraceSpec(format="azure2019", content=azure_csv([("f1", {1: 4})]))) is not first


def test_spec_validation_uses_parse_trace():
    from workers.spec import SpecError

    with pytest.raises(SpecError, match="line 2"):
        parse_workload({"pattern": "trace", "duration_s": 60, "trace_format": "timestamps",
                        "trace_content": "1\nxyz\n"})


def test_empty_window_raises():
    content = azure_csv([("f1", {100: 50})])  # all invocations in minute 100
    with pytest.raises(WorkloadError, match="no invocations in the first 600 s"):
        generate_arrivals([trace_wl(content, duration_s=600)], ONE)
    with pytest.raises(WorkloadError, match="no arrivals"):
        generate_arrivals([wl("steps", duration_s=10, steps=[[0, 0.0]])], ONE)


def test_rate_curve_shapes_and_speed():
    day = wl("diurnal", duration_s=86_400, mean_rate_rps=100, peak_to_trough=9.0, period_s=86_400)
    t0 = time.perf_counter()
    c = rate_curve(day)
    assert time.perf_counter() - t0 < 0.05
    r = np.array(c["rate_rps"])
    assert len(c["t_s"]) == len(r) == 200
    assert r.max() / r.min() == pytest.approx(9.0, rel=0.01) and r[0] == pytest.approx(r.min())
    flat = rate_curve(wl("poisson", rate_rps=7))
    assert set(flat["rate_rps"]) == {7.0}
    steps = rate_curve(wl("steps", duration_s=90, steps=[[0, 10], [30, 300]]))
    assert steps == {"t_s": [0.0, 30.0, 30.0, 90.0], "rate_rps": [10.0, 10.0, 300.0, 300.0]}
    burst = wl("burst", duration_s=86_400, base_rate_rps=1, burst_rate_rps=100, mean_on_s=5, mean_off_s=30)
    t0 = time.perf_counter()
    b = rate_curve(burst)
    assert time.perf_counter() - t0 < 0.05
    assert len(b["t_s"]) == 200 and 1.0 <= min(b["rate_rps"]) and max(b["rate_rps"]) <= 100.0
    # The trace curve is counts per minute / 60.
    tr = rate_curve(trace_wl(azure_csv([("f1", {1: 60, 2: 120})]), duration_s=180))
    assert tr["rate_rps"] == [1.0, 2.0, 0.0] and tr["t_s"] == [0.0, 60.0, 120.0]
