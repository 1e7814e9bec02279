"""Recorder windows and the Parquet artifact, from rows written the way the platform writes them."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from workers.recorder import LATENCY_BUCKETS_MS, Recorder
from workers.records import OUTCOME_DROPPED, OUTCOME_ERROR, OUTCOME_OK, ColdStart


def filled(n: int = 10) -> Recorder:
    rec = Recorder(n, ["a", "b"])
    rows = rec.rows
    rows["intended_s"][:] = np.arange(n) * 0.2  # 5 requests/s over 2 s
    rows["function"][:] = np.arange(n) % 2
    rows["sent_s"][:8] = rows["intended_s"][:8] + 50e-6  # the last two never sent
    return rec


def test_window_counts_what_finished_since_the_last_window():
    rec = filled()
    rows = rec.rows
    # Requests 0-4 (intended in [0, 1)) finish in the first second: 0-2 ok, 3 error, 4 dropped.
    rows["completed_s"][:3] = rows["intended_s"][:3] + np.array([0.010, 0.020, 0.030])
    rows["outcome"][:3] = OUTCOME_OK
    rows["outcome"][3] = OUTCOME_ERROR
    rows["outcome"][4] = OUTCOME_DROPPED
    rec.finished(np.arange(3))
    rec.finished(3)
    rec.finished(np.array([4]))
    # A cold start during the load is announced when it begins (prestarts never are).
    rec.cold_start_began.append(0.1)
    rec.cold_starts.append(ColdStart(0, 0, 0.1, 0.3, 5.0, True))
    rec.cold_starts.append(ColdStart(0, 1, -1.0, -0.5, 5.0, False))  # a prestart: not a load cold start
    w = rec.window(0.0, 1.0, state={"queue_depth": 3, "instances_busy": 1}, telemetry={"cpu_util_pct": 50.0},
                   cost_usd=0.01)
    assert w["t_s"] == 1.0
    assert w["offered_rps"] == 5.0
    assert w["completed_rps"] == 3.0
    assert w["errors"] == 1 and w["dropped"] == 1
    assert w["p50_ms"] == pytest.approx(20.0)
    assert w["p50_ms"] <= w["p95_ms"] <= w["p99_ms"] <= 30.0
    assert w["dispatch_lag_p99_us"] == pytest.approx(50.0, abs=1e-3)
    assert w["queue_depth"] == 3 and w["instances_busy"] == 1 and w["instances_idle"] == 0
    assert w["cold_starts"] == 1
    assert w["cpu_util_pct"] == 50.0 and w["gpu_util_pct"] is None and w["power_w"] is None
    assert w["cost_usd"] == 0.01
    # The histogram of the window's completions (10, 20, 30 ms; not the error or the drop): the bucket bounds are
    # inclusive, as Prometheus's `le`
    bounds = list(LATENCY_BUCKETS_MS)
    expected = [0] * (len(bounds) + 1)
    expected[bounds.index(10.0)] += 1
    expected[bounds.index(25.0)] += 1
    expected[bounds.index(50.0)] += 1
    assert w["latency_buckets"] == expected and w["latency_sum_ms"] == pytest.approx(60.0)
    # The next window sees only what finished after this one.
    rows["completed_s"][5] = 1.05
    rows["outcome"][5] = OUTCOME_OK
    rec.finished(5)
    w2 = rec.window(1.0, 2.0)
    assert w2["completed_rps"] == 1.0 and w2["errors"] == 0 and w2["dropped"] == 0
    assert w2["offered_rps"] == 5.0
    assert sum(w2["latency_buckets"]) == 1  # 1.05 - 1.0 s: 50 ms
    # Requests intended in the window but never sent do not count toward its dispatch lag.
    assert w2["dispatch_lag_p99_us"] == pytest.approx(50.0, abs=1e-3)


def test_a_cold_start_counts_in_the_second_it_began_even_when_it_ends_later():
    rec = filled()
    rec.cold_start_began.append(1.4)  # begins in [1, 2) ...
    assert rec.window(0.0, 1.0)["cold_starts"] == 0
    assert rec.window(1.0, 2.0)["cold_starts"] == 1  # ... and is counted there, before it has ended
    rec.cold_starts.append(ColdStart(0, 0, 1.4, 3.6, 5.0, True))  # it ends in [3, 4)
    assert rec.window(2.0, 3.0)["cold_starts"] == 0
    assert rec.window(3.0, 4.0)["cold_starts"] == 0  # not counted twice


def test_empty_window_is_json_safe():
    rec = filled()
    w = rec.window(5.0, 6.0, state={}, telemetry={"rss_mb": np.float32(12.5), "cpu_util_pct": float("nan")},
                   cost_usd=None)
    assert w["p99_ms"] is None and w["dispatch_lag_p99_us"] is None and w["offered_rps"] == 0.0
    assert w["cpu_util_pct"] is None and isinstance(w["rss_mb"], float)
    text = json.dumps(w, allow_nan=False)
    assert "NaN" not in text
    assert w.pop("latency_buckets") == [0] * (len(LATENCY_BUCKETS_MS) + 1) and w["latency_sum_ms"] == 0.0
    assert all(type(v) in (int, float, bool, type(None)) for v in w.values())


def test_parquet_has_raw_columns_latency_and_names(tmp_path):
    rec = filled()
    rows = rec.rows
    rows["batch_start_s"][:2] = rows["sent_s"][:2] + 0.001
    rows["completed_s"][:2] = rows["batch_start_s"][:2] + 0.004
    rows["outcome"][:2] = OUTCOME_OK
    rows["outcome"][2:8] = OUTCOME_DROPPED
    path = rec.write_parquet(tmp_path / "x" / "rows.parquet", ["a", "b"], n=8)
    meta = pq.read_metadata(path)
    assert meta.row_group(0).column(0).compression == "ZSTD"
    t = pq.read_table(path).to_pydict()
    assert len(t["intended_s"]) == 8  # only the sent ones, as asked
    for col in ("function", "intended_s", "sent_s", "batch_start_s", "completed_s", "instance", "batch_size",
                "cold_wait_s", "batch_wait_s", "outcome", "latency_ms", "outcome_name", "function_name"):
        assert col in t
    assert t["latency_ms"][0] == pytest.approx(5.05, abs=1e-6)
    assert t["latency_ms"][2] is None and t["completed_s"][2] is None  # not completed: null, not NaN
    assert t["outcome_name"][:3] == ["ok", "ok", "dropped"]
    assert t["function_name"][:3] == ["a", "b", "a"]
