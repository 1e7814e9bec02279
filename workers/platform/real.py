"""The real driver: the scheduling core (workers.platform.core) on the wall clock, with real instances.

Per function the core keeps a request queue and a pool of instances (starting -> idle <-> busy -> evicted); this
driver executes its actions: START spawns an instance thread that performs a real cold start (workers.instance:
its own process by default, with a real process start, torch import, device context and weights read from disk;
`runtime: "thread"` keeps the model in this process), RUN hands a batch to an idle instance, EVICT retires one,
TIMER wakes the timer thread at a run time, FINISH ends requests that will not run. Run time is
`time.perf_counter()` minus t0, t0 being the instant the first arrival is due.

All calls into the core happen under one lock. The open-loop dispatcher's thread calls `submit`, which asks the core
and sends a released batch to an idle instance process at once (a 4-byte write): the process computes while the
instance's thread wakes on the answer (wait_fd), so a request costs no cross-thread wake-up before it runs.

Sharing modes (the core decides who runs; here is how instances are made):
  exclusive  - at most one instance resident; another function's request evicts it (when idle) and pays a real
               cold start.
  time_slice - instances run concurrently with no partition (on CUDA: separate contexts, or streams with the
               thread runtime).
  spatial    - one process per instance with a fixed share: on CPU pinned to a disjoint core set
               (sched_setaffinity + torch.set_num_threads(len(cores)), read back from the child and reported); on
               CUDA with CUDA_MPS_ACTIVE_THREAD_PERCENTAGE or CUDA_VISIBLE_DEVICES=<MIG uuid> set in the child
               before it initialises CUDA.

GPU paths (CUDA streams, MPS, MIG) are guarded so this module imports and runs without a GPU; they are UNTESTED on
this project's CI machines, which have no GPU.
"""

from __future__ import annotations

import heapq
import os
import select
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workers import zoo
from workers.instance import ModelRaised, ProcessRunner, ThreadRunner
from workers.platform.core import (
    EVICT,
    FINISH,
    RUN,
    START,
    STARTING,
    TIMER,
    CoreError,
    InstanceState,
    SchedulingCore,
    cold_start_record,
    record_batch,
    spatial_slots,
)
from workers.recorder import Recorder
from workers.spec import FunctionSpec, VariantSpec

_WAIT_CAP_S = 0.25  # a waiting thread re-checks stop / eviction at least this often

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
    """A Condition (over the platform's one lock) whose waiter can also wake when a descriptor becomes readable.

    An instance process answers a batch on its socket. The thread that drives it waits with wait_fd(timeout, fd):
    it wakes on a notify (work for a thread instance, eviction, stop) or when the process answers a batch that
    another thread (the dispatcher's, the timer's) sent it directly. That saves the cross-thread wake-up per
    request a plain Condition would add: arrival -> process instead of arrival -> thread -> process.
    """

    def __init__(self, lock) -> None:
        super().__init__(lock)
        self._wake_w: int | None = None  # write end of the waiting thread's wake pipe
        self._wake_r: int | None = None

    def wait_fd(self, timeout: float, fd: int, take_answer) -> float | None:
        """Under the lock: release it, wait for a notify, fd readable or the timeout; re-acquire. When fd became
        readable, `take_answer()` reads it before the lock is taken again and its return value (when the answer
        was read, perf_counter) is returned; otherwise None. Reading first keeps the wait for the lock (and the
        Python that re-takes it) out of the batch's time: that is platform bookkeeping after the result arrived."""
        if self._wake_r is None:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
        r = self._wake_r
        seen = None
        saved = self._release_save()
        try:
            ready, _, _ = select.select([r, fd], [], [], max(0.0, timeout))
            if fd in ready:
                seen = take_answer()
        finally:
            self._acquire_restore(saved)
        if r in ready:
            try:
                while os.read(r, 64):
                    pass
            except BlockingIOError:
                pass
        return seen

    def close_pipe(self) -> None:
        """Called by the waiting thread before it ends."""
        for f in (self._wake_r, self._wake_w):
            if f is not None:
                os.close(f)
        self._wake_r = self._wake_w = None

    def notify(self, n: int = 1) -> None:
        super().notify(n)
        w = self._wake_w
        if w is not None:
            try:
                os.write(w, b"x")
            except (BlockingIOError, OSError):
                pass  # its pipe is full (it will wake) or closed (it is gone)

    def notify_all(self) -> None:
        self.notify()


class _Handle:
    """What the driver keeps per instance (InstanceState.driver)."""

    __slots__ = ("runner", "pushes", "thread", "cond", "assigned", "pushed_at", "go")

    def __init__(self, runner, cond: _WakeCondition):
        self.runner = runner
        self.pushes = isinstance(runner, ProcessRunner)  # a batch is sent to its process by whoever releases it
        self.thread: threading.Thread | None = None
        self.cond = cond
        self.assigned = None  # the batch (request indices) given to it and not yet run
        self.pushed_at: float | None = None  # that batch was already sent to its process at this run time
        self.go = False  # evicted: leave


class Platform:
    """Runs one trial's functions on one device. Lifecycle: prestart() -> set_t0() -> submit()... ->
    pending() reaches 0 (or the engine gives up) -> close(end_s)."""

    def __init__(self, functions: Sequence[FunctionSpec], variant: VariantSpec, *, recorder: Recorder,
                 function_idx: np.ndarray, model_dir: Path, slo_latency_ms: float, device_kind: str = "cpu",
                 torch_device: str = "cpu", plan: Any = None, memory_budget_bytes: int | None = None,
                 mem_per_instance: Sequence[int] | None = None, share: float | None = None,
                 child_threads: int = 1, trace: bool = False):
        self.functions = list(functions)
        self.runtime = variant.runtime
        self.platform_delay_s = float(variant.platform_delay_ms) / 1000.0
        self.child_threads = max(1, int(child_threads))  # torch threads of each instance process (not spatial)
        self.variant = variant
        self.rec = recorder
        self.model_dir = Path(model_dir)
        self.device_kind = device_kind
        self.torch_device = torch_device
        self.plan = plan
        self.spatial = variant.sharing == "spatial"
        self.errors = 0
        self.error_messages: list[str] = []
        self.spatial_children: list[dict] = []
        self._t0 = 0.0  # absolute perf_counter of run time 0 (0 until set_t0: prestart times are absolute)
        self._stopping = False
        self._stop_event = threading.Event()
        self._lock = threading.Lock()  # everything the core holds, and the recorder's rows of running batches
        self._timer_cond = threading.Condition(self._lock)
        self._timers: list[float] = []
        self._threads: list[threading.Thread] = []
        share_ = float(share) if share is not None else variant.effective_share
        self.core = SchedulingCore(functions, variant, rows=recorder.rows, function_idx=function_idx,
                                   slo_latency_ms=slo_latency_ms, memory_budget_bytes=memory_budget_bytes,
                                   mem_per_instance=mem_per_instance, share=share_,
                                   slots=spatial_slots(plan, share_, variant.max_instances) if self.spatial else None,
                                   trace=trace)
        self._single = len(self.functions) == 1
        self._fidx = np.asarray(function_idx)
        self._n_fn = len(self.functions)
        self._timer_thread: threading.Thread | None = None

    @property
    def prewarms(self) -> int:
        return self.core.prewarms

    # ---- clock ------------------------------------------------------------------------------------------
    def now(self) -> float:
        return time.perf_counter() - self._t0

    # ---- lifecycle ----------------------------------------------------------------------------------------
    def prestart(self, timeout_s: float = 600.0, *, should_stop=None, poll_s: float = 0.2) -> bool:
        """Start min_instances per function before the load (exclusive: one, for the first function) and wait
        until they are ready. Their cold starts are prestarts, not request latency. Returns False if
        should_stop() said stop meanwhile (polled every poll_s)."""
        self._timer_thread = threading.Thread(target=self._timer_main, name="platform-timer", daemon=True)
        self._timer_thread.start()
        self._threads.append(self._timer_thread)
        with self._lock:
            try:
                self._apply(self.core.prestart(self.now()))
            except CoreError as exc:
                raise PlatformError(str(exc)) from exc
        deadline = time.perf_counter() + timeout_s
        last_poll = time.perf_counter()
        while any(i.state == STARTING for i in self.core.instances):
            if time.perf_counter() > deadline:
                raise PlatformError(f"min instances not ready within {timeout_s:.0f} s")
            if should_stop is not None and time.perf_counter() - last_poll >= poll_s:
                last_poll = time.perf_counter()
                if should_stop():
                    return False
            time.sleep(0.01)
        failed = [fn for fn in self.core.fns if fn.failed]
        if failed:
            raise PlatformError(failed[0].failed)
        return True

    def set_t0(self, t0_abs: float) -> None:
        """Fix run time 0 (perf_counter value of the first intended arrival). Times recorded before (the
        prestarts) were absolute; they are shifted so that they read as negative run times."""
        with self._lock:
            self.core.shift(t0_abs)
            for cs in self.rec.cold_starts:
                cs.start_s -= t0_abs
                cs.end_s -= t0_abs
            self._timers = [t - t0_abs for t in self._timers]
            heapq.heapify(self._timers)
            self._t0 = t0_abs

    # ---- the dispatcher's sink ---------------------------------------------------------------------------
    def submit(self, i: int, j: int, now: float) -> None:
        """Requests [i, j) were sent at run time `now` (the dispatcher already wrote their sent_s)."""
        core = self.core
        with self._lock:
            if self._single:
                self._apply(core.arrival(0, j - i, now))
            elif j - i == 1:
                self._apply(core.arrival(int(self._fidx[i]), 1, now))
            else:
                counts = np.bincount(self._fidx[i:j], minlength=self._n_fn)
                for f in np.flatnonzero(counts):
                    self._apply(core.arrival(int(f), int(counts[f]), now))

    # ---- executing the core's actions (under the lock) ----------------------------------------------------
    def _apply(self, actions: list) -> None:
        for a in actions:
            kind = a[0]
            if kind == RUN:
                inst, idx = a[1], a[2]
                h = inst.driver
                h.assigned = idx
                if h.pushes:
                    # An instance process: send now; its thread wakes on the answer (no notify needed).
                    h.pushed_at = self.now()
                    h.runner.send(len(idx))
                else:
                    h.cond.notify()
            elif kind == FINISH:
                idx, outcome = a[1], a[2]
                self.rec.rows["outcome"][idx] = outcome
                self.rec.finished(idx)
            elif kind == TIMER:
                # Only the earliest matters: when it fires, the core asks again for whatever is due after it.
                t = a[1]
                if not self._timers or t < self._timers[0]:
                    heapq.heappush(self._timers, t)
                    self._timer_cond.notify()
            elif kind == START:
                self._start(a[1])
            elif kind == EVICT:
                h = a[1].driver
                h.go = True
                h.cond.notify()

    def _start(self, inst: InstanceState) -> None:
        inst.driver = h = _Handle(self._make_runner(inst), _WakeCondition(self._lock))
        self.rec.instances.append(inst.life)
        if not inst.prestart:
            self.rec.cold_start_began.append(inst.cs_start_s)  # windows count a cold start in the second it began
        h.thread = threading.Thread(target=self._instance_main, args=(inst,),
                                    name=f"instance-{inst.id}-{inst.fn.spec.name}", daemon=True)
        self._threads.append(h.thread)
        h.thread.start()

    def _make_runner(self, inst: InstanceState):
        """The instance's runner: its own process (runtime "process", and always for spatial), or a thread of
        this process (runtime "thread")."""
        spec = inst.fn.spec
        if not self.spatial and self.runtime == "thread":
            return ThreadRunner(spec, self.torch_device, self.model_dir)
        plan = self.plan
        cores = None
        env: dict[str, str] = {}
        device = self.torch_device
        threads = self.child_threads
        if self.spatial:
            slot = inst.slot
            if self.device_kind == "cpu":
                cores = list(plan.core_sets[slot])
                threads = len(cores)
            elif getattr(plan, "mechanism", "") == "mig":  # untested here (no GPU on CI)
                env["CUDA_VISIBLE_DEVICES"] = str(plan.mig_devices[slot])
                device = "cuda:0"  # the only device the child can see
            elif getattr(plan, "mechanism", "") == "mps":  # untested here (no GPU on CI)
                env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(int(plan.mps_active_thread_percentage))
        return ProcessRunner(spec, device, self.model_dir, cores=cores, threads=threads, env=env,
                             user_models=zoo.user_model_paths())

    # ---- the timer thread ---------------------------------------------------------------------------------
    def _timer_main(self) -> None:
        """Calls core.timer() when a time it asked for comes (batch wait deadlines, keep-alive, pre-warms)."""
        _normal_priority()
        try:
            with self._lock:
                while not self._stopping:
                    now = self.now()
                    if self._timers and self._timers[0] <= now:
                        while self._timers and self._timers[0] <= now:
                            heapq.heappop(self._timers)
                        self._apply(self.core.timer(now))
                        continue
                    wait = self._timers[0] - now if self._timers else _WAIT_CAP_S
                    self._timer_cond.wait(min(wait, _WAIT_CAP_S))
        except BaseException as exc:  # a platform bug: record it; instances and arrivals still drive the core
            self._note_error(f"platform error in the timer thread: {type(exc).__name__}: {exc}")

    # ---- instance threads ---------------------------------------------------------------------------------
    def _instance_main(self, inst: InstanceState) -> None:
        _normal_priority()
        h = inst.driver
        try:
            if not self._cold_start(inst):
                return
            self._serve(inst)
        except BaseException as exc:  # a platform bug: record it and retire the instance, never hang the trial
            self._crashed(inst, exc)
        finally:
            h.cond.close_pipe()

    def _cold_start(self, inst: InstanceState) -> bool:
        h = inst.driver
        fn = inst.fn
        try:
            delay_s = self.platform_delay_s
            if delay_s > 0:
                # MODELLED provisioning / image pull (the variant's platform_delay_ms): nothing real runs for it;
                # it is added before the real process start and reported as its own, labelled phase.
                if self._stop_event.wait(max(0.0, inst.delay_end_s - self.now())):
                    raise PlatformError("stopped during the modelled platform delay")
            info = h.runner.start(should_abort=lambda: self._stopping)
        except Exception as exc:  # noqa: BLE001 - a failed cold start is recorded, the trial goes on
            msg = f"cold start of {fn.spec.name!r} ({fn.spec.model}) failed: {type(exc).__name__}: {exc}"
            if not self._stopping:  # a start cut short by the end of the run is not an error
                self._note_error(msg)
            self._close_runner(h)
            with self._lock:
                self._apply(self.core.instance_ready(inst, self.now(), ok=False, error=msg))
            return False
        t_ready = self.now()
        with self._lock:
            if getattr(h.runner, "info", None):
                self.spatial_children.append({"instance": inst.id, "function": fn.spec.name, **h.runner.info})
            if not self.core.closed:
                self.rec.cold_starts.append(cold_start_record(
                    inst, t_ready, info.get("timings_ms") or {}, platform_delay_s=self.platform_delay_s,
                    page_cache_resident=info.get("page_cache_resident"), weights_bytes=info.get("weights_bytes")))
            self._apply(self.core.instance_ready(inst, t_ready))
        return True

    def _serve(self, inst: InstanceState) -> None:
        """Run the batches the core gives this instance until it is evicted or the run stops."""
        h = inst.driver
        runner = h.runner
        fd = runner.fileno()
        core = self.core
        rows = self.rec.rows
        take = getattr(runner, "take_answer", None)
        while True:
            seen = None
            with self._lock:
                while h.assigned is None and not h.go and not self._stopping:
                    if fd is not None:
                        # A readable socket with no batch given out can only be the process's end.
                        seen = h.cond.wait_fd(_WAIT_CAP_S, fd, take)
                        if seen is not None and h.assigned is None and runner.dead() and not h.go:
                            self._apply(core.instance_dead(inst, self.now()))
                    else:
                        h.cond.wait(_WAIT_CAP_S)
                idx = h.assigned
                t_start = h.pushed_at
            if idx is None:
                break
            ok = True
            try:
                if t_start is not None:
                    # Sent by whoever released the batch; its answer may already have been read by wait_fd.
                    runner.finish()
                else:
                    t_start = self.now()
                    runner.run(len(idx))
            except ModelRaised as exc:
                ok = False
                self._note_error(f"function {inst.fn.spec.name!r}: model raised in a batch of {len(idx)}: {exc}")
            t_end = self.now() if seen is None else seen - self._t0
            with self._lock:
                h.assigned = None
                h.pushed_at = None
                # Rows are written under the lock, so close() (which drops what is unfinished) and a batch
                # finishing at that moment cannot both write them.
                if not core.closed:
                    record_batch(rows, inst, idx, t_start, t_end, ok)
                    self.rec.finished(idx)
                self.rec.n_batches += 1
                self._apply(core.batch_done(inst, t_end, t_start, ok))
        self._close_runner(h)
        if h.go and not self._stopping:
            with self._lock:
                self._apply(core.released(inst, self.now()))

    def _crashed(self, inst: InstanceState, exc: BaseException) -> None:
        self._note_error(f"platform error in instance {inst.id} ({inst.fn.spec.name!r}): {type(exc).__name__}: {exc}")
        with self._lock:
            self._apply(self.core.crashed(inst, self.now()))
            inst.driver.assigned = None
        self._close_runner(inst.driver)
        if not self._stopping:
            with self._lock:
                self._apply(self.core.released(inst, self.now()))

    @staticmethod
    def _close_runner(h: _Handle) -> None:
        try:
            h.runner.close()
        except Exception:  # noqa: BLE001 - closing a broken instance must not break the trial
            pass

    def _note_error(self, msg: str) -> None:
        self.errors += 1
        if len(self.error_messages) < 5:
            self.error_messages.append(msg)

    # ---- reading ------------------------------------------------------------------------------------------
    def pending(self) -> int:
        """Requests sent but not finished (queued or running)."""
        return self.core.pending()

    def state(self) -> dict:
        """Approximate live counts for windows (read without the lock)."""
        return self.core.state()

    # ---- the end -----------------------------------------------------------------------------------------
    def close(self, end_s: float, *, join_s: float = 2.0) -> None:
        """Stop: no more batches start; running ones get up to join_s to finish; what is still queued or
        running is dropped; instances still alive are closed with evicted=False at end_s."""
        with self._lock:
            self._stopping = True
            self._stop_event.set()
            self.core.stop(self.now())
            self._timer_cond.notify()
            for inst in self.core.instances:
                if inst.driver is not None:
                    inst.driver.cond.notify()
        for inst in list(self.core.instances):  # a process still starting up has nothing to finish
            if inst.state == STARTING and inst.driver is not None:
                inst.driver.runner.kill()
        deadline = time.perf_counter() + join_s
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.perf_counter()))
        with self._lock:
            self._apply(self.core.close(end_s))
        # Instances whose thread is stuck (a long cold start, a long batch) are abandoned: daemon threads,
        # and any instance process is killed here so nothing outlives the trial.
        for inst in self.core.instances:
            if inst.driver is not None:
                inst.driver.runner.kill()
