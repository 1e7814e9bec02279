"""The open-loop dispatcher keeps the schedule: it measures its lag and never stretches time."""

from __future__ import annotations

import threading
import time

import numpy as np

from workers.dispatcher import BEHIND_THRESHOLD_US, Dispatcher, constant_times
from workers.spec import FunctionSpec, WorkloadSpec
from workers.workload import generate_arrivals


def _poisson(seed: int, rate: float = 500.0, duration: float = 1.0):
    w = WorkloadSpec(pattern="poisson", params={"rate_rps": rate}, duration_s=duration, seed=seed)
    return generate_arrivals([w], [FunctionSpec(name="f", model="null")])


def test_same_seed_same_arrivals_and_every_request_sent_once():
    a, b = _poisson(7), _poisson(7)
    assert np.array_equal(a.times_s, b.times_s)
    assert not np.array_equal(a.times_s, _poisson(8).times_s)
    got = np.zeros(len(a), dtype=np.int64)

    def sink(i, j, now):
        got[i:j] += 1

    d = Dispatcher(a.times_s, sink)
    d.start()
    assert d.join(5.0)
    assert d.error is None
    assert (got == 1).all()  # each request exactly once, in order
    assert d.n_sent == len(a)


def test_lag_is_measured_per_request():
    times = constant_times(1000, 0.5)
    d = Dispatcher(times, lambda i, j, now: None)
    d.start()
    d.join(5.0)
    lag = d.lag_us()
    assert len(lag) == len(times)
    assert (lag >= 0).all()  # never early
    s = d.stats()
    assert s["sent"] == len(times)
    assert 0 <= s["lag_p50_us"] <= s["lag_p99_us"] <= s["lag_max_us"]
    assert np.isfinite(d.sent_s).all()


def test_a_slow_sink_does_not_stretch_the_schedule():
    times = constant_times(200, 1.0)  # 200 requests, one every 5 ms
    intended = times.copy()
    calls: list[tuple[int, int]] = []

    def slow_sink(i, j, now):
        calls.append((i, j))
        if len(calls) == 20:
            time.sleep(0.2)  # a platform stall of 200 ms: 40 arrivals come due meanwhile

    d = Dispatcher(times, slow_sink)
    t0 = d.start()
    d.join(5.0)
    elapsed = time.perf_counter() - t0
    assert np.array_equal(d.times_s, intended)  # intended times unchanged
    lag_us = d.lag_us()
    # The requests due during the stall went out late, together, right after it: lag grew...
    assert lag_us.max() > 150_000
    burst = next(c for c in calls[20:] if c[1] - c[0] > 1)
    assert burst[1] - burst[0] >= 30
    # ...and the schedule was not shifted: the last request still left close to its intended time.
    assert lag_us[-1] < 5_000
    assert elapsed < times[-1] + 0.1
    assert d.stats()["behind"] is True and BEHIND_THRESHOLD_US < lag_us.max()


def test_cancel_stops_promptly():
    times = constant_times(10, 60.0)  # a minute of sparse arrivals
    d = Dispatcher(times, lambda i, j, now: None)
    d.start()
    time.sleep(0.2)
    t = time.perf_counter()
    d.cancel()
    assert d.join(1.0)
    assert time.perf_counter() - t < 0.2
    assert 1 <= d.n_sent < len(times)
    assert np.isnan(d.sent_s[d.n_sent:]).all()


def test_sink_sees_its_own_thread_and_sent_time():
    times = constant_times(100, 0.2)
    seen = []

    def sink(i, j, now):
        seen.append((threading.current_thread().name, now))

    d = Dispatcher(times, sink, name="dispatch-test")
    d.start()
    d.join(5.0)
    assert {name for name, _ in seen} == {"dispatch-test"}
    nows = np.array([now for _, now in seen])
    assert (np.diff(nows) >= 0).all()
