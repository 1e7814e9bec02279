"""Benchmarks of our own runtime against a raw baseline measured in the same run.

  overhead - the null model at 1,000 requests/s, open loop, through the platform (dispatcher ->
             queue -> batcher -> instance -> recorder) vs the same model called directly at the same
             instants by the same dispatcher. Added latency = platform - direct, per percentile, in three
             rounds measured alternately (one with --short; this VM's figures swing between runs): the
             median round is the figure, every round is printed. Goals: added p50 <= 100 us, added p99 <=
             1 ms. With process instances it also prints what this host charges to wake a process on the
             same CPU and on another (host.wake_us): a request crosses processes twice, the baseline never.
  batching - cnn-small, fixed batching (max batch 32), open-loop load above capacity: the sustained
             completion rate through the platform vs a tight loop of batches of 32 with the same torch
             thread settings, measured alternately several times (the machine is noisy). Goal:
             efficiency = median sustained / median tight-loop >= 0.85.
  simulate - a day of a diurnal workload averaging 200 requests/s (about 17 million requests) over 20 functions on
             8 simulated devices, on the simulated driver with a profile of mlp-small measured here first; prints
             simulated requests per second of wall time and peak memory, beside a baseline: a bare Python FIFO
             queue (one max() per request) over the same arrivals. Goals: wall_s <= 60, peak_rss_mb <= 2048.
             --short simulates 10 minutes.
  loadgen  - the dispatcher alone at 5,000 requests/s with a trivial sink: the rate achieved in every
             1-second window within 1 % of the intended rate (the worst window is printed), and lag
             p99 <= 200 us; baseline: what a bare perf_counter loop resolves.

overhead and batching name the runtime their instances ran in (`runtime`: "process" or "thread", as
the trial reported it; "thread" when the trial does not say) and take runtime= to ask for one; without
it the variant gets the platform's default. overhead also takes a model runtime there ("torch" or
"onnxruntime", `--runtime onnxruntime`): the null model exported to ONNX runs under ONNX Runtime in the
trial's instances, and the baseline calls the same ONNX Runtime session directly.

Every figure is printed even when it misses its goal; misses are marked. A full run enforces the goals
(`missed_goals` lists the misses; the command exits 1 after printing). A short run (`short=True`, a
second or two per benchmark) computes and prints the same figures and verdicts but enforces nothing:
it shows the benchmarks run, not that the goals hold. Plain Python (no Django): the `bench` management
command is a thin wrapper.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics as pystats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from workers import zoo
from workers.dispatcher import Dispatcher, constant_times
from workers.engine import run_trial
from workers.platform import choose_torch_threads, configure_torch_threads, restore_torch_threads
from workers.records import OUTCOME_OK, json_safe
from workers.spec import SpecError, TrialSpec, parse_experiment

NAMES = ("overhead", "batching", "loadgen", "simulate")
RUNTIMES = ("process", "thread")
MODEL_RUNTIMES = ("torch", "onnxruntime")  # what runs the model (workers.spec.MODEL_RUNTIMES); overhead only
GOALS = {
    "added_p50_us": ("<=", 100.0),
    "added_p99_us": ("<=", 1000.0),
    "efficiency": (">=", 0.85),
    "achieved_rate_error_pct": ("<=", 1.0),
    "worst_window_rate_error_pct": ("<=", 1.0),
    "lag_p99_us": ("<=", 200.0),
    "wall_s": ("<=", 60.0),
    "peak_rss_mb": ("<=", 2048.0),
}


class BenchError(ValueError):
    """A benchmark asked for with options it cannot run with (unknown name, runtime not available)."""


# Seconds per measurement: full runs, and short runs (a second or two per benchmark).
DURATIONS = {"overhead": 10.0, "batching": 4.0, "loadgen": 10.0, "simulate": 86_400.0}
SHORT_DURATIONS = {"overhead": 1.0, "batching": 1.0, "loadgen": 2.0, "simulate": 600.0}


def _model_dir(model_dir: Path | None) -> Path:
    return Path(model_dir) if model_dir is not None else zoo.default_model_dir()


def _host() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # The load average says how much else ran on the host meanwhile: read the figures with it.
    return {"cores": cores, "load_avg_1m": load[0], "python": sys.version.split()[0]}


def _cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) clock ticks of all CPUs so far, from /proc/stat (Linux); None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal (guest is in user)
    except (OSError, ValueError):
        return None
    if not fields or fields[0] != "cpu" or len(ticks) < 8:
        return None
    return ticks[7], sum(ticks)


def _steal_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of the CPUs' time a hypervisor gave to others between two readings (%): on a virtual machine, the
    noise a benchmark's figures carry (this development VM: about 2 %, with single threads taken off their core for
    up to 9 ms at a time)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


def _trial(model: str, variant: dict, workload: dict, slo_ms: float = 100.0, runtime: str | None = None,
           model_runtime: str | None = None) -> TrialSpec:
    if model_runtime is not None:
        variant = {**variant, "model_runtime": model_runtime}
    if runtime is not None:  # only when asked: the platform's default otherwise
        if runtime not in RUNTIMES:
            raise BenchError(f"unknown runtime {runtime!r} (one of: {', '.join(RUNTIMES)})")
        variant = {**variant, "runtime": runtime}
    try:
        exp = parse_experiment({
            "name": "bench", "device": "cpu", "slo": {"percentile": 99, "latency_ms": slo_ms},
            "functions": [{"name": "f", "model": model}], "workload": workload,
            "variants": [{"name": "bench", **variant}],
        })
    except SpecError as exc:
        if runtime is not None and "runtime" in str(exc):
            raise BenchError(f"runtime {runtime!r} was asked for, but this version's variants have no "
                             f"runtime field: {exc}") from exc
        raise
    return TrialSpec(exp, exp.variants[0])


def _runtime_of(summary: dict) -> str:
    """The runtime the trial's instances ran in, as the trial reported it; "thread" if it does not say."""
    hardware = summary.get("hardware") or {}
    return summary.get("runtime") or hardware.get("runtime") or "thread"


def _rows(path: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def _pct(x: np.ndarray, q: float) -> float | None:
    return float(np.percentile(x, q)) if len(x) else None


def verdicts(result: dict, *, enforced: bool = True, goals: dict | None = None) -> dict:
    """Each goal's verdict on the result's figure ({figure: (op, goal)}; default: this module's GOALS)."""
    out = {}
    for key, (op, goal) in (GOALS if goals is None else goals).items():
        if key in result and result[key] is not None:
            v = result[key]
            out[key] = {"goal": f"{op} {goal:g}", "met": bool(v <= goal if op == "<=" else v >= goal),
                        "enforced": enforced}
    return out


def missed_goals(result: dict) -> list[str]:
    """The enforced goals a result missed, as "figure value (goal ...)" (empty for a short run)."""
    return [f"{key} {_fmt(result.get(key))} (goal {v['goal']})" for key, v in result.get("goals", {}).items()
            if v.get("enforced", True) and not v["met"]]


# ---- overhead ---------------------------------------------------------------------------------------------
# The child of _wake_costs: answers each byte it reads with the perf_counter reading taken when it woke.
_WAKE_ECHO = (
    "import os, struct, sys, time\n"
    "fd = int(sys.argv[1]); os.sched_setaffinity(0, [int(sys.argv[2])])\n"
    "os.write(fd, b'r')\n"
    "while True:\n"
    "    d = os.read(fd, 1); t = time.perf_counter()\n"
    "    if not d or d == b'q': break\n"
    "    os.write(fd, struct.pack('d', t))\n")


def _wake_costs(pings: int, gap_s: float = 1e-3) -> dict | None:
    """How long this host takes to wake a process blocked on a socket, when it sleeps on the waker's CPU and when
    it sleeps on another one (p50, microseconds; a ping every `gap_s`, as the overhead trial's requests come).

    A process instance's request crosses processes twice, so these wake-ups are in every platform figure and in
    no baseline figure; a virtual machine whose idle CPUs are woken through the hypervisor charges far more
    across CPUs than on the same one (this development VM: about 50 us against 11 us). Printed beside the
    overhead so that part can be told from ours. None on a host with one CPU or without affinity control."""
    import socket
    import struct

    from workers.instance import _read_exactly  # EOFError when the peer closed

    if not hasattr(os, "sched_getaffinity"):
        return None
    own = os.sched_getaffinity(0)
    cpus = sorted(own)
    if len(cpus) < 2:
        return None
    out: dict = {}
    try:
        for label, theirs in (("same_cpu_p50_us", cpus[0]), ("cross_cpu_p50_us", cpus[1])):
            ours, child = socket.socketpair()
            proc = subprocess.Popen([sys.executable, "-c", _WAKE_ECHO, str(child.fileno()), str(theirs)],
                                    pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
            child.close()
            fd = ours.fileno()
            try:
                os.sched_setaffinity(0, [cpus[0]])
                if os.read(fd, 1) != b"r":
                    raise OSError(f"the echo process did not start (exit code {proc.poll()})")
                waits = np.empty(pings)
                for k in range(pings):
                    time.sleep(gap_s)
                    t = time.perf_counter()
                    os.write(fd, b"p")
                    waits[k] = struct.unpack("d", _read_exactly(fd, 8))[0] - t
                out[label] = float(np.percentile(waits, 50)) * 1e6
            finally:
                with contextlib.suppress(OSError):
                    os.write(fd, b"q")
                ours.close()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    finally:
        os.sched_setaffinity(0, own)
    # A virtual machine's guest may poll a while before it halts an idle CPU (Linux's haltpoll cpuidle driver);
    # 0 means it halts at once, and waking a process there goes through the hypervisor.
    try:
        with open("/sys/module/haltpoll/parameters/guest_halt_poll_ns") as f:
            out["guest_halt_poll_ns"] = int(f.read().strip())
    except (OSError, ValueError):
        out["guest_halt_poll_ns"] = None
    return out


def _direct_latencies_us(times: np.ndarray, model_runtime: str | None, model_dir: Path, threads: int) -> np.ndarray:
    """The baseline: the same dispatcher calls the model itself, in this process, at the same instants."""
    import torch

    from workers import onnx_models
    from workers.engine import SWITCH_INTERVAL_S

    before = configure_torch_threads(threads)
    switch = sys.getswitchinterval()
    try:
        sys.setswitchinterval(SWITCH_INTERVAL_S)  # the same GIL setting the trial runs with
        done = np.full(len(times), np.nan)
        clock = time.perf_counter
        if model_runtime == "onnxruntime":  # the same ONNX Runtime session the instances create, called directly
            session = onnx_models.load_session(onnx_models.export_zoo_model("null", model_dir=model_dir),
                                               threads=threads)
            feeds = onnx_models.make_feeds

            def module(x):
                return session.session.run(None, x)

            def make(_loaded, k):
                return feeds(session, k)

            loaded = session
        else:
            loaded = zoo.load_model("null", model_dir=model_dir)
            module = loaded.module
            make = zoo.make_batch

        def direct(i: int, j: int, now: float) -> None:
            with torch.inference_mode():
                for k in range(i, j):
                    module(make(loaded, 1))
                    done[k] = clock() - d.t0

        d = Dispatcher(times, direct)
        d.start()
        d.join()
        return (done - times) * 1e6
    finally:
        sys.setswitchinterval(switch)
        restore_torch_threads(before)


def bench_overhead(duration_s: float = 10.0, rate_rps: float = 1000.0, *, model_dir: Path | None = None,
                   runtime: str | None = None, model_runtime: str | None = None, rounds: int = 3,
                   wake_pings: int = 2000) -> dict:
    """`rounds` pairs of (baseline, platform), measured alternately; the headline figures are the medians over the
    rounds (added = the median of each round's platform - baseline), every round's figures are printed too."""
    model_dir = _model_dir(model_dir)
    threads = choose_torch_threads("cpu", len(os.sched_getaffinity(0)), 1)
    times = constant_times(rate_rps, duration_s)
    per_round: list[dict] = []
    res = None
    for _ in range(max(1, int(rounds))):
        direct_lat_us = _direct_latencies_us(times, model_runtime, model_dir, threads)
        with tempfile.TemporaryDirectory() as tmp:
            art = Path(tmp) / "overhead.parquet"
            spec = _trial("null", {"min_instances": 1, "max_instances": 1},
                          {"pattern": "constant", "rate_rps": rate_rps, "duration_s": duration_s}, runtime=runtime,
                          model_runtime=model_runtime)
            res = run_trial(spec, model_dir=model_dir, artifact_path=art)
            rows = _rows(art)
        ok = rows["outcome"] == OUTCOME_OK
        plat_lat_us = (rows["completed_s"][ok] - rows["intended_s"][ok]) * 1e6
        r = {"platform_p50_us": _pct(plat_lat_us, 50), "platform_p99_us": _pct(plat_lat_us, 99),
             "baseline_p50_us": _pct(direct_lat_us, 50), "baseline_p99_us": _pct(direct_lat_us, 99),
             "completed": int(ok.sum()), "dispatch_lag_p99_us": res.summary["dispatch"]["lag_p99_us"]}
        r["added_p50_us"] = r["platform_p50_us"] - r["baseline_p50_us"]
        r["added_p99_us"] = r["platform_p99_us"] - r["baseline_p99_us"]
        per_round.append(r)

    def med(key: str) -> float:
        return float(np.median([r[key] for r in per_round]))

    pp50, pp99, dp50, dp99 = (med(k) for k in ("platform_p50_us", "platform_p99_us", "baseline_p50_us",
                                                "baseline_p99_us"))
    out = {
        "benchmark": "overhead",
        "model": "null",
        "runtime": _runtime_of(res.summary),
        "model_runtime": ((res.summary.get("hardware") or {}).get("model_runtimes") or {}).get("f", "torch"),
        "rate_rps": rate_rps,
        "duration_s": duration_s,
        "rounds": len(per_round),
        "requests": int(len(times)),
        "platform_completed": min(r["completed"] for r in per_round),
        "platform_p50_us": pp50,
        "platform_p99_us": pp99,
        "baseline_p50_us": dp50,
        "baseline_p99_us": dp99,
        "added_p50_us": med("added_p50_us"),
        "added_p99_us": med("added_p99_us"),
        "added_p50_us_rounds": [r["added_p50_us"] for r in per_round],
        "added_p99_us_rounds": [r["added_p99_us"] for r in per_round],
        "ratio_p50": pp50 / dp50 if dp50 else None,
        "ratio_p99": pp99 / dp99 if dp99 else None,
        "platform_breakdown_ms": res.summary["breakdown_ms"],  # the last round's
        "platform_dispatch_lag_p99_us": med("dispatch_lag_p99_us"),
        "torch_threads": threads,
        "host": _host(),
    }
    if out["runtime"] == "process":
        try:
            out["host"]["wake_us"] = _wake_costs(wake_pings)
        except (OSError, EOFError, subprocess.SubprocessError) as exc:  # a side figure: the overhead stands without it
            out["host"]["wake_us"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


# ---- batching ---------------------------------------------------------------------------------------------
def _tight_loop_rps(loaded, batch: int, seconds: float) -> float:
    import torch

    x = zoo.make_batch(loaded, batch)
    module = loaded.module
    with torch.inference_mode():
        module(x)
        n = 0
        t = time.perf_counter()
        end = t + seconds
        while time.perf_counter() < end:
            module(x)
            n += 1
        el = time.perf_counter() - t
    return n * batch / el


def _tight_loop_process_rps(runner, batch: int, seconds: float) -> float:
    """The same tight loop, in an instance process like the trial's (same model, same torch threads): batches of
    `batch` back to back through the runner, so the baseline pays what a process instance pays per batch."""
    runner.run(batch)
    n = 0
    t = time.perf_counter()
    end = t + seconds
    while time.perf_counter() < end:
        runner.run(batch)
        n += 1
    return n * batch / (time.perf_counter() - t)


def bench_batching(duration_s: float = 4.0, rounds: int = 3, *, overload: float = 1.5, batch: int = 32,
                   model_dir: Path | None = None, runtime: str | None = None, probe_s: float = 0.5) -> dict:
    model_dir = _model_dir(model_dir)
    warm_s = min(1.0, duration_s / 4)  # completions before this are the ramp (queue filling), not sustained
    threads = choose_torch_threads("cpu", len(os.sched_getaffinity(0)), 1)
    before = configure_torch_threads(threads)
    try:
        loaded = zoo.load_model("cnn-small", model_dir=model_dir)
        # The best of three short probes: on a noisy host one probe can read far below capacity, and the
        # offered load must stay above capacity for the whole run.
        probe = max(_tight_loop_rps(loaded, batch, probe_s) for _ in range(3))
    finally:
        restore_torch_threads(before)
    rate = min(20_000.0, max(100.0, overload * probe))
    # The baseline runs where the trial's instances run: in an instance process for runtime "process" (the
    # default), in this process for runtime "thread".
    variant_runtime = _trial("cnn-small", {}, {"pattern": "constant", "rate_rps": 1, "duration_s": 1},
                             runtime=runtime).variant.runtime
    runner = None
    if variant_runtime == "process":
        from workers.instance import ProcessRunner
        from workers.spec import FunctionSpec

        runner = ProcessRunner(FunctionSpec(name="f", model="cnn-small"), "cpu", model_dir, threads=threads)
        runner.start()
    tight: list[float] = []
    sustained: list[float] = []
    p99s: list[float] = []
    batch_sizes: list[float] = []
    lag_p99: list[float] = []
    runtimes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, (contextlib.closing(runner) if runner else contextlib.nullcontext()):
        for r in range(rounds):
            art = Path(tmp) / f"batching-{r}.parquet"
            spec = _trial("cnn-small", {"batching": {"mode": "fixed", "max_batch_size": batch,
                                                     "max_queue_delay_ms": 5}},
                          {"pattern": "poisson", "rate_rps": rate, "duration_s": duration_s, "seed": r},
                          slo_ms=1000.0, runtime=runtime)
            res = run_trial(spec, model_dir=model_dir, artifact_path=art, drain_grace_s=0.2)
            rows = _rows(art)
            done = rows["completed_s"]
            n_done = int(np.count_nonzero((done >= warm_s) & (done < duration_s)))
            sustained.append(n_done / (duration_s - warm_s))
            ok = rows["outcome"] == OUTCOME_OK
            lat = (done[ok] - rows["intended_s"][ok]) * 1e3
            p99s.append(float(np.percentile(lat, 99)) if len(lat) else math.nan)
            batch_sizes.append(res.summary["mean_batch_size"] or 0.0)
            lag_p99.append(res.summary["dispatch"]["lag_p99_us"] or 0.0)
            runtimes.append(_runtime_of(res.summary))
            if runner is not None:
                tight.append(_tight_loop_process_rps(runner, batch, duration_s - warm_s))
                continue
            before = configure_torch_threads(threads)  # the same settings the trial used
            try:
                tight.append(_tight_loop_rps(loaded, batch, duration_s - warm_s))
            finally:
                restore_torch_threads(before)
    med_s, med_t = pystats.median(sustained), pystats.median(tight)
    out = {
        "benchmark": "batching",
        "model": "cnn-small",
        "runtime": ", ".join(sorted(set(runtimes))),
        "max_batch_size": batch,
        "offered_rps": rate,
        "duration_s": duration_s,
        "rounds": rounds,
        "sustained_rps": sustained,
        "baseline": "tight loop of the same batches in an instance process" if runner else "tight loop in this process",
        "baseline_tight_loop_rps": tight,
        "sustained_rps_median": med_s,
        "baseline_tight_loop_rps_median": med_t,
        "efficiency": med_s / med_t if med_t else None,
        # If the platform kept up with the offered load, it was not saturated and efficiency reads low.
        "saturated": bool(med_s < 0.97 * rate),
        "p99_ms": pystats.median(p99s),
        "p99_note": "offered load is above capacity, so the queue and p99 grow for as long as the run lasts",
        "mean_batch_size": pystats.median(batch_sizes),
        "dispatch_lag_p99_us": pystats.median(lag_p99),
        "torch_threads": threads,
        "host": _host(),
    }
    return out


# ---- load generator ---------------------------------------------------------------------------------------
def window_rates_of(intended_s: np.ndarray, sent_s: np.ndarray, duration_s: float) -> tuple[list[float], list[float]]:
    """The achieved rate (requests/s) in each whole second [k, k+1) of the run, and its error against the
    intended rate in that second, in percent. A stall that the whole-run average hides (the dispatcher
    catches up afterwards) shows as one window short of requests and the next one over. A request counts
    in the window it was sent in (NaN: never sent); the intended count is the arrivals due in the window.
    A trailing part second is not a window."""
    edges = np.arange(int(math.floor(duration_s + 1e-9)) + 1, dtype=np.float64)
    if len(edges) < 2:
        return [], []
    sent = np.asarray(sent_s, dtype=np.float64)
    due = np.histogram(np.asarray(intended_s, dtype=np.float64), bins=edges)[0]
    got = np.histogram(sent[np.isfinite(sent)], bins=edges)[0]
    rates = [float(g) for g in got]  # one-second windows: a count is a rate
    errors = [abs(float(g) / float(w) - 1.0) * 100.0 if w else math.inf for g, w in zip(got, due, strict=True)]
    return rates, errors


def bench_loadgen(duration_s: float = 10.0, rate_rps: float = 5000.0) -> dict:
    # Baseline: a bare perf_counter loop -- the finest step the clock and the interpreter resolve.
    clock = time.perf_counter
    reads = np.empty(200_000)
    for k in range(len(reads)):
        reads[k] = clock()
    steps = np.diff(reads)
    resolution_us = float(steps[steps > 0].min() * 1e6)
    call_us = float(np.median(steps) * 1e6)

    times = constant_times(rate_rps, duration_s)
    count = [0]

    def sink(i: int, j: int, now: float) -> None:  # trivial: count them
        count[0] += j - i

    d = Dispatcher(times, sink)
    d.start()
    d.join()
    s = d.stats()
    sent = d.sent_s[: d.n_sent]
    achieved = (len(sent) - 1) / (sent[-1] - sent[0]) if len(sent) > 1 else 0.0
    intended = (len(times) - 1) / (times[-1] - times[0])
    window_rates, window_errors = window_rates_of(times, d.sent_s, duration_s)
    worst = int(np.argmax(window_errors)) if window_errors else None
    out = {
        "benchmark": "loadgen",
        "rate_rps": rate_rps,
        "duration_s": duration_s,
        "requests": int(len(times)),
        "sent": int(count[0]),
        "achieved_rps": achieved,
        "achieved_rate_ratio": achieved / intended,
        "achieved_rate_error_pct": abs(achieved / intended - 1.0) * 100.0,
        "windows": len(window_errors),
        "window_achieved_rps": window_rates,
        "window_rate_error_pct": window_errors,
        "worst_window_rate_error_pct": window_errors[worst] if worst is not None else None,
        "worst_window_achieved_rps": window_rates[worst] if worst is not None else None,
        "worst_window_s": [float(worst), float(worst + 1)] if worst is not None else None,
        "lag_p50_us": s["lag_p50_us"],
        "lag_p99_us": s["lag_p99_us"],
        "lag_max_us": s["lag_max_us"],
        "behind": s["behind"],
        "sink_calls": s["sink_calls"],
        "precise_timer": s["precise_timer"],
        "dispatcher_priority": s["priority"],
        "baseline_perf_counter_resolution_us": resolution_us,
        "baseline_perf_counter_call_us": call_us,
        "lag_p99_over_resolution": (s["lag_p99_us"] / resolution_us) if resolution_us else None,
        "host": _host(),
    }
    return out


# ---- simulate ----------------------------------------------------------------------------------------------
def _zipf_weights(n: int, s: float = 1.1) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def bench_simulate(duration_s: float = 86_400.0, *, functions: int = 20, devices: int = 8,
                   mean_rate_rps: float = 200.0, model_dir: Path | None = None, short: bool = False,
                   profile: dict | None = None) -> dict:
    """Simulate `duration_s` of a diurnal day on a fleet; the profile of mlp-small is measured here first (real
    instance processes) unless one is given."""
    import resource

    t_prof = time.perf_counter()
    if profile is None:
        from workers.profiling import measure_profile

        profile = measure_profile("mlp-small", device="cpu", model_dir=_model_dir(model_dir),
                                  batch_sizes=[1, 2] if short else [1, 2, 4, 8], sharing_levels=[1] if short else None,
                                  samples=10 if short else 30, cold_starts=1 if short else 3)
    profile_s = time.perf_counter() - t_prof
    weights = _zipf_weights(functions)
    exp = parse_experiment({
        "name": "bench-simulate", "device": "cpu", "slo": {"percentile": 99, "latency_ms": 100.0},
        "functions": [{"name": f"fn{i:02d}", "model": "mlp-small"} for i in range(functions)],
        "workloads": [{"pattern": "diurnal", "mean_rate_rps": float(mean_rate_rps * w), "peak_to_trough": 4.0,
                       "period_s": 86_400.0, "duration_s": float(duration_s), "function": f"fn{i:02d}"}
                      for i, w in enumerate(weights)],
        "variants": [{"name": "scale-to-zero", "sharing": "time_slice", "min_instances": 0, "max_instances": 2,
                      "keep_alive": {"policy": "fixed", "ttl_s": 60.0}}],
    })
    spec = TrialSpec(exp, exp.variants[0])
    t0 = time.perf_counter()
    res = run_trial(spec, model_dir=_model_dir(model_dir), profiles=[profile] * functions,
                    fleet={"devices": devices, "placement": "load_pack"})
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    n = int(res.summary["requests"])
    # Baseline: the least any per-request simulation in Python does -- a FIFO server, one max() per request.
    # A million at a time: 17 M Python floats at once would take more memory than the simulation itself.
    rng = np.random.default_rng(0)
    base_wall = 0.0
    free = start = 0.0
    for a0 in range(0, n, 1 << 20):
        k = min(n, a0 + (1 << 20)) - a0
        arrivals = (start + np.cumsum(rng.exponential(1.0 / mean_rate_rps, size=k))).tolist()
        service = rng.exponential(0.002, size=k).tolist()
        start = arrivals[-1]
        t_b = time.perf_counter()
        for a, sv in zip(arrivals, service, strict=True):
            free = (a if a > free else free) + sv
        base_wall += time.perf_counter() - t_b
    sim = res.summary.get("simulation") or {}
    return {
        "benchmark": "simulate",
        "host": _host(),
        "simulated_s": float(duration_s),
        "functions": functions,
        "devices": devices,
        "simulated_requests": n,
        "wall_s": wall,
        "requests_per_s": n / wall if wall > 0 else None,
        "event_loop_wall_s": sim.get("wall_s"),
        "event_loop_requests_per_s": sim.get("requests_per_s"),
        "baseline_fifo_requests_per_s": n / base_wall if base_wall > 0 else None,
        "peak_rss_mb": peak_mb,
        "profile_measure_s": profile_s,
        "functions_per_device": sim.get("functions_per_device"),
        "p99_ms": (res.summary.get("latency_ms") or {}).get("p99"),
        "cold_starts": res.summary.get("cold_starts"),
        "monthly_serverless_usd": (res.summary.get("cost") or {}).get("monthly_serverless_usd"),
    }


# ---- entry points -----------------------------------------------------------------------------------------
def run(name: str, duration_s: float | None = None, *, model_dir: Path | None = None, short: bool = False,
        runtime: str | None = None) -> dict:
    """Run one benchmark; a JSON-safe dict (NaN/inf as None) with its goals' verdicts under "goals".

    short: a second or two of measurement (one batching round), goals computed but not enforced.
    runtime: "process" or "thread" for the overhead and batching trials' variant (None: the default); overhead
    also takes "torch" or "onnxruntime", the model runtime.
    """
    if name not in NAMES:
        raise BenchError(f"unknown benchmark {name!r} (one of: {', '.join(NAMES)})")
    model_runtime = None
    if runtime in MODEL_RUNTIMES:
        if name != "overhead":
            raise BenchError(f"a model runtime ({runtime}) applies to the overhead benchmark only")
        model_runtime, runtime = runtime, None
    if runtime is not None and name in ("loadgen", "simulate"):
        raise BenchError(f"{name} runs no instances of its own: runtime does not apply to it")
    duration = duration_s or (SHORT_DURATIONS if short else DURATIONS)[name]
    if name == "loadgen" and duration < 1.0:
        raise BenchError("loadgen checks the rate in each whole second: it needs a duration of 1 s or more")
    ticks = _cpu_ticks()
    if name == "overhead":
        out = bench_overhead(duration, model_dir=model_dir, runtime=runtime, model_runtime=model_runtime,
                             rounds=1 if short else 3, wake_pings=200 if short else 2000)
    elif name == "batching":
        out = bench_batching(duration, 1 if short else 3, model_dir=model_dir, runtime=runtime,
                             probe_s=0.2 if short else 0.5)
    elif name == "simulate":
        out = bench_simulate(duration, model_dir=model_dir, short=short)
    else:
        out = bench_loadgen(duration)
    out["host"]["steal_pct"] = _steal_pct(ticks, _cpu_ticks())
    out["short"] = short
    out["goals"] = verdicts(out, enforced=not short)
    return json_safe(out)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def format_table(result: dict) -> str:
    """A readable table: ours vs baseline with ratios, then every figure, goals marked MISS where missed."""
    goals = result.get("goals", {})
    head = f"benchmark: {result['benchmark']}"
    if result.get("runtime"):
        head += f" (runtime {result['runtime']}"
        head += f", model runtime {result['model_runtime']})" if result.get("model_runtime") else ")"
    if result.get("short"):
        head += "  [short run: goals computed, not enforced]"
    lines = [head]
    pairs = {
        "overhead": [("p50 latency (us)", "platform_p50_us", "baseline_p50_us"),
                     ("p99 latency (us)", "platform_p99_us", "baseline_p99_us")],
        "batching": [("throughput (req/s, median)", "sustained_rps_median", "baseline_tight_loop_rps_median")],
        "loadgen": [("step (us): lag p99 vs perf_counter resolution", "lag_p99_us",
                     "baseline_perf_counter_resolution_us"),
                    ("rate (req/s): worst 1-s window vs intended", "worst_window_achieved_rps", "rate_rps")],
        "simulate": [("simulated requests per wall second", "requests_per_s", "baseline_fifo_requests_per_s"),
                     ("event loop only (req/s)", "event_loop_requests_per_s", "baseline_fifo_requests_per_s")],
    }[result["benchmark"]]
    lines.append(f"  {'':48} {'ours':>14} {'baseline':>14} {'ratio':>8}")
    for label, ours, base in pairs:
        a, b = result.get(ours), result.get(base)
        ratio = a / b if a is not None and b else None
        lines.append(f"  {label:48} {_fmt(a):>14} {_fmt(b):>14} {_fmt(ratio):>8}")
    lines.append("")
    for key, value in result.items():
        if key in ("goals", "benchmark"):
            continue
        mark = ""
        if key in goals:
            mark = f"   goal {goals[key]['goal']}: {'ok' if goals[key]['met'] else 'MISS'}"
            if not goals[key].get("enforced", True):
                mark += " (not enforced)"
        if isinstance(value, dict):
            value = json.dumps(value)
        lines.append(f"  {key:40} {_fmt(value)}{mark}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", choices=NAMES)
    p.add_argument("--json", action="store_true")
    p.add_argument("--duration", type=float, default=None)
    p.add_argument("--short", action="store_true")
    p.add_argument("--runtime", choices=RUNTIMES + MODEL_RUNTIMES, default=None)
    a = p.parse_args(argv)
    result = run(a.name, a.duration, short=a.short, runtime=a.runtime)
    print(json.dumps(result, indent=2, allow_nan=False) if a.json else format_table(result))
    missed = missed_goals(result)
    if missed:
        print("missed goal(s): " + "; ".join(missed), file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
