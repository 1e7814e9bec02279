"""Sweeps: a grid of variant fields expands into ordinary variants, checked by the variant rules."""

import pytest

from workers import spec as S

MODELS = ["mlp-small", "null"]


def experiment(sweep: dict, variants: list | None = None) -> dict:
    data = {"name": "sweep", "device": "cpu", "functions": [{"name": "f", "model": "null"}],
            "workload": {"pattern": "constant", "rate_rps": 10, "duration_s": 30}, "sweep": sweep}
    if variants is not None:
        data["variants"] = variants
    return data


def parse(data):
    return S.parse_experiment(data, known_models=MODELS)


def errors_of(data) -> dict[str, list[str]]:
    with pytest.raises(S.SpecError) as info:
        parse(data)
    return info.value.by_path()


ISSUE_GRID = {"batching.max_batch_size": [1, 4, 8, 16, 32], "keep_alive.ttl_s": [0.5, 2, 10],
              "max_instances": [1, 2, 4]}


def test_the_issue_grid_makes_45_variants_with_names_that_say_their_settings():
    spec = parse(experiment({"grid": ISSUE_GRID}))
    names = [v.name for v in spec.variants]
    assert len(names) == 45 == spec.sweep.size
    assert names[:4] == ["b1-ttl0.5-i1", "b1-ttl0.5-i2", "b1-ttl0.5-i4", "b1-ttl2-i1"]  # last axis fastest
    v = spec.variants[names.index("b4-ttl2-i2")]
    assert (v.batching.mode, v.batching.max_batch_size, v.keep_alive.ttl_s, v.max_instances) == ("fixed", 4, 2.0, 2)
    # everything the grid does not set is the table's default
    assert v.target_concurrency == S.DEFAULTS["variant.target_concurrency"] and v.repeats == 1


def test_expansion_is_deterministic():
    assert parse(experiment({"grid": ISSUE_GRID})) == parse(experiment({"grid": ISSUE_GRID}))


def test_a_base_variant_gives_the_fields_the_grid_does_not_set_and_still_runs_itself():
    base = {"name": "batched", "batching": {"mode": "adaptive", "max_batch_size": 8, "shed": True},
            "min_instances": 0, "max_instances": 2, "repeats": 3}
    spec = parse(experiment({"base": "batched", "prefix": "ad", "grid": {"keep_alive.ttl_s": [1, 5]}}, [base]))
    assert [v.name for v in spec.variants] == ["batched", "ad-ttl1", "ad-ttl5"]
    for v in spec.variants[1:]:
        assert (v.batching.mode, v.batching.shed, v.min_instances, v.repeats) == ("adaptive", True, 0, 3)


def test_choice_axes_name_variants_by_their_value():
    spec = parse(experiment({"grid": {"sharing": ["exclusive", "time_slice"], "max_instances": [2]}}))
    assert [v.name for v in spec.variants] == ["i2-exclusive", "i2-time_slice"]


def test_an_invalid_grid_value_is_refused_naming_the_field_and_the_value():
    errs = errors_of(experiment({"grid": {"batching.max_batch_size": [4, 2000], "keep_alive.ttl_s": [-1, 2]}}))
    assert errs == {"sweep.grid.batching.max_batch_size[1]": ["2000 is not allowed: must be between 1 and 1024"],
                    "sweep.grid.keep_alive.ttl_s[0]": ["-1 is not allowed: must be between 0 and 86400"]}


def test_a_field_that_is_not_a_variant_setting_is_refused():
    errs = errors_of(experiment({"grid": {"repeats": [1, 2], "colour": ["red"]}}))
    assert set(errs) == {"sweep.grid.repeats", "sweep.grid.colour"}
    assert "not a variant field a sweep can vary" in errs["sweep.grid.colour"][0]


def test_a_combination_that_breaks_a_variant_rule_is_refused_with_its_generated_name():
    errs = errors_of(experiment({"grid": {"min_instances": [1, 3], "max_instances": [2]}}))
    assert errs == {"sweep[i2-min3].min_instances": ["must be at most max_instances (2)"]}


def test_an_oversized_grid_is_refused_with_its_count_before_anything_is_expanded(monkeypatch):
    grid = {"batching.max_batch_size": list(range(1, 65)), "max_instances": list(range(1, 65)),
            "target_concurrency": list(range(1, 65))}
    checked = []
    real = S.parse_variant
    monkeypatch.setattr(S, "parse_variant", lambda *a, **k: checked.append(a[1]) or real(*a, **k))
    errs = errors_of(experiment({"grid": grid}))
    assert errs == {"sweep.grid": ["makes 262,144 variants (64 x 64 x 64); at most 256 in one experiment"]}
    assert checked == []  # not one of the 262,144 combinations was built
    parse(experiment({"grid": {"max_instances": [1, 2]}}))
    assert checked == ["sweep[i1]", "sweep[i2]"]  # the counter does see the variants of a sweep that fits


def test_the_limit_counts_the_listed_variants_too():
    listed = [{"name": f"v{i}"} for i in range(10)]
    errs = errors_of(experiment({"grid": {"batching.max_batch_size": list(range(1, 51)),
                                          "max_instances": [1, 2, 3, 4, 5]}}, listed))
    assert errs["sweep.grid"] == ["makes 250 variants (50 x 5) plus 10 listed in variants; at most 256 in one "
                                  "experiment"]


def test_a_base_that_is_not_a_listed_variant_is_refused():
    assert "sweep.base" in errors_of(experiment({"base": "nope", "grid": {"max_instances": [1]}}))


def test_a_generated_name_that_clashes_with_a_listed_variant_is_refused():
    errs = errors_of(experiment({"grid": {"max_instances": [1, 2]}}, [{"name": "i2"}]))
    assert list(errs) == ["sweep[i2]"]


def test_without_a_sweep_variants_are_still_required():
    data = experiment({"grid": {"max_instances": [1]}})
    del data["sweep"]
    assert errors_of(data) == {"variants": ["is required"]}


def test_the_canonical_dict_keeps_the_grid_not_the_expansion_and_parses_back_to_the_same_spec():
    spec = parse(experiment({"prefix": "s", "grid": ISSUE_GRID}, [{"name": "dedicated"}]))
    out = S.experiment_to_dict(spec)
    assert [v["name"] for v in out["variants"]] == ["dedicated"]
    assert out["sweep"] == {"prefix": "s", "grid": {"batching.max_batch_size": [1, 4, 8, 16, 32],
                                                    "keep_alive.ttl_s": [0.5, 2.0, 10.0], "max_instances": [1, 2, 4]}}
    assert parse(out) == spec


def test_the_run_plan_counts_variants_trials_and_workload_time_before_running():
    spec = parse(experiment({"grid": ISSUE_GRID}))
    plan = S.run_plan(spec)
    assert (plan.variants, plan.trials, plan.trial_run_s, plan.total_run_s) == (45, 45, 30.0, 1350.0)
    assert S.run_plan(spec, repeats=3).trials == 135
    assert plan.run_s_on(4) == 12 * 30.0  # 45 trials on 4 devices: 12 rounds
    assert S.duration_text(plan.total_run_s) == "22 min"


def test_sweep_problems_are_reported_with_problems_elsewhere_in_the_spec():
    data = experiment({"grid": {"max_instances": [0]}})
    data["workload"]["rate_rps"] = -1
    assert set(errors_of(data)) == {"workload.rate_rps", "sweep.grid.max_instances[0]"}
