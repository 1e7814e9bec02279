"""Profiles: what one function model costs on one device, measured with the instance processes trials use.

A profile answers, for one (model, options, input shape) on one device:

  service_ms     how long one batch takes as the platform sees it (ProcessRunner.run(k): the batch size is
                 written to the instance's socket, the answer read back), per batch size (powers of two up to
                 the largest that fits) and per sharing level (1, 2, 4 instance processes on the device, each
                 driven by its own thread running batches back to back, all at the same time);
  idle_service_ms  the same at sharing level 1 for a batch that finds its instance idle for 1, 3, 10 or 30 ms
                 (IDLE_GAPS_MS): slower than back to back, the process and its caches having cooled;
  idle_follow_ms   by position (2, 3: FOLLOW_POSITIONS), the batches run right after that one, still warming up;
  overhead_us    the runtime's per-request cost: ProcessRunner.run(1) on the zoo's "null" model;
  cold_start_ms  the phases of real cold starts (ProcessRunner.start(), page cache of the weights dropped);
  memory_bytes   the peak resident memory of one instance process after the largest batch size.

The simulator (workers.platform.sim) samples service times and cold starts from it; `find_profile` in the
control plane finds the newest one for a model and device so any experiment reuses it.

Rules that keep a profile honest:
- Weights are generated before anything is timed (zoo.weights_file), as in trials.
- Instances get the torch thread count a time-sliced trial gives them (choose_torch_threads), so a profile
  measures what a trial's instance would do.
- A sample at sharing level L is recorded only while all L instances are running batches: a thread that has
  its quota keeps running untimed batches until every thread has its quota, so the last samples do not see
  an emptier device than the first.
- Nothing is estimated: a level or batch size that was not measured is absent, and the profile says why
  (`skipped`).

GPU: on a CUDA device the instances are separate processes time-slicing the GPU (separate CUDA contexts), as
in a `time_slice` trial. That path is UNTESTED on this project's CI machines, which have no GPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workers import devices, zoo
from workers.instance import ProcessRunner, peak_rss_bytes
from workers.records import COLD_START_PHASES
from workers.spec import FunctionSpec

VERSION = 1
RUNTIME = "process"
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_SHARING_LEVELS = (1, 2, 4)
DEFAULT_SAMPLES = 30
DEFAULT_COLD_STARTS = 3
# A batch that finds its instance idle for a while takes longer than one run back to back (the process wakes from
# its blocking read, its caches and the CPU's clock have cooled): on the 2-core development machine mlp-small's batch
# of 1 took 0.41 ms back to back, 0.98 ms after 2 ms idle, 1.30 ms after 10 ms and 1.37 ms after 30 ms. Measured at
# sharing level 1 after each of these gaps; the simulator interpolates between the cells of the gaps around the one
# the instance actually sat idle for (workers.platform.sim).
IDLE_GAPS_MS = (1, 3, 10, 30)
# The batches that follow at once are still slower than a long run back to back: the instance warms up over a few
# batches (mlp-small, batch of 1, 2026-12-03: 0.25 ms back to back; after 10 ms idle 1.00, then 0.46, then 0.34 ms).
# A batch queued behind one that found its instance idle is such a second batch: the real platform's queued batches
# at 100 req/s took 0.39-0.47 ms, and a simulator that drew them from the back-to-back cell had an unbatched p99
# 27-39 % low. Measured: the batch after an idle gap and the next FOLLOW_POSITIONS - 1 right after it.
FOLLOW_POSITIONS = 3
WARMUP_BATCHES = 3  # per instance and batch size, before timing (allocator, caches, CUDA kernels)
OVERHEAD_SAMPLES_MIN = 50  # null-model round trips are microseconds: more samples cost nothing
# Short mode (tests, a quick look): enough to see the shape, not to trust a tail.
SHORT = {"max_batch_size": 4, "samples": 5, "cold_starts": 1}
PHASES = tuple(p for p in COLD_START_PHASES if p != "platform_delay_modelled")
# A profile's service-time grid is a few thousand numbers at most; bound what validate_profile accepts.
MAX_CELL_SAMPLES = 100_000


class ProfileStopped(Exception):
    """should_stop() said stop (a cancel, a lost device lease) before the profile was complete."""


# ---- identity ---------------------------------------------------------------------------------------------
def canonical(model: str, options: dict | None, input_shape) -> tuple[dict, list[int] | None]:
    """(options, input_shape) as a profile stores them: the function spec's own values, with a built-in's
    defaults filled in so that {} and {"hidden": 512} name the same mlp-small."""
    opts = dict(options or {})
    shape = list(input_shape) if input_shape is not None else None
    if model in zoo.BUILTIN_SHAPES:
        try:
            resolved_shape, opts = zoo._resolve(model, input_shape, options)
        except zoo.ModelError:
            return dict(options or {}), shape
        shape = list(resolved_shape)
    return opts, shape


@dataclass(frozen=True)
class Upload:
    """An uploaded ONNX model to profile: its stored file, its SHA-256 as registered, whether its batch dimension
    is dynamic."""
    file: str
    sha256: str
    dynamic_batch: bool


def upload_options(upload: Upload | str) -> dict:
    """What names an uploaded model's profile in place of options: the file's SHA-256 (a name is per owner and
    may be reused for another file; the same bytes behave the same whoever uploaded them)."""
    return {"onnx_sha256": upload if isinstance(upload, str) else upload.sha256}


def function_profile_parts(f: FunctionSpec) -> tuple[str, dict, Any]:
    """(model, options, input_shape) that name the profile a function reuses. An uploaded model's function must
    be resolved first (controlplane.registry.selectors.resolve_uploaded_functions fills in model_sha256)."""
    if f.model_runtime == "onnxruntime" and f.model_sha256:
        return f.model, upload_options(f.model_sha256), f.input_shape
    return f.model, dict(f.options), f.input_shape


def profile_key(model: str, options: dict | None, input_shape, device: str) -> str:
    """The reuse key: two functions with the same key on the same device have the same profile."""
    opts, shape = canonical(model, options, input_shape)
    doc = json.dumps({"model": model, "options": opts, "input_shape": shape, "device": device},
                     sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:32]


# ---- hardware line ----------------------------------------------------------------------------------------
def hardware_line(device: devices.DeviceInfo) -> str:
    import torch

    gib = device.total_memory_bytes / 2**30
    if device.kind == "cpu":
        return f"{device.description}, {device.cores} cores, {gib:.1f} GiB RAM, torch {torch.__version__}"
    info = devices.hardware_info(device, "time_slice")  # untested here (no GPU on CI)
    return (f"{device.description}, {device.cores} SMs, {gib:.1f} GiB, driver {info.get('driver_version') or '?'}, "
            f"CUDA {info.get('cuda_version') or '?'}, torch {torch.__version__}; host {info.get('cpu_model')}")


# ---- plan: batch sizes and sharing levels -------------------------------------------------------------------
def _memory_budget(device: devices.DeviceInfo) -> tuple[int, int]:
    """(bytes instances may fill, per-process overhead on the device) as the engine counts them."""
    from workers.engine import PROCESS_OVERHEAD_BYTES
    from workers.platform import MEMORY_HEADROOM

    overhead = PROCESS_OVERHEAD_BYTES if device.kind == "cpu" else 0
    return int(device.total_memory_bytes * MEMORY_HEADROOM), overhead


def _zoo_estimate(model: str, options: dict, input_shape) -> Callable[[int], int]:
    return lambda k: zoo.estimate_memory_bytes(model, input_shape=input_shape, options=options, batch_size=k)


def plan_batch_sizes(model: str, options: dict, input_shape, device: devices.DeviceInfo,
                     max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, *,
                     estimate: Callable[[int], int] | None = None) -> tuple[list[int], str]:
    """Powers of two from 1 while the memory estimate (zoo.estimate_memory_bytes unless `estimate`, bytes of one
    instance at batch k) says one instance fits; (sizes, why it stopped)."""
    estimate = estimate or _zoo_estimate(model, options, input_shape)
    budget, overhead = _memory_budget(device)
    sizes: list[int] = []
    k = 1
    while k <= max_batch_size:
        need = estimate(k) + overhead
        if need > budget:
            return sizes, (f"batch {k} needs about {need / 2**30:.2f} GiB, more than the {budget / 2**30:.2f} GiB "
                           f"instances may use on {device.name}")
        sizes.append(k)
        k *= 2
    return sizes, f"cap of {max_batch_size}"


def plan_sharing_levels(model: str, options: dict, input_shape, device: devices.DeviceInfo, largest_batch: int,
                        levels=DEFAULT_SHARING_LEVELS, *,
                        estimate: Callable[[int], int] | None = None) -> tuple[list[int], list[dict]]:
    """The levels this host can run (instances at once on the device) and the skipped ones with the reason."""
    budget, overhead = _memory_budget(device)
    per_instance = (estimate or _zoo_estimate(model, options, input_shape))(largest_batch) + overhead
    kept: list[int] = []
    skipped: list[dict] = []
    for level in sorted({int(x) for x in levels}):
        if level < 1:
            raise ValueError(f"sharing level {level}: must be 1 or more")
        if device.kind == "cpu" and level > device.cores:
            skipped.append({"level": level, "reason": f"{level} instances would need {level} cores; this host "
                                                      f"has {device.cores} usable"})
        elif level * per_instance > budget:
            skipped.append({"level": level, "reason": f"{level} instances at batch {largest_batch} need about "
                                                      f"{level * per_instance / 2**30:.2f} GiB, more than "
                                                      f"{budget / 2**30:.2f} GiB"})
        else:
            kept.append(level)
    return kept, skipped


def instance_threads(device: devices.DeviceInfo, level: int) -> int:
    """Torch threads of each instance at this level: what a time-sliced trial with `level` instances gives."""
    from workers.platform import choose_torch_threads

    return choose_torch_threads(device.kind, device.cores, level)


# ---- measuring ------------------------------------------------------------------------------------------------
def _percentile(values: list[float], q: float) -> float:
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _drive(runners: list[ProcessRunner], batch_size: int, samples: int, warmup: int,
           should_stop: Callable[[], bool]) -> list[float]:
    """Run batches of `batch_size` on every runner at once, one thread each; `samples` timed ones per runner,
    recorded only while every runner is still running batches (see the module docstring)."""
    n = len(runners)
    out: list[list[float]] = [[] for _ in range(n)]
    errors: list[BaseException] = []
    start = threading.Barrier(n)
    done = threading.Event()  # every runner has its quota: stop the untimed tail batches
    remaining = [n]
    lock = threading.Lock()

    def loop(i: int) -> None:
        runner = runners[i]
        mine = out[i]
        try:
            for _ in range(warmup):
                runner.run(batch_size)
            start.wait()
            while not done.is_set():
                t0 = time.perf_counter()
                runner.run(batch_size)
                dt_ms = (time.perf_counter() - t0) * 1e3
                if len(mine) < samples and not done.is_set():
                    mine.append(dt_ms)
                    if len(mine) == samples:
                        with lock:
                            remaining[0] -= 1
                            if remaining[0] == 0:
                                done.set()
                if should_stop():
                    done.set()
        except BaseException as exc:  # noqa: BLE001 - reported to the caller after the join
            errors.append(exc)
            done.set()
            start.abort()

    threads = [threading.Thread(target=loop, args=(i,), name=f"profile-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]
    if should_stop():
        raise ProfileStopped("stopped while measuring service times")
    return [x for xs in out for x in xs]


def measure_profile(model: str, *, options: dict | None = None, input_shape=None, device: str = "cpu",
                    model_dir: Path | None = None, batch_sizes: list[int] | None = None,
                    sharing_levels: list[int] | None = None, samples: int = DEFAULT_SAMPLES,
                    cold_starts: int = DEFAULT_COLD_STARTS, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                    warmup: int = WARMUP_BATCHES, progress: Callable[[str], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, upload: Upload | None = None) -> dict:
    """Measure a profile (version 1, see docs/method.md "Profiles") with real instance processes.

    `upload`: the model is an uploaded ONNX file run by ONNX Runtime instances, as its trials run it; `options`
    are then upload_options(upload) (what names its profile) and `input_shape` the file's per-sample shape.

    `batch_sizes` / `sharing_levels` replace the planned ones (levels the host cannot run are still skipped);
    `device` is resolved as trials resolve it ("auto" -> cuda:0 or cpu). Raises ValueError for bad arguments,
    zoo.ModelError for a model that cannot be built, devices.DeviceError for a missing device, ProfileStopped
    when `should_stop` turns true, and instance.StartFailed / ModelRaised when an instance fails.
    """
    say = progress or (lambda _line: None)
    stop = should_stop or (lambda: False)
    if int(samples) < 1 or int(cold_starts) < 1 or int(max_batch_size) < 1 or int(warmup) < 0:
        raise ValueError("samples, cold_starts and max_batch_size must be 1 or more, warmup 0 or more")
    samples, cold_starts = int(samples), int(cold_starts)
    model_dir = Path(model_dir) if model_dir is not None else zoo.default_model_dir()
    dev = devices.resolve_device(device)
    torch_device = "cpu" if dev.kind == "cpu" else f"cuda:{dev.index or 0}"
    if upload is None:
        zoo.check_model(model, input_shape=input_shape, options=options)
        opts, shape = canonical(model, options, input_shape)
        estimate = _zoo_estimate(model, opts, shape)
        fn = FunctionSpec(name="profile", model=model, options=opts, input_shape=tuple(shape) if shape else None)
    else:
        from workers import onnx_models

        opts, shape = upload_options(upload), list(input_shape) if input_shape is not None else None
        if dict(options or {}) != opts:
            raise ValueError(f"options: an uploaded model's profile is named by {opts}, not {options}")
        sig, _peak = onnx_models.inspect_file_isolated(Path(upload.file))  # once, not per batch size
        estimate = onnx_models.memory_estimator(sig, Path(upload.file).stat().st_size)
        if not upload.dynamic_batch:  # a fixed batch dimension: batch 1 is all its trials can run
            max_batch_size = 1
        fn = FunctionSpec(name="profile", model=model, input_shape=tuple(shape) if shape else None,
                          model_runtime="onnxruntime", model_file=str(upload.file), model_sha256=upload.sha256)
    skipped: list[dict] = []

    if batch_sizes is None:
        sizes, why = plan_batch_sizes(model, opts, shape, dev, max_batch_size, estimate=estimate)
        if not sizes:
            raise ValueError(f"{model}: not even batch 1 fits on {dev.name} ({why})")
        if why.startswith("batch"):
            skipped.append({"batch_size": sizes[-1] * 2, "reason": why})
    else:
        sizes = sorted({int(k) for k in batch_sizes})
        if not sizes or sizes[0] < 1:
            raise ValueError("batch_sizes: give one or more sizes of at least 1")
    levels, skipped_levels = plan_sharing_levels(model, opts, shape, dev, sizes[-1],
                                                 sharing_levels if sharing_levels is not None
                                                 else DEFAULT_SHARING_LEVELS, estimate=estimate)
    skipped.extend(skipped_levels)
    if not levels:
        raise ValueError(f"no sharing level can run on {dev.name}: " + "; ".join(s["reason"] for s in skipped_levels))
    for s in skipped_levels:
        say(f"sharing level {s['level']} skipped: {s['reason']}")

    # Weights before anything is timed: generating a file is preparation, never part of a cold start.
    if upload is None:
        zoo.weights_file(model, input_shape=shape, options=opts, model_dir=model_dir)
    zoo.weights_file("null", model_dir=model_dir)
    user_models = zoo.user_model_paths()

    def new_runner(threads: int, spec: FunctionSpec = fn) -> ProcessRunner:
        return ProcessRunner(spec, torch_device, model_dir, threads=threads, user_models=user_models)

    t_begin = time.perf_counter()
    runners: list[ProcessRunner] = []
    cold: dict[str, list[float]] = {p: [] for p in PHASES}
    resident: list[float | None] = []
    service: dict[str, dict[str, list[float]]] = {}
    idle: dict[str, dict[str, list[float]]] = {}
    follow: dict[str, dict[str, dict[str, list[float]]]] = {str(p): {} for p in range(2, FOLLOW_POSITIONS + 1)}
    memory_bytes = 0
    threads_by_level = {str(level): instance_threads(dev, level) for level in levels}
    try:
        # Cold starts, one at a time with nothing else on the device; the last one stays as the first instance.
        t1 = threads_by_level[str(levels[0])]
        for i in range(cold_starts):
            if stop():
                raise ProfileStopped("stopped during the cold starts")
            runner = new_runner(t1)
            runners.append(runner)
            info = runner.start(should_abort=stop)
            for phase in PHASES:
                cold[phase].append(float(info["timings_ms"].get(phase, 0.0)))
            resident.append(info.get("page_cache_resident"))
            say(f"cold start {i + 1}/{cold_starts}: {info['timings_ms']['total']:.0f} ms")
            if i < cold_starts - 1:
                runners.pop().close()

        for level in levels:
            threads = threads_by_level[str(level)]
            keep = [r for r in runners if r.threads == threads][:level]
            for r in runners:
                if r not in keep:
                    r.close()
            runners = keep
            while len(runners) < level:
                if stop():
                    raise ProfileStopped("stopped while starting instances")
                runner = new_runner(threads)
                runners.append(runner)
                runner.start(should_abort=stop)
            cells: dict[str, list[float]] = {}
            for k in sizes:
                xs = _drive(runners, k, samples, warmup, stop)
                cells[str(k)] = xs
                say(f"level {level}, batch {k}: p50 {_percentile(xs, 50):.3f} ms, p99 {_percentile(xs, 99):.3f} ms "
                    f"({len(xs)} samples)")
            service[str(level)] = cells
            if level == levels[0]:
                memory_bytes = peak_rss_bytes(runners[0].proc.pid)
                for gap_ms in IDLE_GAPS_MS:
                    idle_cells = idle.setdefault(str(gap_ms), {})
                    for k in sizes:
                        first, *then = _after_idle(runners[0], k, samples, gap_ms, stop)
                        idle_cells[str(k)] = first
                        for pos, xs in enumerate(then, start=2):
                            follow[str(pos)].setdefault(str(gap_ms), {})[str(k)] = xs
                    say(f"after {gap_ms} ms idle, batch {sizes[0]}: p50 {_percentile(idle_cells[str(sizes[0])], 50):.3f} ms")
        for r in runners:
            r.close()
        runners = []

        # The runtime's own cost per request: a round trip to an instance whose model does nothing.
        null = new_runner(threads_by_level[str(levels[0])],
                          FunctionSpec(name="null", model="null", options={}, input_shape=None))
        runners.append(null)
        null.start(should_abort=stop)
        overhead = _drive([null], 1, max(samples, OVERHEAD_SAMPLES_MIN), warmup, stop)
        say(f"runtime overhead: p50 {_percentile(overhead, 50) * 1e3:.1f} us, "
            f"p99 {_percentile(overhead, 99) * 1e3:.1f} us")
    finally:
        for r in runners:
            try:
                r.close()
            except Exception:  # noqa: BLE001 - closing the rest matters more
                r.kill()
    if stop():
        raise ProfileStopped("stopped before the platform overhead")
    platform = measure_platform_overhead(model_dir, null_service_ms=_percentile(overhead, 50),
                                         seconds=1.0 if samples < DEFAULT_SAMPLES else 2.0)
    for key, what in (("dispatch_lag_ms", "dispatcher lag"), ("platform_overhead_ms", "overhead on an idle instance"),
                      ("platform_busy_overhead_ms", "overhead back to back")):
        xs = platform[key]
        if not xs:
            say(f"platform {what}: no batch was queued behind another")
            continue
        say(f"platform {what}: p50 {_percentile(xs, 50) * 1e3:.1f} us, p99 {_percentile(xs, 99) * 1e3:.1f} us")

    profile = {
        "version": VERSION,
        "model": model,
        "options": opts,
        "input_shape": shape,
        "device": dev.name,
        "hardware": hardware_line(dev),
        "runtime": RUNTIME,
        "model_runtime": fn.model_runtime,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "batch_sizes": sizes,
        "sharing_levels": levels,
        "service_ms": service,
        "idle_service_ms": idle,
        "idle_follow_ms": follow,
        "overhead_us": {"p50": _percentile(overhead, 50) * 1e3, "p99": _percentile(overhead, 99) * 1e3},
        "platform_overhead_ms": platform["platform_overhead_ms"],
        "dispatch_lag_ms": platform["dispatch_lag_ms"],
        "platform_busy_overhead_ms": platform["platform_busy_overhead_ms"],
        "cold_start_ms": cold,
        "memory_bytes": int(memory_bytes),
        "samples": samples,
        # Beyond the shared contract: what a reader needs to trust or question the figures.
        "skipped": skipped,
        "instance_torch_threads": threads_by_level,
        "warmup_batches": int(warmup),
        "page_cache_resident": resident,
        "hardware_info": devices.hardware_info(dev, "time_slice"),
        "measure_s": round(time.perf_counter() - t_begin, 3),
    }
    return validate_profile(profile)


def _after_idle(runner: ProcessRunner, k: int, samples: int, gap_ms: float,
                stop: Callable[[], bool]) -> list[list[float]]:
    """`samples` times: the instance sits idle for gap_ms (ms), then runs FOLLOW_POSITIONS batches of k one right after
    the other. One list of round trips (ms) per position: the batch that found the instance idle, the next, ..."""
    xs: list[list[float]] = [[] for _ in range(FOLLOW_POSITIONS)]
    clock = time.perf_counter
    for _ in range(samples):
        if stop():
            raise ProfileStopped("stopped while measuring batches after idle")
        time.sleep(gap_ms / 1e3)
        for pos in range(FOLLOW_POSITIONS):
            t0 = clock()
            runner.run(k)
            xs[pos].append((clock() - t0) * 1e3)
    return xs


def measure_platform_overhead(model_dir: Path, *, null_service_ms: float, seconds: float = 2.0,
                              rate_rps: float = 200.0) -> dict:
    """What the platform adds to a request beyond its batch's round trip to the instance, measured through the real
    platform (engine, one process instance of the null model, Poisson load) with platform_parts: the dispatcher's
    lag and the platform's overhead per batch in its two regimes (on an instance that was idle, and back to back)."""
    from workers.engine import run_trial
    from workers.records import OUTCOME_OK
    from workers.spec import TrialSpec, parse_experiment

    exp = parse_experiment({
        "name": "platform-overhead", "device": "cpu", "functions": [{"name": "null", "model": "null"}],
        "workload": {"pattern": "poisson", "rate_rps": rate_rps, "duration_s": seconds, "seed": 1},
        "variants": [{"name": "one", "sharing": "time_slice", "min_instances": 1, "max_instances": 1}]})
    with tempfile.TemporaryDirectory() as tmp:
        res = run_trial(TrialSpec(exp, exp.variants[0]), model_dir=model_dir, artifact_path=Path(tmp) / "o.parquet")
        import pyarrow.parquet as pq

        t = pq.read_table(res.artifact_path, columns=["outcome", "completed_s", "intended_s", "sent_s",
                                                       "batch_start_s"]).to_pydict()
    return platform_parts(t, OUTCOME_OK, null_service_ms=null_service_ms)


def platform_parts(t: dict, ok_outcome: int, *, null_service_ms: float) -> dict:
    """From one null-model instance's trial rows (ms, >= 0, at most MAX_CELL_SAMPLES samples each):

      dispatch_lag_ms            sent - intended: the open-loop dispatcher's lateness, before the request reaches
                                 the scheduler (the simulator delays each arrival by a draw of it);
      platform_overhead_ms       completed - sent - the null model's median back-to-back round trip, over
                                 batches sent to an idle instance: the path from the send to the batch's start
                                 (the scheduling core under its lock, the send to the instance: 20-70 us here), and
                                 the wake-ups of a platform that sat idle, beyond what a round trip measured back to
                                 back holds (the simulator, which starts such a batch the moment its request is sent,
                                 adds a draw to a batch that finds its instance idle; measured from the batch's
                                 start before 2026-12-03, it left that path out);
      platform_busy_overhead_ms  batch start - the previous batch's completion, for batches that were queued behind
                                 it: recording it, the core's batch_done, the send (20-40 us here; the simulator adds
                                 a draw to a batch that follows another at once). Empty when no batch was queued.

    Why two: a single figure was wrong at one end or the other. The idle one added to every batch made a simulated
    capacity search 21 % pessimistic on a quiet host (it added 0.21 ms a batch where the real platform, busy, held an
    instance 20-40 us between round trips); the busy one added to every batch made unbatched p50 at 100 req/s
    17-20 % optimistic (2026-12-03, validate_simulator).
    """
    ok = sorted((i for i, o in enumerate(t["outcome"]) if o == ok_outcome), key=lambda i: t["batch_start_s"][i])
    lag = sorted(max(0.0, (t["sent_s"][i] - t["intended_s"][i]) * 1e3) for i in ok) or [0.0]
    idle, busy = [], []
    prev_end = None
    for i in ok:
        start, sent, end = t["batch_start_s"][i], t["sent_s"][i], t["completed_s"][i]
        if prev_end is None or sent >= prev_end:
            idle.append(max(0.0, (end - sent) * 1e3 - null_service_ms))
        else:
            busy.append(max(0.0, (start - prev_end) * 1e3))
        prev_end = end
    return {"dispatch_lag_ms": _thin(lag), "platform_overhead_ms": _thin(sorted(idle) or [0.0]),
            "platform_busy_overhead_ms": _thin(sorted(busy))}


def _thin(xs: list[float]) -> list[float]:
    step = max(1, -(-len(xs) // MAX_CELL_SAMPLES))
    return xs[::step][:MAX_CELL_SAMPLES]


# ---- validation and summaries -------------------------------------------------------------------------------
def _num(value: Any, field: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field}: must be a finite number, not {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{field}: must be {'positive' if positive else '0 or more'}, not {value!r}")
    return float(value)


def _samples(value: Any, field: str, *, positive: bool) -> None:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{field}: must be a non-empty list of samples")
    if len(value) > MAX_CELL_SAMPLES:
        raise ValueError(f"{field}: more than {MAX_CELL_SAMPLES} samples")
    for i, x in enumerate(value):
        _num(x, f"{field}[{i}]", positive=positive)


def _ascending_ints(value: Any, field: str) -> list[int]:
    if (not isinstance(value, list) or not value
            or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in value)):
        raise ValueError(f"{field}: must be a non-empty list of whole numbers of at least 1")
    if value != sorted(set(value)):
        raise ValueError(f"{field}: must be in ascending order without repeats")
    return value


def validate_profile(d: Any) -> dict:
    """Check a profile dict (version 1) and return it; raises ValueError naming the first bad field."""
    if not isinstance(d, dict):
        raise ValueError("profile: must be a JSON object")
    for field in ("version", "model", "options", "input_shape", "device", "hardware", "runtime", "created",
                  "batch_sizes", "sharing_levels", "service_ms", "overhead_us", "cold_start_ms", "memory_bytes",
                  "samples"):
        if field not in d:
            raise ValueError(f"{field}: missing")
    if d["version"] != VERSION:
        raise ValueError(f"version: {d['version']!r} is not supported (this build reads version {VERSION})")
    for field in ("model", "device", "hardware"):
        if not isinstance(d[field], str) or not d[field].strip():
            raise ValueError(f"{field}: must be a non-empty string")
    if d["runtime"] != RUNTIME:
        raise ValueError(f"runtime: must be {RUNTIME!r}")
    if not isinstance(d["options"], dict):
        raise ValueError("options: must be an object")
    shape = d["input_shape"]
    if shape is not None and (not isinstance(shape, list)
                              or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in shape)):
        raise ValueError("input_shape: must be null or a list of positive whole numbers")
    try:
        created = datetime.fromisoformat(str(d["created"]))
    except ValueError:
        raise ValueError(f"created: {d['created']!r} is not an ISO 8601 date and time") from None
    if created.tzinfo is None:
        raise ValueError("created: must carry a time zone (UTC)")
    sizes = _ascending_ints(d["batch_sizes"], "batch_sizes")
    levels = _ascending_ints(d["sharing_levels"], "sharing_levels")
    service = d["service_ms"]
    if not isinstance(service, dict) or set(service) != {str(x) for x in levels}:
        raise ValueError("service_ms: must have one entry per sharing level, keyed by the level as a string")
    for level in levels:
        cells = service[str(level)]
        if not isinstance(cells, dict) or set(cells) != {str(k) for k in sizes}:
            raise ValueError(f"service_ms.{level}: must have one entry per batch size, keyed as a string")
        for k in sizes:
            _samples(cells[str(k)], f"service_ms.{level}.{k}", positive=True)
    overhead = d["overhead_us"]
    if not isinstance(overhead, dict):
        raise ValueError("overhead_us: must be an object with p50 and p99")
    for q in ("p50", "p99"):
        if q not in overhead:
            raise ValueError(f"overhead_us.{q}: missing")
        _num(overhead[q], f"overhead_us.{q}", positive=True)
    cold = d["cold_start_ms"]
    if not isinstance(cold, dict):
        raise ValueError("cold_start_ms: must be an object of phase -> samples")
    for phase in PHASES:
        if phase not in cold:
            raise ValueError(f"cold_start_ms.{phase}: missing")
        _samples(cold[phase], f"cold_start_ms.{phase}", positive=phase == "total")
    if len({len(cold[p]) for p in PHASES}) != 1:
        raise ValueError("cold_start_ms: every phase must have one sample per cold start")
    for field in ("platform_overhead_ms", "dispatch_lag_ms"):  # optional: older profiles lack them
        if d.get(field) is not None:
            _samples(d[field], field, positive=False)
    busy = d.get("platform_busy_overhead_ms")  # optional, and empty when no batch was queued behind another
    if busy is not None and busy != []:
        _samples(busy, "platform_busy_overhead_ms", positive=False)
    idle = d.get("idle_service_ms")  # optional: older profiles lack it
    if idle is not None:
        if not isinstance(idle, dict) or any(not g.isdigit() or int(g) < 1 for g in idle):
            raise ValueError("idle_service_ms: must be an object keyed by the idle gap in whole milliseconds")
        for gap, cells in idle.items():
            if not isinstance(cells, dict) or set(cells) != {str(k) for k in sizes}:
                raise ValueError(f"idle_service_ms.{gap}: must have one entry per batch size, keyed as a string")
            for k in sizes:
                _samples(cells[str(k)], f"idle_service_ms.{gap}.{k}", positive=True)
    follow = d.get("idle_follow_ms")  # optional: profiles before 2026-12-03 lack it
    if follow is not None:
        if not isinstance(follow, dict) or any(not p.isdigit() or int(p) < 2 for p in follow):
            raise ValueError("idle_follow_ms: must be an object keyed by the position after the idle batch (2, 3, ...)")
        for pos, by_gap in follow.items():
            if not isinstance(by_gap, dict) or set(by_gap) != set(idle or {}):
                raise ValueError(f"idle_follow_ms.{pos}: must have the idle gaps of idle_service_ms")
            for gap, cells in by_gap.items():
                if not isinstance(cells, dict) or set(cells) != {str(k) for k in sizes}:
                    raise ValueError(f"idle_follow_ms.{pos}.{gap}: must have one entry per batch size, keyed as a "
                                     "string")
                for k in sizes:
                    _samples(cells[str(k)], f"idle_follow_ms.{pos}.{gap}.{k}", positive=True)
    if isinstance(d["memory_bytes"], bool) or not isinstance(d["memory_bytes"], int) or d["memory_bytes"] < 0:
        raise ValueError("memory_bytes: must be a whole number of bytes, 0 or more")
    if isinstance(d["samples"], bool) or not isinstance(d["samples"], int) or d["samples"] < 1:
        raise ValueError("samples: must be a whole number of at least 1")
    return d


def summary_table(d: dict) -> list[dict]:
    """One row per (sharing level, batch size): p50 / p99 of the service time and the throughput it implies.

    Throughput counts the whole device: `level` instances each finishing `batch` requests every p50 ms."""
    rows = []
    for level in d["sharing_levels"]:
        for k in d["batch_sizes"]:
            xs = d["service_ms"][str(level)][str(k)]
            p50 = _percentile(xs, 50)
            rows.append({"level": level, "batch_size": k, "p50_ms": p50, "p99_ms": _percentile(xs, 99),
                         "mean_ms": statistics.fmean(xs), "samples": len(xs),
                         "throughput_rps": level * k / (p50 / 1e3) if p50 > 0 else None})
    return rows


def cold_start_table(d: dict) -> list[dict]:
    """Per phase: median, min and max over the measured cold starts (ms)."""
    out = []
    for phase in PHASES:
        xs = d["cold_start_ms"][phase]
        out.append({"phase": phase, "p50_ms": _percentile(xs, 50), "min_ms": min(xs), "max_ms": max(xs),
                    "samples": len(xs)})
    return out


def format_table(d: dict) -> str:
    """The command's table: batch size x level, p50 / p99 ms and device throughput."""
    lines = [f"{'level':>5}  {'batch':>5}  {'p50 ms':>9}  {'p99 ms':>9}  {'thr req/s':>10}  {'n':>4}"]
    for r in summary_table(d):
        thr = "-" if r["throughput_rps"] is None else f"{r['throughput_rps']:.1f}"
        lines.append(f"{r['level']:>5}  {r['batch_size']:>5}  {r['p50_ms']:>9.3f}  {r['p99_ms']:>9.3f}  "
                     f"{thr:>10}  {r['samples']:>4}")
    return "\n".join(lines)
