"""The serverless platform, on a real device.

Per function: a request queue and a pool of instances (starting -> idle <-> busy -> evicted). The open-
loop dispatcher hands requests to `submit`; free instances ask the function's batcher what to run; the
autoscaler starts instances (real cold starts: workers.instance) when queued + in-flight work per
instance exceeds the target concurrency; the keep-alive policy evicts idle ones. Decisions come from
the policy objects of workers.policies, driven here with the wall clock (`time.perf_counter()` minus t0,
where t0 is the instant the first arrival is due).

Queues cost nothing per request: the arrivals of function f, in order, are `order = indices of f`, and
its queue is the window order[head:tail]; the dispatcher advances tail, batches advance head. Each
request's row in the recorder is written by the one thread that ran (or dropped) it.

Runtimes: each instance is its own process by default (workers.instance.ProcessRunner: a real process
start, torch import, device context, weights read from disk); `runtime: "thread"` keeps instances as threads
of this process (ThreadRunner), labelled "shared process, no isolation".

Sharing modes:
  exclusive  - one device thread owns the device; at most one instance is resident. A request for
               another function evicts the resident one (when it is idle) and pays a real cold start.
  time_slice - one thread per instance here, each driving its instance (a process, or a model in this
               process), running concurrently with no partition (on CUDA: separate contexts, or streams
               with the thread runtime).
  spatial    - one process per instance with a fixed share: on CPU pinned to a disjoint core set
               (sched_setaffinity + torch.set_num_threads(len(cores)), read back from the child and
               reported); on CUDA with CUDA_MPS_ACTIVE_THREAD_PERCENTAGE or CUDA_VISIBLE_DEVICES=<MIG
               uuid> set in the child before it initialises CUDA.

GPU paths (CUDA streams, MPS, MIG) are guarded so this module imports and runs without a GPU; they are
UNTESTED on this project's CI machines, which have no GPU.
"""

from __future__ import annotations

import math
import os
import select
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers import zoo
from workers.instance import ModelRaised, ProcessRunner, ThreadRunner
from workers.policies import Autoscaler, Batcher, KeepAlivePolicy, make_batcher, make_keep_alive
from workers.recorder import Recorder
from workers.records import (
    OUTCOME_DROPPED,
    OUTCOME_ERROR,
    OUTCOME_OK,
    OUTCOME_PENDING,
    ColdStart,
    InstanceLife,
)
from workers.spec import FunctionSpec, VariantSpec

STARTING, IDLE, BUSY, EVICTED = "starting", "idle", "busy", "evicted"
MAX_COLD_START_FAILURES = 3  # per function; then its requests end as errors instead of retrying forever
_WAIT_CAP_S = 0.25  # an instance re-checks stop / eviction at least this often
_ADAPTIVE_VIEW = 4  # the adaptive batcher sees the first max_batch_size * this + 64 queued requests

# Share of the device's memory instances may fill; the rest is headroom for the runtime, the allocator's
# fragmentation and (on CPU) this process itself. Estimates are per instance at its max batch size.
MEMORY_HEADROOM = 0.8


class PlatformError(RuntimeError):
    """The platform could not do what the trial asked (e.g. a min instance failed its cold start)."""


def choose_torch_threads(device_kind: str, cores: int, concurrent_instances: int) -> int:
    """Torch intra-op threads for instances that run in this process (exclusive, time_slice).

    Why not all cores: the open-loop dispatcher and the platform's bookkeeping are Python threads of this
    process that must wake within microseconds of their due times. An OpenMP team that spans every core
    stalls at each barrier whenever one of its cores is taken by the dispatcher (measured on the 2-core
    CI box: a cnn-small batch loop at 2 threads beside a 3,000 rps dispatcher fell from ~9,000 to ~1,000
    requests/s in one run; at 1 thread it held steady). So one core is left to the dispatcher and the
    rest is split between the instances that can compute at once. On CUDA the kernels run on the GPU and
    one host thread per instance feeds them.
    """
    if device_kind != "cpu":
        return 1
    return max(1, (max(1, cores) - 1) // max(1, concurrent_instances))


def _normal_priority() -> None:
    """Run the calling thread at ordinary priority. Threads inherit the scheduling policy of the thread that
    creates them, and instances are sometimes started from the dispatcher's sink, whose thread runs at a
    real-time priority (see workers.dispatcher): the system under test must not inherit that."""
    tid = threading.get_native_id()
    try:
        if os.sched_getscheduler(tid) != os.SCHED_OTHER:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        if os.getpriority(os.PRIO_PROCESS, tid) < 0:
            os.setpriority(os.PRIO_PROCESS, tid, 0)
    except (OSError, AttributeError):
        pass


def configure_torch_threads(n: int) -> dict:
    """Set torch's intra-op threads (process-wide); returns the previous settings for restore_torch_threads."""
    import torch

    before = {"intra_op": torch.get_num_threads()}
    torch.set_num_threads(max(1, int(n)))
    try:
        # Inter-op parallelism is unused by eager inference; one pool thread avoids idle spinners. It can
        # only be set before the pool first runs, so a second trial in the same process keeps the setting.
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    return before


def restore_torch_threads(before: dict) -> None:
    import torch

    if before.get("intra_op"):
        torch.set_num_threads(int(before["intra_op"]))


class _WakeCondition(threading.Condition):
    """A Condition whose waiters can also wake when a file descriptor becomes readable.

    An instance process answers a batch on its socket. The thread that drives it waits for work with
    wait_fd(timeout, fd): it wakes on a notify (new work, eviction, stop) or when the process answers a batch
    that the dispatcher's thread handed to it directly (see Platform._push). That saves the cross-thread wake-up
    per request that a plain Condition would add: arrival -> process instead of arrival -> thread -> process.
    notify() wakes fd-waiters too (spurious wake-ups are fine: every waiter re-checks its state).
    """

    def __init__(self) -> None:
        super().__init__()
        self._fd_waiters: dict[int, int] = {}  # thread id -> write end of its wake pipe
        self._pipes = threading.local()

    def _pipe(self) -> tuple[int, int]:
        pipe = getattr(self._pipes, "fds", None)
        if pipe is None:
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            pipe = self._pipes.fds = (r, w)
        return pipe

    def wait_fd(self, timeout: float, fd: int) -> bool:
        """Under the lock: release it, wait for a notify, fd readable or the timeout; re-acquire. True if fd is
        readable."""
        r, w = self._pipe()
        me = threading.get_ident()
        self._fd_waiters[me] = w
        saved = self._release_save()
        try:
            ready, _, _ = select.select([r, fd], [], [], max(0.0, timeout))
        finally:
            self._acquire_restore(saved)
            self._fd_waiters.pop(me, None)
        if r in ready:
            try:
                while os.read(r, 64):
                    pass
            except BlockingIOError:
                pass
        return fd in ready

    def close_pipe(self) -> None:
        """Called by a waiting thread before it ends: its wake pipe is closed."""
        pipe = getattr(self._pipes, "fds", None)
        if pipe is not None:
            for f in pipe:
                os.close(f)
            self._pipes.fds = None

    def _wake_fd_waiters(self) -> None:
        for w in list(self._fd_waiters.values()):
            try:
                os.write(w, b"x")
            except (BlockingIOError, OSError):
                pass  # its pipe is full (it will wake) or closed (it is gone)

    def notify(self, n: int = 1) -> None:
        super().notify(n)
        self._wake_fd_waiters()

    def notify_all(self) -> None:
        super().notify_all()
        self._wake_fd_waiters()


# ---- state ------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Function:
    idx: int
    spec: FunctionSpec
    order: np.ndarray  # request indices of this function, in arrival order
    batcher: Batcher
    cond: _WakeCondition
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
    instances: list = field(default_factory=list)
    parked: list = field(default_factory=list)  # idle process instances waiting with wait_fd (may be pushed to)

    @property
    def alive(self) -> int:
        return self.n_starting + self.n_idle + self.n_busy

    @property
    def queued(self) -> int:
        return self.tail - self.head


@dataclass(eq=False)
class _Instance:
    id: int
    fn: _Function
    share: float
    life: InstanceLife
    prestart: bool
    state: str = STARTING
    runner: Any = None
    slot: int | None = None
    cs_start_s: float = math.nan
    delay_end_s: float = math.nan  # end of the modelled platform delay (cs_start_s when there is none)
    ready_s: float = math.nan
    idle_since_s: float = math.nan
    keep_until_s: float | None = None  # a pre-warmed instance is kept until then unless used
    evict: bool = False
    current: Any = None  # indices of the batch it is running
    held_from: float | None = None  # the hold (batcher said wait) that ended with its current batch
    taken_s: float = math.nan  # when the batcher released its current batch
    batches: int = 0  # batches run since its cold start
    thread: threading.Thread | None = None
    pushed_at: float | None = None  # its current batch was handed to its process at this run time


class Platform:
    """Runs one trial's functions on one device. Lifecycle: prestart() -> set_t0() -> submit()... ->
    pending() reaches 0 (or the engine gives up) -> close(end_s)."""

    def __init__(self, functions: Sequence[FunctionSpec], variant: VariantSpec, *, recorder: Recorder,
                 function_idx: np.ndarray, model_dir: Path, slo_latency_ms: float, device_kind: str = "cpu",
                 torch_device: str = "cpu", plan: Any = None, memory_budget_bytes: int | None = None,
                 mem_per_instance: Sequence[int] | None = None, share: float | None = None,
                 child_threads: int = 1):
        self.functions = list(functions)
        self.runtime = variant.runtime
        self.platform_delay_s = float(variant.platform_delay_ms) / 1000.0
        self.child_threads = max(1, int(child_threads))  # torch threads of each instance process (not spatial)
        self._stop_event = threading.Event()
        self.variant = variant
        self.rec = recorder
        self.model_dir = Path(model_dir)
        self.device_kind = device_kind
        self.torch_device = torch_device
        self.plan = plan
        self.mode = variant.sharing
        self.exclusive = self.mode == "exclusive"
        self.spatial = self.mode == "spatial"
        self.slo_latency_s = float(slo_latency_ms) / 1000.0
        self.memory_budget_bytes = memory_budget_bytes
        self.resident_bytes = 0
        self.autoscaler = Autoscaler(variant.min_instances, variant.max_instances, variant.target_concurrency)
        self.keep_alive: KeepAlivePolicy = make_keep_alive(variant.keep_alive)
        self.share = float(share) if share is not None else variant.effective_share
        self.prewarms = 0  # histogram pre-warm cold starts (not paid by a request unless one came during it)
        self.notes: list[str] = []
        self.errors = 0
        self.error_messages: list[str] = []
        self.spatial_children: list[dict] = []
        self._t0 = 0.0  # absolute perf_counter of run time 0 (0 until set_t0: prestart times are absolute)
        self._stopping = False
        self._closed = False
        self._lock = threading.Lock()  # instance ids, memory, slots
        self._next_id = 0
        self._threads: list[threading.Thread] = []
        self._instances: list[_Instance] = []
        # Exclusive: one condition for all queues, since one device thread serves them all.
        shared = _WakeCondition() if self.exclusive else None
        self.fns: list[_Function] = []
        fidx = np.asarray(function_idx)
        self._single = len(self.functions) == 1
        self._fidx = fidx
        for i, f in enumerate(self.functions):
            order = np.arange(len(fidx), dtype=np.int64) if self._single else np.flatnonzero(fidx == i)
            batcher = make_batcher(variant.batching, slo_latency_ms=slo_latency_ms)
            mem = int(mem_per_instance[i]) if mem_per_instance is not None else 0
            self.fns.append(_Function(idx=i, spec=f, order=order, batcher=batcher,
                                      cond=shared or _WakeCondition(), mem_bytes=mem))
        self._needs_intended = [getattr(fn.batcher, "deadline_s", None) is not None for fn in self.fns]
        self._free_slots: list[int] = []
        if self.spatial:
            n_slots = self._slot_count()
            self._free_slots = list(range(n_slots))
        self._device_thread: threading.Thread | None = None
        self._controller: threading.Thread | None = None
        self._wake_device = shared
        self._prestarted = threading.Event()

    # ---- clock ------------------------------------------------------------------------------------------
    def now(self) -> float:
        return time.perf_counter() - self._t0

    # ---- lifecycle ----------------------------------------------------------------------------------------
    def prestart(self, timeout_s: float = 600.0, *, should_stop=None, poll_s: float = 0.2) -> bool:
        """Start min_instances per function before the load (exclusive: one, for the first function that
        asks for any) and wait until they are ready. Their cold starts are prestarts, not request latency.
        Returns False if should_stop() said stop meanwhile (polled every poll_s)."""
        if self.exclusive:
            first = next((fn for fn in self.fns if self.variant.min_instances > 0), None)
            self._device_thread = threading.Thread(target=self._exclusive_main, args=(first,),
                                                   name="device", daemon=True)
            self._device_thread.start()
            self._threads.append(self._device_thread)
        else:
            for fn in self.fns:
                with fn.cond:
                    for _ in range(self.variant.min_instances):
                        if not self._start_instance(fn, prestart=True):
                            raise PlatformError(f"function {fn.spec.name!r}: {self.variant.min_instances} min "
                                                "instances do not fit the device's memory or shares")
            if self.variant.keep_alive.policy == "histogram":
                self._controller = threading.Thread(target=self._controller_main, name="prewarm", daemon=True)
                self._controller.start()
                self._threads.append(self._controller)
        deadline = time.perf_counter() + timeout_s
        last_poll = time.perf_counter()
        while True:
            starting = [i for i in self._instances if i.state == STARTING]
            if not starting and (not self.exclusive or self._prestarted.is_set()):
                break
            if time.perf_counter() > deadline:
                raise PlatformError(f"min instances not ready within {timeout_s:.0f} s")
            if should_stop is not None and time.perf_counter() - last_poll >= poll_s:
                last_poll = time.perf_counter()
                if should_stop():
                    return False
            time.sleep(0.01)
        failed = [fn for fn in self.fns if fn.failed]
        if failed:
            raise PlatformError(failed[0].failed)
        return True

    def set_t0(self, t0_abs: float) -> None:
        """Fix run time 0 (perf_counter value of the first intended arrival). Times recorded before (the
        prestarts) were absolute; they are shifted so that they read as negative run times."""
        conds = {id(fn.cond): fn.cond for fn in self.fns}.values()
        for c in conds:
            c.acquire()
        try:
            for inst in self._instances:
                inst.cs_start_s -= t0_abs
                inst.delay_end_s -= t0_abs
                inst.ready_s -= t0_abs
                inst.idle_since_s -= t0_abs
                life = inst.life
                life.start_s -= t0_abs
                life.end_s -= t0_abs
                life.last_busy_end_s -= t0_abs
            for cs in self.rec.cold_starts:
                cs.start_s -= t0_abs
                cs.end_s -= t0_abs
            self._t0 = t0_abs
        finally:
            for c in conds:
                c.release()

    # ---- the dispatcher's sink ---------------------------------------------------------------------------
    def submit(self, i: int, j: int, now: float) -> None:
        """Requests [i, j) were sent at run time `now` (the dispatcher already wrote their sent_s)."""
        if self._single:
            self._enqueue(self.fns[0], j - i, now)
            return
        if j - i == 1:
            self._enqueue(self.fns[int(self._fidx[i])], 1, now)
            return
        counts = np.bincount(self._fidx[i:j], minlength=len(self.fns))
        for f in np.flatnonzero(counts):
            self._enqueue(self.fns[int(f)], int(counts[f]), now)

    def _enqueue(self, fn: _Function, count: int, now: float) -> None:
        with fn.cond:
            if self._closed:
                return
            fn.tail += count
            if fn.quiet_since is not None:
                self.keep_alive.observe_idle(fn.idx, now - fn.quiet_since)
                fn.quiet_since = None
            fn.batcher.note_arrival(now, count)
            if fn.failed is not None:
                self._fail_queue(fn, now)
                return
            if fn.parked and self._push(fn, now):
                return  # handed straight to an idle instance process: nobody else needs waking
            if not self.exclusive and fn.alive < self.autoscaler.max_instances:
                self._autoscale(fn)
            fn.cond.notify()

    def _push(self, fn: _Function, now: float) -> bool:
        """Under fn.cond, in the dispatcher's thread: if the batcher releases a batch now and an idle instance
        process is parked, send the batch to that process directly; its thread wakes on the answer. The same
        decision the instance's thread would take (same batcher call, same bookkeeping), one wake-up sooner."""
        if self.exclusive and any(f.queued for f in self.fns if f is not fn):
            return False  # the device thread decides between functions
        inst = fn.parked[-1]
        if inst.state != IDLE or inst.evict or self._stopping:
            return False
        idx = self._decide(fn, now)
        if idx is None:
            return False
        fn.parked.pop()
        self._mark_busy(inst, idx)
        inst.pushed_at = now
        inst.runner.send(len(idx))
        if fn.queued > 0:
            fn.cond.notify()  # the rest is for another instance
        return True

    def _park(self, inst: _Instance, timeout: float):
        """Under fn.cond: wait for work as a parked process instance. Returns the indices of a batch pushed to it
        meanwhile (already sent to its process), or None."""
        fn = inst.fn
        fn.parked.append(inst)
        try:
            readable = fn.cond.wait_fd(timeout, inst.runner.fileno())
        finally:
            if inst in fn.parked:
                fn.parked.remove(inst)
        if inst.pushed_at is not None:
            return inst.current
        if readable and inst.runner.dead():
            inst.evict = True  # its process is gone: retire it (a batch would only fail)
        return None

    def _autoscale(self, fn: _Function) -> None:
        """Under fn.cond: start instances if queued + in-flight work per instance exceeds the target."""
        want = self.autoscaler.to_start(fn.queued, fn.in_flight, fn.alive)
        for _ in range(want):
            if not self._start_instance(fn, prestart=False):
                fn.start_blocked = True
                self._make_room(fn)
                return
        fn.start_blocked = False

    # ---- starting and evicting ------------------------------------------------------------------------------
    def _start_instance(self, fn: _Function, *, prestart: bool, keep_until_s: float | None = None) -> bool:
        """Under fn.cond: reserve memory (and a spatial slot) and start an instance thread. False if full."""
        with self._lock:
            if self.memory_budget_bytes is not None and fn.mem_bytes and \
                    self.resident_bytes + fn.mem_bytes > self.memory_budget_bytes:
                return False
            slot = None
            if self.spatial:
                if not self._free_slots:
                    return False
                slot = self._free_slots.pop(0)
            self.resident_bytes += fn.mem_bytes
            iid = self._next_id
            self._next_id += 1
        now = self.now()
        life = InstanceLife(function=fn.idx, instance=iid, share=self.share, start_s=now, end_s=now,
                            last_busy_end_s=now, busy_s=0.0, evicted=False)
        inst = _Instance(id=iid, fn=fn, share=self.share, life=life, prestart=prestart, slot=slot,
                         keep_until_s=keep_until_s)
        inst.runner = self._make_runner(fn, slot)
        fn.n_starting += 1
        fn.instances.append(inst)
        self._instances.append(inst)
        self.rec.instances.append(life)
        inst.thread = threading.Thread(target=self._instance_main, args=(inst,),
                                       name=f"instance-{iid}-{fn.spec.name}", daemon=True)
        self._threads.append(inst.thread)
        inst.thread.start()
        return True

    def _make_runner(self, fn: _Function, slot: int | None):
        """The instance's runner: its own process (runtime "process", and always for spatial), or a thread of
        this process (runtime "thread")."""
        if not self.spatial and self.runtime == "thread":
            return ThreadRunner(fn.spec, self.torch_device, self.model_dir)
        plan = self.plan
        cores = None
        env: dict[str, str] = {}
        device = self.torch_device
        threads = self.child_threads
        if self.spatial:
            if self.device_kind == "cpu":
                cores = list(plan.core_sets[slot])
                threads = len(cores)
            elif getattr(plan, "mechanism", "") == "mig":  # untested here (no GPU on CI)
                env["CUDA_VISIBLE_DEVICES"] = str(plan.mig_devices[slot])
                device = "cuda:0"  # the only device the child can see
            elif getattr(plan, "mechanism", "") == "mps":  # untested here (no GPU on CI)
                env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(int(plan.mps_active_thread_percentage))
        return ProcessRunner(fn.spec, device, self.model_dir, cores=cores, threads=threads, env=env,
                             user_models=zoo.user_model_paths())

    def _slot_count(self) -> int:
        plan = self.plan
        if plan is None:
            return self.variant.max_instances
        if getattr(plan, "core_sets", None):
            return len(plan.core_sets)
        if getattr(plan, "mig_devices", None):
            return len(plan.mig_devices)
        return max(1, int(math.floor(1.0 / self.share + 1e-9)))

    def _make_room(self, fn: _Function) -> None:
        """A start was refused for lack of memory / slots: evict the longest-idle instance of another
        function (LRU). The blocked function retries when that eviction completes."""
        victims = [i for i in self._instances if i.state == IDLE and i.fn is not fn and not i.evict]
        if not victims:
            return
        victim = min(victims, key=lambda i: i.idle_since_s)
        victim.evict = True
        if victim.fn.cond is not fn.cond:
            # Notify without holding our own lock order the other way round: a short-lived helper does it.
            threading.Thread(target=self._notify, args=(victim.fn.cond,), daemon=True).start()
        else:
            fn.cond.notify_all()

    @staticmethod
    def _notify(cond: _WakeCondition) -> None:
        _normal_priority()
        with cond:
            cond.notify_all()

    def _released(self, inst: _Instance) -> None:
        """Memory / slot of an evicted instance is free again: let blocked functions retry."""
        with self._lock:
            self.resident_bytes -= inst.fn.mem_bytes
            if inst.slot is not None:
                self._free_slots.append(inst.slot)
                self._free_slots.sort()
        if self.exclusive or self._stopping:
            return
        for fn in self.fns:
            if fn.start_blocked:
                with fn.cond:
                    self._autoscale(fn)
                    fn.cond.notify()

    # ---- cold start ------------------------------------------------------------------------------------------
    def _cold_start(self, inst: _Instance) -> bool:
        fn = inst.fn
        t_cs = self.now()
        inst.cs_start_s = t_cs
        with fn.cond:
            inst.life.start_s = t_cs
            inst.life.end_s = t_cs
            inst.life.last_busy_end_s = t_cs
        if not inst.prestart:
            self.rec.cold_start_began.append(t_cs)  # windows count a cold start in the second it began
        try:
            delay_s = self.platform_delay_s
            if delay_s > 0:
                # MODELLED provisioning / image pull (the variant's platform_delay_ms): nothing real runs for it;
                # it is added before the real process start and reported as its own, labelled phase.
                if self._stop_event.wait(delay_s):
                    raise PlatformError("stopped during the modelled platform delay")
            inst.delay_end_s = t_cs + delay_s
            info = inst.runner.start(should_abort=lambda: self._stopping)
        except Exception as exc:  # noqa: BLE001 - a failed cold start is recorded, the trial goes on
            msg = f"cold start of {fn.spec.name!r} ({fn.spec.model}) failed: {type(exc).__name__}: {exc}"
            if not self._stopping:  # a start cut short by the end of the run is not an error
                self._note_error(msg)
            with fn.cond:
                fn.failures += 1
                fn.n_starting -= 1
                inst.state = EVICTED
                inst.life.end_s = self.now()
                inst.life.evicted = True
                if fn.failures >= MAX_COLD_START_FAILURES or inst.prestart:
                    fn.failed = msg
                    self._fail_queue(fn, self.now())
            self._retire_runner(inst)
            return False
        t_ready = self.now()
        timings = dict(info.get("timings_ms") or {})
        if self.platform_delay_s > 0:
            timings["platform_delay_modelled"] = self.platform_delay_s * 1e3
        # The whole span the instance was not ready, as the platform saw it (the modelled delay included): what a
        # request that arrived as the start began waited, so no request's cold wait exceeds it.
        timings["total"] = (t_ready - t_cs) * 1e3
        if getattr(inst.runner, "info", None):
            self.spatial_children.append({"instance": inst.id, "function": fn.spec.name, **inst.runner.info})
        if inst.keep_until_s is not None:
            self.prewarms += 1
        if not self._closed:
            self.rec.cold_starts.append(ColdStart(
                function=fn.idx, instance=inst.id, start_s=t_cs, end_s=t_ready,
                load_ms=float(timings.get("load", 0.0)) + float(timings.get("to_device", 0.0)),
                during_load=not inst.prestart, timings_ms=timings,
                page_cache_resident=info.get("page_cache_resident"), weights_bytes=info.get("weights_bytes")))
        with fn.cond:
            inst.ready_s = t_ready
            inst.idle_since_s = t_ready
            fn.n_starting -= 1
            fn.n_idle += 1
            inst.state = IDLE
        return True

    def _retire_runner(self, inst: _Instance) -> None:
        try:
            inst.runner.close()
        except Exception:  # noqa: BLE001 - closing a broken instance must not break the trial
            pass
        self._released(inst)

    # ---- instance thread (time_slice, spatial) ---------------------------------------------------------------
    def _instance_main(self, inst: _Instance) -> None:
        _normal_priority()
        try:
            if not self._cold_start(inst):
                return
            fn = inst.fn
            while True:
                with fn.cond:
                    batch = self._next_batch(inst)
                    if batch is None:
                        self._evicted(inst)
                        break
                self._run_batch(inst, batch)
            self._retire_runner(inst)
        except BaseException as exc:  # a platform bug: record it and retire the instance, never hang the trial
            self._crashed(inst, exc)
        finally:
            inst.fn.cond.close_pipe()

    def _crashed(self, inst: _Instance, exc: BaseException) -> None:
        self._note_error(f"platform error in instance {inst.id} ({inst.fn.spec.name!r}): {type(exc).__name__}: {exc}")
        fn = inst.fn
        with fn.cond:
            if inst.state == STARTING:
                fn.n_starting -= 1
            if inst.state != EVICTED:
                self._evicted(inst)
            if inst.current is not None:  # its batch will never finish: count it as errors
                fn.in_flight -= len(inst.current)
                self.rec.rows["outcome"][inst.current] = OUTCOME_ERROR
                self.rec.finished(inst.current)
                inst.current = None
        try:
            inst.runner.close()
        except Exception:  # noqa: BLE001
            pass

    def _next_batch(self, inst: _Instance):
        """Under fn.cond: wait until the batcher releases a batch for this instance (its indices), or the
        instance is to go (None: stopping, evicted by keep-alive or to make room)."""
        fn = inst.fn
        while True:
            if self._stopping or inst.evict:
                return None
            now = self.now()
            timeout = _WAIT_CAP_S
            if fn.queued > 0:
                idx = self._decide(fn, now)
                if idx is not None:
                    self._mark_busy(inst, idx)
                    return idx
                if fn.wait_until is not None:
                    timeout = min(timeout, max(0.0, fn.wait_until - now))
            if fn.alive > self.autoscaler.min_instances and fn.queued == 0:
                deadline = self._evict_deadline(inst)
                if now >= deadline:
                    return None
                timeout = min(timeout, deadline - now)
            if inst.runner.fileno() is not None:
                pushed = self._park(inst, timeout)
                if pushed is not None:
                    return pushed
            else:
                fn.cond.wait(timeout)

    def _decide(self, fn: _Function, now: float):
        """Under fn.cond: ask the batcher; apply drops; return the indices to run now, or None (then
        fn.wait_until says when to ask again, None for 'on the next arrival')."""
        rows = self.rec.rows
        fn.wait_until = None
        while fn.queued > 0:
            oldest = fn.order[fn.head]
            intended = None
            if self._needs_intended[fn.idx]:
                view = min(fn.queued, fn.batcher.max_batch_size * _ADAPTIVE_VIEW + 64)
                intended = rows["intended_s"][fn.order[fn.head:fn.head + view]]
            d = fn.batcher.decide(now, fn.queued, float(rows["sent_s"][oldest]), intended)
            if d.drop:
                k = min(d.drop, fn.queued)
                dropped = fn.order[fn.head:fn.head + k]
                fn.head += k
                rows["outcome"][dropped] = OUTCOME_DROPPED
                self.rec.finished(dropped)
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

    def _take(self, fn: _Function, k: int, now: float) -> np.ndarray:
        """Under fn.cond: the next k queued requests become a batch."""
        k = min(k, fn.queued)
        idx = fn.order[fn.head:fn.head + k]
        fn.head += k
        fn.in_flight += k
        fn.held_from, fn.hold_since = fn.hold_since, None
        fn.taken_s = now
        fn.wait_until = None
        if fn.queued > 0:
            fn.cond.notify()  # another free instance may take the rest
        return idx

    def _mark_busy(self, inst: _Instance, idx) -> None:
        fn = inst.fn
        inst.state = BUSY
        inst.current = idx
        inst.held_from, inst.taken_s = fn.held_from, fn.taken_s
        fn.n_idle -= 1
        fn.n_busy += 1

    def _evict_deadline(self, inst: _Instance) -> float:
        if inst.keep_until_s is not None:
            return inst.keep_until_s
        return inst.idle_since_s + self.keep_alive.plan(inst.fn.idx).evict_after_s

    def _evicted(self, inst: _Instance) -> None:
        """Under fn.cond: the instance leaves (keep-alive, room for another function, or the end)."""
        fn = inst.fn
        if inst.state == IDLE:
            fn.n_idle -= 1
        elif inst.state == BUSY:
            fn.n_busy -= 1
        inst.state = EVICTED
        if not self._closed:
            inst.life.end_s = self.now()
            inst.life.evicted = not self._stopping  # stopped with the run: alive when it ended

    # ---- running a batch ----------------------------------------------------------------------------------
    def _run_batch(self, inst: _Instance, idx: np.ndarray) -> None:
        fn = inst.fn
        k = len(idx)
        err = None
        pushed = inst.pushed_at is not None
        # A pushed batch was sent by the dispatcher's thread at pushed_at; only its answer is awaited here.
        t_start = inst.pushed_at if pushed else self.now()
        inst.pushed_at = None
        try:
            if pushed:
                inst.runner.finish()
            else:
                inst.runner.run(k)
        except ModelRaised as exc:
            err = str(exc)
        t_end = self.now()
        if err is not None:
            self._note_error(f"function {fn.spec.name!r}: model raised in a batch of {k}: {err}")
        # Rows are written under the function's lock so that close() (which drops what is unfinished) and a
        # batch finishing at that moment cannot both write them; the batcher's state is shared by the
        # function's instances and is only touched under this lock too.
        with fn.cond:
            if not self._closed:
                self._record_batch(inst, idx, t_start, t_end, err)
                if err is None:
                    fn.batcher.observe(k, t_end - t_start)
            fn.in_flight -= k
            inst.current = None
            inst.life.busy_s += t_end - t_start
            inst.life.last_busy_end_s = t_end
            inst.batches += 1
            inst.keep_until_s = None  # a used pre-warm follows the normal keep-alive from now on
            if inst.state == BUSY:
                fn.n_busy -= 1
                fn.n_idle += 1
                inst.state = IDLE
            inst.idle_since_s = t_end
            self.rec.n_batches += 1
            if fn.queued == 0 and fn.in_flight == 0:
                fn.quiet_since = t_end

    def _record_batch(self, inst: _Instance, idx: np.ndarray, t_start: float, t_end: float,
                      err: str | None) -> None:
        rows = self.rec.rows
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
            if err is None:
                rows["completed_s"][i] = t_end
                rows["outcome"][i] = OUTCOME_OK
            else:
                rows["outcome"][i] = OUTCOME_ERROR
            self.rec.finished(i)
            return
        sent = rows["sent_s"][idx]
        rows["batch_start_s"][idx] = t_start
        rows["instance"][idx] = inst.id
        rows["batch_size"][idx] = k
        if inst.held_from is not None:
            # Only the time the batcher held them while an instance was free; wake-up and bookkeeping
            # overheads stay in queue_wait, where they belong.
            rows["batch_wait_s"][idx] = np.maximum(0.0, inst.taken_s - np.maximum(sent, inst.held_from))
        if sent[0] < inst.ready_s:  # oldest first: if any waited for the cold start, the first did
            waited_from = np.maximum(sent, inst.cs_start_s)
            rows["cold_wait_s"][idx] = np.clip(inst.ready_s - waited_from, 0.0, None)
            if inst.delay_end_s > inst.cs_start_s:
                rows["modelled_wait_s"][idx] = np.clip(inst.delay_end_s - waited_from, 0.0, None)
        if err is None:
            rows["completed_s"][idx] = t_end
            rows["outcome"][idx] = OUTCOME_OK
        else:
            rows["outcome"][idx] = OUTCOME_ERROR
        self.rec.finished(idx)

    def _note_error(self, msg: str) -> None:
        self.errors += 1
        if len(self.error_messages) < 5:
            self.error_messages.append(msg)

    def _fail_queue(self, fn: _Function, now: float) -> None:
        """Under fn.cond: the function cannot start instances any more; its queued requests are errors."""
        if fn.queued <= 0:
            return
        idx = fn.order[fn.head:fn.tail]
        fn.head = fn.tail
        self.rec.rows["outcome"][idx] = OUTCOME_ERROR
        self.rec.finished(idx)

    # ---- exclusive: one device thread, one resident instance ----------------------------------------------
    def _exclusive_main(self, first: _Function | None) -> None:
        try:
            self._exclusive_loop(first)
        except BaseException as exc:  # a platform bug: record it, never leave prestart or the drain waiting
            self._note_error(f"platform error in the device thread: {type(exc).__name__}: {exc}")
            for fn in self.fns:
                with fn.cond:
                    if fn.failed is None:
                        fn.failed = f"the device thread failed: {type(exc).__name__}: {exc}"
                    self._fail_queue(fn, self.now())
        finally:
            self._wake_device.close_pipe()
            self._prestarted.set()

    def _exclusive_loop(self, first: _Function | None) -> None:
        resident: _Instance | None = None
        cond = self._wake_device
        if first is not None:
            resident = self._exclusive_load(first, prestart=True)
        self._prestarted.set()
        while True:
            with cond:
                action, arg = self._exclusive_next(resident)
                if action == "batch":
                    self._mark_busy(resident, arg)
                elif action in ("stop", "evict", "swap"):
                    if resident is not None:
                        self._evicted(resident)
            if action in ("batch", "pushed"):
                self._run_batch(resident, arg)
                continue
            if resident is not None and action in ("stop", "evict", "swap"):
                self._retire_runner(resident)
                resident = None
            if action == "stop":
                return
            if action == "swap":
                fn, keep_until = arg
                resident = self._exclusive_load(fn, prestart=False, keep_until_s=keep_until)

    def _exclusive_load(self, fn: _Function, *, prestart: bool, keep_until_s: float | None = None):
        with fn.cond:
            with self._lock:
                iid = self._next_id
                self._next_id += 1
                self.resident_bytes += fn.mem_bytes
            now = self.now()
            life = InstanceLife(function=fn.idx, instance=iid, share=1.0, start_s=now, end_s=now,
                                last_busy_end_s=now, busy_s=0.0, evicted=False)
            inst = _Instance(id=iid, fn=fn, share=1.0, life=life, prestart=prestart,
                             runner=self._make_runner(fn, None),
                             keep_until_s=keep_until_s)
            fn.n_starting += 1
            fn.instances.append(inst)
            self._instances.append(inst)
            self.rec.instances.append(life)
        return inst if self._cold_start(inst) else None

    def _exclusive_next(self, resident: _Instance | None):
        """Under the shared condition: what the device does next.
        ("batch", idx) | ("pushed", idx) | ("swap", (function, keep_until)) | ("evict", None) | ("stop", None).
        "pushed": the dispatcher's thread already sent the batch to the resident process (Platform._push)."""
        cond = self._wake_device
        rows = self.rec.rows
        while True:
            if self._stopping:
                return "stop", None
            now = self.now()
            waiting = [fn for fn in self.fns if fn.queued > 0 and fn.failed is None]
            target = None
            others = False
            if resident is not None and resident.fn.queued > 0:
                target = resident.fn
                others = any(fn is not target for fn in waiting)
                # Another function whose oldest request has waited half the SLO latency takes the device,
                # once the resident has served at least one batch for its cold start (else two busy
                # functions would swap back and forth without serving anything): without this bound a busy
                # function would starve the others forever.
                starving = [fn for fn in waiting if fn is not target
                            and now - rows["sent_s"][fn.order[fn.head]] > self.slo_latency_s / 2]
                if starving and resident.batches > 0:
                    return "swap", (min(starving, key=lambda f: rows["sent_s"][f.order[f.head]]), None)
            elif waiting:
                target = min(waiting, key=lambda f: rows["sent_s"][f.order[f.head]])
                return "swap", (target, None)
            timeout = _WAIT_CAP_S
            if target is not None:
                idx = self._decide(target, now)
                if idx is None and others and target.queued > 0:
                    # The batcher would hold the device idle while other functions wait for it: run what is
                    # queued now instead.
                    idx = self._take(target, min(target.queued, target.batcher.max_batch_size), now)
                if idx is not None:
                    return "batch", idx
                if target.wait_until is not None:
                    timeout = min(timeout, max(0.0, target.wait_until - now))
            elif resident is not None:
                if resident.fn.alive > self.autoscaler.min_instances:
                    deadline = self._evict_deadline(resident)
                    if now >= deadline:
                        return "evict", None
                    timeout = min(timeout, deadline - now)
            else:
                pre = self._prewarm_due(now)
                if pre is not None:
                    return "swap", pre
                nxt = self._next_prewarm_s()
                if nxt is not None:
                    timeout = min(timeout, max(0.0, nxt - now))
            if resident is not None and resident.state == IDLE and resident.runner.fileno() is not None:
                pushed = self._park(resident, timeout)
                if pushed is not None:
                    return "pushed", pushed
            else:
                cond.wait(timeout)

    # ---- histogram pre-warm --------------------------------------------------------------------------------
    def _claim_prewarm(self, fn: _Function, now: float) -> float | None:
        """If fn's histogram plan says to pre-warm it now, mark this quiet period as pre-warmed and return
        until when the pre-warmed instance is kept; else None."""
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
        """A function whose histogram plan says to pre-warm now: (function, keep_until) or None."""
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

    def _controller_main(self) -> None:
        """time_slice / spatial with the histogram policy: start pre-warms when they are due."""
        while not self._stopping:
            now = self.now()
            for fn in self.fns:
                with fn.cond:
                    until = self._claim_prewarm(fn, now)
                    if until is not None:
                        self._start_instance(fn, prestart=False, keep_until_s=until)
            time.sleep(0.01)

    # ---- reading ------------------------------------------------------------------------------------------
    def pending(self) -> int:
        """Requests sent but not finished (queued or running)."""
        return sum(fn.queued + fn.in_flight for fn in self.fns)

    def state(self) -> dict:
        """Approximate live counts for windows (read without locks)."""
        return {
            "queue_depth": sum(fn.queued for fn in self.fns),
            "instances_starting": sum(fn.n_starting for fn in self.fns),
            "instances_idle": sum(fn.n_idle for fn in self.fns),
            "instances_busy": sum(fn.n_busy for fn in self.fns),
        }

    @property
    def device_thread_alive(self) -> bool:
        return self._device_thread is not None and self._device_thread.is_alive()

    # ---- the end -----------------------------------------------------------------------------------------
    def close(self, end_s: float, *, join_s: float = 2.0) -> None:
        """Stop: no more batches start; running ones get up to join_s to finish; what is still queued or
        running is dropped; instances still alive are closed with evicted=False at end_s."""
        self._stopping = True
        self._stop_event.set()
        conds = list({id(fn.cond): fn.cond for fn in self.fns}.values())
        for c in conds:
            with c:
                c.notify_all()
        for inst in list(self._instances):  # a process still starting up has nothing to finish
            if inst.state == STARTING:
                inst.runner.kill()
        deadline = time.perf_counter() + join_s
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.perf_counter()))
        for c in conds:
            c.acquire()
        try:
            self._closed = True
            rows = self.rec.rows
            for fn in self.fns:
                sent = fn.order[:fn.tail]
                left = sent[rows["outcome"][sent] == OUTCOME_PENDING]
                if len(left):
                    rows["outcome"][left] = OUTCOME_DROPPED
                    self.rec.finished(left)
                fn.head = fn.tail
                fn.in_flight = 0
            for inst in self._instances:
                if inst.state != EVICTED:
                    inst.life.end_s = max(end_s, inst.life.start_s)
                    inst.life.evicted = False
                    inst.life.last_busy_end_s = min(inst.life.last_busy_end_s, inst.life.end_s)
        finally:
            for c in reversed(conds):
                c.release()
        # Instances whose thread is stuck (a long cold start, a long batch) are abandoned: daemon threads,
        # and any instance process is killed here so nothing outlives the trial.
        for inst in self._instances:
            inst.runner.kill()
