"""The database refuses rows the engine would reject, whatever path (admin, shell, a bug) writes them."""

import datetime

import pytest
from django.db import IntegrityError, transaction

from controlplane.experiments.models import (
    Experiment,
    Function,
    PriceEntry,
    RunSpec,
    SLOTarget,
    Trial,
    TrialWindow,
    Variant,
    Workload,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def experiment(user):
    return Experiment.objects.create(owner=user, name="e", device="cpu")


def refused(make) -> bool:
    """True when the database raises IntegrityError for the row `make` writes (and nothing is kept)."""
    try:
        with transaction.atomic():
            make()
    except IntegrityError:
        return True
    return False


def test_the_seeded_price_catalogue_is_there_with_dates_and_sources():
    names = set(PriceEntry.objects.values_list("name", flat=True))
    assert {"H100-80GB", "A100-80GB", "L4-24GB", "cpu"} <= names
    assert all(p.as_of and p.source for p in PriceEntry.objects.all())


def test_a_negative_price_is_refused():
    assert refused(lambda: PriceEntry.objects.create(
        name="x", accelerator="x", on_demand_usd_per_h=-1, serverless_usd_per_s=0,
        as_of=datetime.date(2026, 1, 1), source="s"))


def test_a_zero_billing_granularity_is_refused():
    assert refused(lambda: PriceEntry.objects.create(
        name="x", accelerator="x", on_demand_usd_per_h=1, serverless_usd_per_s=0, granularity_s=0,
        as_of=datetime.date(2026, 1, 1), source="s"))


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:123", "CPU", ""])
def test_an_unknown_device_is_refused(user, device):
    assert refused(lambda: Experiment.objects.create(owner=user, name="e", device=device))


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:15"])
def test_known_devices_are_accepted(user, device):
    assert not refused(lambda: Experiment.objects.create(owner=user, name="e", device=device))


def test_an_experiment_gets_a_unique_uuid_code(user):
    a = Experiment.objects.create(owner=user, name="a")
    b = Experiment.objects.create(owner=user, name="b")
    assert a.code and b.code and a.code != b.code


@pytest.mark.parametrize("percentile", [98.0, 0.0, 100.0, 99.99])
def test_an_slo_percentile_outside_the_list_is_refused(experiment, percentile):
    assert refused(lambda: SLOTarget.objects.create(experiment=experiment, percentile=percentile, latency_ms=10))


@pytest.mark.parametrize("fields", [{"latency_ms": 0}, {"latency_ms": 600_001}, {"max_violation_rate": 1.5},
                                    {"max_violation_rate": -0.1}, {"min_throughput_rps": 0}])
def test_slo_numbers_out_of_bounds_are_refused(experiment, fields):
    kwargs = {"percentile": 99.0, "latency_ms": 50.0, **fields}
    assert refused(lambda: SLOTarget.objects.create(experiment=experiment, **kwargs))


def test_two_functions_of_one_experiment_cannot_share_a_name(experiment):
    Function.objects.create(experiment=experiment, name="f", model_key="null")
    assert refused(lambda: Function.objects.create(experiment=experiment, name="f", model_key="null"))


def test_a_function_weight_of_zero_is_refused(experiment):
    assert refused(lambda: Function.objects.create(experiment=experiment, name="f", model_key="null", weight=0))


@pytest.mark.parametrize("fields", [{"duration_s": 0}, {"duration_s": 86_401}, {"time_compression": 0.5},
                                    {"seed": -1}, {"pattern": "sawtooth"}])
def test_workload_values_out_of_bounds_are_refused(experiment, fields):
    kwargs = {"pattern": "constant", "params": {"rate_rps": 1}, "duration_s": 10, **fields}
    assert refused(lambda: Workload.objects.create(experiment=experiment, **kwargs))


def test_a_trace_workload_without_a_stored_file_is_refused(experiment):
    assert refused(lambda: Workload.objects.create(experiment=experiment, pattern="trace", duration_s=60,
                                                   trace_format="azure2019"))


def make_variant(experiment, **fields):
    return Variant.objects.create(experiment=experiment, name=fields.pop("name", "v"), **fields)


@pytest.mark.parametrize("fields", [
    {"max_batch_size": 0}, {"max_batch_size": 1025},
    {"min_instances": 3, "max_instances": 2}, {"max_instances": 0, "min_instances": 0}, {"max_instances": 65},
    {"max_queue_delay_ms": -1}, {"max_queue_delay_ms": 10_001}, {"target_concurrency": 0},
    {"keep_alive_ttl_s": -1}, {"repeats": 0}, {"repeats": 21}, {"share": 0}, {"share": 1.5},
    {"runtime": "container"}, {"runtime": ""}, {"sharing": "spatial", "runtime": "thread"},
    {"platform_delay_ms": -1}, {"platform_delay_ms": 600_001},
])
def test_variant_values_out_of_bounds_are_refused(experiment, fields):
    assert refused(lambda: make_variant(experiment, **fields))


def test_the_same_variant_name_twice_in_one_experiment_is_refused(experiment):
    make_variant(experiment, name="v")
    assert refused(lambda: make_variant(experiment, name="v"))


def test_the_same_variant_name_in_two_experiments_is_fine(experiment, user):
    other = Experiment.objects.create(owner=user, name="other")
    make_variant(experiment, name="v")
    assert not refused(lambda: make_variant(other, name="v"))


def test_a_variant_row_turns_into_its_spec(experiment):
    v = make_variant(experiment, batching_mode="fixed", max_batch_size=8, max_queue_delay_ms=2.5,
                     min_instances=0, max_instances=3, keep_alive_policy="histogram", keep_alive_ttl_s=5,
                     keep_alive_params={"bin_s": 0.5, "range_s": 30, "head_percentile": 5, "tail_percentile": 99,
                                        "min_samples": 4})
    spec = v.to_spec()
    assert spec.batching.max_batch_size == 8 and spec.batching.max_queue_delay_ms == 2.5
    assert spec.keep_alive.policy == "histogram" and spec.keep_alive.bin_s == 0.5
    assert (spec.min_instances, spec.max_instances) == (0, 3)


def test_a_new_variant_row_runs_in_processes_with_no_modelled_delay(experiment):
    spec = make_variant(experiment).to_spec()
    assert (spec.runtime, spec.platform_delay_ms, spec.batching.max_batch_size) == ("process", 0.0, 1)


@pytest.mark.parametrize("fields", [
    {"runtime": "thread", "sharing": "time_slice", "platform_delay_ms": 25_000},
    {"runtime": "process", "sharing": "spatial", "share": 0.5, "max_instances": 2, "platform_delay_ms": 600_000},
])
def test_runtime_and_platform_delay_are_stored_and_read_back(experiment, fields):
    spec = make_variant(experiment, **fields).to_spec()
    assert (spec.runtime, spec.sharing, spec.platform_delay_ms) == (fields["runtime"], fields["sharing"],
                                                                     fields["platform_delay_ms"])


def test_spec_fields_and_to_spec_are_each_others_reverse(experiment):
    from workers import spec as S

    spec = S.parse_variant({"name": "v", "runtime": "thread", "sharing": "time_slice", "platform_delay_ms": 2_000,
                            "min_instances": 0, "max_instances": 3,
                            "batching": {"mode": "adaptive", "max_batch_size": 16, "shed": True},
                            "keep_alive": {"policy": "histogram", "ttl_s": 5, "bin_s": 0.5, "range_s": 30}},
                           "variants[0]")
    row = Variant.objects.create(experiment=experiment, name=spec.name, **Variant.spec_fields(spec))
    row.refresh_from_db()
    assert row.to_spec() == spec


def make_trial(experiment, **fields):
    # A bare experiment has no valid spec to freeze: an empty one, as rows made outside the services may hold.
    run_spec, _ = RunSpec.objects.get_or_create(experiment=experiment, sha256="0" * 64,
                                                defaults={"size_bytes": 2, "spec": {}})
    kwargs = {"variant_name": "v", "run_number": 1, "repeat": 0, "run_spec": run_spec, "run_s": 1.0,
              "expected_requests": 1.0, "time_limit_s": 901.0, **fields}
    return Trial.objects.create(experiment=experiment, **kwargs)


def test_a_trial_status_outside_the_list_is_refused(experiment):
    assert refused(lambda: make_trial(experiment, status="paused"))


def test_one_run_cannot_hold_the_same_variant_repeat_twice(experiment):
    make_trial(experiment)
    assert refused(lambda: make_trial(experiment))
    assert not refused(lambda: make_trial(experiment, repeat=1))
    assert not refused(lambda: make_trial(experiment, run_number=2))


def test_a_trial_keeps_its_variant_name_when_the_variant_is_deleted(experiment):
    v = make_variant(experiment, name="v")
    t = make_trial(experiment, variant=v)
    v.delete()
    t.refresh_from_db()
    assert t.variant is None and t.variant_name == "v"


def test_a_trial_cannot_have_two_windows_for_the_same_second(experiment):
    t = make_trial(experiment)
    TrialWindow.objects.create(trial=t, index=0, t_s=0, data={})
    assert refused(lambda: TrialWindow.objects.create(trial=t, index=0, t_s=0, data={}))


def test_a_price_entry_used_by_an_experiment_cannot_be_deleted(user):
    price = PriceEntry.objects.get(name="cpu")
    Experiment.objects.create(owner=user, name="e", accelerator=price)
    from django.db.models import ProtectedError

    with pytest.raises(ProtectedError):
        price.delete()
