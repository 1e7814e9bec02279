"""The engine: early failures, cancellation, determinism, and what a result carries."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from workers import zoo
from workers.engine import TrialFailed, TrialResult, run_trial
from workers.spec import TrialSpec, parse_experiment


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def make(variant: dict | None = None, workload: dict | None = None, *, functions=None, device="cpu",
         known_models=None, repeat=0) -> TrialSpec:
    exp = parse_experiment({
        "name": "t", "device": device, "slo": {"percentile": 99, "latency_ms": 100},
        "functions": functions or [{"name": "f", "model": "null"}],
        "workload": workload or {"pattern": "poisson", "rate_rps": 200, "duration_s": 0.5, "seed": 4},
        "variants": [{"name": "v", **(variant or {})}],
    }, known_models=known_models)
    return TrialSpec(exp, exp.variants[0], repeat=repeat)


def fails_fast(spec: TrialSpec, model_dir, match: str) -> None:
    """Refused before anything was prepared: not even a weights file was written (the engine writes them before its
    clock starts, after every check), so nothing was started or loaded."""
    before = set(model_dir.rglob("*"))
    t = time.perf_counter()
    with pytest.raises(TrialFailed, match=match):
        run_trial(spec, model_dir=model_dir)
    print(f"refused in {time.perf_counter() - t:.3f} s")
    assert set(model_dir.rglob("*")) == before


def test_unknown_model_fails_at_once(model_dir):
    spec = make(functions=[{"name": "f", "model": "no-such-model"}], known_models=["no-such-model", "null"])
    fails_fast(spec, model_dir, "unknown model 'no-such-model'")


def test_spatial_share_larger_than_the_host_fails_at_once(model_dir):
    # 2 cores: a quarter of the CPU is half a core, and spatial sharing needs whole cores.
    spec = make({"sharing": "spatial", "share": 0.25, "min_instances": 2, "max_instances": 2})
    fails_fast(spec, model_dir, "whole core")


def test_batch_that_does_not_fit_memory_fails_at_once(model_dir):
    spec = make({"batching": {"mode": "fixed", "max_batch_size": 1024}},
                functions=[{"name": "f", "model": "cnn-small", "input_shape": [3, 1024, 1024]}])
    fails_fast(spec, model_dir, "max_batch_size")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA")
def test_cuda_not_available_fails_at_once(model_dir):
    fails_fast(make(device="cuda"), model_dir, "cuda")


def test_workload_without_arrivals_fails_at_once(model_dir):
    spec = make(workload={"pattern": "poisson", "rate_rps": 0.001, "duration_s": 1, "seed": 1})
    fails_fast(spec, model_dir, "no arrivals")


def test_cancel_stops_within_two_seconds_and_keeps_partial_results(model_dir, tmp_path):
    spec = make({"batching": {"mode": "fixed", "max_batch_size": 8, "max_queue_delay_ms": 2}},
                {"pattern": "poisson", "rate_rps": 300, "duration_s": 30, "seed": 2},
                functions=[{"name": "f", "model": "mlp-small"}])
    asked = threading.Event()
    asked_at: list[float] = []
    windows: list[dict] = []

    def should_stop() -> bool:
        if not asked.is_set() and len(windows) >= 1:
            asked.set()
            asked_at.append(time.perf_counter())
        return asked.is_set()

    result = run_trial(spec, model_dir=model_dir, on_window=windows.append, should_stop=should_stop,
                       artifact_path=tmp_path / "c.parquet")
    stopped_in = time.perf_counter() - asked_at[0]
    assert stopped_in < 2.0
    s = result.summary
    assert result.status == "cancelled"
    assert 100 < s["requests"] < 9000  # only what was sent counts; the unsent rest is excluded
    assert s["completed"] > 0.9 * s["requests"]
    assert s["completed"] + s["dropped"] + s["errors"] == s["requests"]
    assert s["run_s"] < 5
    assert result.windows and result.windows[0] == windows[0]
    assert pq.read_table(result.artifact_path).num_rows == s["requests"]
    json.dumps(s, allow_nan=False)


def test_same_seed_same_arrivals_and_repeats_differ(model_dir, tmp_path):
    a = run_trial(make(), model_dir=model_dir, artifact_path=tmp_path / "a.parquet")
    b = run_trial(make(), model_dir=model_dir, artifact_path=tmp_path / "b.parquet")
    c = run_trial(make(repeat=1), model_dir=model_dir, artifact_path=tmp_path / "c.parquet")
    ia = pq.read_table(a.artifact_path).column("intended_s").to_numpy()
    ib = pq.read_table(b.artifact_path).column("intended_s").to_numpy()
    ic = pq.read_table(c.artifact_path).column("intended_s").to_numpy()
    assert np.array_equal(ia, ib)
    assert not (len(ia) == len(ic) and np.array_equal(ia, ic))
    assert a.summary["seed"] == b.summary["seed"] == c.summary["seed"] - 1


def test_result_shape_and_json(model_dir, tmp_path):
    seen: list[dict] = []
    r = run_trial(make(workload={"pattern": "constant", "rate_rps": 100, "duration_s": 2.0}), model_dir=model_dir,
                  on_window=seen.append, artifact_path=tmp_path / "r.parquet")
    assert isinstance(r, TrialResult) and r.status == "succeeded"
    s = r.summary
    for key in ("requests", "completed", "latency_ms", "slo_percentile_ci_ms", "violation_rate", "throughput_rps",
                "goodput_rps", "cold_starts", "prestarts", "breakdown_ms", "per_function", "cost", "dispatch",
                "hardware", "device", "variant", "repeat", "seed", "run_s", "simulated", "notes"):
        assert key in s, key
    assert s["simulated"] is False and s["device"] == "cpu" and s["variant"] == "v"
    assert s["requests"] == s["completed"] == 200
    assert s["prestarts"] == 1 and s["cold_starts"] == 0  # min instance started before the load
    assert s["dispatch"]["sent"] == 200 and s["dispatch"]["lag_p50_us"] >= 0
    hw = s["hardware"]
    assert hw["on_cpu"] is True and hw["sharing_mechanism"] == "exclusive" and hw["torch_version"] == torch.__version__
    assert s["cost"]["price"] is None  # no price given: no invented figures
    assert len(r.windows) >= 2 and seen == r.windows
    keys = {"t_s", "offered_rps", "completed_rps", "dropped", "errors", "p50_ms", "p95_ms", "p99_ms", "queue_depth",
            "instances_starting", "instances_idle", "instances_busy", "cold_starts", "dispatch_lag_p99_us",
            "cpu_util_pct", "rss_mb", "gpu_util_pct", "gpu_mem_used_mb", "power_w", "cost_usd"}
    assert keys <= set(r.windows[0])
    assert r.windows[0]["t_s"] == 1.0 and 90 <= r.windows[0]["offered_rps"] <= 110
    assert sum(w["completed_rps"] * (w["t_s"] - (r.windows[i - 1]["t_s"] if i else 0.0))
               for i, w in enumerate(r.windows)) == pytest.approx(200, abs=1)
    assert r.windows[0]["rss_mb"] is not None and r.windows[0]["gpu_util_pct"] is None
    json.dumps({"s": s, "w": r.windows, "hw": r.hardware}, allow_nan=False)
    table = pq.read_table(r.artifact_path)
    assert {"latency_ms", "outcome_name", "function_name", "intended_s", "sent_s"} <= set(table.column_names)
    assert table.schema.field("latency_ms").type == "double"


def tiny_factory(input_shape, options):
    return torch.nn.Sequential(torch.nn.Linear(input_shape[0], 3), torch.nn.Tanh())


tiny_factory.DEFAULT_INPUT_SHAPE = (5,)


def test_user_model_registry_reaches_spatial_children(model_dir):
    # A spatial instance is a fresh process: the user-model registration must travel with it.
    zoo.register_user_models({"tiny-user-e": f"{__name__}.tiny_factory"})
    try:
        r = run_trial(make({"sharing": "spatial", "share": 0.5, "min_instances": 1, "max_instances": 1},
                           {"pattern": "constant", "rate_rps": 50, "duration_s": 0.5},
                           functions=[{"name": "f", "model": "tiny-user-e"}]), model_dir=model_dir)
    finally:
        zoo.unregister_user_models("tiny-user-e")
    assert r.summary["completed"] == r.summary["requests"] == 25


def test_cancel_while_min_instances_start(model_dir):
    # Spatial instances are processes that take a second or more to start: cancel must not wait for them.
    spec = make({"sharing": "spatial", "share": 0.5, "min_instances": 2, "max_instances": 2},
                functions=[{"name": "f", "model": "mlp-small"}])
    asked: list[float] = []

    def should_stop() -> bool:
        asked.append(time.perf_counter())
        return True

    r = run_trial(spec, model_dir=model_dir, should_stop=should_stop)
    assert time.perf_counter() - asked[0] < 2.0
    assert r.status == "cancelled" and r.summary["requests"] == 0
    assert not any("error" in n for n in r.summary["notes"])
    json.dumps(r.summary, allow_nan=False)
