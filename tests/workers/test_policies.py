"""Policy objects decide from (now, state) alone: driven here by a fake clock, numbers in, decisions out."""

from __future__ import annotations

import numpy as np
import pytest

from workers.policies import (
    AdaptiveBatcher,
    Autoscaler,
    FixedBatcher,
    FixedKeepAlive,
    HistogramKeepAlive,
    NoBatcher,
    fit_linear_latency,
    make_batcher,
    make_keep_alive,
)
from workers.spec import BatchingSpec, KeepAliveSpec


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def advance(self, dt: float) -> float:
        self.t += dt
        return self.t


# ---- fixed batching ----------------------------------------------------------------------------------
def test_fixed_batcher_releases_at_size():
    b = FixedBatcher(max_batch_size=4, max_queue_delay_ms=10)
    d = b.decide(0.001, n_queued=4, oldest_sent_s=0.0)
    assert d.take == 4 and d.wait_until_s is None
    # More than a batch queued: one full batch, the rest waits for the next decision.
    assert b.decide(0.001, 9, 0.0).take == 4


def test_fixed_batcher_holds_until_the_oldest_has_waited_the_delay():
    clock = FakeClock()
    b = FixedBatcher(max_batch_size=8, max_queue_delay_ms=10)
    sent = clock.t
    d = b.decide(clock.advance(0.002), 3, sent)
    assert d.take == 0 and d.wait_until_s == pytest.approx(0.010)
    d = b.decide(clock.advance(0.007), 3, sent)  # 9 ms: still holding
    assert d.take == 0 and d.wait_until_s == pytest.approx(0.010)
    d = b.decide(clock.advance(0.001), 3, sent)  # 10 ms: go with what is there
    assert d.take == 3


def test_fixed_batcher_zero_delay_takes_whatever_is_queued():
    b = FixedBatcher(max_batch_size=8, max_queue_delay_ms=0)
    assert b.decide(5.0, 3, 5.0).take == 3
    assert b.decide(5.0, 0, 5.0).take == 0


def test_no_batcher_takes_one():
    b = NoBatcher()
    assert b.decide(0.0, 10, 0.0).take == 1
    assert b.decide(0.0, 0, 0.0).take == 0


# ---- adaptive batching --------------------------------------------------------------------------------
def test_adaptive_fit_recovers_a_and_b_from_synthetic_timings():
    rng = np.random.default_rng(3)
    a, b = 0.004, 0.0005  # 4 ms fixed + 0.5 ms per request
    batcher = AdaptiveBatcher(max_batch_size=64, deadline_ms=100)
    for _ in range(200):  # only the last 50 count
        size = int(rng.integers(1, 65))
        batcher.observe(size, a + b * size + rng.normal(0, 1e-5))
    assert batcher.a_s == pytest.approx(a, abs=2e-4)
    assert batcher.b_s == pytest.approx(b, rel=0.02)


def test_adaptive_fit_follows_a_change_within_the_window():
    batcher = AdaptiveBatcher(max_batch_size=64, deadline_ms=100)
    for size in range(1, 51):
        batcher.observe(size, 0.010 + 0.001 * size)
    for size in range(1, 51):  # the device got twice as fast per request
        batcher.observe(size, 0.010 + 0.0005 * size)
    assert batcher.b_s == pytest.approx(0.0005, rel=1e-6)


def test_fit_with_one_size_assumes_proportional_cost():
    a, b = fit_linear_latency([(8, 0.016)] * 5)
    assert a == 0.0 and b == pytest.approx(0.002)


def test_adaptive_picks_the_largest_batch_that_meets_the_oldest_deadline():
    batcher = AdaptiveBatcher(max_batch_size=64, deadline_ms=50)
    for size in (1, 8, 16, 32):
        batcher.observe(size, 0.005 + 0.001 * size)  # L(k) = 5 ms + 1 ms * k
    intended = np.linspace(0.0, 0.001, 40)  # 40 queued, the oldest intended at t = 0
    now = 0.010
    d = batcher.decide(now, 40, oldest_sent_s=0.0, intended_s=intended)
    # Deadline 0.050: 0.010 + 0.005 + 0.001 k <= 0.050  ->  k <= 35
    assert d.take == 35 and d.drop == 0
    assert now + batcher.predict_s(d.take) <= 0.050 + 1e-12
    assert now + batcher.predict_s(d.take + 1) > 0.050


def test_adaptive_waits_while_waiting_pays_then_goes():
    clock = FakeClock()
    batcher = AdaptiveBatcher(max_batch_size=32, deadline_ms=100)
    for size in (1, 4, 16, 32):
        batcher.observe(size, 0.002 + 0.0005 * size)
    for _ in range(50):  # arrivals every 2 ms
        batcher.note_arrival(clock.advance(0.002))
    intended = np.array([clock.t])
    d = batcher.decide(clock.t, 1, clock.t, intended)
    assert d.take == 0 and d.wait_until_s is not None
    assert d.wait_until_s <= clock.t + 2 * 0.002 + 1e-9  # waits about one expected gap, not the whole SLO
    # Close to the deadline waiting no longer pays: take what is there.
    late = clock.t + 0.099
    d = batcher.decide(late, 1, clock.t, intended)
    assert d.take == 1


def test_adaptive_sheds_requests_that_cannot_meet_the_deadline():
    batcher = AdaptiveBatcher(max_batch_size=16, deadline_ms=20, shed=True)
    for size in (1, 8, 16):
        batcher.observe(size, 0.004 + 0.0005 * size)
    now = 1.0
    # 5 requests intended long ago (hopeless), then 5 recent ones.
    intended = np.array([0.90, 0.91, 0.92, 0.93, 0.94, 0.995, 0.996, 0.997, 0.998, 0.999])
    d = batcher.decide(now, 10, 0.9, intended)
    assert d.drop == 5
    assert d.take >= 1 or d.wait_until_s is not None
    # Without shedding nothing is dropped: late requests are still served.
    keep = AdaptiveBatcher(max_batch_size=16, deadline_ms=20, shed=False)
    keep.a_s, keep.b_s = batcher.a_s, batcher.b_s
    d = keep.decide(now, 10, 0.9, intended)
    assert d.drop == 0 and d.take == 10


def test_adaptive_without_observations_dispatches_at_once():
    batcher = AdaptiveBatcher(max_batch_size=8, deadline_ms=100)
    assert batcher.decide(0.0, 3, 0.0, np.zeros(3)).take == 3


def test_make_batcher_modes():
    assert isinstance(make_batcher(BatchingSpec(), slo_latency_ms=100), NoBatcher)
    fixed = make_batcher(BatchingSpec(mode="fixed", max_batch_size=8, max_queue_delay_ms=5), slo_latency_ms=100)
    assert isinstance(fixed, FixedBatcher) and fixed.max_queue_delay_s == 0.005
    adaptive = make_batcher(BatchingSpec(mode="adaptive", max_batch_size=8, shed=True), slo_latency_ms=40)
    assert isinstance(adaptive, AdaptiveBatcher) and adaptive.deadline_s == 0.04 and adaptive.shed


# ---- autoscaling ------------------------------------------------------------------------------------------
def test_autoscaler_desired_is_load_over_target_clamped():
    a = Autoscaler(min_instances=1, max_instances=4, target_concurrency=2)
    assert a.desired(0, 0) == 1  # min
    assert a.desired(3, 0) == 2  # ceil(3 / 2)
    assert a.desired(2, 2) == 2
    assert a.desired(100, 5) == 4  # max
    assert a.to_start(queued=5, in_flight=0, alive=1) == 2
    assert a.to_start(queued=0, in_flight=0, alive=3) == 0  # never scales down


def test_autoscaler_scale_to_zero():
    a = Autoscaler(min_instances=0, max_instances=2, target_concurrency=1)
    assert a.desired(0, 0) == 0
    assert a.desired(1, 0) == 1


# ---- keep-alive --------------------------------------------------------------------------------------------
def test_fixed_keep_alive_is_the_ttl():
    ka = FixedKeepAlive(ttl_s=30)
    ka.observe_idle(0, 5.0)
    plan = ka.plan(0)
    assert plan.evict_after_s == 30 and plan.prewarm_after_s is None and plan.source == "fixed"


def test_histogram_falls_back_to_ttl_until_representative():
    spec = KeepAliveSpec(policy="histogram", ttl_s=60, bin_s=1, range_s=120, head_percentile=5,
                         tail_percentile=99, min_samples=10)
    ka = HistogramKeepAlive(spec)
    for _ in range(9):
        ka.observe_idle(0, 3.5)
    assert ka.plan(0).source == "fixed" and ka.plan(0).evict_after_s == 60
    ka.observe_idle(0, 3.5)
    plan = ka.plan(0)
    assert plan.source == "histogram"
    # All idle times in bin [3, 4): pre-warm at the head (3 s), keep until the tail's upper edge (4 s).
    assert plan.prewarm_after_s == 3 and plan.keep_until_s == 4 and plan.evict_after_s == 0
    # Another function has seen nothing: it falls back.
    assert ka.plan(1).source == "fixed"


def test_histogram_uses_percentiles():
    spec = KeepAliveSpec(policy="histogram", ttl_s=600, bin_s=1, range_s=240, head_percentile=5,
                         tail_percentile=99, min_samples=10)
    ka = HistogramKeepAlive(spec)
    rng = np.random.default_rng(0)
    idle = rng.uniform(10, 50, size=1000)
    for x in idle:
        ka.observe_idle(0, float(x))
    plan = ka.plan(0)
    head, tail = np.percentile(idle, [5, 99])
    assert plan.prewarm_after_s == np.floor(head)  # lower edge of the head's bin
    assert plan.keep_until_s == np.floor(tail) + 1  # upper edge of the tail's bin
    assert plan.keep_until_s < 600  # far shorter than the fixed TTL it replaced


def test_histogram_short_idle_times_keep_alive_without_prewarm():
    spec = KeepAliveSpec(policy="histogram", ttl_s=600, bin_s=0.5, range_s=60, min_samples=5)
    ka = HistogramKeepAlive(spec)
    for x in (0.1, 0.2, 0.3, 0.2, 2.2, 0.1):
        ka.observe_idle(0, x)
    plan = ka.plan(0)
    assert plan.prewarm_after_s is None and plan.evict_after_s == 2.5


def test_histogram_falls_back_when_the_tail_is_out_of_range():
    spec = KeepAliveSpec(policy="histogram", ttl_s=60, bin_s=1, range_s=10, min_samples=5)
    ka = HistogramKeepAlive(spec)
    for x in (1, 2, 3, 50, 60, 70):
        ka.observe_idle(0, x)
    assert ka.plan(0).source == "fixed"


def test_make_keep_alive():
    assert isinstance(make_keep_alive(KeepAliveSpec()), FixedKeepAlive)
    assert isinstance(make_keep_alive(KeepAliveSpec(policy="histogram")), HistogramKeepAlive)
