"""Benchmarks of our own runtime against a raw baseline measured in the same run.

  overhead - the null model at 1,000 requests/s, open loop, through the platform (dispatcher ->
             queue -> batcher -> instance thread -> recorder) vs the same model called directly at the
             same instants by the same dispatcher. Added latency = platform - direct, per percentile.
             Goals: added p50 <= 100 us, added p99 <= 1 ms.
  batching - cnn-small, fixed batching (max batch 32), open-loop load above capacity: the sustained
             completion rate through the platform vs a tight loop of batches of 32 with the same torch
             thread settings, measured alternately several times (the machine is noisy). Goal:
             efficiency = median sustained / median tight-loop >= 0.85.
  loadgen  - the dispatcher alone at 5,000 requests/s with a trivial sink: achieved rate within 1 % of
             the intended rate and lag p99 <= 200 us; baseline: what a bare perf_counter loop resolves.

Every figure is printed even when it misses its goal; misses are marked. Plain Python (no Django): the
`bench` management command is a thin wrapper.
"""

from __future__ import annotations

import json
import math
import os
import statistics as pystats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from workers import zoo
from workers.dispatcher import Dispatcher, constant_times
from workers.engine import run_trial
from workers.platform import choose_torch_threads, configure_torch_threads, restore_torch_threads
from workers.records import OUTCOME_OK
from workers.spec import TrialSpec, parse_experiment

NAMES = ("overhead", "batching", "loadgen")
GOALS = {
    "added_p50_us": ("<=", 100.0),
    "added_p99_us": ("<=", 1000.0),
    "efficiency": (">=", 0.85),
    "achieved_rate_error_pct": ("<=", 1.0),
    "lag_p99_us": ("<=", 200.0),
}


def _model_dir(model_dir: Path | None) -> Path:
    return Path(model_dir) if model_dir is not None else zoo.default_model_dir()


def _host() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # The load average says how much else ran on the host meanwhile: read the figures with it.
    return {"cores": cores, "load_avg_1m": load[0], "python": sys.version.split()[0]}


def _trial(model: str, variant: dict, workload: dict, slo_ms: float = 100.0) -> TrialSpec:
    exp = parse_experiment({
        "name": "bench", "device": "cpu", "slo": {"percentile": 99, "latency_ms": slo_ms},
        "functions": [{"name": "f", "model": model}], "workload": workload,
        "variants": [{"name": "bench", **variant}],
    })
    return TrialSpec(exp, exp.variants[0])


def _rows(path: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def _pct(x: np.ndarray, q: float) -> float | None:
    return float(np.percentile(x, q)) if len(x) else None


def _verdicts(result: dict) -> dict:
    out = {}
    for key, (op, goal) in GOALS.items():
        if key in result and result[key] is not None:
            v = result[key]
            out[key] = {"goal": f"{op} {goal:g}", "met": bool(v <= goal if op == "<=" else v >= goal)}
    return out


# ---- overhead ---------------------------------------------------------------------------------------------
def bench_overhead(duration_s: float = 10.0, rate_rps: float = 1000.0, *, model_dir: Path | None = None) -> dict:
    import torch

    model_dir = _model_dir(model_dir)
    threads = choose_torch_threads("cpu", len(os.sched_getaffinity(0)), 1)
    before = configure_torch_threads(threads)
    switch = sys.getswitchinterval()
    try:
        # Baseline: the same dispatcher calls the loaded model itself at the same instants.
        from workers.engine import SWITCH_INTERVAL_S

        sys.setswitchinterval(SWITCH_INTERVAL_S)  # the same GIL setting the trial runs with
        loaded = zoo.load_model("null", model_dir=model_dir)
        times = constant_times(rate_rps, duration_s)
        done = np.full(len(times), np.nan)
        module = loaded.module
        make = zoo.make_batch
        clock = time.perf_counter

        def direct(i: int, j: int, now: float) -> None:
            with torch.inference_mode():
                for k in range(i, j):
                    module(make(loaded, 1))
                    done[k] = clock() - d.t0

        d = Dispatcher(times, direct)
        d.start()
        d.join()
        direct_lat_us = (done - times) * 1e6
    finally:
        sys.setswitchinterval(switch)
        restore_torch_threads(before)

    with tempfile.TemporaryDirectory() as tmp:
        art = Path(tmp) / "overhead.parquet"
        spec = _trial("null", {"min_instances": 1, "max_instances": 1},
                      {"pattern": "constant", "rate_rps": rate_rps, "duration_s": duration_s})
        res = run_trial(spec, model_dir=model_dir, artifact_path=art)
        rows = _rows(art)
    ok = rows["outcome"] == OUTCOME_OK
    plat_lat_us = (rows["completed_s"][ok] - rows["intended_s"][ok]) * 1e6
    dp50, dp99 = _pct(direct_lat_us, 50), _pct(direct_lat_us, 99)
    pp50, pp99 = _pct(plat_lat_us, 50), _pct(plat_lat_us, 99)
    out = {
        "benchmark": "overhead",
        "model": "null",
        "rate_rps": rate_rps,
        "duration_s": duration_s,
        "requests": int(len(times)),
        "platform_completed": int(ok.sum()),
        "platform_p50_us": pp50,
        "platform_p99_us": pp99,
        "baseline_p50_us": dp50,
        "baseline_p99_us": dp99,
        "added_p50_us": pp50 - dp50,
        "added_p99_us": pp99 - dp99,
        "ratio_p50": pp50 / dp50 if dp50 else None,
        "ratio_p99": pp99 / dp99 if dp99 else None,
        "platform_breakdown_ms": res.summary["breakdown_ms"],
        "platform_dispatch_lag_p99_us": res.summary["dispatch"]["lag_p99_us"],
        "torch_threads": threads,
        "host": _host(),
    }
    out["goals"] = _verdicts(out)
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


def bench_batching(duration_s: float = 4.0, rounds: int = 3, *, overload: float = 1.5, batch: int = 32,
                   model_dir: Path | None = None) -> dict:
    model_dir = _model_dir(model_dir)
    warm_s = min(1.0, duration_s / 4)  # completions before this are the ramp (queue filling), not sustained
    threads = choose_torch_threads("cpu", len(os.sched_getaffinity(0)), 1)
    before = configure_torch_threads(threads)
    try:
        loaded = zoo.load_model("cnn-small", model_dir=model_dir)
        # The best of three short probes: on a noisy host one probe can read far below capacity, and the
        # offered load must stay above capacity for the whole run.
        probe = max(_tight_loop_rps(loaded, batch, 0.5) for _ in range(3))
    finally:
        restore_torch_threads(before)
    rate = min(20_000.0, max(100.0, overload * probe))
    tight: list[float] = []
    sustained: list[float] = []
    p99s: list[float] = []
    batch_sizes: list[float] = []
    lag_p99: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            art = Path(tmp) / f"batching-{r}.parquet"
            spec = _trial("cnn-small", {"batching": {"mode": "fixed", "max_batch_size": batch,
                                                     "max_queue_delay_ms": 5}},
                          {"pattern": "poisson", "rate_rps": rate, "duration_s": duration_s, "seed": r},
                          slo_ms=1000.0)
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
            before = configure_torch_threads(threads)  # the same settings the trial used
            try:
                tight.append(_tight_loop_rps(loaded, batch, duration_s - warm_s))
            finally:
                restore_torch_threads(before)
    med_s, med_t = pystats.median(sustained), pystats.median(tight)
    out = {
        "benchmark": "batching",
        "model": "cnn-small",
        "max_batch_size": batch,
        "offered_rps": rate,
        "duration_s": duration_s,
        "rounds": rounds,
        "sustained_rps": sustained,
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
    out["goals"] = _verdicts(out)
    return out


# ---- load generator ---------------------------------------------------------------------------------------
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
    out = {
        "benchmark": "loadgen",
        "rate_rps": rate_rps,
        "duration_s": duration_s,
        "requests": int(len(times)),
        "sent": int(count[0]),
        "achieved_rps": achieved,
        "achieved_rate_ratio": achieved / intended,
        "achieved_rate_error_pct": abs(achieved / intended - 1.0) * 100.0,
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
    out["goals"] = _verdicts(out)
    return out


# ---- entry points -----------------------------------------------------------------------------------------
def run(name: str, duration_s: float | None = None, *, model_dir: Path | None = None) -> dict:
    """Run one benchmark; a JSON-safe dict (NaN/inf as None)."""
    from workers.engine import _jsonable

    if name == "overhead":
        return _jsonable(bench_overhead(duration_s or 10.0, model_dir=model_dir))
    if name == "batching":
        return _jsonable(bench_batching(duration_s or 4.0, model_dir=model_dir))
    if name == "loadgen":
        return _jsonable(bench_loadgen(duration_s or 10.0))
    raise ValueError(f"unknown benchmark {name!r} (one of: {', '.join(NAMES)})")


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
    lines = [f"benchmark: {result['benchmark']}"]
    pairs = {
        "overhead": [("p50 latency (us)", "platform_p50_us", "baseline_p50_us"),
                     ("p99 latency (us)", "platform_p99_us", "baseline_p99_us")],
        "batching": [("throughput (req/s, median)", "sustained_rps_median", "baseline_tight_loop_rps_median")],
        "loadgen": [("step (us): lag p99 vs perf_counter resolution", "lag_p99_us",
                     "baseline_perf_counter_resolution_us")],
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
    a = p.parse_args(argv)
    result = run(a.name, a.duration)
    print(json.dumps(result, indent=2) if a.json else format_table(result))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
