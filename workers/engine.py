"""One trial end to end: spec -> arrivals -> open-loop dispatcher -> platform -> recorder -> summary.

Everything that can make a trial impossible is checked first, before any model is loaded, and raised
as TrialFailed with a message that says what to change (unknown model, no CUDA, a spatial share the
host cannot give, a batch or instance count that does not fit the device's memory, a workload with no
arrivals). Then: prestart min instances (prestarts, not request latency), fix t0 (the instant the
first arrival is due), start telemetry, dispatch open loop, emit one window per second, poll
should_stop at least every 0.25 s, drain (bounded), close, summarize.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workers import cost as cost_mod
from workers import devices, onnx_models, statistics, workload, zoo
from workers import spec as S
from workers.dispatcher import Dispatcher, behind_threshold_us
from workers.platform import (
    MEMORY_HEADROOM,
    Platform,
    PlatformError,
    choose_torch_threads,
    configure_torch_threads,
    restore_torch_threads,
)
from workers.recorder import Recorder
from workers.records import COLD_START_PHASES, OUTCOME_OK, SIM_FULL_ROWS_MAX, json_safe
from workers.spec import TrialSpec, effective_model_runtime, isolation_label, isolation_level

STOP_POLL_S = 0.2  # should_stop is polled at least this often (the contract says 0.25 s)
LEAD_S = 0.1  # between fixing t0 and the first arrival: the dispatcher thread is up and sleeping
# Memory an instance process needs beyond its model on the CPU (interpreter + torch, measured RSS ~250 MB here):
# counted against the host's memory so that a runtime "process" variant does not start more than fit.
PROCESS_OVERHEAD_BYTES = 300 * 2**20
COLD_DRAIN_EXTRA_S = 120.0  # at most this much longer for cold starts still running when the grace ends
CANCEL_JOIN_S = 1.0  # a cancelled trial gives running batches this long; the whole stop stays under 2 s
# The GIL switch interval while a trial runs. The dispatcher, the instance threads and torch's Python-level
# op dispatch share one GIL; CPython's default 5 ms lets a thread that is busy in Python make the
# dispatcher (woken from its sleep on time) wait up to 5 ms for the GIL. 0.5 ms bounds that wait at a small
# cost in switching; the previous value is restored after the trial.
SWITCH_INTERVAL_S = 0.0005
MAX_FLEET_DEVICES = 256  # a simulated fleet
SIM_WINDOWS_MAX = 3_600  # a simulated run longer than this many seconds gets wider windows


class TrialFailed(Exception):
    """The trial cannot run as specified; the message says why and what to change."""


@dataclass
class TrialResult:
    status: str  # "succeeded" | "cancelled"
    summary: dict
    windows: list[dict] = field(default_factory=list)
    hardware: dict = field(default_factory=dict)
    artifact_path: Path | None = None
    trace: list | None = None  # the scheduling core's events and actions (run_trial(trace=True))


def default_drain_grace_s(slo_latency_ms: float) -> float:
    """How long after the last arrival unfinished requests may still complete: four SLO latencies, at least
    2 s (cold starts) and at most 60 s; what is not done by then is dropped (and counts as a violation)."""
    return float(min(60.0, max(2.0, 4.0 * slo_latency_ms / 1000.0)))


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def run_trial(spec: TrialSpec, *, model_dir: Path | None = None, on_window: Callable[[dict], None] | None = None,
              should_stop: Callable[[], bool] | None = None, artifact_path: Path | None = None,
              drain_grace_s: float | None = None, profiles: list[dict] | None = None,
              fleet: dict | None = None, trace: bool = False) -> TrialResult:
    """Run one trial for real, or -- with `profiles` (one measured profile per function, see workers.profiling) --
    on the simulated driver: the same checks, scheduling core, recorder, summary and cost, on a virtual clock.
    fleet ({"devices": N, "placement": "first_fit" | "load_pack"}, simulated only): the functions are placed on N
    devices of this kind, each with its own scheduling core."""
    exp, var = spec.experiment, spec.variant
    model_dir = Path(model_dir) if model_dir is not None else zoo.default_model_dir()
    names = [f.name for f in exp.functions]
    notes: list[str] = []

    # ---- everything that can fail, before any load -------------------------------------------------
    known = set(zoo.model_keys())
    # Each function with the model runtime this variant gives it (the platform's runners read it from here).
    functions = tuple(dataclasses.replace(f, model_runtime=effective_model_runtime(f, var)) for f in exp.functions)
    for f in functions:
        if f.model_sha256:  # an uploaded ONNX model, resolved to its stored file by the worker
            _check_uploaded_file(f)
        elif f.model not in known:
            raise TrialFailed(f"function {f.name!r}: unknown model {f.model!r} (known: {', '.join(sorted(known))})")
    try:
        device = devices.resolve_device(exp.device)
    except devices.DeviceError as exc:
        raise TrialFailed(str(exc)) from exc

    n_fn = len(exp.functions)
    runtime = "process" if var.sharing == "spatial" else var.runtime
    share = var.effective_share
    if var.sharing == "spatial" and var.share is None and n_fn > 1:
        # effective_share assumes one function; with several, each instance slot gets an equal part.
        share = 1.0 / (n_fn * var.max_instances)
        notes.append(f"spatial share not given: each of {n_fn} functions x {var.max_instances} instances "
                     f"gets {share:.3g} of the device")
    slots = n_fn * var.max_instances if var.sharing == "spatial" else var.max_instances
    try:
        plan = devices.sharing_plan(device, var.sharing, instances=slots, share=share, runtime=runtime)
    except devices.SharingUnavailable as exc:
        raise TrialFailed(str(exc)) from exc

    max_batch = var.batching.max_batch_size if var.batching.mode != "none" else 1
    budget = int(device.total_memory_bytes * MEMORY_HEADROOM)
    overhead = PROCESS_OVERHEAD_BYTES if (runtime == "process" and device.kind == "cpu") else 0
    mem: list[int] = []
    for f in functions:
        try:
            if f.model_sha256:
                est = onnx_models.estimate_memory_bytes(Path(f.model_file), batch_size=max_batch)
            else:
                est = zoo.estimate_memory_bytes(f.model, input_shape=f.input_shape, options=f.options,
                                                batch_size=max_batch)
            mem.append(int(est) + overhead)
        except (zoo.ModelError, onnx_models.OnnxModelError) as exc:
            raise TrialFailed(f"function {f.name!r}: {exc}") from exc
    # A MIG slice or an MPS client gets its share of the GPU's memory; CPU core sets share the host's RAM.
    limit = int(budget * share) if (var.sharing == "spatial" and device.kind == "cuda") else budget
    for f, m in zip(exp.functions, mem, strict=True):
        if m > limit:
            raise TrialFailed(f"function {f.name!r}: one instance of {f.model} at batch size {max_batch} needs about "
                              f"{_gib(m)}, more than the {_gib(limit)} available to it on {device.name} "
                              f"({device.description}); lower max_batch_size or pick a smaller model")
    if var.sharing == "exclusive":
        if var.max_instances > 1:
            notes.append(f"exclusive sharing: at most one instance is resident on the device at a time, so "
                         f"max_instances {var.max_instances} was capped at 1")
    else:
        need_min = sum(var.min_instances * m for m in mem)
        if need_min > budget:
            raise TrialFailed(f"{var.min_instances} min instance(s) per function need about {_gib(need_min)}, "
                              f"more than the {_gib(budget)} available on {device.name}; lower min_instances "
                              "or max_batch_size")
        need_max = sum(var.max_instances * m for m in mem)
        if need_max > budget:
            fit = max(1, budget // max(mem))
            notes.append(f"max_instances {var.max_instances} per function needs about {_gib(need_max)}; only "
                         f"about {fit} instance(s) fit in {_gib(budget)}, so the platform caps starts there")
    try:
        arrivals = workload.generate_arrivals(exp.workloads, exp.functions, seed_offset=spec.repeat)
    except workload.WorkloadError as exc:
        raise TrialFailed(str(exc)) from exc
    n = len(arrivals)
    if n == 0:
        raise TrialFailed("the workload produces no arrivals in its window")

    # ---- set up -----------------------------------------------------------------------------------------
    # Weights are generated, and zoo models that run under ONNX Runtime exported, now, before the trial's clock
    # starts: making a file is a one-time preparation, never part of a timed cold start.
    if profiles is None:
        prepared = []
        for f in functions:
            try:
                if f.model_sha256:
                    pass  # an upload: its file was checked above
                elif f.model_runtime == "onnxruntime":
                    f = dataclasses.replace(f, model_file=str(onnx_models.export_zoo_model(
                        f.model, input_shape=f.input_shape, options=f.options, model_dir=model_dir)))
                else:
                    zoo.weights_file(f.model, input_shape=f.input_shape, options=f.options, model_dir=model_dir)
            except (zoo.ModelError, onnx_models.OnnxModelError) as exc:
                raise TrialFailed(f"function {f.name!r}: {exc}") from exc
            prepared.append(f)
        functions = tuple(prepared)
        notes += [f"function {f.name!r}: {f.model} under ONNX Runtime"
                  + (f" (uploaded file, SHA-256 {f.model_sha256[:12]}…)" if f.model_sha256 else " (exported from torch)")
                  for f in functions if f.model_runtime == "onnxruntime"]
    elif len(profiles) != n_fn:
        raise TrialFailed(f"a simulated trial needs one profile per function ({n_fn}), got {len(profiles)}")
    _preload_end_of_trial_modules(artifact_path is not None)
    first = float(arrivals.times_s[0])
    run_end = max(float(arrivals.run_s) - first, float(arrivals.times_s[-1]) - first)
    stream = None
    if profiles is not None:  # simulated: the summary from histograms; full rows only up to SIM_FULL_ROWS_MAX
        seconds = int(math.floor(float(arrivals.times_s[-1]) - first)) + 1
        stream = {"arrival_s": run_end, "seconds": seconds, "unit_s": math.ceil(seconds / statistics.MAX_CI_UNITS),
                  "full_rows": n <= SIM_FULL_ROWS_MAX}
    rec = Recorder(n, names, slo_latency_ms=exp.slo.latency_ms, stream=stream)
    intended = rec.rows["intended_s"]
    intended[:] = arrivals.times_s - first  # run clock: 0 is the first intended arrival
    rec.rows["function"][:] = arrivals.function_idx
    grace = default_drain_grace_s(exp.slo.latency_ms) if drain_grace_s is None else float(drain_grace_s)
    ctx = _Context(spec=spec, names=names, notes=notes, device=device, plan=plan, share=share, runtime=runtime,
                   rec=rec, run_end=run_end, grace=grace, on_window=on_window, artifact_path=artifact_path,
                   trace=trace)
    if profiles is not None:
        return _run_simulated(ctx, profiles, arrivals.function_idx, budget=budget, mem=mem, fleet=fleet,
                              should_stop=should_stop)
    too_big = S.real_run_errors(exp)
    if too_big:
        raise TrialFailed("; ".join(str(e) for e in too_big))
    if fleet and int(fleet.get("devices", 1)) > 1:
        raise TrialFailed("a fleet of several devices runs simulated only; a real trial runs on one device (a sweep "
                          "runs variants on every device of a pool at once)")

    in_process = runtime == "thread"
    concurrent = 1 if var.sharing == "exclusive" else (n_fn * var.max_instances if var.sharing != "spatial" else 1)
    threads = choose_torch_threads(device.kind, device.cores, concurrent)
    # Thread runtime: the instances' torch runs in this process. Process runtime: each instance process gets
    # `threads` intra-op threads (spatial ones their core set) and this process keeps its own settings.
    torch_before = configure_torch_threads(threads) if in_process else {}
    switch_before = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    torch_device = "cpu" if device.kind == "cpu" else f"cuda:{device.index or 0}"
    platform = Platform(functions, var, recorder=rec, function_idx=arrivals.function_idx, model_dir=model_dir,
                        slo_latency_ms=exp.slo.latency_ms, device_kind=device.kind, torch_device=torch_device,
                        plan=plan, memory_budget_bytes=budget, mem_per_instance=mem, share=share,
                        child_threads=threads, trace=trace)
    telemetry = None
    dispatcher = None
    windows: list[dict] = []
    status = "succeeded"
    closed = False
    try:
        try:
            ready = platform.prestart(should_stop=should_stop, poll_s=STOP_POLL_S)
        except PlatformError as exc:
            raise TrialFailed(str(exc)) from exc

        t0 = time.perf_counter() + LEAD_S
        platform.set_t0(t0)
        telemetry = devices.Telemetry(device, interval_s=0.2, t0=t0).start()
        dispatcher = Dispatcher(intended, platform.submit, sent_s=rec.rows["sent_s"],
                                behind_threshold_us=behind_threshold_us(exp.slo.latency_ms))
        if ready:
            dispatcher.start(t0=t0)
        else:  # cancelled while min instances were starting: nothing was sent
            status = "cancelled"
            notes.append("cancelled before the load began (while min instances were starting)")

        def emit(a: float, b: float) -> None:
            w = rec.window(a, b, state=platform.state(),
                           telemetry=telemetry.mean_between(a, b) if telemetry else None,
                           cost_usd=cost_mod.cost_so_far_usd(list(rec.instances), spec.price, b,
                                                             sharing=var.sharing))
            windows.append(w)
            if on_window is not None:
                try:
                    on_window(w)
                except Exception as exc:  # noqa: BLE001 - a broken listener must not end the measurement
                    if not any(s.startswith("on_window raised") for s in notes):
                        notes.append(f"on_window raised {type(exc).__name__}: {exc}")

        next_win = 1.0
        last_poll = -math.inf
        last_starting = -math.inf  # the last run time an instance was seen starting after the load
        while status == "succeeded":
            now = time.perf_counter() - t0
            if should_stop is not None and now - last_poll >= STOP_POLL_S:
                last_poll = now
                if should_stop():
                    status = "cancelled"
                    dispatcher.cancel()
                    break
            if dispatcher.error is not None:
                raise dispatcher.error
            while now >= next_win:
                emit(next_win - 1.0, next_win)
                next_win += 1.0
            if dispatcher.done:
                if platform.pending() == 0 and now >= run_end:
                    break
                # A cold start still in progress extends the drain (bounded), and the grace counts again from its
                # end: its requests waited for a real process start, and cutting them off the moment it is ready
                # would report a start as drops.
                extra_end = float(intended[-1]) + COLD_DRAIN_EXTRA_S + platform.platform_delay_s
                starting = platform.state()["instances_starting"] > 0 and now < extra_end + grace
                if starting:
                    last_starting = min(now, extra_end)
                if now >= max(float(intended[-1]), last_starting) + grace and now >= run_end and not starting:
                    left = platform.pending()
                    if left:
                        notes.append(f"{left} request(s) not finished {grace:g} s after the last arrival were "
                                     "dropped (drain grace period)")
                    break
            time.sleep(min(0.02, max(0.001, next_win - now)))

        end_s = max(0.0, time.perf_counter() - t0)
        dispatcher.cancel()
        if ready:
            dispatcher.join(1.0)
        platform.close(end_s, join_s=CANCEL_JOIN_S if status == "cancelled" else 2.0)
        closed = True
        if end_s - (next_win - 1.0) > 0.05:
            emit(next_win - 1.0, end_s)
        telemetry.stop()

        # ---- summary -------------------------------------------------------------------------------------
        k = dispatcher.n_sent  # requests never sent (cancel) are excluded
        ds = dispatcher.stats()
        dispatch = {"lag_p50_us": ds["lag_p50_us"], "lag_p99_us": ds["lag_p99_us"],
                    "lag_max_us": ds["lag_max_us"], "behind": ds["behind"], "sent": ds["sent"],
                    "behind_threshold_us": ds["behind_threshold_us"], "priority": ds["priority"]}
        if ds["behind"]:
            notes.append(f"the dispatcher fell behind: worst lag {ds['lag_max_us'] / 1000:.1f} ms (threshold "
                         f"{ds['behind_threshold_us'] / 1000:.0f} ms); latencies include it (open loop)")
        hardware = _hardware(ctx)
        hardware["model_runtimes"] = {f.name: f.model_runtime for f in functions}
        hardware["torch_threads"] = threads if in_process else None
        hardware["instance_torch_threads"] = threads if not in_process and var.sharing != "spatial" else None
        hardware["gil_switch_interval_s"] = SWITCH_INTERVAL_S
        if var.sharing == "spatial":
            hardware["instances"] = [json_safe(c) for c in platform.spatial_children[:64]]
            if device.kind == "cpu" and device.cores <= sum(len(c) for c in plan.core_sets or []):
                notes.append("spatial on cpu: the instances' core sets cover every core, so the dispatcher and "
                             "the platform's threads share cores with them")
            bad = [c for c in platform.spatial_children
                   if c.get("cores_requested") and c.get("cores_actual") != sorted(c["cores_requested"])]
            if bad:
                notes.append(f"{len(bad)} instance process(es) did not get the core set asked for")
        return _finish(ctx, platform, status=status, k=k, end_s=end_s, windows=windows, hardware=hardware,
                       dispatch=dispatch, telemetry=telemetry.summary(), simulated=False)
    finally:
        if dispatcher is not None:
            dispatcher.cancel()
        if not closed:
            platform.close(time.perf_counter() - platform._t0 if platform._t0 else 0.0, join_s=CANCEL_JOIN_S)
        if telemetry is not None:
            telemetry.stop()
        sys.setswitchinterval(switch_before)
        restore_torch_threads(torch_before)


@dataclass
class _Context:
    """What the real and the simulated run share: the checked spec, the device and plan, the recorder."""

    spec: TrialSpec
    names: list[str]
    notes: list[str]
    device: object
    plan: object
    share: float
    runtime: str
    rec: Recorder
    run_end: float
    grace: float
    on_window: Callable[[dict], None] | None
    artifact_path: Path | None
    trace: bool = False


def _hardware(ctx: _Context) -> dict:
    var, plan = ctx.spec.variant, ctx.plan
    hardware = devices.hardware_info(ctx.device, plan.mechanism)
    hardware["runtime"] = ctx.runtime
    hardware["isolation"] = isolation_label(var.sharing, ctx.runtime, plan.mechanism)
    hardware["isolation_level"] = isolation_level(var.sharing, ctx.runtime, plan.mechanism)
    if var.sharing == "spatial":
        hardware["share"] = ctx.share
        if plan.core_sets:
            hardware["core_sets"] = [list(c) for c in plan.core_sets]
        if plan.mps_active_thread_percentage is not None:
            hardware["mps_active_thread_percentage"] = plan.mps_active_thread_percentage
        if plan.mig_devices:
            hardware["mig_devices"] = list(plan.mig_devices)
    return hardware


def _finish(ctx: _Context, platform, *, status: str, k: int, end_s: float, windows: list[dict], hardware: dict,
            dispatch: dict | None, telemetry: dict | None, simulated: bool, extra: dict | None = None,
            devices: int = 1) -> TrialResult:
    """The summary of a finished run (real or simulated) from its recorder, and the Parquet artifact."""
    spec, rec, notes = ctx.spec, ctx.rec, ctx.notes
    exp, var = spec.experiment, spec.variant
    run_s = ctx.run_end if status == "succeeded" else max(min(end_s, ctx.run_end), 1e-3)
    if rec.stream is not None:
        requests = rec.settle(k)
        st = rec.stream
        seconds = int(math.floor(float(rec.rows["intended_s"][k - 1]))) + 1 if k else 0
        summary = statistics.summarize_streamed(st, function_names=ctx.names, slo=exp.slo, arrival_s=run_s,
                                                end_s=end_s, cold_starts=list(rec.cold_starts),
                                                n_batches=rec.n_batches, requests=requests,
                                                seconds=seconds)
        completed, good, paid_cold = st.all.hist.n, st.all.good, st.paid_cold_start
    else:
        rows = {c: a[:k] for c, a in rec.rows.items()}
        summary = statistics.summarize(rows, function_names=ctx.names, slo=exp.slo, arrival_s=run_s, end_s=end_s,
                                       cold_starts=list(rec.cold_starts), n_batches=rec.n_batches)
        ok = rows["outcome"] == OUTCOME_OK
        lat_ms = (rows["completed_s"][ok] - rows["intended_s"][ok]) * 1e3
        completed, good = int(np.count_nonzero(ok)), int(np.count_nonzero(lat_ms <= exp.slo.latency_ms))
        paid_cold = int(np.count_nonzero(rows["cold_wait_s"] > 0))
    summary["cost"] = cost_mod.trial_cost(
        instances=list(rec.instances), price=spec.price, end_s=end_s, devices=devices,
        completed=completed, good=good, sharing=var.sharing,
        time_compression=max(float(w.time_compression) for w in exp.workloads))
    summary["cold_start_phases_ms"] = _cold_start_phases(rec.cold_starts)
    # Cold starts count every load during the run, pre-warms included (they cost); these say how many
    # were histogram pre-warms and how many requests actually waited for one.
    summary["prewarms"] = int(platform.prewarms)
    summary["requests_paid_cold_start"] = paid_cold
    summary["dispatch"] = dispatch
    if platform.errors:
        notes.append(f"{platform.errors} error event(s); first: {platform.error_messages[0]}")
    summary.update({
        "hardware": hardware,
        "device": ctx.device.name,
        "variant": var.name,
        "repeat": spec.repeat,
        "seed": spec.seed,
        "run_s": float(run_s),
        "simulated": simulated,
        "runtime": ctx.runtime,
        "isolation": hardware["isolation"],
        # A compressed run is an accelerated replay: its figures are wall-clock figures of the faster load.
        "time_compression": float(max(w.time_compression for w in exp.workloads)),
        "platform_delay_ms": {"value": platform.platform_delay_s * 1e3, "modelled": True},
        "telemetry": telemetry,
        "notes": notes,
        **(extra or {}),
    })
    summary = json_safe(summary)
    json.dumps(summary, allow_nan=False)  # the contract: fail here, loudly, rather than in the DB layer
    path = None
    if ctx.artifact_path is not None:
        path = rec.write_parquet(ctx.artifact_path, ctx.names, n=k)
    return TrialResult(status=status, summary=summary, windows=windows, hardware=hardware, artifact_path=path,
                       trace=platform.core.log)


def _run_simulated(ctx: _Context, profiles: list[dict], function_idx: np.ndarray, *, budget: int,
                   mem: list[int], fleet: dict | None = None,
                   should_stop: Callable[[], bool] | None = None) -> TrialResult:
    """The simulated driver (workers.platform.sim) on the same core: a virtual clock, service times and cold starts
    drawn from measured profiles. Windows are produced per simulated second, with the state at each second's end."""
    from workers.platform.core import PLACEMENTS, place, spatial_slots
    from workers.platform.sim import ProfileError, ServiceModel, SimPlatform

    spec, rec = ctx.spec, ctx.rec
    exp, var = spec.experiment, spec.variant
    n_devices = int((fleet or {}).get("devices", 1))
    policy = str((fleet or {}).get("placement", "first_fit"))
    if not 1 <= n_devices <= MAX_FLEET_DEVICES:
        raise TrialFailed(f"fleet devices: must be between 1 and {MAX_FLEET_DEVICES}, not {n_devices}")
    if policy not in PLACEMENTS:
        raise TrialFailed(f"fleet placement: must be one of {', '.join(PLACEMENTS)}, not {policy!r}")
    placement = None
    if n_devices > 1:
        try:
            rates = np.bincount(function_idx, minlength=len(exp.functions)) / max(ctx.run_end, 1e-9)
            mean_s = [ServiceModel(p, np.random.default_rng(0)).mean_service_s() for p in profiles]
        except ProfileError as exc:
            raise TrialFailed(str(exc)) from exc
        placement = place(mem, [float(r * m) for r, m in zip(rates, mean_s, strict=True)], n_devices, budget, policy)
    slots = spatial_slots(ctx.plan, ctx.share, var.max_instances) if var.sharing == "spatial" else None
    try:
        sim = SimPlatform(exp.functions, var, recorder=rec, function_idx=function_idx,
                          slo_latency_ms=exp.slo.latency_ms, profiles=profiles, seed=spec.seed + 7919 * spec.repeat,
                          memory_budget_bytes=budget, mem_per_instance=mem, share=ctx.share, slots=slots,
                          trace=ctx.trace, placement=placement)
    except ProfileError as exc:
        raise TrialFailed(str(exc)) from exc
    windows: list[dict] = []

    def emit(a: float, b: float) -> None:
        w = rec.window(a, b, state=sim.state(), cost_usd=cost_mod.cost_so_far_usd(
            list(rec.instances), spec.price, b, sharing=var.sharing))
        windows.append(w)
        if ctx.on_window is not None:
            ctx.on_window(w)

    # One window per second up to an hour of run time; longer runs (a simulated day) get at most ~3,600 windows of
    # whole seconds each: rates in a window are per second either way.
    window_s = 1.0 if ctx.run_end <= SIM_WINDOWS_MAX else float(math.ceil(ctx.run_end / SIM_WINDOWS_MAX))
    wall0 = time.perf_counter()
    end_s = sim.run(drain_grace_s=ctx.grace, run_end_s=ctx.run_end, cold_drain_extra_s=COLD_DRAIN_EXTRA_S,
                    on_window=emit, should_stop=should_stop, stop_poll_s=STOP_POLL_S, window_s=window_s)
    wall_s = time.perf_counter() - wall0
    status = "cancelled" if sim.stopped else "succeeded"
    k = len(rec.rows["intended_s"])
    if sim.stopped:
        k = int(np.searchsorted(rec.rows["intended_s"], end_s, side="right"))  # requests not yet arrived: unsent
        ctx.notes.append(f"cancelled at simulated time {end_s:.1f} s")
    left = rec.pending()
    if left:
        ctx.notes.append(f"{left} request(s) not finished {ctx.grace:g} s after the last arrival were dropped "
                         "(drain grace period)")
    ctx.notes.append("simulated: service times and cold starts drawn from measured profiles, not run")
    hardware = _hardware(ctx)
    hardware["simulated_on"] = hardware.get("name")
    hardware["profiles"] = [{"model": p.get("model"), "device": p.get("device"), "hardware": p.get("hardware"),
                             "created": p.get("created"), "id": p.get("id"), "validation": p.get("validation")}
                            for p in profiles]
    simulation = {"wall_s": wall_s, "window_s": window_s, "requests_per_s": len(rec.rows["intended_s"]) / max(wall_s, 1e-9),
                  "profiles": hardware["profiles"], "devices": n_devices, "placement": policy if placement else None,
                  "functions_per_device": np.bincount(placement, minlength=n_devices).tolist() if placement else None,
                  "modelled": ["service_time", "cold_start", "dispatch_lag", "platform_delay"]}
    return _finish(ctx, sim, status=status, k=k, end_s=end_s, windows=windows,
                   hardware=hardware, dispatch=None, telemetry=None, simulated=True, devices=n_devices,
                   extra={"simulation": simulation})


def _check_uploaded_file(f) -> None:
    """The stored file of an uploaded model must still be the one registered (same SHA-256); checked before the
    clock starts."""
    path = Path(f.model_file)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise TrialFailed(f"function {f.name!r}: the file of uploaded model {f.model!r} cannot be read: {exc}") from exc
    if digest.hexdigest() != f.model_sha256:
        raise TrialFailed(f"function {f.name!r}: the file of uploaded model {f.model!r} changed since it was "
                          "uploaded (SHA-256 differs); upload it again")


def _preload_end_of_trial_modules(parquet: bool) -> None:
    """Import now what the summary and the artifact need (scipy for the percentile CI, pyarrow): a first
    import takes ~0.5 s, which would otherwise land between a cancel request and the trial's end."""
    statistics.percentile_ci(np.arange(10.0), 50.0)
    if parquet:
        import pyarrow.parquet  # noqa: F401


def _cold_start_phases(cold_starts) -> dict:
    """Where the cold starts paid during the load went: the p50 of each phase in ms (None for a phase that did not
    happen: process_start, import and device_context exist only for process instances, platform_delay_modelled
    only with a modelled delay), their count, and whether the weights really came from the disk."""
    during = [c for c in cold_starts if c.during_load and c.timings_ms]
    out: dict = {"count": len(during)}
    for p in COLD_START_PHASES:
        vals = [c.duration_ms for c in during] if p == "total" else \
            [float(c.timings_ms[p]) for c in during if p in c.timings_ms]
        out[p] = float(np.percentile(vals, 50.0)) if vals else None
    resident = [c.page_cache_resident for c in cold_starts if c.page_cache_resident is not None]
    # Share of the weights file still in the page cache after the drop, worst case over all cold starts:
    # 0.0 means every load read the disk; None means the host could not tell.
    out["page_cache_resident_max"] = float(max(resident)) if resident else None
    out["weights_bytes"] = next((int(c.weights_bytes) for c in cold_starts if c.weights_bytes), None)
    out["modelled"] = ["platform_delay_modelled"]
    return out
