"""The platform's scheduling core: every scheduling decision, with no clock, no thread, no process and no torch.

One core, two clocks. The core keeps the state of one device's functions (queues, instance states, memory and
spatial slots) and reacts to events, each given with the time it happened:

  arrival(f, count, now)          count requests of function f entered its queue
  instance_ready(inst, now, ok)   a cold start ended (ok) or failed
  batch_done(inst, now, t_start)  an instance finished the batch it was given at t_start
  released(inst, now)             an evicted instance is gone: its memory and slot are free again
  timer(now)                      a time the core asked for (set_timer) has come
  instance_dead(inst, now)        an idle instance's process died

and answers with actions, tuples whose first item says what to do:

  (START, inst)           start this instance (a real cold start, or a sampled one)
  (RUN, inst, idx)        run the requests idx (arrival order) as one batch on this idle instance
  (EVICT, inst)           retire this idle instance; call released() when it is gone
  (TIMER, t)              call timer() at run time t (or earlier)
  (FINISH, idx, outcome)  these requests end without running: dropped (shed, stopped) or errors

The real driver (workers.platform.real) executes actions with the wall clock, instance processes and torch; the
simulated driver (workers.platform.sim) with a virtual clock and service times sampled from measured profiles.
Policies (batching, autoscaling, keep-alive: workers.policies), the exclusive swap rule, memory admission and LRU
room-making, pre-warms and placement live here once, so a change to any of them changes both drivers.

The core is not thread-safe: the real driver calls it under one lock. Times are run-time seconds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workers.policies import Autoscaler, Batcher, KeepAlivePolicy, make_batcher, make_keep_alive
from workers.records import (
    OUTCOME_DROPPED,
    OUTCOME_ERROR,
    OUTCOME_OK,
    OUTCOME_PENDING,
    ColdStart,
    InstanceLife,
)
from workers.spec import FunctionSpec, VariantSpec

START, RUN, EVICT, TIMER, FINISH = "start", "run", "evict", "timer", "finish"
STARTING, IDLE, BUSY, EVICTED = "starting", "idle", "busy", "evicted"
MAX_COLD_START_FAILURES = 3  # per function; then its requests end as errors instead of retrying forever
_ADAPTIVE_VIEW = 4  # the adaptive batcher sees the first max_batch_size * this + 64 queued requests


class CoreError(RuntimeError):
    """The variant cannot run on this device as asked (for example min instances that do not fit)."""


@dataclass(eq=False)
class FunctionState:
    idx: int  # index among this core's functions
    gidx: int  # index among the trial's functions (rows["function"], records)
    spec: FunctionSpec
    order: np.ndarray  # request indices of this function, in arrival order
    batcher: Batcher
    mem_bytes: int
    head: int = 0  # queue = order[head:tail]
    tail: int = 0
    in_flight: int = 0
    n_starting: int = 0
    n_idle: int = 0
    n_busy: int = 0
    quiet_since: float | None = None  # nothing queued or running since (for idle-time histograms)
    prewarmed_for: float | None = None  # the quiet period a pre-warm was already started for
    failures: int = 0
    failed: str | None = None
    start_blocked: bool = False  # wanted an instance but memory / slots were full
    wait_until: float | None = None  # the batcher asked to be asked again then
    hold_since: float | None = None  # since when the batcher has been holding queued requests back
    held_from: float | None = None  # hold_since of the batch just taken (for batch_wait_s)
    taken_s: float = math.nan
    idle: list = field(default_factory=list)  # idle instances, most recently idle last (LIFO keeps caches warm)

    @property
    def alive(self) -> int:
        return self.n_starting + self.n_idle + self.n_busy

    @property
    def queued(self) -> int:
        return self.tail - self.head


@dataclass(eq=False)
class InstanceState:
    id: int
    fn: FunctionState
    share: float
    life: InstanceLife
    prestart: bool
    slot: int | None = None
    state: str = STARTING
    cs_start_s: float = math.nan
    delay_end_s: float = math.nan  # end of the modelled platform delay (cs_start_s when there is none)
    ready_s: float = math.nan
    idle_since_s: float = math.nan
    keep_until_s: float | None = None  # a pre-warmed instance is kept until then unless used
    evict: bool = False  # asked to go (EVICT sent)
    current: Any = None  # indices of the batch it is running
    held_from: float | None = None  # the hold (batcher said wait) that ended with its current batch
    taken_s: float = math.nan  # when the batcher released its current batch
    batches: int = 0  # batches run since its cold start
    driver: Any = None  # the driver's own handle (runner, thread); the core never reads it


class SchedulingCore:
    """Scheduling for one trial's functions on one device. See the module docstring for events and actions."""

    def __init__(self, functions: Sequence[FunctionSpec], variant: VariantSpec, *, rows: dict[str, np.ndarray],
                 function_idx: np.ndarray, slo_latency_ms: float, memory_budget_bytes: int | None = None,
                 mem_per_instance: Sequence[int] | None = None, share: float | None = None,
                 slots: int | None = None, trace: bool = False, function_ids: Sequence[int] | None = None,
                 ids: Iterator[int] | None = None, device: int = 0):
        """function_ids: the trial-wide index of each of `functions` (a simulated fleet places a subset of the
        trial's functions on each device's core; default: all of them, in order). ids: where instance ids come from
        (shared by the cores of a fleet so ids stay unique). device: the device index recorded on instances."""
        self.variant = variant
        self.device = int(device)
        self.rows = rows  # the recorder's columns: sent_s / intended_s are read, nothing is written here
        self.mode = variant.sharing
        self.exclusive = self.mode == "exclusive"
        self.spatial = self.mode == "spatial"
        self.slo_latency_s = float(slo_latency_ms) / 1000.0
        self.platform_delay_s = float(variant.platform_delay_ms) / 1000.0
        self.memory_budget_bytes = memory_budget_bytes
        self.resident_bytes = 0
        self.autoscaler = Autoscaler(variant.min_instances, variant.max_instances, variant.target_concurrency)
        self.keep_alive: KeepAlivePolicy = make_keep_alive(variant.keep_alive)
        self.share = float(share) if share is not None else variant.effective_share
        self.prewarms = 0  # histogram pre-warms started
        self.stopping = False
        self.closed = False
        self.instances: list[InstanceState] = []
        self._ids = ids if ids is not None else itertools.count()
        fidx = np.asarray(function_idx)
        gids = list(range(len(functions))) if function_ids is None else [int(g) for g in function_ids]
        self.single = len(functions) == 1 and function_ids is None
        self.fidx = fidx
        self.fns: list[FunctionState] = []
        for i, f in enumerate(functions):
            # int32: a trial has at most 2 x 50 M requests (workload.generate_arrivals), and a simulated day's
            # indices in int64 would cost 8 bytes a request
            order = np.arange(len(fidx), dtype=np.int32) if self.single else \
                np.flatnonzero(fidx == gids[i]).astype(np.int32)
            mem = int(mem_per_instance[i]) if mem_per_instance is not None else 0
            self.fns.append(FunctionState(idx=i, gidx=gids[i], spec=f, order=order, mem_bytes=mem,
                                          batcher=make_batcher(variant.batching, slo_latency_ms=slo_latency_ms)))
        self._needs_intended = [getattr(fn.batcher, "deadline_s", None) is not None for fn in self.fns]
        self.free_slots: list[int] = list(range(slots if slots is not None else variant.max_instances)) \
            if self.spatial else []
        # Exclusive: the one resident instance (starting, idle or busy) and the swap waiting for it to go.
        self.resident: InstanceState | None = None
        self._swap_to: tuple[FunctionState, float | None] | None = None
        self.log: list[tuple] | None = [] if trace else None

    # ---- events -----------------------------------------------------------------------------------------
    def prestart(self, now: float) -> list:
        """Before the load: min_instances per function (exclusive: one, for the first function, if any)."""
        out: list = []
        self._log("prestart", now)
        if self.variant.min_instances > 0:
            if self.exclusive:
                self._start_exclusive(self.fns[0], now, out, prestart=True)
            else:
                for fn in self.fns:
                    for _ in range(self.variant.min_instances):
                        if not self._start(fn, now, out, prestart=True):
                            raise CoreError(f"function {fn.spec.name!r}: {self.variant.min_instances} min "
                                            "instances do not fit the device's memory or shares")
        self._timers(now, out)
        return self._out(out)

    def arrival(self, f: int, count: int, now: float) -> list:
        fn = self.fns[f]
        log = self.log
        if log is not None:
            self._log("arrival", now, f, count)
        out: list = []
        if self.closed:
            return self._out(out)
        fn.tail += count
        if fn.quiet_since is not None:
            self.keep_alive.observe_idle(fn.idx, now - fn.quiet_since)
            fn.quiet_since = None
        fn.batcher.note_arrival(now, count)
        if fn.failed is not None:
            self._fail_queue(fn, out)
            return self._out(out)
        if self.exclusive:
            self._exclusive_step(now, out)
        else:
            if fn.idle:
                self._dispatch(fn, now, out)
            if fn.n_starting + fn.n_idle + fn.n_busy < self.autoscaler.max_instances:
                self._autoscale(fn, now, out)
            if fn.wait_until is not None:
                out.append((TIMER, fn.wait_until))
        return out if log is None else self._out(out)

    def instance_ready(self, inst: InstanceState, now: float, ok: bool = True, error: str = "") -> list:
        fn = inst.fn
        self._log("instance_ready", now, inst.id, ok)
        out: list = []
        fn.n_starting -= 1
        if not ok:
            fn.failures += 1
            inst.state = EVICTED
            inst.life.end_s = now
            inst.life.evicted = True
            if fn.failures >= MAX_COLD_START_FAILURES or inst.prestart:
                fn.failed = error or f"cold start of {fn.spec.name!r} failed"
                self._fail_queue(fn, out)
            self._release(inst, now, out)
            return self._out(out)
        if inst.keep_until_s is not None:
            self.prewarms += 1
        inst.ready_s = now
        inst.state = IDLE
        fn.n_idle += 1
        self._became_idle(inst, now, out)
        return self._out(out)

    def batch_done(self, inst: InstanceState, now: float, t_start: float, ok: bool = True) -> list:
        """The instance's batch (inst.current) ended at now; rows were written by the driver (record_batch)."""
        fn = inst.fn
        log = self.log
        if log is not None:
            self._log("batch_done", now, inst.id, t_start, ok)
        out: list = []
        k = len(inst.current)
        if ok and not self.closed:
            fn.batcher.observe(k, now - t_start)
        fn.in_flight -= k
        inst.current = None
        inst.life.busy_s += now - t_start
        inst.life.last_busy_end_s = now
        inst.batches += 1
        inst.keep_until_s = None  # a used pre-warm follows the normal keep-alive from now on
        if inst.state == BUSY:
            fn.n_busy -= 1
            fn.n_idle += 1
            inst.state = IDLE
        if fn.tail == fn.head and fn.in_flight == 0:
            fn.quiet_since = now
        if inst.state == IDLE:
            self._became_idle(inst, now, out)
        return out if log is None else self._out(out)

    def released(self, inst: InstanceState, now: float) -> list:
        """An evicted (or failed) instance is gone: free its memory and slot; blocked starts retry."""
        self._log("released", now, inst.id)
        out: list = []
        self._release(inst, now, out)
        return self._out(out)

    def instance_dead(self, inst: InstanceState, now: float) -> list:
        """An idle instance's process is gone: evict it (a batch would only fail)."""
        self._log("instance_dead", now, inst.id)
        out: list = []
        if inst.state == IDLE and not inst.evict:
            self._evict(inst, now, out)
        return self._out(out)

    def crashed(self, inst: InstanceState, now: float) -> list:
        """The driver lost an instance to its own error: whatever it was running ends as errors."""
        fn = inst.fn
        self._log("crashed", now, inst.id)
        out: list = []
        if inst.state == STARTING:
            fn.n_starting -= 1
        if inst.state != EVICTED:
            self._leave(inst, now)
        if inst.current is not None:
            fn.in_flight -= len(inst.current)
            out.append((FINISH, inst.current, OUTCOME_ERROR))
            inst.current = None
        return self._out(out)

    def timer(self, now: float) -> list:
        """Wait deadlines of batchers, keep-alive evictions and pre-warms that are due; the next timer."""
        self._log("timer", now)
        out: list = []
        if self.stopping:
            return self._out(out)
        if self.exclusive:
            self._exclusive_step(now, out)
        else:
            for fn in self.fns:
                if fn.queued and fn.idle:
                    self._dispatch(fn, now, out)
                for inst in list(fn.idle):
                    if not inst.evict and fn.queued == 0 and fn.alive > self.autoscaler.min_instances \
                            and now >= self.evict_deadline(inst):
                        self._evict(inst, now, out)
                until = self._claim_prewarm(fn, now)
                if until is not None:
                    self._start(fn, now, out, prestart=False, keep_until_s=until)
        self._timers(now, out)
        return self._out(out)

    def stop(self, now: float) -> list:
        """The run ends: no batch starts any more; idle and starting instances are told to go."""
        self._log("stop", now)
        self.stopping = True
        return self._out([])

    def close(self, end_s: float) -> list:
        """After the driver stopped everything: what is still queued or running is dropped; instances still alive
        end at end_s, not evicted (they were alive when the run ended)."""
        out: list = []
        self.closed = True
        outcome = self.rows["outcome"]
        for fn in self.fns:
            sent = fn.order[:fn.tail]
            left = sent[outcome[sent] == OUTCOME_PENDING]
            if len(left):
                out.append((FINISH, left, OUTCOME_DROPPED))
            fn.head = fn.tail
            fn.in_flight = 0
        for inst in self.instances:
            if inst.state != EVICTED:
                inst.life.end_s = max(end_s, inst.life.start_s)
                inst.life.evicted = False
                inst.life.last_busy_end_s = min(inst.life.last_busy_end_s, inst.life.end_s)
        return out

    # ---- reading ----------------------------------------------------------------------------------------
    def pending(self) -> int:
        """Requests sent but not finished (queued or running)."""
        return sum(fn.queued + fn.in_flight for fn in self.fns)

    def state(self) -> dict:
        return {
            "queue_depth": sum(fn.queued for fn in self.fns),
            "instances_starting": sum(fn.n_starting for fn in self.fns),
            "instances_idle": sum(fn.n_idle for fn in self.fns),
            "instances_busy": sum(fn.n_busy for fn in self.fns),
        }

    def evict_deadline(self, inst: InstanceState) -> float:
        if inst.keep_until_s is not None:
            return inst.keep_until_s
        return inst.idle_since_s + self.keep_alive.plan(inst.fn.idx).evict_after_s

    def shift(self, dt: float) -> None:
        """Times recorded before run time 0 was fixed (prestarts, on an absolute clock) move by -dt."""
        for inst in self.instances:
            inst.cs_start_s -= dt
            inst.delay_end_s -= dt
            inst.ready_s -= dt
            inst.idle_since_s -= dt
            life = inst.life
            life.start_s -= dt
            life.end_s -= dt
            life.last_busy_end_s -= dt

    # ---- dispatching ------------------------------------------------------------------------------------
    def _dispatch(self, fn: FunctionState, now: float, out: list) -> bool:
        """Give fn's queued work to its idle instances while the batcher releases batches. True if any ran."""
        ran = False
        while fn.idle and fn.tail > fn.head and not self.stopping:
            inst = fn.idle[-1]
            idx = self._decide(fn, now, out)
            if idx is None:
                break
            fn.idle.pop()
            self._run(inst, idx, out)
            ran = True
        return ran

    def _run(self, inst: InstanceState, idx: np.ndarray, out: list) -> None:
        fn = inst.fn
        inst.state = BUSY
        inst.current = idx
        inst.held_from, inst.taken_s = fn.held_from, fn.taken_s
        fn.n_idle -= 1
        fn.n_busy += 1
        out.append((RUN, inst, idx))

    def _became_idle(self, inst: InstanceState, now: float, out: list) -> None:
        fn = inst.fn
        inst.idle_since_s = now
        fn.idle.append(inst)
        if self.stopping:
            return
        if self.exclusive:
            self._exclusive_step(now, out)
            return
        if fn.tail > fn.head:
            self._dispatch(fn, now, out)
            if fn.wait_until is not None:
                out.append((TIMER, fn.wait_until))
        if inst.state == IDLE and not inst.evict and fn.tail == fn.head and \
                fn.n_starting + fn.n_idle + fn.n_busy > self.autoscaler.min_instances:
            deadline = self.evict_deadline(inst)
            if now >= deadline:
                self._evict(inst, now, out)
            else:
                out.append((TIMER, deadline))

    def _decide(self, fn: FunctionState, now: float, out: list):
        """Ask the batcher; drop what it sheds (FINISH); return the indices to run now, or None (then fn.wait_until
        says when to ask again, None for 'on the next arrival')."""
        rows = self.rows
        fn.wait_until = None
        while fn.tail > fn.head:
            queued = fn.tail - fn.head
            intended = None
            if self._needs_intended[fn.idx]:
                view = min(queued, fn.batcher.max_batch_size * _ADAPTIVE_VIEW + 64)
                intended = rows["intended_s"][fn.order[fn.head:fn.head + view]]
            batcher = fn.batcher
            oldest = rows["sent_s"][fn.order[fn.head]].item() if batcher.reads_oldest else math.nan
            d = batcher.decide(now, queued, oldest, intended)
            if d.drop:
                k = min(d.drop, fn.queued)
                out.append((FINISH, fn.order[fn.head:fn.head + k], OUTCOME_DROPPED))
                fn.head += k
                if fn.queued == 0 and fn.in_flight == 0:
                    fn.quiet_since = now
            if d.take > 0 and fn.queued > 0:
                return self._take(fn, d.take, now)
            if d.drop and d.wait_until_s is not None and d.wait_until_s <= now:
                continue  # dropped a visible prefix; look at what is behind it
            fn.wait_until = d.wait_until_s
            if fn.queued > 0 and fn.hold_since is None:
                fn.hold_since = now  # a free instance, queued work, and the batcher says wait
            return None
        fn.hold_since = None
        return None

    def _take(self, fn: FunctionState, k: int, now: float) -> np.ndarray:
        """The next k queued requests become a batch."""
        k = min(k, fn.tail - fn.head)
        idx = fn.order[fn.head:fn.head + k]
        fn.head += k
        fn.in_flight += k
        fn.held_from, fn.hold_since = fn.hold_since, None
        fn.taken_s = now
        fn.wait_until = None
        return idx

    def _fail_queue(self, fn: FunctionState, out: list) -> None:
        """The function cannot start instances any more: its queued requests are errors."""
        if fn.queued <= 0:
            return
        out.append((FINISH, fn.order[fn.head:fn.tail], OUTCOME_ERROR))
        fn.head = fn.tail

    # ---- starting and evicting --------------------------------------------------------------------------
    def _autoscale(self, fn: FunctionState, now: float, out: list) -> None:
        """Start instances if queued + in-flight work per instance exceeds the target."""
        want = self.autoscaler.to_start(fn.queued, fn.in_flight, fn.alive)
        for _ in range(want):
            if not self._start(fn, now, out, prestart=False):
                fn.start_blocked = True
                self._make_room(fn, now, out)
                return
        fn.start_blocked = False

    def _admit(self, fn: FunctionState) -> tuple[bool, int | None]:
        if self.memory_budget_bytes is not None and fn.mem_bytes and \
                self.resident_bytes + fn.mem_bytes > self.memory_budget_bytes:
            return False, None
        slot = None
        if self.spatial:
            if not self.free_slots:
                return False, None
            slot = self.free_slots.pop(0)
        self.resident_bytes += fn.mem_bytes
        return True, slot

    def _start(self, fn: FunctionState, now: float, out: list, *, prestart: bool,
               keep_until_s: float | None = None, force: bool = False) -> InstanceState | None:
        """Reserve memory (and a spatial slot) and start an instance; None if full (unless force)."""
        if force:
            self.resident_bytes += fn.mem_bytes
            slot = None
        else:
            ok, slot = self._admit(fn)
            if not ok:
                return None
        iid = next(self._ids)
        share = 1.0 if self.exclusive else self.share
        life = InstanceLife(function=fn.gidx, instance=iid, share=share, start_s=now, end_s=now,
                            last_busy_end_s=now, busy_s=0.0, evicted=False, device=self.device)
        inst = InstanceState(id=iid, fn=fn, share=share, life=life, prestart=prestart, slot=slot,
                             keep_until_s=keep_until_s, cs_start_s=now, delay_end_s=now + self.platform_delay_s)
        fn.n_starting += 1
        self.instances.append(inst)
        out.append((START, inst))
        return inst

    def _make_room(self, fn: FunctionState, now: float, out: list) -> None:
        """A start was refused for lack of memory / slots: evict the longest-idle instance of another function
        (LRU). The blocked function retries when that instance is released."""
        victims = [i for i in self.instances if i.state == IDLE and i.fn is not fn and not i.evict]
        if victims:
            self._evict(min(victims, key=lambda i: i.idle_since_s), now, out)

    def _evict(self, inst: InstanceState, now: float, out: list) -> None:
        inst.evict = True
        if inst in inst.fn.idle:
            inst.fn.idle.remove(inst)
        self._leave(inst, now)
        out.append((EVICT, inst))

    def _leave(self, inst: InstanceState, now: float) -> None:
        fn = inst.fn
        if inst.state == IDLE:
            fn.n_idle -= 1
        elif inst.state == BUSY:
            fn.n_busy -= 1
        if inst in fn.idle:
            fn.idle.remove(inst)
        inst.state = EVICTED
        if not self.closed:
            inst.life.end_s = now
            inst.life.evicted = not self.stopping  # stopped with the run: alive when it ended

    def _release(self, inst: InstanceState, now: float, out: list) -> None:
        self.resident_bytes -= inst.fn.mem_bytes
        if inst.slot is not None:
            self.free_slots.append(inst.slot)
            self.free_slots.sort()
            inst.slot = None
        if self.stopping:
            return
        if self.exclusive:
            if self.resident is inst:
                self.resident = None
            self._exclusive_step(now, out)
            return
        for fn in self.fns:
            if fn.start_blocked:
                self._autoscale(fn, now, out)
                self._dispatch(fn, now, out)

    # ---- exclusive: one resident instance, swapped between functions ------------------------------------
    def _start_exclusive(self, fn: FunctionState, now: float, out: list, *, prestart: bool,
                         keep_until_s: float | None = None) -> None:
        self.resident = self._start(fn, now, out, prestart=prestart, keep_until_s=keep_until_s, force=True)

    def _exclusive_step(self, now: float, out: list) -> None:
        """What the device does next: run a batch on the resident, swap to another function (evict, then start
        once it is released), evict on keep-alive, or pre-warm."""
        if self.stopping:
            return
        res = self.resident
        rows = self.rows
        if res is not None and res.state in (STARTING, BUSY):
            return  # the device is busy; decided again when it is free
        if res is not None and res.state == EVICTED:
            return  # going; decided again on released()
        if res is None and self._swap_to is not None:
            fn, keep = self._swap_to
            self._swap_to = None
            if fn.failed is None:
                self._start_exclusive(fn, now, out, prestart=False, keep_until_s=keep)
            return
        waiting = [fn for fn in self.fns if fn.queued > 0 and fn.failed is None]
        if res is None:
            if waiting:
                target = min(waiting, key=lambda f: rows["sent_s"][f.order[f.head]])
                self._start_exclusive(target, now, out, prestart=False)
                return
            pre = self._prewarm_due(now)
            if pre is not None:
                self._start_exclusive(pre[0], now, out, prestart=False, keep_until_s=pre[1])
                return
            nxt = self._next_prewarm_s()
            if nxt is not None:
                out.append((TIMER, nxt))
            return
        target = res.fn
        if target.queued > 0:
            others = any(fn is not target for fn in waiting)
            # Another function whose oldest request has waited half the SLO latency takes the device, once the
            # resident has served at least one batch for its cold start (else two busy functions would swap back
            # and forth without serving anything): without this bound a busy function would starve the others.
            starving = [fn for fn in waiting if fn is not target
                        and now - rows["sent_s"][fn.order[fn.head]] > self.slo_latency_s / 2]
            if starving and res.batches > 0:
                nxt_fn = min(starving, key=lambda f: rows["sent_s"][f.order[f.head]])
                self._swap_to = (nxt_fn, None)
                self._evict(res, now, out)
                return
            idx = self._decide(target, now, out)
            if idx is None and others and target.queued > 0:
                # The batcher would hold the device idle while other functions wait for it: run what is queued.
                idx = self._take(target, min(target.queued, target.batcher.max_batch_size), now)
            if idx is not None:
                target.idle.remove(res)
                self._run(res, idx, out)
                return
            if target.wait_until is not None:
                out.append((TIMER, target.wait_until))
            return
        if waiting:
            self._swap_to = (min(waiting, key=lambda f: rows["sent_s"][f.order[f.head]]), None)
            self._evict(res, now, out)
            return
        if target.alive > self.autoscaler.min_instances:
            deadline = self.evict_deadline(res)
            if now >= deadline:
                self._evict(res, now, out)
            else:
                out.append((TIMER, deadline))

    # ---- histogram pre-warm ------------------------------------------------------------------------------
    def _claim_prewarm(self, fn: FunctionState, now: float) -> float | None:
        """If fn's histogram plan says to pre-warm it now, mark this quiet period as pre-warmed and return until
        when the pre-warmed instance is kept; else None."""
        plan = self.keep_alive.plan(fn.idx)
        if plan.prewarm_after_s is None or fn.quiet_since is None or fn.alive > 0 or fn.failed:
            return None
        if fn.prewarmed_for == fn.quiet_since:
            return None
        start = fn.quiet_since + plan.prewarm_after_s
        until = fn.quiet_since + (plan.keep_until_s or plan.prewarm_after_s)
        if not start <= now < until:
            return None
        fn.prewarmed_for = fn.quiet_since
        return until

    def _prewarm_due(self, now: float):
        for fn in self.fns:
            until = self._claim_prewarm(fn, now)
            if until is not None:
                return fn, until
        return None

    def _next_prewarm_s(self) -> float | None:
        times = []
        for fn in self.fns:
            plan = self.keep_alive.plan(fn.idx)
            if plan.prewarm_after_s is not None and fn.quiet_since is not None and fn.prewarmed_for != fn.quiet_since:
                times.append(fn.quiet_since + plan.prewarm_after_s)
        return min(times) if times else None

    def _timers(self, now: float, out: list) -> None:
        """The next times something may be due without an event: batcher waits, evictions, pre-warms."""
        if self.exclusive:
            return  # _exclusive_step already asked for its one timer
        times = []
        for fn in self.fns:
            if fn.wait_until is not None and fn.queued:
                times.append(fn.wait_until)
            if fn.queued == 0 and fn.alive > self.autoscaler.min_instances:
                times.extend(self.evict_deadline(i) for i in fn.idle if not i.evict)
        nxt = self._next_prewarm_s()
        if nxt is not None and nxt > now:
            times.append(nxt)
        if times:
            out.append((TIMER, max(now, min(times))))

    # ---- bookkeeping ------------------------------------------------------------------------------------
    def _out(self, out: list) -> list:
        if self.log is not None:
            self.log.append(("->", [action_key(a) for a in out]))
        return out

    def _log(self, event: str, now: float, *args) -> None:
        if self.log is not None:
            self.log.append((event, now, *args))


def action_key(action: tuple) -> tuple:
    """An action as plain data (instance ids, request indices as a tuple) for logs and comparisons."""
    kind = action[0]
    if kind == START:
        inst = action[1]
        return START, inst.id, inst.fn.gidx, inst.prestart, inst.keep_until_s
    if kind == RUN:
        return RUN, action[1].id, tuple(int(i) for i in action[2])
    if kind == EVICT:
        return EVICT, action[1].id
    if kind == TIMER:
        return TIMER, round(float(action[1]), 9)
    return FINISH, tuple(int(i) for i in action[1]), int(action[2])


def replay(core: SchedulingCore, log: list[tuple]) -> list[list[tuple]]:
    """Feed a logged event sequence (SchedulingCore(trace=True).log) to a fresh core; returns the actions of each
    event as action_key lists, to compare with the log's own "->" entries."""
    by_id: dict[int, InstanceState] = {}
    answers = []
    for entry in log:
        if entry[0] == "->":
            continue
        event, now, *args = entry
        if event == "prestart":
            acts = core.prestart(now)
        elif event == "arrival":
            acts = core.arrival(args[0], args[1], now)
        elif event == "instance_ready":
            acts = core.instance_ready(by_id[args[0]], now, args[1])
        elif event == "batch_done":
            acts = core.batch_done(by_id[args[0]], now, args[1], args[2])
        elif event == "released":
            acts = core.released(by_id[args[0]], now)
        elif event == "instance_dead":
            acts = core.instance_dead(by_id[args[0]], now)
        elif event == "crashed":
            acts = core.crashed(by_id[args[0]], now)
        elif event == "timer":
            acts = core.timer(now)
        elif event == "stop":
            acts = core.stop(now)
        else:
            raise ValueError(f"unknown event {event!r}")
        for a in acts:
            if a[0] == START:
                by_id[a[1].id] = a[1]
        answers.append([action_key(a) for a in acts])
    return answers


def logged_actions(log: list[tuple]) -> list[list[tuple]]:
    return [entry[1] for entry in log if entry[0] == "->"]


def spatial_slots(plan, share: float, max_instances: int) -> int:
    """How many instances a spatial plan has room for: its CPU core sets, its MIG devices, else 1 / share (MPS);
    max_instances without a plan."""
    if plan is None:
        return max_instances
    if getattr(plan, "core_sets", None):
        return len(plan.core_sets)
    if getattr(plan, "mig_devices", None):
        return len(plan.mig_devices)
    return max(1, int(math.floor(1.0 / share + 1e-9)))


# ---- placement of functions on a fleet's devices ---------------------------------------------------------
PLACEMENTS = ("first_fit", "load_pack")
LOAD_PACK_TARGET = 0.7  # load_pack fills a device up to this measured utilisation before opening the next


def place(mem_bytes: Sequence[int], loads: Sequence[float], devices: int, budget_bytes: int | None,
          policy: str) -> list[int]:
    """The device of each function. mem_bytes: one instance's memory; loads: measured work per second of run time
    (arrival rate x mean service time: 1.0 keeps one instance busy all the time).

    first_fit: functions in spec order, each on the first device whose placed functions (one instance each) still
      leave room for it in memory.
    load_pack: heaviest first, each on the first device whose measured load stays within LOAD_PACK_TARGET and whose
      memory fits (first-fit decreasing: few devices run hot, the rest stay free).
    A function that fits nowhere goes to the device with the most free memory (its instances then compete there:
    the core evicts idle ones, least recently used first)."""
    if policy not in PLACEMENTS:
        raise ValueError(f"unknown placement {policy!r} (one of {', '.join(PLACEMENTS)})")
    n = len(mem_bytes)
    devices = max(1, int(devices))
    used = [0] * devices
    load = [0.0] * devices
    out = [0] * n
    cap = budget_bytes if budget_bytes is not None else math.inf
    order = range(n) if policy == "first_fit" else sorted(range(n), key=lambda i: (-loads[i], i))
    for i in order:
        fits = [d for d in range(devices) if used[d] + mem_bytes[i] <= cap
                and (policy == "first_fit" or load[d] + loads[i] <= LOAD_PACK_TARGET or load[d] == 0.0)]
        d = fits[0] if fits else min(range(devices), key=lambda d: (used[d], load[d], d))
        out[i] = d
        used[d] += mem_bytes[i]
        load[d] += loads[i]
    return out


# ---- what both drivers write -------------------------------------------------------------------------------
def record_batch(rows: dict[str, np.ndarray], inst: InstanceState, idx: np.ndarray, t_start: float, t_end: float,
                 ok: bool) -> None:
    """Write a finished batch's rows: start, instance, size, batch wait, cold wait (and its modelled part), end."""
    k = len(idx)
    if k == 1:  # scalar writes: the common unbatched case, ~10x cheaper than fancy indexing
        i = int(idx[0])
        sent = rows["sent_s"][i]
        rows["batch_start_s"][i] = t_start
        rows["instance"][i] = inst.id
        rows["batch_size"][i] = 1
        if inst.held_from is not None:
            rows["batch_wait_s"][i] = max(0.0, inst.taken_s - max(sent, inst.held_from))
        if sent < inst.ready_s:
            waited_from = max(sent, inst.cs_start_s)
            rows["cold_wait_s"][i] = inst.ready_s - waited_from
            if inst.delay_end_s > waited_from:
                rows["modelled_wait_s"][i] = inst.delay_end_s - waited_from
        if ok:
            rows["completed_s"][i] = t_end
            rows["outcome"][i] = OUTCOME_OK
        else:
            rows["outcome"][i] = OUTCOME_ERROR
        return
    sent = rows["sent_s"][idx]
    rows["batch_start_s"][idx] = t_start
    rows["instance"][idx] = inst.id
    rows["batch_size"][idx] = k
    bwait, cold, modelled = batch_waits(sent, inst.held_from, inst.taken_s, inst.ready_s, inst.cs_start_s,
                                        inst.delay_end_s)
    rows["batch_wait_s"][idx] = bwait
    rows["cold_wait_s"][idx] = cold
    rows["modelled_wait_s"][idx] = modelled
    if ok:
        rows["completed_s"][idx] = t_end
        rows["outcome"][idx] = OUTCOME_OK
    else:
        rows["outcome"][idx] = OUTCOME_ERROR


def batch_waits(sent, held_from, taken_s, ready_s, cs_start_s, delay_end_s):
    """(batch wait, cold wait, its modelled part) of requests sent at `sent` that ran on an instance whose batch the
    batcher released at taken_s after holding it since held_from (None or NaN: not held), ready at ready_s after a
    cold start from cs_start_s whose modelled delay ended at delay_end_s. Arrays broadcast: the simulated driver's
    recorder computes a window's batches at once (workers.recorder)."""
    sent = np.asarray(sent, dtype=np.float64)
    if held_from is None:
        bwait = np.zeros_like(sent)
    else:
        # Only the time the batcher held them while an instance was free; wake-up and bookkeeping overheads
        # stay in queue_wait, where they belong.
        bwait = np.nan_to_num(np.maximum(0.0, taken_s - np.maximum(sent, held_from)), nan=0.0)
    waited_from = np.maximum(sent, cs_start_s)
    waited = sent < ready_s
    cold = np.where(waited, np.clip(ready_s - waited_from, 0.0, None), 0.0)
    modelled = np.where(waited, np.clip(delay_end_s - waited_from, 0.0, None), 0.0)
    return bwait, cold, modelled


def cold_start_record(inst: InstanceState, t_ready: float, timings_ms: dict, *, platform_delay_s: float,
                      page_cache_resident=None, weights_bytes=None) -> ColdStart:
    """The ColdStart of a finished start: its phases, the modelled delay as its own phase, and total = the span
    the platform saw (what a request that arrived as the start began waited)."""
    timings = dict(timings_ms or {})
    if platform_delay_s > 0:
        timings["platform_delay_modelled"] = platform_delay_s * 1e3
    timings["total"] = (t_ready - inst.cs_start_s) * 1e3
    return ColdStart(function=inst.fn.gidx, instance=inst.id, start_s=inst.cs_start_s, end_s=t_ready,
                     load_ms=float(timings.get("load", 0.0)) + float(timings.get("to_device", 0.0)),
                     during_load=not inst.prestart, timings_ms=timings,
                     page_cache_resident=page_cache_resident, weights_bytes=weights_bytes)
