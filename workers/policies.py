"""Policy objects: batching, autoscaling and keep-alive decisions.

"One policy core, two clocks" (docs/architecture.md, rule 5): every object here decides from the numbers it is
given -- `now_s` and the state the caller passes in -- and never reads a clock, sleeps or starts a
thread. The real platform (workers.platform) drives them with `time.perf_counter()` on the run's
clock; a simulator can drive the very same objects with a virtual clock. All times are seconds.

Decisions, not actions: a batcher answers "take n now" or "wait until t" (and, for the adaptive
batcher with shedding, "drop the k oldest first"); the autoscaler answers "you want n instances";
a keep-alive policy answers "evict an idle instance after x seconds; pre-warm one at y".
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from workers.spec import BatchingSpec, KeepAliveSpec

__all__ = [
    "AdaptiveBatcher",
    "Autoscaler",
    "BatchDecision",
    "Batcher",
    "FixedBatcher",
    "FixedKeepAlive",
    "HistogramKeepAlive",
    "KeepAlivePlan",
    "KeepAlivePolicy",
    "NoBatcher",
    "make_batcher",
    "make_keep_alive",
]


# ---- batching --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchDecision:
    """What to do with a function's queue now.

    drop: the `drop` oldest queued requests can no longer meet their deadline; remove them (shed)
          before taking anything.
    take: run a batch of the next `take` requests now (after the drop). 0: take nothing.
    wait_until_s: when take is 0, ask again at this time at the latest (None: only when something
          changes, e.g. a new request arrives). The caller also asks again on every arrival.
    """

    take: int = 0
    wait_until_s: float | None = None
    drop: int = 0


_NOTHING = BatchDecision()
_TAKE_ONE = BatchDecision(take=1)


class Batcher:
    """Base class. `decide` is called with the queue state whenever an instance of the function is free
    and something may have changed (an arrival, the end of a batch, a wait deadline)."""

    max_batch_size: int = 1
    # Whether decide() reads oldest_sent_s. When False the core passes NaN instead of looking it up: a numpy
    # scalar read costs ~11 us on the first request after an idle millisecond (cold caches), most of what
    # the scheduler adds to an unbatched request (bench overhead).
    reads_oldest: bool = True

    def decide(self, now_s: float, n_queued: int, oldest_sent_s: float,
               intended_s: np.ndarray | None = None) -> BatchDecision:
        """n_queued requests wait, in arrival order. oldest_sent_s: when the oldest of them entered the
        queue. intended_s: their intended arrival times (at least the first max_batch_size + a few; only
        the adaptive batcher reads it, for deadlines measured from the intended arrival)."""
        raise NotImplementedError

    def observe(self, batch_size: int, duration_s: float) -> None:
        """A batch of batch_size took duration_s of compute (the adaptive batcher learns from this)."""

    def note_arrival(self, now_s: float, count: int = 1) -> None:
        """count requests arrived at now_s (the adaptive batcher estimates the arrival rate from this)."""


class NoBatcher(Batcher):
    """Every request is its own batch, dispatched as soon as an instance is free."""

    max_batch_size = 1
    reads_oldest = False

    def decide(self, now_s, n_queued, oldest_sent_s, intended_s=None):
        return _TAKE_ONE if n_queued > 0 else _NOTHING


class FixedBatcher(Batcher):
    """Triton-style dynamic batching: run when the queue holds max_batch_size requests, or when the oldest
    waiting request has waited max_queue_delay_ms since it entered the queue (then run what is there).
    With a delay of 0 a free instance takes whatever is queued, up to max_batch_size, at once."""

    def __init__(self, max_batch_size: int, max_queue_delay_ms: float):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_queue_delay_ms < 0:
            raise ValueError("max_queue_delay_ms must be at least 0")
        self.max_batch_size = int(max_batch_size)
        self.max_queue_delay_s = float(max_queue_delay_ms) / 1000.0

    def decide(self, now_s, n_queued, oldest_sent_s, intended_s=None):
        if n_queued <= 0:
            return _NOTHING
        if n_queued >= self.max_batch_size:
            return BatchDecision(take=self.max_batch_size)
        release_s = oldest_sent_s + self.max_queue_delay_s
        if now_s >= release_s:
            return BatchDecision(take=n_queued)
        return BatchDecision(wait_until_s=release_s)


class AdaptiveBatcher(Batcher):
    """BentoML-style adaptive batching.

    Learns batch latency L(k) = a + b*k online, by least squares over the last `window` batches. Each
    request's deadline is its intended arrival + deadline_ms (the SLO latency: open loop, so time lost
    before the request even reached us counts). With the oldest queued request's deadline D:

    * shed (optional): requests that would miss their deadline even as a batch of one started now
      (now + L(1) > deadline) are dropped -- serving them only delays the ones that can still make it;
    * a full batch (max_batch_size) goes at once;
    * waiting still pays when one more request is expected (estimated arrival gap g) early enough that a
      batch of n+1 still meets D: now + g + L(n+1) <= D. Then wait -- until the latest instant a batch
      of n+1 can start (D - L(n+1)), but no longer than 2 g (if the expected arrival did not come, the
      load has dropped and waiting no longer pays);
    * otherwise take the largest batch that meets D (at least 1: a late request is still served, and
      when even one is late, a full batch serves the backlog fastest).

    Until it has seen a batch, it cannot predict anything and takes what is queued at once.
    """

    def __init__(self, max_batch_size: int, deadline_ms: float, shed: bool = False, window: int = 50):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if deadline_ms <= 0:
            raise ValueError("deadline_ms must be above 0")
        self.max_batch_size = int(max_batch_size)
        self.deadline_s = float(deadline_ms) / 1000.0
        self.shed = bool(shed)
        self._obs: deque[tuple[int, float]] = deque(maxlen=window)
        self.a_s: float | None = None  # fitted fixed cost per batch
        self.b_s: float | None = None  # fitted cost per request in the batch
        self._last_arrival_s: float | None = None
        self.gap_s: float | None = None  # EWMA of the inter-arrival gap

    # -- learning ------------------------------------------------------------------------------
    def observe(self, batch_size: int, duration_s: float) -> None:
        if batch_size < 1 or not math.isfinite(duration_s) or duration_s < 0:
            return
        self._obs.append((int(batch_size), float(duration_s)))
        self.a_s, self.b_s = fit_linear_latency(self._obs)

    def note_arrival(self, now_s: float, count: int = 1) -> None:
        if self._last_arrival_s is not None and count > 0:
            gap = max(0.0, now_s - self._last_arrival_s) / count
            # EWMA with a short memory (about 20 arrivals): tracks load changes within a fraction of a second.
            self.gap_s = gap if self.gap_s is None else 0.95 * self.gap_s + 0.05 * gap
        self._last_arrival_s = now_s

    def predict_s(self, batch_size: int) -> float:
        if self.a_s is None or self.b_s is None:
            return 0.0
        return self.a_s + self.b_s * batch_size

    # -- deciding ----------------------------------------------------------------------------------
    def decide(self, now_s, n_queued, oldest_sent_s, intended_s=None):
        if n_queued <= 0:
            return _NOTHING
        if self.a_s is None or intended_s is None or len(intended_s) == 0:
            return BatchDecision(take=min(n_queued, self.max_batch_size))
        drop = 0
        if self.shed:
            # Intended times are in queue order (arrivals are sorted), so the hopeless ones are a prefix.
            latest_ok_intended = now_s + self.predict_s(1) - self.deadline_s
            view = intended_s[:n_queued]
            drop = int(np.searchsorted(view, latest_ok_intended, side="left"))
            if drop >= len(view):
                # Every visible deadline is gone (the caller may pass only a prefix): drop, then ask again.
                return BatchDecision(drop=drop, wait_until_s=now_s if drop < n_queued else None)
        n = n_queued - drop
        deadline = float(intended_s[drop]) + self.deadline_s
        cap = min(n, self.max_batch_size)
        if cap >= self.max_batch_size:
            return BatchDecision(take=self.max_batch_size, drop=drop)
        # Waiting for one more request pays only if it is expected in time for a batch of n+1 to meet D.
        nxt = self.predict_s(n + 1)
        if self.gap_s is not None and now_s + self.gap_s + nxt <= deadline:
            wait_until = min(deadline - nxt, now_s + 2.0 * self.gap_s)
            if wait_until > now_s:
                return BatchDecision(wait_until_s=wait_until, drop=drop)
        # Largest k <= cap with now + a + b*k <= D.
        k = cap
        if self.b_s and self.b_s > 0:
            k = int(math.floor((deadline - now_s - (self.a_s or 0.0)) / self.b_s))
            k = cap if k >= cap else max(1, k)
            if now_s + self.predict_s(1) > deadline:
                k = cap  # already late: clearing the backlog fastest limits the damage
        return BatchDecision(take=k, drop=drop)


def fit_linear_latency(obs) -> tuple[float, float]:
    """Least-squares fit of latency = a + b * size over (size, seconds) pairs, with a, b >= 0.

    One distinct size cannot separate a from b: assume the cost is proportional to the size (a = 0),
    the pessimistic reading for bigger batches, so the batcher does not overpromise a deadline."""
    arr = np.asarray(obs, dtype=np.float64)
    x, y = arr[:, 0], arr[:, 1]
    xm, ym = float(x.mean()), float(y.mean())
    sxx = float(((x - xm) ** 2).sum())
    if sxx <= 0.0:
        return 0.0, ym / max(xm, 1.0)
    b = float(((x - xm) * (y - ym)).sum()) / sxx
    a = ym - b * xm
    if b < 0.0:  # bigger batches looked cheaper (noise): treat the cost as flat
        return max(ym, 0.0), 0.0
    if a < 0.0:  # refit through the origin
        return 0.0, float((x * y).sum() / (x * x).sum())
    return a, b


def make_batcher(spec: BatchingSpec, *, slo_latency_ms: float) -> Batcher:
    if spec.mode == "fixed":
        return FixedBatcher(spec.max_batch_size, spec.max_queue_delay_ms)
    if spec.mode == "adaptive":
        return AdaptiveBatcher(spec.max_batch_size, slo_latency_ms, spec.shed)
    return NoBatcher()


# ---- autoscaling ------------------------------------------------------------------------------------
class Autoscaler:
    """Knative-style concurrency autoscaler: desired = ceil((queued + in flight) / target_concurrency),
    clamped to [min_instances, max_instances]. It only ever asks for more; idle instances go away through
    the keep-alive policy (scale-down is keep-alive's job)."""

    def __init__(self, min_instances: int, max_instances: int, target_concurrency: float):
        if min_instances < 0 or max_instances < 1 or min_instances > max_instances:
            raise ValueError("need 0 <= min_instances <= max_instances and max_instances >= 1")
        if target_concurrency <= 0:
            raise ValueError("target_concurrency must be above 0")
        self.min_instances = int(min_instances)
        self.max_instances = int(max_instances)
        self.target_concurrency = float(target_concurrency)

    def desired(self, queued: int, in_flight: int) -> int:
        load = max(0, queued) + max(0, in_flight)
        want = math.ceil(load / self.target_concurrency - 1e-9) if load else 0
        return max(self.min_instances, min(self.max_instances, want))

    def to_start(self, queued: int, in_flight: int, alive: int) -> int:
        """How many instances to start now, given `alive` (starting + idle + busy)."""
        return max(0, self.desired(queued, in_flight) - alive)


# ---- keep-alive ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeepAlivePlan:
    """For one function, from the moment it goes quiet (no request queued or running) at t_q:

    evict_after_s: an idle instance is evicted once it has been idle this long (0: at once);
    prewarm_after_s: if not None, start one instance (a pre-warm) at t_q + prewarm_after_s when none is
        alive, and keep it until t_q + keep_until_s unless a request uses it;
    source: "fixed" (the TTL) or "histogram" (percentiles of observed idle times).
    """

    evict_after_s: float
    prewarm_after_s: float | None = None
    keep_until_s: float | None = None
    source: str = "fixed"


class KeepAlivePolicy:
    def observe_idle(self, function: int, idle_s: float) -> None:
        """The function was quiet for idle_s (from its last request finishing to its next arrival)."""

    def plan(self, function: int) -> KeepAlivePlan:
        raise NotImplementedError


class FixedKeepAlive(KeepAlivePolicy):
    """Keep an idle instance for ttl_s after its last use, then evict it (AWS Lambda / Knative style)."""

    def __init__(self, ttl_s: float):
        if ttl_s < 0:
            raise ValueError("ttl_s must be at least 0")
        self.ttl_s = float(ttl_s)
        self._plan = KeepAlivePlan(evict_after_s=self.ttl_s)

    def plan(self, function: int) -> KeepAlivePlan:
        return self._plan


class HistogramKeepAlive(KeepAlivePolicy):
    """The hybrid histogram policy of Shahrad et al., "Serverless in the Wild" (ATC'20).

    Per function, a histogram of idle times (IT: from the function going quiet to its next arrival) in
    bins of bin_s over [0, range_s). Once min_samples ITs are seen and the histogram is representative:

    * head = the lower edge of the bin holding the head_percentile (pre-warm window),
      tail = the upper edge of the bin holding the tail_percentile (end of the keep-alive window);
    * head == 0: keep idle instances alive for `tail` seconds, no pre-warm;
    * head > 0: the next arrival almost never comes sooner than head, so unload at once and pre-warm one
      instance at t_q + head, kept until t_q + tail (the paper's pre-warm + keep-alive windows).

    Fallback to the fixed ttl_s while there are fewer than min_samples ITs, or when the histogram cannot
    place the tail: more than (100 - tail_percentile) % of the ITs fall beyond range_s (the paper switches
    to a time-series forecast there; we keep the plain TTL and say so in the plan's source).
    """

    def __init__(self, spec: KeepAliveSpec):
        if spec.bin_s <= 0 or spec.range_s < spec.bin_s:
            raise ValueError("need bin_s > 0 and range_s >= bin_s")
        self.spec = spec
        self.n_bins = int(math.ceil(spec.range_s / spec.bin_s - 1e-9))
        self._hist: dict[int, np.ndarray] = {}
        self._out_of_range: dict[int, int] = {}
        self._fallback = KeepAlivePlan(evict_after_s=float(spec.ttl_s), source="fixed")
        self._cache: dict[int, KeepAlivePlan] = {}

    def observe_idle(self, function: int, idle_s: float) -> None:
        if not math.isfinite(idle_s) or idle_s < 0:
            return
        hist = self._hist.get(function)
        if hist is None:
            hist = self._hist[function] = np.zeros(self.n_bins, dtype=np.int64)
            self._out_of_range[function] = 0
        b = int(idle_s // self.spec.bin_s)
        if b >= self.n_bins:
            self._out_of_range[function] += 1
        else:
            hist[b] += 1
        self._cache.pop(function, None)

    def samples(self, function: int) -> int:
        hist = self._hist.get(function)
        return 0 if hist is None else int(hist.sum()) + self._out_of_range[function]

    def plan(self, function: int) -> KeepAlivePlan:
        cached = self._cache.get(function)
        if cached is not None:
            return cached
        plan = self._compute(function)
        self._cache[function] = plan
        return plan

    def _compute(self, function: int) -> KeepAlivePlan:
        s = self.spec
        total = self.samples(function)
        if total < s.min_samples:
            return self._fallback
        hist = self._hist[function]
        cdf = np.cumsum(hist)
        # Smallest bin whose cumulative count reaches the percentile's rank.
        tail_rank = math.ceil(s.tail_percentile / 100.0 * total - 1e-9)
        if tail_rank > cdf[-1]:
            return self._fallback  # the tail lies beyond range_s
        tail_bin = int(np.searchsorted(cdf, max(tail_rank, 1), side="left"))
        head_rank = max(1, math.ceil(s.head_percentile / 100.0 * total - 1e-9))
        head_bin = int(np.searchsorted(cdf, head_rank, side="left"))
        head_s = head_bin * s.bin_s
        tail_s = min((tail_bin + 1) * s.bin_s, s.range_s)
        if head_bin == 0:
            return KeepAlivePlan(evict_after_s=tail_s, source="histogram")
        return KeepAlivePlan(evict_after_s=0.0, prewarm_after_s=head_s, keep_until_s=tail_s, source="histogram")


def make_keep_alive(spec: KeepAliveSpec) -> KeepAlivePolicy:
    if spec.policy == "histogram":
        return HistogramKeepAlive(spec)
    return FixedKeepAlive(spec.ttl_s)
