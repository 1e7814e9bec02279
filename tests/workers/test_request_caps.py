"""Bounded resources for any input: a trial's requests are capped over all its workloads together, per-minute
trace counts cannot overflow into a huge allocation, and a refusal names the field before anything runs."""

from __future__ import annotations

import pytest

from workers import spec as S
from workers.spec import FunctionSpec, TraceSpec, WorkloadSpec
from workers.workload import TraceError, WorkloadError, generate_arrivals, parse_trace

HEADER = "HashOwner,HashApp,HashFunction,Trigger," + ",".join(str(m) for m in range(1, 1441))


def azure_row(counts: dict[int, int], fn: str = "f") -> str:
    return ",".join(["owner", "app", fn, "http", *(str(counts.get(m, 0)) for m in range(1, 1441))])


def test_per_minute_counts_that_would_wrap_an_int64_sum_are_refused_naming_the_minute():
    # 2**63 - 1 + 1 wraps to a negative total in int64: it slipped under the invocation cap, then the expansion
    # tried to allocate an array of that many arrivals.
    content = HEADER + "\n" + azure_row({1: 2**63 - 1, 2: 1})
    with pytest.raises(TraceError, match=r"line 2: minute 1 has 9,223,372,036,854,775,807 invocations"):
        parse_trace(content, "azure2019")


def test_a_count_beyond_int64_is_refused_not_crashed_on():
    content = HEADER + "\n" + azure_row({3: 2**64})
    with pytest.raises(TraceError, match=r"line 2: minute 3"):
        parse_trace(content, "azure2019")


def test_many_rows_of_large_counts_are_refused_before_they_add_up():
    content = "\n".join([HEADER] + [azure_row({1: 4_000_000_000}, fn=f"f{i}") for i in range(3)])
    with pytest.raises(TraceError, match="invocations"):
        parse_trace(content, "azure2019")


def workloads_of(n: int, rate_rps: float, duration_s: float, **extra) -> dict:
    return {
        "name": "many", "device": "cpu",
        "functions": [{"name": f"f{i}", "model": "mlp-small"} for i in range(n)],
        "workloads": [{"pattern": "constant", "rate_rps": rate_rps, "duration_s": duration_s, "function": f"f{i}",
                       **extra} for i in range(n)],
        "variants": [{"name": "v"}],
    }


def parse(data: dict) -> S.ExperimentSpec:
    return S.parse_experiment(data, known_models=["mlp-small"])


def test_a_real_run_is_capped_over_all_its_workloads_together():
    # 16 workloads x 20,000 req/s x 100 s = 32 M requests: each workload alone (2 M) is under the 5 M cap.
    spec = parse(workloads_of(16, 20_000, 100))
    errors = S.real_run_errors(spec)
    assert [e.path for e in errors] == ["workload"]
    assert "32,000,000 requests" in errors[0].message and f"{S.MAX_REQUESTS:,}" in errors[0].message


def test_workloads_that_fit_the_cap_together_can_run():
    assert S.real_run_errors(parse(workloads_of(16, 100, 3_000))) == []  # 4.8 M in all


def test_a_spec_is_capped_over_all_its_workloads_together_even_for_a_simulation():
    # 16 workloads x 20,000 req/s x 250 s = 80 M: each workload (5 M) is under the spec's cap of 50 M, and they
    # were accepted together before the cap counted all of them.
    with pytest.raises(S.SpecError) as info:
        parse(workloads_of(16, 20_000, 250))
    errors = info.value.by_path()
    assert list(errors) == ["workloads"]
    assert "80,000,000 requests" in errors["workloads"][0] and f"{S.MAX_SIM_REQUESTS:,}" in errors["workloads"][0]


def test_a_trace_workload_counts_its_invocations_inside_the_window_toward_a_real_run():
    trace = HEADER + "\n" + azure_row({m: 3_000 for m in range(1, 1001)})  # 3 M invocations over 1,000 minutes
    data = workloads_of(2, 100, 100)
    data["workloads"][0] = {"pattern": "trace", "trace_content": trace, "duration_s": 86_400, "function": "f0",
                            "time_compression": 100}
    data["workloads"][1] = {"pattern": "constant", "rate_rps": 10_000, "duration_s": 250, "function": "f1"}
    assert [e.path for e in S.real_run_errors(parse(data))] == ["workload"]  # 3 M + 2.5 M
    data["workloads"][0]["duration_s"] = 600  # only the first ten minutes: 30,000 invocations
    assert S.real_run_errors(parse(data)) == []


def test_arrival_generation_refuses_workloads_over_the_cap_together_before_generating_them():
    # Its own check (a spec that skipped validation): refused before any array is allocated.
    functions = [FunctionSpec(f"f{i}", "mlp-small") for i in range(64)]
    workloads = [WorkloadSpec(pattern="constant", params={"rate_rps": 20_000.0}, duration_s=100.0, function=f"f{i}")
                 for i in range(64)]
    with pytest.raises(WorkloadError, match=r"128,000,000 arrivals"):
        generate_arrivals(workloads, functions)


def test_arrival_generation_refuses_a_trace_over_the_invocation_cap():
    content = HEADER + "\n" + azure_row({m: 5_000 for m in range(1, 1441)})  # 7.2 M: over the parse cap
    w = WorkloadSpec(pattern="trace", params={}, duration_s=86_400.0, seed=1,
                     trace=TraceSpec(format="azure2019", content=content))
    with pytest.raises((WorkloadError, TraceError)):
        generate_arrivals([w], [FunctionSpec("f", "mlp-small")])
