"""The simulated driver on the platform's own scheduling core.

Queueing sanity uses profiles written here as data (a constant service time is an M/D/1 server, exponential samples an
M/M/c one): the simulator must reproduce the analytic results. The same-actions tests replay the events a run logged
(real driver, then simulated driver) through a fresh core and get the very actions the drivers executed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from workers.engine import run_trial
from workers.platform.core import SchedulingCore, logged_actions, replay
from workers.records import OUTCOME_OK
from workers.spec import TrialSpec, parse_experiment


def spec(variant: dict, workload: dict, *, functions=None, slo_ms=100.0, repeat=0) -> TrialSpec:
    exp = parse_experiment({
        "name": "sim", "device": "cpu", "slo": {"percentile": 99, "latency_ms": slo_ms},
        "functions": functions or [{"name": "f", "model": "mlp-small"}],
        "workload": workload, "variants": [{"name": "v", **variant}],
    })
    return TrialSpec(exp, exp.variants[0], repeat=repeat)


def profile(service_ms, *, levels=(1,), cold_ms=(200.0,)) -> dict:
    """A profile given as data: the same samples at every listed sharing level and batch size 1."""
    samples = [float(x) for x in np.atleast_1d(service_ms)]
    return {"version": 1, "model": "mlp-small", "device": "cpu", "hardware": "given as data",
            "batch_sizes": [1], "sharing_levels": list(levels),
            "service_ms": {str(lv): {"1": samples} for lv in levels},
            "cold_start_ms": {"total": list(cold_ms)}}


def latencies_ms(result) -> np.ndarray:
    import pyarrow.parquet as pq

    t = pq.read_table(result.artifact_path, columns=["latency_ms", "outcome"]).to_pydict()
    ok = np.asarray(t["outcome"]) == OUTCOME_OK
    return np.asarray(t["latency_ms"], dtype=float)[ok]


def test_md1_mean_wait_matches_the_formula(tmp_path):
    lam, d = 50.0, 0.010  # rho = 0.5
    s = spec({"min_instances": 1, "max_instances": 1, "sharing": "time_slice"},
             {"pattern": "poisson", "rate_rps": lam, "duration_s": 600})
    res = run_trial(s, profiles=[profile(d * 1e3)], artifact_path=tmp_path / "a.parquet")
    lat = latencies_ms(res) / 1e3
    rho = lam * d
    wq = rho * d / (2 * (1 - rho))  # Pollaczek-Khinchine for deterministic service
    assert res.summary["simulated"] is True
    assert abs((lat.mean() - d) - wq) / wq < 0.06, (lat.mean() - d, wq)


def erlang_c_wait(lam: float, mu: float, c: int) -> float:
    a = lam / mu
    rho = a / c
    top = a ** c / math.factorial(c) / (1 - rho)
    p_wait = top / (sum(a ** k / math.factorial(k) for k in range(c)) + top)
    return p_wait / (c * mu - lam)


def test_a_batch_that_finds_its_instance_idle_draws_between_the_idle_gaps_around_the_one_it_waited(tmp_path):
    """Service 1 ms back to back, 3 ms after 5 ms idle, 6 ms after 50 ms idle (one sample each): a batch's time is
    interpolated between the measured gaps around its own, linearly in log(gap) (at 15.8 ms idle: 4.5 ms), linearly
    in the gap below the shortest (at 2.5 ms: 2 ms), and the longest's past it; every request of sparse Poisson
    arrivals is checked against that from its instance's idle gap, read from the artifact."""
    import pyarrow.parquet as pq

    idle = {**profile(1.0), "idle_service_ms": {"5": {"1": [3.0]}, "50": {"1": [6.0]}}}
    one = {"min_instances": 1, "max_instances": 1, "sharing": "time_slice"}
    sparse = run_trial(spec(one, {"pattern": "poisson", "rate_rps": 10, "duration_s": 300}), profiles=[idle],
                       artifact_path=tmp_path / "sparse.parquet")
    t = pq.read_table(sparse.artifact_path, columns=["batch_start_s", "completed_s", "outcome"]).to_pydict()
    ok = np.asarray(t["outcome"]) == OUTCOME_OK
    start, done = (np.asarray(t[c], dtype=float)[ok] for c in ("batch_start_s", "completed_s"))
    order = np.argsort(start)
    start, done = start[order], done[order]
    gap_ms = (start[1:] - done[:-1]) * 1e3  # one instance: idle from one completion to the next start
    service_ms = (done[1:] - start[1:]) * 1e3
    expected = np.where(gap_ms <= 0, 1.0, np.where(gap_ms < 5, 1 + 2 * gap_ms / 5,
                        np.where(gap_ms < 50, 3 + 3 * np.log(np.maximum(gap_ms, 5) / 5) / np.log(10), 6.0)))
    assert len(gap_ms) > 2500
    assert np.allclose(service_ms, expected, atol=1e-6)
    # every regime occurs: back to back, below the shortest gap, between the two, past the longest
    assert (gap_ms <= 0).any() and ((gap_ms > 0) & (gap_ms < 5)).any()
    assert ((gap_ms > 5) & (gap_ms < 50)).sum() > 500 and (gap_ms > 50).sum() > 500
    # a queue (arrivals all at once): only the first batch found the instance idle
    burst = run_trial(spec(one, {"pattern": "steps", "steps": [[0, 2000], [0.01, 0]], "duration_s": 1}),
                      profiles=[idle], artifact_path=tmp_path / "burst.parquet")
    t = pq.read_table(burst.artifact_path, columns=["intended_s", "latency_ms", "outcome"]).to_pydict()
    done_ms = np.sort([i * 1e3 + lat for i, lat, o in zip(t["intended_s"], t["latency_ms"], t["outcome"], strict=True)
                       if o == OUTCOME_OK])
    assert len(done_ms) >= 10
    assert np.median(np.diff(done_ms)) == pytest.approx(1.0, abs=0.01)  # one after another: back to back


def test_the_platform_overhead_of_an_idle_instance_is_not_paid_back_to_back(tmp_path):
    """Service 1 ms everywhere; the platform's overhead 2 ms on an instance that sat idle, 0.1 ms back to back. Sparse
    requests pay 1 + 2 ms; a queue's batches follow each other 1.1 ms apart. A profile without the back-to-back
    figure pays the idle one on every batch (3 ms apart), as profiles before it did."""
    one = {"min_instances": 1, "max_instances": 1, "sharing": "time_slice"}
    both = {**profile(1.0), "idle_service_ms": {"5": {"1": [1.0]}}, "platform_overhead_ms": [2.0],
            "platform_busy_overhead_ms": [0.1]}
    sparse = run_trial(spec(one, {"pattern": "constant", "rate_rps": 10, "duration_s": 20}), profiles=[both],
                       artifact_path=tmp_path / "sparse.parquet")
    assert np.median(latencies_ms(sparse)) == pytest.approx(3.0, abs=0.01)

    import pyarrow.parquet as pq

    def gaps_ms(prof, name):
        burst = run_trial(spec(one, {"pattern": "steps", "steps": [[0, 2000], [0.01, 0]], "duration_s": 1}),
                          profiles=[prof], artifact_path=tmp_path / name)
        t = pq.read_table(burst.artifact_path, columns=["intended_s", "latency_ms", "outcome"]).to_pydict()
        done = np.sort([i * 1e3 + lat for i, lat, o in zip(t["intended_s"], t["latency_ms"], t["outcome"],
                                                           strict=True) if o == OUTCOME_OK])
        return np.median(np.diff(done))

    assert gaps_ms(both, "burst.parquet") == pytest.approx(1.1, abs=0.01)
    old = {k: v for k, v in both.items() if k != "platform_busy_overhead_ms"}
    assert gaps_ms(old, "old.parquet") == pytest.approx(3.0, abs=0.01)


def test_the_batches_right_after_an_idle_one_draw_from_the_cells_of_their_position(tmp_path):
    """Back to back 1 ms; after 5 ms idle 3 ms, then 2.0, then 1.5; after 50 ms idle 6 ms, then 4.0, then 2.0: a queue
    that forms after about 190 ms idle runs 6, 4, 2, then 1, 1, ... ms a batch (the instance warms up over its first
    batches). A profile without those positions runs the queued ones back to back (6, 1, 1, ...), as before."""
    import pyarrow.parquet as pq

    warm = {**profile(1.0), "idle_service_ms": {"5": {"1": [3.0]}, "50": {"1": [6.0]}},
            "idle_follow_ms": {"2": {"5": {"1": [2.0]}, "50": {"1": [4.0]}},
                               "3": {"5": {"1": [1.5]}, "50": {"1": [2.0]}}}}
    one = {"min_instances": 1, "max_instances": 1, "sharing": "time_slice"}
    # two bursts of about 20 requests in 10 ms: the second finds the instance idle since the first's queue drained
    queue = {"pattern": "steps", "steps": [[0, 2000], [0.01, 0], [0.2, 2000], [0.21, 0]], "duration_s": 1}

    def second_burst_ms(prof, name):
        res = run_trial(spec(one, queue), profiles=[prof], artifact_path=tmp_path / name)
        t = pq.read_table(res.artifact_path, columns=["batch_start_s", "completed_s", "outcome"]).to_pydict()
        ok = np.asarray(t["outcome"]) == OUTCOME_OK
        start, done = (np.asarray(t[c], dtype=float)[ok] for c in ("batch_start_s", "completed_s"))
        order = np.argsort(start)
        start, done = start[order], done[order]
        first = int(np.argmax(start[1:] - done[:-1])) + 1  # the batch after the longest idle gap
        assert start[first] - done[first - 1] > 0.05 and len(start) - first >= 8
        return ((done - start)[first:] * 1e3).round(6).tolist()

    got = second_burst_ms(warm, "warm.parquet")
    assert got[:3] == [6.0, 4.0, 2.0] and set(got[3:]) == {1.0}
    old = {k: v for k, v in warm.items() if k != "idle_follow_ms"}
    got = second_burst_ms(old, "old.parquet")
    assert got[0] == 6.0 and set(got[1:]) == {1.0}


def test_the_service_model_interpolates_by_gap_at_each_position():
    from workers.platform.sim import ServiceModel

    warm = {**profile(1.0), "idle_service_ms": {"5": {"1": [3.0]}, "50": {"1": [6.0]}},
            "idle_follow_ms": {"2": {"5": {"1": [2.0]}, "50": {"1": [4.0]}},
                               "3": {"5": {"1": [1.5]}, "50": {"1": [2.0]}}}}
    m = ServiceModel(warm, np.random.default_rng(0))

    def ms(idle_ms, position):
        return m.service_s(1, 1, idle_ms / 1e3, position) * 1e3

    assert ms(0.0, 1) == pytest.approx(1.0) and ms(float("nan"), 1) == pytest.approx(1.0)
    assert ms(2.5, 1) == pytest.approx(2.0)  # half way to the shortest gap, from back to back
    assert ms(2.5, 2) == pytest.approx(1.5) and ms(2.5, 3) == pytest.approx(1.25)  # the same, at its position
    assert ms(5 * 10 ** 0.5, 1) == pytest.approx(4.5) and ms(5 * 10 ** 0.5, 2) == pytest.approx(3.0)
    assert ms(500.0, 1) == pytest.approx(6.0) and ms(500.0, 3) == pytest.approx(2.0)  # past the longest
    assert ms(500.0, 4) == pytest.approx(1.0)  # past the measured positions: back to back


def test_mmc_mean_wait_matches_erlang_c(tmp_path):
    c, mu, lam = 3, 100.0, 240.0  # rho = 0.8
    u = (np.arange(4000) + 0.5) / 4000
    exp_samples = -np.log(1 - u) / mu * 1e3  # exponential service, as quantiles
    s = spec({"min_instances": c, "max_instances": c, "sharing": "time_slice"},
             {"pattern": "poisson", "rate_rps": lam, "duration_s": 600})
    res = run_trial(s, profiles=[profile(exp_samples, levels=(1, 2, 3))], artifact_path=tmp_path / "a.parquet")
    lat = latencies_ms(res) / 1e3
    wq = erlang_c_wait(lam, mu, c)
    assert abs((lat.mean() - 1 / mu) - wq) / wq < 0.12, (lat.mean() - 1 / mu, wq)


def test_a_seed_gives_the_same_simulation_and_another_repeat_differs():
    variant = {"min_instances": 0, "max_instances": 2, "keep_alive": {"policy": "fixed", "ttl_s": 0.5}}
    wl = {"pattern": "poisson", "rate_rps": 20, "duration_s": 30}
    s = spec(variant, wl)
    prof = profile(np.linspace(4, 12, 50), levels=(1, 2), cold_ms=(150.0, 300.0))
    a = run_trial(s, profiles=[prof]).summary
    b = run_trial(s, profiles=[prof]).summary
    assert a["latency_ms"] == b["latency_ms"] and a["cold_starts"] == b["cold_starts"]
    other = run_trial(spec(variant, wl, repeat=1), profiles=[prof])
    assert other.summary["latency_ms"] != a["latency_ms"]


def _fresh_core(result_spec: TrialSpec, rows: dict, fidx: np.ndarray) -> SchedulingCore:
    exp, var = result_spec.experiment, result_spec.variant
    return SchedulingCore(exp.functions, var, rows=rows, function_idx=fidx, slo_latency_ms=exp.slo.latency_ms)


def _replayed_equals_logged(s: TrialSpec, result, tmp_path) -> None:
    import pyarrow.parquet as pq

    t = pq.read_table(result.artifact_path).to_pydict()
    names = [f.name for f in s.experiment.functions]
    fidx = np.asarray([names.index(f) for f in t["function"]]) if isinstance(t["function"][0], str) \
        else np.asarray(t["function"])
    # The replaying core reads sent_s (batchers' oldest waits) from the same rows the run wrote.
    rows = {"sent_s": np.asarray(t["sent_s"], dtype=float), "intended_s": np.asarray(t["intended_s"], dtype=float),
            "outcome": np.zeros(len(fidx), dtype=np.int8)}
    logged = logged_actions(result.trace)
    got = replay(_fresh_core(s, rows, fidx), result.trace)
    assert len(got) == len(logged) > 10
    assert got == logged


@pytest.mark.parametrize("variant", [
    {"sharing": "time_slice", "min_instances": 0, "max_instances": 2, "keep_alive": {"policy": "fixed", "ttl_s": 0.3},
     "batching": {"mode": "fixed", "max_batch_size": 4, "max_queue_delay_ms": 5}},
    {"sharing": "exclusive", "min_instances": 0, "max_instances": 1, "keep_alive": {"policy": "fixed", "ttl_s": 0.3}},
])
def test_real_and_simulated_runs_replay_to_the_same_actions(variant, tmp_path):
    """Both drivers execute exactly what the one core decides: the events each run logged, fed to a fresh core,
    give the actions that run executed, one for one."""
    functions = [{"name": "f", "model": "mlp-small"}, {"name": "g", "model": "null"}]
    wl = {"pattern": "poisson", "rate_rps": 40, "duration_s": 1.5}
    s = spec({"runtime": "thread", **variant}, wl, functions=functions)
    real = run_trial(s, trace=True, artifact_path=tmp_path / "real.parquet")
    _replayed_equals_logged(s, real, tmp_path)
    prof = profile(np.linspace(0.5, 2.0, 20), levels=(1, 2), cold_ms=(50.0,))
    sim = run_trial(s, trace=True, profiles=[prof, prof], artifact_path=tmp_path / "sim.parquet")
    _replayed_equals_logged(s, sim, tmp_path)
    # One policy, two clocks: the keep-alive changes the actions of both drivers the same way.
    kinds_real = {a[0] for acts in logged_actions(real.trace) for a in acts}
    kinds_sim = {a[0] for acts in logged_actions(sim.trace) for a in acts}
    assert {"start", "run", "evict"} <= kinds_real and {"start", "run", "evict"} <= kinds_sim


def test_the_simulated_drain_counts_the_grace_again_from_the_end_of_a_cold_start():
    s = spec({"sharing": "time_slice", "min_instances": 0, "max_instances": 1},
             {"pattern": "constant", "rate_rps": 20, "duration_s": 0.5})
    r = run_trial(s, profiles=[profile(2.0, cold_ms=(3000.0,))], drain_grace_s=0.2)
    assert r.summary["completed"] == r.summary["requests"] == 10


def test_placement_first_fit_by_memory_and_load_pack_by_measured_load():
    from workers.platform.core import place

    gib = 2**30
    # first_fit: in order, the first device with room; 3 GiB each on 8 GiB devices -> two per device.
    assert place([3 * gib] * 5, [0.1] * 5, 3, 8 * gib, "first_fit") == [0, 0, 1, 1, 2]
    # load_pack: heaviest first, fill a device to the target load before opening the next.
    loads = [0.5, 0.1, 0.6, 0.05, 0.2]
    out = place([gib] * 5, loads, 4, 8 * gib, "load_pack")
    per_device = [sum(load for load, d in zip(loads, out, strict=True) if d == k) for k in range(4)]
    assert max(per_device) <= 0.7 + 1e-9 and out[2] != out[0]
    assert sorted(set(out)) == [0, 1, 2]  # three devices hold it all; the fourth stays free
    with pytest.raises(ValueError, match="placement"):
        place([gib], [0.1], 2, None, "random")


def test_a_fleet_of_devices_replays_an_azure_trace(tmp_path):
    from workers.spec import parse_experiment as parse
    from workers.tracegen import azure2019_experiment

    data = azure2019_experiment(12, mean_rate_rps=30, duration_s=180, seed=3)
    exp = parse(data)
    s = TrialSpec(exp, exp.variants[0])
    # 50-150 ms per request: the busiest functions load a device by a third or more, so load_pack needs several.
    prof = profile(np.linspace(50, 150, 40), levels=(1, 2), cold_ms=(400.0, 600.0))
    res = run_trial(s, profiles=[prof] * 12, fleet={"devices": 4, "placement": "load_pack"},
                    artifact_path=tmp_path / "f.parquet")
    sim = res.summary["simulation"]
    assert sim["devices"] == 4 and sum(sim["functions_per_device"]) == 12
    assert res.summary["requests"] > 1500 and res.summary["completed"] == res.summary["requests"]
    devices_used = {sp.get("device", 0) for sp in res.summary["cost"]["spans"]}
    assert len(devices_used) > 1
    assert res.summary["cost"]["devices"] == 4
    one = run_trial(s, profiles=[prof] * 12, fleet={"devices": 1})
    assert one.summary["cost"]["devices"] == 1
    with pytest.raises(Exception, match="simulated only"):
        run_trial(s, fleet={"devices": 2})


DAY_SCRIPT = """
import json, resource, sys
import numpy as np
from workers.engine import run_trial
from workers.spec import TrialSpec, parse_experiment
exp = parse_experiment({"name": "day", "device": "cpu", "slo": {"percentile": 99, "latency_ms": 100},
    "functions": [{"name": f"f{i}", "model": "mlp-small"} for i in range(4)],
    "workloads": [{"function": f"f{i}", "pattern": "diurnal", "mean_rate_rps": 0.5, "peak_to_trough": 4,
                   "duration_s": 86400} for i in range(4)],
    "variants": [{"name": "v", "sharing": "time_slice", "min_instances": 0, "max_instances": 2,
                  "keep_alive": {"policy": "fixed", "ttl_s": 30}}]})
prof = {"service_ms": {"1": {"1": list(np.linspace(1, 3, 50))}}, "cold_start_ms": {"total": [2000.0]}}
r = run_trial(TrialSpec(exp, exp.variants[0]), profiles=[prof] * 4, fleet={"devices": 2})
print(json.dumps({"requests": r.summary["requests"], "windows": len(r.windows), "run_s": r.summary["run_s"],
                  "window_s": r.summary["simulation"]["window_s"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def test_a_simulated_day_stays_within_the_memory_bound():
    """A whole day on two simulated devices in a fresh process: about 3,600 windows of 24 s, peak memory under 2 GB
    (the full-rate day, 17 M requests, is `manage.py bench simulate`)."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", DAY_SCRIPT], capture_output=True, text=True, timeout=600, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(r)
    assert 86_000 < r["run_s"] <= 86_400 and r["window_s"] == 24 and 3590 <= r["windows"] <= 3605
    assert 150_000 < r["requests"] < 195_000
    assert r["peak_rss_mb"] < 2048


def test_a_short_simulated_trial_keeps_every_per_request_column_and_they_add_up_to_its_summary(tmp_path):
    """Below SIM_FULL_ROWS_MAX requests a simulated artifact has the columns of a real one (batch start, instance,
    batch size, cold, modelled and batch waits, completion, the cold-start phases a request waited for), and the
    breakdown computed from those rows the way a real run's is equals the streamed summary's."""
    import pyarrow.parquet as pq

    from workers import statistics
    from workers.records import COLD_START_PHASES, ROW_COLUMNS

    variant = {"min_instances": 0, "max_instances": 2, "keep_alive": {"policy": "fixed", "ttl_s": 0.5},
               "platform_delay_ms": 50, "batching": {"mode": "fixed", "max_batch_size": 4, "max_queue_delay_ms": 5}}
    s = spec(variant, {"pattern": "poisson", "rate_rps": 40, "duration_s": 30})
    prof = profile(np.linspace(4, 12, 50), levels=(1, 2), cold_ms=(150.0, 300.0))
    res = run_trial(s, profiles=[prof], artifact_path=tmp_path / "a.parquet")
    t = pq.read_table(res.artifact_path)
    assert set(ROW_COLUMNS) <= set(t.column_names)
    assert {f"cold_start_{p}_ms" for p in COLD_START_PHASES} <= set(t.column_names)
    rows = {c: t.column(c).to_numpy(zero_copy_only=False) for c in ROW_COLUMNS}
    for c in ("sent_s", "batch_start_s", "completed_s"):
        rows[c] = np.asarray(rows[c], dtype=float)
    ok = rows["outcome"] == OUTCOME_OK
    assert ok.sum() == res.summary["completed"] > 1000
    assert (rows["instance"][ok] >= 0).all() and (rows["batch_size"][ok] >= 1).all()
    assert rows["batch_size"][ok].max() > 1  # the batcher formed batches
    assert (rows["sent_s"][ok] <= rows["batch_start_s"][ok]).all()
    assert (rows["batch_start_s"][ok] < rows["completed_s"][ok]).all()
    lat = (rows["completed_s"] - rows["intended_s"])[ok] * 1e3
    assert np.allclose(lat, t.column("latency_ms").to_numpy(zero_copy_only=False)[ok])
    waited = ok & (rows["cold_wait_s"] > 0)
    assert waited.sum() == res.summary["requests_paid_cold_start"] > 0
    modelled = rows["modelled_wait_s"][waited]
    assert (modelled <= rows["cold_wait_s"][waited]).all() and (modelled <= 0.05 + 1e-6).all()
    assert modelled.max() == pytest.approx(0.05, abs=1e-6)  # the request that set a cold start off waited it all
    assert not np.isnan(t.column("cold_start_total_ms").to_numpy(zero_copy_only=False)[waited]).any()
    # a batch (one instance, one start) has as many rows as its size
    batches: dict[tuple, list[int]] = {}
    for inst, start, size in zip(rows["instance"][ok], rows["batch_start_s"][ok], rows["batch_size"][ok],
                                 strict=True):
        batches.setdefault((int(inst), float(start)), []).append(int(size))
    assert all(len(sizes) == sizes[0] and len(set(sizes)) == 1 for sizes in batches.values())
    assert ok.sum() / len(batches) == pytest.approx(res.summary["mean_batch_size"])
    from_rows = statistics._breakdown(rows, ok)
    for part, value in res.summary["breakdown_ms"].items():
        assert from_rows[part] == pytest.approx(value, abs=1e-3), part
