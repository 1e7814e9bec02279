"""The simulated driver: the same scheduling core (workers.platform.core) on a virtual clock.

Nothing runs: a batch's service time and a cold start's phases are drawn from a profile measured on the real device
(workers.profiling: ProcessRunner.run(k) wall times per batch size and sharing level, real cold starts), and the
core's actions are executed as events in time order. Every decision (batching, autoscaling, keep-alive, pre-warms,
the exclusive swap rule, memory admission) is the core's, the very code the real driver runs.

What is modelled, and so labelled on every simulated result:
  - service time: an empirical draw for the batch size (sizes between two measured ones interpolated at the same
    quantile, sizes above the largest extrapolated linearly) at the nearest measured sharing level (the number of
    batches running at once on the device; above the largest measured level, scaled by level / measured level,
    i.e. processor sharing); after an idle gap, interpolated between the cells of the measured gaps around it,
    and for the next batches run right after that one, from the cells measured at their position (still warming up);
  - cold start: one measured cold start (all its phases) drawn at random, plus the variant's modelled delay;
  - the platform's own cost: each request reaches the scheduler a draw of the dispatcher's measured lag after it
    was due, and each batch holds its instance a draw of the platform's measured overhead longer: the overhead on
    an idle instance for a batch that found its instance idle (below the shortest measured idle gap, interpolated
    from the overhead back to back), else the overhead back to back (both measured through the real platform on the
    null model when the profile was taken: workers.profiling.platform_parts); an eviction frees its memory at once.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from workers.platform.core import (
    EVICT,
    FINISH,
    RUN,
    START,
    TIMER,
    InstanceState,
    SchedulingCore,
    cold_start_record,
)
from workers.recorder import Recorder
from workers.spec import FunctionSpec, VariantSpec

_ARRIVAL, _READY, _DONE, _RELEASED, _TIMER = 0, 1, 2, 3, 4
ARRIVAL_CHUNK = 1 << 16  # arrivals turned into Python floats this many at a time
SERVICE_BLOCK = 4096  # at most this many service times drawn at once per cell (batch size, level, gap, position)
FIRST_BLOCK = 64  # the first block of a cell; each next one twice the last
COLD_PHASES = ("process_start", "import", "device_context", "build", "load", "to_device", "warmup")


class ProfileError(ValueError):
    """A profile cannot drive the simulator (missing cells); the message names what is missing."""


class ServiceModel:
    """Service times and cold starts of one function, drawn from its measured profile."""

    def __init__(self, profile: dict, rng: np.random.Generator):
        self.rng = rng
        self.profile = profile
        service = profile.get("service_ms") or {}
        self.levels = sorted(int(k) for k in service)
        if not self.levels:
            raise ProfileError(f"profile of {profile.get('model')!r} has no service_ms samples")
        # level -> (sorted batch sizes, list of sorted sample arrays in seconds)
        self._cells: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}
        for lv in self.levels:
            cells = service[str(lv)] if str(lv) in service else service[lv]
            sizes = sorted(int(b) for b in cells)
            arrays = [np.sort(np.asarray(cells[str(b)] if str(b) in cells else cells[b], dtype=float)) / 1e3
                      for b in sizes]
            if not sizes or any(len(a) == 0 for a in arrays):
                raise ProfileError(f"profile of {profile.get('model')!r}: level {lv} has an empty cell")
            self._cells[lv] = (np.asarray(sizes), arrays)
        cold = profile.get("cold_start_ms") or {}
        total = np.asarray(cold.get("total") or [], dtype=float)
        if len(total) == 0:
            raise ProfileError(f"profile of {profile.get('model')!r} has no cold_start_ms.total samples")
        self._cold_total = total
        # What the real platform adds to a batch on an idle instance beyond the round trip (the scheduling core, the
        # wake-ups of an idle platform): measured by profiling.measure_platform_overhead; absent in older profiles.
        over = profile.get("platform_overhead_ms") or []
        self._overhead = np.sort(np.asarray(over, dtype=float)) / 1e3 if len(over) else None
        # Back to back the platform holds an instance far less than after an idle spell (no wake-ups on cold caches);
        # absent or empty: the idle figure for every batch, as profiles before 2026-12-03 had it.
        busy = profile.get("platform_busy_overhead_ms") or []
        self._busy_overhead = np.sort(np.asarray(busy, dtype=float)) / 1e3 if len(busy) else self._overhead
        lag = profile.get("dispatch_lag_ms") or []
        self.dispatch_lag_s = np.sort(np.asarray(lag, dtype=float)) / 1e3 if len(lag) else None
        self._cold_phases = {p: np.asarray(cold[p], dtype=float) for p in COLD_PHASES
                             if p in cold and len(cold[p]) == len(total)}
        self._blocks: dict[tuple[int, int, int, int], list[tuple[float, float]]] = {}
        # Batches that find their instance idle (sharing level 1): cells measured after an idle gap, by gap (s); and
        # the batches right after such a one, by position (2, 3, ...: still warming up), where the profile has them.
        idle = profile.get("idle_service_ms") or {}
        self.idle_gaps_s = sorted(int(g) / 1e3 for g in idle)
        self._log_gaps = [math.log(g) for g in self.idle_gaps_s]
        self._inv_log_steps = [1.0 / (b - a) for a, b in itertools.pairwise(self._log_gaps)]
        self._b2b: dict[tuple[int, int], list[float]] = {}  # back-to-back draws per (batch size, level)
        self._block_sizes: dict[tuple, int] = {}
        by_position = {1: idle, **{int(p): cells for p, cells in (profile.get("idle_follow_ms") or {}).items()}}
        self.positions = max(p for p in by_position if p == 1 or by_position[p])
        self._idle_cells: dict[tuple[int, int], tuple[np.ndarray, list[np.ndarray]]] = {}
        for pos, by_gap in by_position.items():
            for gi, gap in enumerate(self.idle_gaps_s):
                cells = by_gap.get(str(round(gap * 1e3)))
                if not cells:
                    continue
                sizes = sorted(int(b) for b in cells)
                self._idle_cells[(pos, gi + 1)] = (np.asarray(sizes),
                                                   [np.sort(np.asarray(cells[str(b)], dtype=float)) / 1e3
                                                    for b in sizes])

    def service_s(self, batch: int, level: int, idle_s: float = 0.0, position: int = 1) -> float:
        """One batch's time on the instance as the platform sees it: a draw of the measured service time, plus a
        draw of the platform's own overhead when the profile has it. After its instance sat idle for idle_s the
        draw is interpolated, at the same quantile, between the cells of the two measured idle gaps around idle_s
        (linearly in log(gap); below the shortest, linearly in the gap from the back-to-back cell, whose overhead
        is the back-to-back one; above the longest, the longest's cell): a batch's time grows with the idle gap
        (the instance's caches cool), so taking the cell of the gap below, as the simulator did before 2026-12-03,
        was optimistic for every gap between two measured ones. position > 1: the batch is the position-th one run
        back to back since the instance sat idle for idle_s; it draws from the cells measured at that position
        (with the back-to-back overhead), and from the back-to-back cell past the measured positions. Drawn in
        blocks (of (lower, upper) pairs after an idle gap) per (batch size, level[, lower gap, position]),
        vectorised: one list pop per batch."""
        gaps = self.idle_gaps_s
        if not gaps or not idle_s > 0.0 or position > self.positions:  # back to back (NaN: never idle)
            key = (batch, level)
            block = self._b2b.get(key)
            if not block:
                n = self._next_block_size(key)
                block = self._b2b[key] = self._draw(batch, level, self.rng.random(n), self.rng.random(n), 0).tolist()
            return block.pop()
        gi = bisect.bisect_right(gaps, idle_s)  # measured gaps not above idle_s
        if gi == len(gaps):
            w = 0.0
        elif gi == 0:
            w = idle_s / gaps[0]
        else:
            w = (math.log(idle_s) - self._log_gaps[gi - 1]) * self._inv_log_steps[gi - 1]
        key = (batch, level, gi, position)
        block = self._blocks.get(key)
        if not block:
            block = self._blocks[key] = self._draw_pairs(batch, level, self._next_block_size(key), gi, position)
        lo, hi = block.pop()
        return lo + (hi - lo) * w

    def _next_block_size(self, key: tuple) -> int:
        """Blocks grow from FIRST_BLOCK to SERVICE_BLOCK draws as a cell is used again: a fleet of functions has
        many (size, level, gap, position) cells that few batches use, and full blocks for each cost more than the
        batches they serve."""
        n = self._block_sizes[key] = min(SERVICE_BLOCK, 2 * self._block_sizes.get(key, FIRST_BLOCK // 2))
        return n

    def _draw_pairs(self, batch: int, level: int, size: int, gap_index: int,
                    position: int = 1) -> list[tuple[float, float]]:
        """(lower, upper) pairs at the same quantiles: the cell of the gap_index-th measured idle gap (0: back to
        back) and of the next one (the same cell past the longest), at the position."""
        u = self.rng.random(size)
        v = self.rng.random(size)
        lo = self._draw(batch, level, u, v, gap_index, position)
        hi = self._draw(batch, level, u, v, gap_index + 1, position) if gap_index < len(self.idle_gaps_s) else lo
        return list(zip(lo.tolist(), hi.tolist(), strict=True))

    def _draw(self, batch: int, level: int, u: np.ndarray, v: np.ndarray, gap_index: int = 0,
              position: int = 1) -> np.ndarray:
        """Service times at quantiles u, plus the overhead at quantiles v: for the batch that found its instance
        idle (position 1) after the gap_index-th measured idle gap, the overhead of an idle instance; back to back
        (gap_index 0, or a later position: it was queued) the back-to-back one."""
        lo, hi, w, scale, lin = self._plan(batch, level, gap_index, position)
        s1 = lo[(u * len(lo)).astype(np.int64)]
        if hi is None:
            s = s1 * scale
        else:
            s2 = hi[(u * len(hi)).astype(np.int64)]
            s = scale * (np.maximum(s2, s2 + (s2 - s1) * w) if lin else s1 + (s2 - s1) * w)
        over = self._overhead if (gap_index and position == 1) or not self.idle_gaps_s else self._busy_overhead
        if over is not None:
            s = s + over[(v * len(over)).astype(np.int64)]
        return s

    def _plan(self, batch: int, level: int, gap_index: int = 0, position: int = 1) -> tuple:
        """How to draw a batch's service time at a level (or, gap_index > 0, alone after that idle gap): (samples,
        samples of the next size or None, weight, scale, extrapolate). Sizes between two measured ones: interpolated
        at the same quantile; above the largest: extended linearly from the last two; below the smallest or with one
        size: scaled by the batch size."""
        lv = min(self.levels, key=lambda x: (abs(x - level), x))
        scale = 1.0
        if level > self.levels[-1]:
            lv = self.levels[-1]
            scale = level / lv
        sizes, arrays = self._idle_cells[(position, gap_index)] if gap_index else self._cells[lv]
        lists = arrays
        j = int(np.searchsorted(sizes, batch))
        if j < len(sizes) and sizes[j] == batch:
            return lists[j], None, 0.0, scale, False
        if j == 0:
            return lists[0], None, 0.0, scale * batch / sizes[0], False
        if j >= len(sizes):
            if len(sizes) == 1:
                return lists[-1], None, 0.0, scale * batch / sizes[-1], False
            b1, b2 = sizes[-2], sizes[-1]
            return lists[-2], lists[-1], (batch - b2) / (b2 - b1), scale, True
        b1, b2 = sizes[j - 1], sizes[j]
        return lists[j - 1], lists[j], (batch - b1) / (b2 - b1), scale, False

    def mean_service_s(self) -> float:
        """Mean service time of a batch of 1 alone on the device (placement's measure of load)."""
        sizes, arrays = self._cells[self.levels[0]]
        over = float(self._overhead.mean()) if self._overhead is not None else 0.0
        return (float(arrays[0].mean()) + over) / float(sizes[0])

    def cold_start(self) -> tuple[float, dict]:
        """(total seconds, phases in ms) of one measured cold start."""
        k = int(self.rng.integers(len(self._cold_total)))
        phases = {p: float(v[k]) for p, v in self._cold_phases.items()}
        return float(self._cold_total[k]) / 1e3, phases


class SimPlatform:
    """Runs one trial's functions on one simulated device. run() replays every arrival and returns the end time."""

    simulated = True

    def __init__(self, functions: Sequence[FunctionSpec], variant: VariantSpec, *, recorder: Recorder,
                 function_idx: np.ndarray, slo_latency_ms: float, profiles: Sequence[dict], seed: int = 0,
                 memory_budget_bytes: int | None = None, mem_per_instance: Sequence[int] | None = None,
                 share: float | None = None, slots: int | None = None, trace: bool = False,
                 placement: Sequence[int] | None = None):
        """placement: the device of each function (workers.platform.core.place); None: one device. Each device has
        its own core (its own memory budget, slots, keep-alive and autoscaler state); instance ids are trial-wide."""
        self.functions = list(functions)
        self.variant = variant
        self.rec = recorder
        self.platform_delay_s = float(variant.platform_delay_ms) / 1000.0
        self.rng = np.random.default_rng(seed)
        self.models = [ServiceModel(p, self.rng) for p in profiles]
        n_fn = len(self.functions)
        placement = list(placement) if placement is not None else [0] * n_fn
        self.placement = placement
        self.devices = max(placement) + 1 if placement else 1
        ids = itertools.count()
        self.cores: list[SchedulingCore] = []
        self._route = np.zeros((n_fn, 2), dtype=np.int64)  # function -> (core, index within the core)
        for d in range(self.devices):
            mine = [i for i in range(n_fn) if placement[i] == d]
            if not mine:
                continue
            for local, g in enumerate(mine):
                self._route[g] = (len(self.cores), local)
            self.cores.append(SchedulingCore(
                [self.functions[i] for i in mine], variant, rows=recorder.rows, function_idx=function_idx,
                slo_latency_ms=slo_latency_ms, memory_budget_bytes=memory_budget_bytes,
                mem_per_instance=[mem_per_instance[i] for i in mine] if mem_per_instance is not None else None,
                share=share, slots=slots, trace=trace and self.devices == 1,
                function_ids=None if self.devices == 1 else mine, ids=ids, device=d))
        self.core = self.cores[0]
        self.errors = 0
        self.error_messages: list[str] = []
        self._heap: list = []
        self._seq = 0
        self._next_timer = [math.inf] * self.devices  # each device's earliest pending timer
        self._last_ready = -math.inf  # when the last cold start ended
        self._busy = [0] * self.devices  # batches running on each device now (the sharing level a batch sees)
        self._runs: dict[int, tuple[float, int]] = {}  # instance id -> (idle gap before its run, batches in it)

    @property
    def prewarms(self) -> int:
        return sum(c.prewarms for c in self.cores)

    def state(self) -> dict:
        out: dict = {}
        for c in self.cores:
            for k, v in c.state().items():
                out[k] = out.get(k, 0) + v
        return out

    def pending(self) -> int:
        return sum(c.pending() for c in self.cores)

    # ---- events -------------------------------------------------------------------------------------------
    def _push(self, t: float, kind: int, payload) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, payload))

    def _apply(self, actions: list, now: float, core: SchedulingCore) -> None:
        for a in actions:
            kind = a[0]
            if kind == RUN:
                inst, idx = a[1], a[2]
                d = core.device
                busy = self._busy[d] = self._busy[d] + 1
                self._seq += 1
                # inst.idle_since_s: when it last became idle (NaN if never: then no idle cell applies). A batch
                # started the moment the one before it ended is the next of a run that began with the idle gap
                # before the run's first batch.
                idle_s = now - inst.idle_since_s
                run = self._runs.get(inst.id)
                run = (idle_s, 1) if idle_s > 0.0 or run is None else (run[0], run[1] + 1)
                self._runs[inst.id] = run
                heapq.heappush(self._heap, (now + self.models[inst.fn.gidx].service_s(len(idx), busy, *run),
                                            self._seq, _DONE, (inst, idx, now)))
            elif kind == FINISH:
                self.rec.rows["outcome"][a[1]] = a[2]
                self.rec.finished(a[1])
            elif kind == TIMER:
                # Only the earliest: when it fires, the core asks again for whatever is due after it.
                t = max(now, float(a[1]))
                d = core.device
                if t < self._next_timer[d]:
                    self._next_timer[d] = t
                    self._push(t, _TIMER, core)
            elif kind == START:
                inst = a[1]
                inst.driver = core
                self.rec.instances.append(inst.life)
                if not inst.prestart:
                    self.rec.cold_start_began.append(inst.cs_start_s)
                total_s, phases = self.models[inst.fn.gidx].cold_start()
                self._push(inst.delay_end_s + total_s, _READY, (inst, phases))
            elif kind == EVICT:
                self._push(now, _RELEASED, a[1])

    def _ready(self, inst: InstanceState, phases: dict, now: float) -> None:
        self._last_ready = now
        core = inst.driver
        if not core.closed:
            self.rec.cold_starts.append(cold_start_record(inst, now, phases, platform_delay_s=self.platform_delay_s))
        self._apply(core.instance_ready(inst, now), now, core)

    # ---- the run ----------------------------------------------------------------------------------------
    def run(self, *, drain_grace_s: float, run_end_s: float, cold_drain_extra_s: float = 120.0,
            on_window: Callable[[float, float], None] | None = None,
            should_stop: Callable[[], bool] | None = None, stop_poll_s: float = 0.2,
            window_s: float = 1.0) -> float:
        """Replay every arrival (rows["intended_s"], sorted; sent when intended), prestart included, and drain
        like the real engine: until nothing is pending after the run's end, or the grace after the last arrival
        (extended while a cold start is still running) has passed. Returns end_s. on_window(a, b) is called for
        each window_s of run time passed, in order, before the events after b. should_stop() is polled every
        stop_poll_s of wall time; when it says stop, the run ends there (self.stopped) and what is unfinished is
        dropped."""
        self.stopped = False
        wall_next = time.perf_counter() + stop_poll_s
        rows = self.rec.rows
        intended = rows["intended_s"]
        sent = rows["sent_s"]
        # The dispatcher's measured lateness: each request reaches the scheduler a draw of it after it was due, and
        # never before the one ahead of it (one dispatcher thread sends them in order).
        lag = next((m.dispatch_lag_s for m in self.models if m.dispatch_lag_s is not None), None)
        # Each request reaches the scheduler when due: sent_s is written here, a chunk at a time (a day's arrays of
        # temporaries would not fit the memory bound); the rows of those never sent are reset below.
        ahead = -math.inf
        for a in range(0, len(intended), ARRIVAL_CHUNK * 16):
            part = intended[a:a + ARRIVAL_CHUNK * 16]
            if lag is not None:
                part = part + lag[np.minimum(len(lag) - 1, (self.rng.random(len(part)) * len(lag)).astype(np.int64))]
            np.maximum.accumulate(np.maximum(part, ahead), out=sent[a:a + len(part)])
            ahead = sent[a + len(part) - 1]
        due = sent
        fidx = self.core.fidx
        n = len(intended)
        route = self._route
        cores = self.cores
        heap = self._heap
        # Prestart at run time 0 minus the time it takes (the real engine waits for min instances before t0).
        for core in cores:
            self._apply(core.prestart(0.0), 0.0, core)
        t_pre = 0.0
        while heap and heap[0][2] == _READY:
            t, _, _, (inst, phases) = heapq.heappop(heap)
            t_pre = t
            self._ready(inst, phases, t)
        if t_pre > 0:
            for core in cores:
                core.shift(t_pre)
            for cs in self.rec.cold_starts:
                cs.start_s -= t_pre
                cs.end_s -= t_pre
            self._heap = heap = [(t - t_pre, s, k, p) for (t, s, k, p) in heap]
            heapq.heapify(heap)
            self._next_timer = [t - t_pre for t in self._next_timer]
        last = float(intended[-1]) if n else 0.0
        inf = math.inf
        next_win = window_s if on_window is not None else inf
        now = 0.0
        steps = 0
        # The hot loop: one core call per arrival and per event, arrivals read from lists a chunk at a time.
        targets = [(cores[c].arrival, int(local), cores[c]) for c, local in route.tolist()]
        apply = self._apply
        batch = self.rec.batch
        busy = self._busy
        pop = heapq.heappop
        base, j = 0, 0
        due_l, fn_l = due[:ARRIVAL_CHUNK].tolist(), fidx[:ARRIVAL_CHUNK].tolist()
        m = len(due_l)
        while True:
            steps += 1
            if should_stop is not None and not steps & 1023 and time.perf_counter() >= wall_next:
                wall_next = time.perf_counter() + stop_poll_s
                if should_stop():
                    self.stopped = True
                    break
            if j < m:
                t_arr = due_l[j]
            elif base + m < n:
                base += m
                due_l = due[base:base + ARRIVAL_CHUNK].tolist()
                fn_l = fidx[base:base + ARRIVAL_CHUNK].tolist()
                j, m = 0, len(due_l)
                t_arr = due_l[0]
            else:
                t_arr = inf
            t_ev = heap[0][0] if heap else inf
            if t_arr <= t_ev and t_arr < inf:
                while t_arr >= next_win:
                    on_window(next_win - window_s, next_win)
                    next_win += window_s
                now = t_arr
                arrive, local, core = targets[fn_l[j]]
                acts = arrive(local, 1, t_arr)
                if acts:
                    apply(acts, t_arr, core)
                j += 1
                continue
            t = t_ev
            if t_arr == inf:
                # The drain rule of the real engine: grace after the last arrival, extended while a cold start runs
                # (bounded) and counted again from the end of the last one.
                starting = self.state()["instances_starting"] > 0
                if self.pending() == 0 and t >= run_end_s or t == inf:
                    now = max(now, run_end_s)
                    break
                extra_end = last + cold_drain_extra_s + self.platform_delay_s
                limit = (extra_end if starting else max(last, min(self._last_ready, extra_end))) + drain_grace_s
                if t > max(limit, run_end_s):
                    now = max(limit, run_end_s)
                    break
            while t >= next_win:
                on_window(next_win - window_s, next_win)
                next_win += window_s
            now = t
            _, _, kind, payload = pop(heap)
            if kind == _DONE:
                inst, idx, t_start = payload
                core = inst.driver
                busy[core.device] -= 1
                batch(idx, t_start, t, inst)
                acts = core.batch_done(inst, t, t_start, True)
                if acts:
                    apply(acts, t, core)
            elif kind == _READY:
                self._ready(payload[0], payload[1], now)
            elif kind == _TIMER:
                if now >= self._next_timer[payload.device]:
                    self._next_timer[payload.device] = inf
                    self._apply(payload.timer(now), now, payload)
            elif kind == _RELEASED:
                core = payload.driver
                self._runs.pop(payload.id, None)
                self._apply(core.released(payload, now), now, core)
        i = base + j
        end_s = now
        if i < n:
            sent[i:] = np.nan  # stopped: never sent
        self.rec.flush()  # outcomes of the batches that ended: close() drops only what is still pending
        for core in cores:
            core.stop(end_s)
            for a in core.close(end_s):
                rows["outcome"][a[1]] = a[2]
                self.rec.finished(a[1])
        if on_window is not None:
            next_win = max(next_win, window_s)
            while end_s >= next_win:
                on_window(next_win - window_s, next_win)
                next_win += window_s
            if end_s - (next_win - window_s) > 0.05:
                on_window(next_win - window_s, end_s)
        return end_s
