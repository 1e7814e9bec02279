"""The platform on a real device (CPU here): short trials whose numbers must show the physics.

Each trial runs 1-3 s of real load through the real dispatcher, real cold starts and real torch compute.
Assertions compare variants inside one test (same machine, same minute) and leave wide margins: the CI
machine has 2 cores and is shared.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from workers import zoo
from workers.engine import run_trial
from workers.records import OUTCOME_ERROR, OUTCOME_OK
from workers.spec import PriceSpec, TrialSpec, parse_experiment

FLAKY_PATH = f"{__name__}.flaky_model"


class _Flaky(torch.nn.Module):
    """Raises on every third forward pass after the warm-up (the model's own bug, not ours)."""

    def __init__(self, features: int):
        super().__init__()
        self.lin = torch.nn.Linear(features, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > 1 and self.calls % 3 == 0:
            raise RuntimeError("flaky model: simulated CUDA illegal memory access")
        return self.lin(x)


def flaky_model(input_shape, options):
    return _Flaky(input_shape[0])


flaky_model.DEFAULT_INPUT_SHAPE = (8,)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def trial(variant: dict, workload: dict, *, model="cnn-small", functions=None, slo_ms=100.0, price=None,
          repeat=0) -> TrialSpec:
    exp = parse_experiment({
        "name": "t", "device": "cpu", "slo": {"percentile": 99, "latency_ms": slo_ms},
        "functions": functions or [{"name": "f", "model": model}],
        "workload": workload, "variants": [{"name": "v", **_policy_runtime(variant)}],
    })
    return TrialSpec(exp, exp.variants[0], repeat=repeat, price=price)


def _policy_runtime(variant: dict) -> dict:
    """These tests check the platform's policies (batching, keep-alive, autoscaling, swaps) with timings of a
    fraction of a second, so their instances are threads (cold starts of milliseconds) unless a test says
    otherwise; process instances and their seconds-long cold starts are tested in test_cold_start.py."""
    if variant.get("sharing") == "spatial" or "runtime" in variant:
        return variant
    return {"runtime": "thread", **variant}


def trace(times: list[float], duration: float) -> dict:
    return {"pattern": "trace", "trace_format": "timestamps", "duration_s": duration,
            "trace_content": "\n".join(f"{t:.3f}" for t in times)}


def rows_of(result) -> dict:
    return pq.read_table(result.artifact_path).to_pydict()


def test_overload_queues_grow_and_batching_raises_throughput(model_dir, tmp_path):
    # cnn-small on 16x16 images: one instance computes ~13,000 single images/s in a bare loop on an idle
    # 2-core box but ~30,000/s in batches of 32 (at 32x32 a 2-core CPU gains almost nothing from batching
    # convolutions). Through the platform, unbatched, per-request overhead brings one instance well below
    # 12,000 requests/s (measured 1,800-9,000/s depending on what else the machine runs), so 12,000/s is
    # above unbatched capacity; batched it keeps up on an idle machine and is overloaded less on a busy one.
    load = {"pattern": "poisson", "rate_rps": 12000, "duration_s": 1.5, "seed": 1}
    fn = [{"name": "f", "model": "cnn-small", "input_shape": [3, 16, 16]}]
    variants = {"none": {}, "fixed": {"batching": {"mode": "fixed", "max_batch_size": 32, "max_queue_delay_ms": 2}}}
    # Three alternating rounds (none, fixed / fixed, none / none, fixed) and medians: load from elsewhere on a
    # shared machine slows both variants of a round alike, and one disturbed trial cannot decide a comparison.
    # The unbatched runs are the baseline, measured in this test, minutes apart at most.
    runs: dict[str, list] = {"none": [], "fixed": []}
    for r in range(3):
        for name in (("none", "fixed") if r % 2 == 0 else ("fixed", "none")):
            runs[name].append(run_trial(trial(variants[name], load, functions=fn), model_dir=model_dir,
                                        drain_grace_s=0.3, artifact_path=tmp_path / f"{name}-{r}.parquet"))
    rows = {name: [rows_of(res) for res in results] for name, results in runs.items()}
    for n, f in zip(runs["none"], runs["fixed"], strict=True):
        assert n.summary["requests"] == f.summary["requests"] > 15000  # same seed: the same arrivals
        assert f.summary["mean_batch_size"] > 4 and n.summary["mean_batch_size"] == 1

    def sustained_rps(r: dict) -> float:  # completions while the load was on, after the first 0.3 s
        done = np.array(r["completed_s"], dtype=float)
        return float(np.count_nonzero((done >= 0.3) & (done < 1.5)) / 1.2)

    def latency_ms(r: dict) -> np.ndarray:  # NaN: not completed
        return np.array(r["latency_ms"], dtype=float)

    # Batching raises throughput: the median sustained rate against the median of the unbatched baseline.
    none_rps = [sustained_rps(r) for r in rows["none"]]
    fixed_rps = [sustained_rps(r) for r in rows["fixed"]]
    assert np.median(fixed_rps) > 1.3 * np.median(none_rps), (fixed_rps, none_rps)

    # ...and without it the queue grows: requests later in the run wait longer (open loop, no omission).
    growth = []
    for r in rows["none"]:
        ok = np.array(r["outcome"]) == OUTCOME_OK
        served = latency_ms(r)[ok][np.argsort(np.array(r["intended_s"])[ok])]  # by intended arrival: FIFO
        half = len(served) // 2
        growth.append(np.median(served[half:]) / np.median(served[:half]))  # ~3 if it grows linearly
    assert np.median(growth) > 1.5, growth
    assert np.median([max(w["queue_depth"] for w in res.windows) for res in runs["none"]]) > 100
    # The same requests (same arrivals, matched by index; those completed in both runs) wait far longer
    # unbatched. Matched, because completed-only means are biased: unbatched, only the early requests
    # complete at all, so their mean leaves out exactly the longest waits.
    slower = []
    for rn, rf in zip(rows["none"], rows["fixed"], strict=True):
        ln, lf = latency_ms(rn), latency_ms(rf)
        both = np.isfinite(ln) & np.isfinite(lf)
        assert np.count_nonzero(both) > 100
        slower.append(np.median(ln[both]) / np.median(lf[both]))
    assert np.median(slower) > 2, slower

    # Percentiles are ordered, in every summary and every window.
    def ordered(figures: dict, keys: tuple[str, ...]) -> bool:
        # Those that exist are non-decreasing; None (beyond the run, no samples) may only follow them.
        vals = [figures.get(k) for k in keys]
        known = [v for v in vals if v is not None]
        return known == sorted(known) and vals[: len(known)] == known

    pct = ("p50", "p90", "p95", "p99", "p999", "max")
    for res in runs["none"] + runs["fixed"]:
        s = res.summary
        for key in ("latency_ms", "latency_completed_ms"):  # all requests / completed only, where both exist
            if key in s:
                assert ordered(s[key], pct), (key, s[key])
        ci, point = s.get("slo_percentile_ci_ms"), s.get("slo_percentile_ms")
        if ci is not None and point is not None:
            assert ci[0] <= point <= ci[1]
        for w in res.windows:
            assert ordered(w, ("p50_ms", "p95_ms", "p99_ms")), w
    json.dumps([[res.summary, res.windows] for res in runs["none"] + runs["fixed"]], allow_nan=False)


def test_fixed_batching_holds_requests_for_the_delay(model_dir):
    # 50 requests/s, max batch 64, delay 30 ms: batches never fill, so each one waits for the delay.
    load = {"pattern": "constant", "rate_rps": 50, "duration_s": 1.0}
    r = run_trial(trial({"batching": {"mode": "fixed", "max_batch_size": 64, "max_queue_delay_ms": 30}}, load,
                        model="mlp-small"), model_dir=model_dir)
    s = r.summary
    assert s["completed"] == s["requests"]
    assert s["mean_batch_size"] > 1.2
    assert 5 <= s["breakdown_ms"]["batch_wait"] <= 31
    assert s["latency_ms"]["p50"] >= 10


def test_scale_to_zero_pays_a_real_cold_start(model_dir, tmp_path):
    # Three bursts 0.7 s apart; a 0.2 s TTL evicts the instance between them, so each burst cold-starts.
    times = [0.0, 0.01, 0.02, 0.7, 0.71, 1.4, 1.41]
    r = run_trial(trial({"min_instances": 0, "keep_alive": {"policy": "fixed", "ttl_s": 0.2}}, trace(times, 2.0),
                        model="transformer-small"), model_dir=model_dir, artifact_path=tmp_path / "z.parquet")
    s = r.summary
    assert s["completed"] == len(times)
    assert s["prestarts"] == 0 and s["cold_starts"] == 3
    phases = s["cold_start_phases_ms"]
    weight_load_ms = phases["load"]  # p50 of reading the safetensors file
    assert weight_load_ms > 0 and phases["total"] >= weight_load_ms
    rows = rows_of(r)
    lat = np.array(rows["latency_ms"])
    cold_ms = np.array(rows["cold_wait_s"]) * 1e3
    intended = np.array(rows["intended_s"])
    firsts = [int(np.argmin(np.abs(intended - t))) for t in (0.0, 0.7, 1.4)]
    for i in firsts:
        # The first request of each burst waited for a whole real cold start, weight load included.
        assert cold_ms[i] >= weight_load_ms
        assert lat[i] >= cold_ms[i] >= 0.5 * phases["total"]
    # Requests inside a burst, after the instance is warm, do not pay it again.
    assert s["breakdown_ms"]["cold_start"] > 0
    assert s["cold_start_ms"]["p50"] >= weight_load_ms


def test_longer_keep_alive_fewer_cold_starts_more_billed_idle(model_dir):
    times = [0.0, 0.6, 1.2, 1.8]
    price = PriceSpec(name="p", on_demand_usd_per_h=3.6, serverless_usd_per_s=0.001, granularity_s=0.001)
    short = run_trial(trial({"min_instances": 0, "keep_alive": {"policy": "fixed", "ttl_s": 0.1}}, trace(times, 2.0),
                            model="mlp-small", price=price), model_dir=model_dir)
    long = run_trial(trial({"min_instances": 0, "keep_alive": {"policy": "fixed", "ttl_s": 5.0}}, trace(times, 2.0),
                           model="mlp-small", price=price), model_dir=model_dir)
    assert short.summary["cold_starts"] == 4 and long.summary["cold_starts"] == 1
    assert short.summary["latency_ms"]["p50"] > long.summary["latency_ms"]["p50"]
    # The warm instance is billed while it idles: more billed seconds for less latency.
    assert long.summary["cost"]["billed_instance_s"] > short.summary["cost"]["billed_instance_s"] + 0.5
    assert long.summary["cost"]["serverless_usd"] > short.summary["cost"]["serverless_usd"]


def test_spatial_cpu_pins_disjoint_core_sets(model_dir):
    r = run_trial(trial({"sharing": "spatial", "share": 0.5, "min_instances": 2, "max_instances": 2,
                         "target_concurrency": 1},
                        {"pattern": "poisson", "rate_rps": 300, "duration_s": 1.0}, model="mlp-small"),
                  model_dir=model_dir)
    hw = r.summary["hardware"]
    assert hw["sharing_mechanism"] == "cpu-core-sets"
    children = hw["instances"]
    assert len(children) == 2
    sets = [set(c["cores_actual"]) for c in children]  # read back from the child: sched_getaffinity
    assert all(c["cores_actual"] == sorted(c["cores_requested"]) for c in children)
    assert sets[0].isdisjoint(sets[1]) and all(len(s) == 1 for s in sets)
    assert all(c["torch_threads"] == 1 for c in children)
    assert len({c["pid"] for c in children}) == 2
    assert r.summary["completed"] == r.summary["requests"] > 150
    assert r.summary["prestarts"] == 2


def test_a_model_that_raises_marks_its_requests_errors_and_the_trial_goes_on(model_dir, tmp_path):
    zoo.register_user_models({"flaky": FLAKY_PATH})
    try:
        r = run_trial(trial({}, {"pattern": "constant", "rate_rps": 100, "duration_s": 1.0}, model="flaky"),
                      model_dir=model_dir, artifact_path=tmp_path / "e.parquet")
    finally:
        zoo.unregister_user_models("flaky")
    s = r.summary
    assert r.status == "succeeded"
    rows = rows_of(r)
    outcome = np.array(rows["outcome"])
    assert s["errors"] == int((outcome == OUTCOME_ERROR).sum()) > 20
    assert s["completed"] == int((outcome == OUTCOME_OK).sum()) > 50
    assert s["errors"] + s["completed"] == s["requests"] == 100
    assert any("model raised" in n for n in s["notes"])
    assert sum(w["errors"] for w in r.windows) == s["errors"]
    assert set(rows["outcome_name"]) == {"ok", "error"}


def test_exclusive_swaps_between_functions_with_real_cold_starts(model_dir):
    # Two functions take turns; one device, one resident instance: each switch evicts and cold-starts.
    functions = [{"name": "a", "model": "mlp-small"}, {"name": "b", "model": "cnn-small"}]
    exp = parse_experiment({
        "name": "t", "device": "cpu", "slo": {"percentile": 99, "latency_ms": 100}, "functions": functions,
        "workloads": [trace([0.0, 0.6, 1.2], 1.5) | {"function": "a"},
                      trace([0.0, 0.6, 1.2], 1.5) | {"function": "b"}],
        "variants": [{"name": "v", "sharing": "exclusive", "runtime": "thread", "min_instances": 1,
                      "max_instances": 2}],
    })
    r = run_trial(TrialSpec(exp, exp.variants[0]), model_dir=model_dir)
    s = r.summary
    assert s["completed"] == 6
    assert s["prestarts"] == 1
    assert s["cold_starts"] >= 3  # at least one swap per round after the first
    assert any("exclusive" in n and "capped" in n for n in s["notes"])
    assert s["hardware"]["sharing_mechanism"] == "exclusive"


def test_time_slice_autoscaler_adds_instances_under_load(model_dir):
    load = {"pattern": "poisson", "rate_rps": 1500, "duration_s": 1.5, "seed": 3}
    r = run_trial(trial({"sharing": "time_slice", "min_instances": 1, "max_instances": 3, "target_concurrency": 2,
                         "keep_alive": {"policy": "fixed", "ttl_s": 10}}, load), model_dir=model_dir,
                  drain_grace_s=0.5)
    s = r.summary
    assert s["cold_starts"] >= 1  # the autoscaler started more than the min instance
    assert max(w["instances_busy"] + w["instances_idle"] for w in r.windows) >= 2
    assert s["hardware"]["sharing_mechanism"] == "threads"


def test_adaptive_batching_with_shedding_drops_what_cannot_make_it(model_dir):
    # Far above capacity: shedding keeps the served requests near the deadline instead of queueing forever.
    load = {"pattern": "poisson", "rate_rps": 9000, "duration_s": 1.0, "seed": 5}
    r = run_trial(trial({"batching": {"mode": "adaptive", "max_batch_size": 16, "shed": True}}, load,
                        slo_ms=30), model_dir=model_dir, drain_grace_s=0.5)
    s = r.summary
    assert s["dropped"] > 0.1 * s["requests"]
    assert s["completed"] > 0
    assert s["latency_completed_ms"]["p50"] < 30 * 3  # the served ones stay near the deadline...
    # ...but the shed ones count in the headline figures: beyond the run, never absent.
    assert s["latency_ms"]["unfinished"] == s["dropped"] + s["errors"]
    assert s["slo_verdict"]["verdict"] == "not_met"


def test_histogram_keep_alive_prewarms_once_it_has_seen_the_idle_times(model_dir, tmp_path):
    # Arrivals every 0.4 s; a 0.1 s TTL alone evicts before each one. After 3 idle times (~0.4 s each) the
    # histogram pre-warms at the head of the distribution (~0.3 s after the function went quiet), so the
    # later requests find a warm instance: the pre-warm's cold start is paid by nobody.
    times = [0.4 * i for i in range(9)]
    ka = {"policy": "histogram", "ttl_s": 0.1, "bin_s": 0.1, "range_s": 2.0, "min_samples": 3,
          "head_percentile": 5, "tail_percentile": 99}
    r = run_trial(trial({"min_instances": 0, "keep_alive": ka}, trace(times, 3.6), model="mlp-small"),
                  model_dir=model_dir, artifact_path=tmp_path / "h.parquet")
    s = r.summary
    cold_ms = np.array(rows_of(r)["cold_wait_s"]) * 1e3
    assert s["completed"] == 9
    assert (cold_ms[:3] > 0).all()  # fallback TTL: the first ones paid
    assert (cold_ms[-3:] == 0).all()  # pre-warmed
    assert s["prewarms"] >= 3
    assert s["requests_paid_cold_start"] <= 5 < s["cold_starts"]


def test_exclusive_with_interleaved_functions_serves_everyone(model_dir):
    # Both functions busy at once on one exclusive device: swaps cost cold starts, but each swap serves at
    # least one batch, and a batcher may not hold the device idle while the other function waits.
    functions = [{"name": "a", "model": "mlp-small"}, {"name": "b", "model": "mlp-small", "options": {"hidden": 256}}]
    exp = parse_experiment({
        "name": "t", "device": "cpu", "slo": {"percentile": 99, "latency_ms": 100}, "functions": functions,
        "workload": {"pattern": "poisson", "rate_rps": 300, "duration_s": 1.0, "seed": 9},
        "variants": [{"name": "v", "sharing": "exclusive", "runtime": "thread", "min_instances": 1,
                      "batching": {"mode": "adaptive", "max_batch_size": 8}}],
    })
    r = run_trial(TrialSpec(exp, exp.variants[0]), model_dir=model_dir)
    s = r.summary
    assert s["completed"] == s["requests"] > 200
    assert s["per_function"]["a"]["completed"] > 50 and s["per_function"]["b"]["completed"] > 50
    assert s["cold_starts"] >= 2
    assert s["cold_starts"] <= s["completed"]  # no swap without serving


def test_an_instance_process_answer_is_timed_when_read_not_when_the_platform_lock_frees():
    """wait_fd reads an answer as soon as its socket is readable, before it waits for the platform's lock: a
    batch's completion is when its result arrived, not when another thread let go of the lock."""
    import socket
    import threading
    import time

    from workers.platform.real import _WakeCondition

    lock = threading.Lock()
    cond = _WakeCondition(lock)
    ours, theirs = socket.socketpair()
    read, waiting = threading.Event(), threading.Event()
    got: dict = {}

    def take_answer() -> float:
        got["byte"] = ours.recv(1)
        read.set()
        return time.perf_counter()

    def waiter() -> None:
        with lock:
            waiting.set()
            got["seen"] = cond.wait_fd(10.0, ours.fileno(), take_answer)
            got["relocked"] = time.perf_counter()
            got["notified"] = cond.wait_fd(10.0, ours.fileno(), take_answer)  # woken by notify, nothing to read

    t = threading.Thread(target=waiter)
    t.start()
    try:
        assert waiting.wait(10.0)
        lock.acquire()  # granted once the waiter sits in wait_fd (it releases the lock there)
        try:
            theirs.send(b"\x01")
            assert read.wait(10.0), "the answer was not read while the lock was held elsewhere"
            released = time.perf_counter()
        finally:
            lock.release()
        lock.acquire()  # a notify reaches the waiter's next wait_fd even if it is not there yet (its wake pipe)
        try:
            cond.notify()
        finally:
            lock.release()
        t.join(10.0)
    finally:
        ours.close()
        theirs.close()
        cond.close_pipe()
    assert got["byte"] == b"\x01"
    assert got["seen"] < released <= got["relocked"]
    assert got["notified"] is None
