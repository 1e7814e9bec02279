"""workers.profiling: a real short profile of mlp-small on the CPU (real instance processes), its structure
and sanity, validation naming the bad field, the reuse key, and the plans (batch sizes, sharing levels)."""

from __future__ import annotations

import copy
import json
import os

import pytest

from workers import devices, profiling, zoo


@pytest.fixture(scope="module")
def short_profile(tmp_path_factory):
    lines: list[str] = []
    d = profiling.measure_profile("mlp-small", model_dir=tmp_path_factory.mktemp("models"), max_batch_size=4,
                                  sharing_levels=[1, 2, 4], samples=5, cold_starts=2, progress=lines.append)
    d["_progress"] = lines
    return d


def test_a_short_profile_has_every_field_of_the_format_and_positive_samples(short_profile):
    d = {k: v for k, v in short_profile.items() if k != "_progress"}
    assert profiling.validate_profile(d) is d
    assert d["version"] == 1 and d["runtime"] == "process" and d["device"] == "cpu"
    assert d["model"] == "mlp-small" and d["input_shape"] == [256]
    assert d["options"] == zoo.BUILTIN_OPTIONS["mlp-small"]  # defaults spelled out: the reuse key sees them
    assert d["batch_sizes"] == [1, 2, 4]
    cores = len(os.sched_getaffinity(0))
    assert d["sharing_levels"] == [level for level in (1, 2, 4) if level <= cores]
    for level in d["sharing_levels"]:
        for k in d["batch_sizes"]:
            xs = d["service_ms"][str(level)][str(k)]
            assert len(xs) == level * d["samples"]  # every instance contributes its quota
            assert all(x > 0 for x in xs)
    assert 0 < d["overhead_us"]["p50"] <= d["overhead_us"]["p99"]
    # after each idle gap: the batch that found the instance idle, and the ones right after it, each batch size
    gaps = {str(g) for g in profiling.IDLE_GAPS_MS}
    assert set(d["idle_service_ms"]) == gaps
    assert set(d["idle_follow_ms"]) == {str(p) for p in range(2, profiling.FOLLOW_POSITIONS + 1)}
    for by_gap in d["idle_follow_ms"].values():
        assert set(by_gap) == gaps
        for cells in by_gap.values():
            assert set(cells) == {str(k) for k in d["batch_sizes"]}
            assert all(len(xs) == d["samples"] and min(xs) > 0 for xs in cells.values())
    bad = {**d, "idle_follow_ms": {"2": {"1": d["idle_follow_ms"]["2"]["1"]}}}  # a gap missing
    with pytest.raises(ValueError, match="idle_follow_ms.2: must have the idle gaps"):
        profiling.validate_profile(bad)
    assert d["memory_bytes"] > 0
    assert "torch" in d["hardware"] and "cores" in d["hardware"]
    print(f"\n{profiling.format_table(d)}\noverhead p50 {d['overhead_us']['p50']:.1f} us; "
          f"measured in {d['measure_s']:.1f} s")


def test_host_sharing_levels_beyond_its_cores_are_skipped_with_the_reason(short_profile):
    cores = len(os.sched_getaffinity(0))
    skipped = {s["level"]: s["reason"] for s in short_profile["skipped"] if "level" in s}
    assert set(skipped) == {level for level in (1, 2, 4) if level > cores}
    for reason in skipped.values():
        assert f"has {cores} usable" in reason
    assert any("skipped" in line for line in short_profile["_progress"]) == bool(skipped)


def test_each_cold_start_total_covers_the_sum_of_its_phases(short_profile):
    cold = short_profile["cold_start_ms"]
    assert set(cold) == set(profiling.PHASES)
    for i, total in enumerate(cold["total"]):
        phases = sum(cold[p][i] for p in profiling.PHASES if p != "total")
        print(f"\ncold start {i}: total {total:.1f} ms, phases {phases:.1f} ms")
        # The total is the parent's Popen -> ready; the phases are parts of it (a 1 ms clock tolerance).
        assert phases <= total + 1.0
        # ... and most of it: an unmeasured phase would show up as a gap here.
        assert phases >= 0.5 * total
        assert cold["import"][i] > 0 and cold["process_start"][i] > 0


def test_a_profile_round_trips_through_json_and_validation(short_profile):
    d = {k: v for k, v in short_profile.items() if k != "_progress"}
    back = json.loads(json.dumps(d))
    assert profiling.validate_profile(back) == d


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d.pop("service_ms"), "service_ms: missing"),
    (lambda d: d["service_ms"]["1"].pop("4"), "service_ms.1"),
    (lambda d: d["service_ms"]["1"]["2"].__setitem__(0, -1.0), r"service_ms.1.2\[0\]"),
    (lambda d: d["cold_start_ms"].pop("load"), "cold_start_ms.load"),
    (lambda d: d.__setitem__("version", 2), "version"),
    (lambda d: d.__setitem__("batch_sizes", [4, 1, 2]), "batch_sizes"),
    (lambda d: d["overhead_us"].__setitem__("p99", float("nan")), "overhead_us.p99"),
    (lambda d: d.__setitem__("created", "yesterday"), "created"),
])
def test_validation_names_the_bad_field(short_profile, change, field):
    d = copy.deepcopy({k: v for k, v in short_profile.items() if k != "_progress"})
    change(d)
    with pytest.raises(ValueError, match=field):
        profiling.validate_profile(d)


def test_the_reuse_key_fills_in_a_builtin_models_defaults_and_tells_devices_and_options_apart():
    key = profiling.profile_key("mlp-small", {}, None, "cpu")
    assert profiling.profile_key("mlp-small", {"hidden": 512}, [256], "cpu") == key
    assert profiling.profile_key("mlp-small", {"hidden": 256}, None, "cpu") != key
    assert profiling.profile_key("mlp-small", {}, None, "cuda:0") != key
    assert profiling.profile_key("cnn-small", {}, None, "cpu") != key


def test_batch_sizes_stop_doubling_where_the_memory_estimate_no_longer_fits():
    host = devices.resolve_device("cpu")
    sizes, why = profiling.plan_batch_sizes("transformer-small", {}, None, host, max_batch_size=64)
    assert sizes == [1, 2, 4, 8, 16, 32, 64] and why == "cap of 64"
    # A device with room for the process and batch 2 but not batch 4 (the estimate's own figures).
    budget_for = {k: zoo.estimate_memory_bytes("transformer-small", batch_size=k) for k in (2, 4)}
    assert budget_for[4] > budget_for[2]
    from workers.engine import PROCESS_OVERHEAD_BYTES
    from workers.platform import MEMORY_HEADROOM

    between = (budget_for[2] + budget_for[4]) / 2 + PROCESS_OVERHEAD_BYTES
    small = devices.DeviceInfo(name="cpu", kind="cpu", index=None, description="small", cores=2,
                               total_memory_bytes=int(between / MEMORY_HEADROOM))
    sizes, why = profiling.plan_batch_sizes("transformer-small", {}, None, small)
    assert sizes == [1, 2]
    assert why.startswith("batch 4 needs about")


def test_a_stop_request_ends_the_profile_before_any_instance_starts(tmp_path):
    with pytest.raises(profiling.ProfileStopped):
        profiling.measure_profile("mlp-small", model_dir=tmp_path, max_batch_size=1, samples=1, cold_starts=1,
                                  should_stop=lambda: True)


def test_a_measured_profile_drives_a_simulated_trial(short_profile, tmp_path):
    from workers.engine import run_trial
    from workers.spec import TrialSpec, parse_experiment

    d = {k: v for k, v in short_profile.items() if k != "_progress"}
    exp = parse_experiment({
        "name": "sim-from-profile", "device": "cpu", "slo": {"percentile": 99, "latency_ms": 100},
        "functions": [{"name": "f", "model": "mlp-small"}],
        "workload": {"pattern": "poisson", "rate_rps": 200, "duration_s": 5, "seed": 3},
        "variants": [{"name": "v", "min_instances": 0, "max_instances": 2, "sharing": "time_slice",
                      "batching": {"mode": "fixed", "max_batch_size": 4, "max_queue_delay_ms": 2}}]})

    summary = run_trial(TrialSpec(exp, exp.variants[0]), profiles=[d], model_dir=tmp_path).summary

    assert summary["completed"] == summary["requests"] > 0
    assert summary["cold_starts"] >= 1
    # Every request waited at least the fastest measured batch; the first ones waited for a measured cold start.
    fastest = min(min(xs) for cells in d["service_ms"].values() for xs in cells.values())
    assert summary["latency_ms"]["p50"] >= fastest
    assert summary["latency_ms"]["max"] >= min(d["cold_start_ms"]["total"])


def test_the_platform_overhead_has_an_idle_and_a_back_to_back_regime():
    # Three batches on one null instance (ms; its back-to-back round trip 0.1): the first finds it idle (sent 0,
    # started 0.03, done 0.2); the second was queued behind it (sent 0.1, started 0.23, 0.03 after the first's
    # completion); the third came to an idle instance again (sent 3.0, started 3.02, done 3.3). A failed one counts
    # for nothing.
    ms = 1e-3
    rows = {"outcome": [0, 0, 0, 1], "intended_s": [0.0, 0.05 * ms, 2.9 * ms, 4.0 * ms],
            "sent_s": [0.0, 0.1 * ms, 3.0 * ms, 4.0 * ms], "batch_start_s": [0.03 * ms, 0.23 * ms, 3.02 * ms, None],
            "completed_s": [0.2 * ms, 0.4 * ms, 3.3 * ms, None]}
    parts = profiling.platform_parts(rows, 0, null_service_ms=0.1)
    # completed - sent - 0.1 on an idle instance: the simulator starts such a batch the moment its request is sent,
    # so the overhead holds the real platform's path from the send to the batch's start (0.03 and 0.02 here) too
    assert parts["platform_overhead_ms"] == pytest.approx([0.1, 0.2])
    assert parts["platform_busy_overhead_ms"] == pytest.approx([0.03])
    assert parts["dispatch_lag_ms"] == pytest.approx([0.0, 0.05, 0.1])
    alone = profiling.platform_parts({k: v[:1] for k, v in rows.items()}, 0, null_service_ms=0.1)
    assert alone["platform_busy_overhead_ms"] == []  # nothing was queued: the simulator falls back to the idle one
