"""The spec validator: one set of rules and messages for spec files, the API and the pages."""

import copy

import pytest

from workers import spec as S

MODELS = ["mlp-small", "cnn-small", "transformer-small", "null"]

EXAMPLE = {
    "name": "classifier-poc", "device": "cpu",
    "slo": {"percentile": 99, "latency_ms": 50, "max_violation_rate": 0.01},
    "functions": [{"name": "classify", "model": "cnn-small"}],
    "workload": {"pattern": "poisson", "rate_rps": 200, "duration_s": 10, "seed": 7},
    "variants": [
        {"name": "dedicated", "sharing": "exclusive", "batching": {"mode": "none"},
         "min_instances": 1, "max_instances": 1},
        {"name": "batched", "sharing": "exclusive",
         "batching": {"mode": "fixed", "max_batch_size": 16, "max_queue_delay_ms": 4},
         "min_instances": 1, "max_instances": 1},
        {"name": "scale-to-zero", "sharing": "time_slice", "batching": {"mode": "none"},
         "min_instances": 0, "max_instances": 2, "keep_alive": {"policy": "fixed", "ttl_s": 1.0}}],
    "accelerator": "H100-80GB",
}


def parse(data):
    return S.parse_experiment(data, known_models=MODELS)


def errors_of(data) -> dict[str, list[str]]:
    with pytest.raises(S.SpecError) as info:
        parse(data)
    return info.value.by_path()


def with_change(path_fn):
    data = copy.deepcopy(EXAMPLE)
    path_fn(data)
    return data


def test_the_issue_example_parses_into_dataclasses():
    spec = parse(EXAMPLE)
    assert spec.name == "classifier-poc"
    assert spec.slo.percentile == 99.0 and spec.slo.latency_ms == 50.0
    assert [v.name for v in spec.variants] == ["dedicated", "batched", "scale-to-zero"]
    assert spec.variants[1].batching.max_batch_size == 16
    assert spec.variants[2].keep_alive.ttl_s == 1.0
    assert spec.workloads[0].run_s == 10.0


def test_export_then_parse_gives_the_same_spec():
    spec = parse(EXAMPLE)
    again = parse(spec.to_dict())
    assert again == spec
    assert again.to_dict() == spec.to_dict()


def test_batch_size_zero_names_the_field_path_and_the_rule():
    errs = errors_of(with_change(lambda d: d["variants"][1]["batching"].update(max_batch_size=0)))
    assert errs == {"variants[1].batching.max_batch_size": ["must be between 1 and 1024"]}


@pytest.mark.parametrize("change, path", [
    (lambda d: d["workload"].update(rate_rps=0), "workload.rate_rps"),
    (lambda d: d["workload"].update(rate_rps=-5), "workload.rate_rps"),
    (lambda d: d["workload"].update(rate_rps=1e9), "workload.rate_rps"),
    (lambda d: d["workload"].update(duration_s=0), "workload.duration_s"),
    (lambda d: d["workload"].update(duration_s=10**7), "workload.duration_s"),
    (lambda d: d["functions"][0].update(model="resnet-9000"), "functions[0].model"),
    (lambda d: d["slo"].update(percentile=97), "slo.percentile"),
    (lambda d: d["variants"][0].update(min_instances=3, max_instances=2), "variants[0].min_instances"),
    (lambda d: d["variants"][0].update(colour="blue"), "variants[0].colour"),
    (lambda d: d.update(extra=1), "extra"),
    (lambda d: d.update(device="tpu"), "device"),
    (lambda d: d["variants"].append(dict(d["variants"][0])), "variants[3].name"),
])
def test_bad_values_are_rejected_with_the_field_named(change, path):
    assert path in errors_of(with_change(change))


def test_every_problem_is_reported_at_once():
    def change(d):
        d["workload"]["rate_rps"] = 0
        d["variants"][1]["batching"]["max_batch_size"] = 0
        d["slo"]["percentile"] = 42

    assert set(errors_of(with_change(change))) == {
        "workload.rate_rps", "variants[1].batching.max_batch_size", "slo.percentile"}


def test_a_real_trial_longer_than_an_hour_is_refused_unless_compressed_a_simulated_one_is_not():
    day = {"pattern": "diurnal", "mean_rate_rps": 5, "peak_to_trough": 4, "duration_s": 86_400, "seed": 1}
    spec = parse(with_change(lambda d: d.update(workload=day)))  # a valid spec: a simulation covers a day
    errs = S.real_run_errors(spec)
    assert [e.path for e in errs] == ["workload.duration_s"] and "simulate it" in errs[0].message
    spec = parse(with_change(lambda d: d.update(workload={**day, "time_compression": 144})))
    assert spec.workloads[0].run_s == 600.0 and S.real_run_errors(spec) == []
    week = {**day, "duration_s": 86_400, "time_compression": 1}
    assert S.real_run_errors(parse(with_change(lambda d: d.update(workload={**week, "mean_rate_rps": 100}))))
    assert "workload.duration_s" in errors_of(with_change(lambda d: d.update(
        workload={**day, "pattern": "constant", "rate_rps": 1000, "duration_s": 86_400})))  # 86 M > sim limit


def test_steps_must_start_at_zero_and_increase():
    errs = errors_of(with_change(lambda d: d.update(
        workload={"pattern": "steps", "steps": [[1, 10], [1, 20]], "duration_s": 10})))
    assert "workload.steps[1]" in errs and "workload.steps[0]" in errs


def test_spatial_share_must_fit_the_device():
    errs = errors_of(with_change(lambda d: d["variants"][0].update(sharing="spatial", share=0.75, max_instances=2)))
    assert "variants[0].share" in errs


def test_share_only_applies_to_spatial():
    assert "variants[0].share" in errors_of(with_change(lambda d: d["variants"][0].update(share=0.5)))


def test_effective_share_defaults_to_an_equal_split():
    spec = parse(with_change(lambda d: d["variants"][0].update(sharing="spatial", max_instances=2, min_instances=1)))
    assert spec.variants[0].effective_share == 0.5
    assert spec.variants[1].effective_share == 1.0


def test_several_workloads_must_each_target_a_named_function():
    def change(d):
        d["functions"].append({"name": "embed", "model": "mlp-small"})
        del d["workload"]
        d["workloads"] = [{"pattern": "poisson", "rate_rps": 10, "duration_s": 5, "function": "classify"},
                          {"pattern": "poisson", "rate_rps": 10, "duration_s": 5, "function": "nope"}]

    assert "workloads[1].function" in errors_of(with_change(change))


def test_histogram_keep_alive_parameters_round_trip():
    ka = {"policy": "histogram", "ttl_s": 2, "bin_s": 0.5, "range_s": 60, "head_percentile": 5,
          "tail_percentile": 99, "min_samples": 10}
    spec = parse(with_change(lambda d: d["variants"][2].update(keep_alive=ka)))
    assert spec.variants[2].keep_alive.bin_s == 0.5
    assert parse(spec.to_dict()) == spec


def test_fixed_keep_alive_rejects_histogram_only_fields():
    errs = errors_of(with_change(lambda d: d["variants"][2].update(keep_alive={"policy": "fixed", "bin_s": 1})))
    assert "variants[2].keep_alive.bin_s" in errs


def test_a_non_object_spec_is_rejected_plainly():
    with pytest.raises(S.SpecError) as info:
        parse(["not", "an", "object"])
    assert "must be an object" in str(info.value)


# ---- runtime and the modelled platform delay -------------------------------------------------------------
def test_a_variant_runs_in_processes_with_no_modelled_delay_unless_told():
    v = parse(EXAMPLE).variants[0]
    assert (v.runtime, v.platform_delay_ms) == ("process", 0.0)
    assert v.isolation == "process" and v.platform_delay_label == "none: only what really ran"


def test_runtime_and_platform_delay_are_read_and_exported():
    spec = parse(with_change(lambda d: d["variants"][0].update(runtime="thread", platform_delay_ms=25_000)))
    v = spec.variants[0]
    assert (v.runtime, v.platform_delay_ms) == ("thread", 25_000.0)
    exported = spec.to_dict()["variants"][0]
    assert (exported["runtime"], exported["platform_delay_ms"]) == ("thread", 25_000.0)
    assert parse(spec.to_dict()) == spec


@pytest.mark.parametrize("change, path, message", [
    ({"runtime": "container"}, "variants[0].runtime", "must be one of: process, thread"),
    ({"platform_delay_ms": -1}, "variants[0].platform_delay_ms", "must be between 0 and 600000"),
    ({"platform_delay_ms": 600_001}, "variants[0].platform_delay_ms", "must be between 0 and 600000"),
    ({"platform_delay_ms": "2s"}, "variants[0].platform_delay_ms", "must be a number"),
    ({"sharing": "spatial", "runtime": "thread"}, "variants[0].runtime", "must be process for sharing spatial"),
])
def test_bad_runtime_and_platform_delay_values_name_the_field(change, path, message):
    errs = errors_of(with_change(lambda d: d["variants"][0].update(change)))
    assert any(m.startswith(message) for m in errs[path]), errs


@pytest.mark.parametrize("sharing, runtime, mechanism, level, label", [
    ("exclusive", "process", None, "process", "process"),
    ("exclusive", "thread", None, "none", "shared process, no isolation"),
    ("time_slice", "thread", "threads", "none", "shared process, no isolation"),
    ("time_slice", "process", None, "none", "own processes, time-sliced device, no isolation"),
    ("spatial", "process", "cpu-core-sets", "process", "process with a fixed share (cpu-core-sets)"),
    ("spatial", "process", "mps", "process", "process with a fixed share (mps)"),
    ("spatial", "process", "mig", "hardware partition", "hardware partition (MIG)"),
])
def test_isolation_says_what_separates_the_instances(sharing, runtime, mechanism, level, label):
    assert S.isolation_level(sharing, runtime, mechanism) == level
    assert S.isolation_label(sharing, runtime, mechanism) == label
    variant = S.VariantSpec(name="v", sharing=sharing, runtime=runtime)
    assert variant.isolation_label(mechanism) == label
    assert variant.isolation in S.ISOLATION_LEVELS


def test_platform_delay_labels_say_modelled_and_name_a_preset():
    assert S.platform_delay_label(0) == "none: only what really ran"
    assert S.platform_delay_label(2_000) == "modelled: +2 s per cold start (warm container pool, as of 2026-12-01)"
    assert S.platform_delay_label(1_500) == "modelled: +1.5 s per cold start"
    assert S.platform_delay_preset(25_000).key == "fresh-pull" and S.platform_delay_preset(1) is None
