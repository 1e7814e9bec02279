"""Selectors: who sees what (outsiders get 404), the status of a run, and the one shape of a trial's figures."""

import datetime
import uuid

import pytest
from django.http import Http404
from django.utils import timezone

from controlplane.experiments import selectors, services
from controlplane.experiments.models import Trial, TrialWindow

pytestmark = pytest.mark.django_db


@pytest.fixture
def experiment(user, spec_data):
    return services.experiment_import(owner=user, data=spec_data)


def set_status(trials, *statuses):
    for trial, status in zip(trials, statuses, strict=True):
        Trial.objects.filter(pk=trial.pk).update(status=status)


SUMMARY = {
    "requests": 100, "completed": 97, "dropped": 2, "errors": 1,
    "latency_ms": {"p50": 4.0, "p90": 8.0, "p95": 9.5, "p99": 20.0, "p999": 31.0, "max": 40.0, "mean": 5.1},
    "slo_percentile_ms": 20.0, "slo_percentile_ci_ms": [18.0, 23.0], "violation_rate": 0.004, "slo_met": True,
    "slo_reasons": [], "throughput_rps": 19.4, "goodput_rps": 19.3, "cold_starts": 1,
    "cold_start_ms": {"p50": 250.0, "max": 250.0}, "prestarts": 1, "mean_batch_size": 1.0,
    "cost": {"serverless_usd": 0.01, "provisioned_usd": 0.02, "serverless_per_1k_usd": 0.1,
             "provisioned_per_1k_usd": 0.2, "serverless_per_1k_good_usd": 0.11, "provisioned_per_1k_good_usd": 0.21,
             "monthly_serverless_usd": 12.0, "monthly_provisioned_usd": 24.0, "price": {"name": "cpu"}},
    "hardware": {"device_name": "cpu", "on_cpu": True, "torch_version": "2.13.0", "sharing_mechanism": "threads"},
    "device": "cpu", "variant": "dedicated", "repeat": 0, "run_s": 5.0, "simulated": False, "notes": [],
}


# ---- access -------------------------------------------------------------------------------------------------
def test_the_owner_gets_their_experiment_by_code(user, experiment):
    assert selectors.experiment_get_for(user=user, code=experiment.code) == experiment
    assert selectors.experiment_get_for(user=user, code=str(experiment.code)) == experiment


@pytest.mark.parametrize("code", ["not-a-uuid", str(uuid.uuid4()), None, 42])
def test_an_unknown_or_malformed_code_is_not_found(user, experiment, code):
    with pytest.raises(Http404):
        selectors.experiment_get_for(user=user, code=code)


def test_an_outsider_gets_not_found_for_someone_elses_experiment_and_trial(other_user, experiment, user):
    trial = services.experiment_run(experiment=experiment, user=user)[0]
    with pytest.raises(Http404):
        selectors.experiment_get_for(user=other_user, code=experiment.code)
    with pytest.raises(Http404):
        selectors.trial_get_for(user=other_user, code=trial.code)


def test_an_anonymous_user_gets_not_found(experiment):
    from django.contrib.auth.models import AnonymousUser

    with pytest.raises(Http404):
        selectors.experiment_get_for(user=AnonymousUser(), code=experiment.code)
    assert list(selectors.experiment_list_for(user=AnonymousUser())) == []


def test_the_owner_gets_their_trial_by_code(user, experiment):
    trial = services.experiment_run(experiment=experiment, user=user)[0]
    assert selectors.trial_get_for(user=user, code=str(trial.code)) == trial


def test_the_list_holds_only_the_users_experiments(user, other_user, spec_data, experiment):
    services.experiment_import(owner=other_user, data=spec_data)
    assert list(selectors.experiment_list_for(user=user)) == [experiment]


# ---- status -------------------------------------------------------------------------------------------------
def test_an_experiment_never_run_is_a_draft(experiment):
    assert selectors.experiment_status(experiment) == "draft"


@pytest.mark.parametrize("statuses,expected", [
    (("queued", "queued", "queued"), "queued"),
    (("running", "queued", "queued"), "running"),
    (("succeeded", "queued", "queued"), "running"),  # between two trials of the run
    (("succeeded", "succeeded", "succeeded"), "finished"),
    (("succeeded", "failed", "cancelled"), "failed"),
    (("succeeded", "cancelled", "cancelled"), "cancelled"),
])
def test_the_status_adds_up_the_latest_runs_trials(user, experiment, statuses, expected):
    set_status(services.experiment_run(experiment=experiment, user=user), *statuses)
    assert selectors.experiment_status(experiment) == expected
    listed = selectors.experiment_list_for(user=user).get()
    assert listed.run_status == expected


def test_only_the_latest_run_counts_for_the_status(user, experiment):
    set_status(services.experiment_run(experiment=experiment, user=user), "failed", "failed", "failed")
    services.experiment_run(experiment=experiment, user=user, variant_names=["dedicated"])
    assert selectors.experiment_status(experiment) == "queued"


def test_the_list_is_annotated_with_the_latest_runs_counts(user, experiment, spec_data):
    draft = services.experiment_import(owner=user, data=spec_data)
    set_status(services.experiment_run(experiment=experiment, user=user), "failed", "failed", "failed")
    set_status(services.experiment_run(experiment=experiment, user=user), "running", "succeeded", "queued")
    rows = {e.pk: e for e in selectors.experiment_list_for(user=user)}
    e = rows[experiment.pk]
    assert (e.latest_run, e.trial_count) == (2, 6)
    assert (e.queued_count, e.running_count, e.succeeded_count, e.failed_count, e.cancelled_count) == (1, 1, 1, 0, 0)
    d = rows[draft.pk]
    assert (d.latest_run, d.trial_count, d.queued_count, d.run_status) == (None, 0, 0, "draft")


def test_the_list_is_most_recently_changed_first(user, spec_data):
    a = services.experiment_import(owner=user, data=spec_data)
    b = services.experiment_import(owner=user, data=spec_data)
    services.experiment_import(owner=user, data=spec_data, experiment=a)
    assert [e.pk for e in selectors.experiment_list_for(user=user)] == [a.pk, b.pk]


def test_listing_many_experiments_takes_one_query(user, spec_data, django_assert_num_queries):
    for _ in range(5):
        experiment = services.experiment_import(owner=user, data=spec_data)
        services.experiment_run(experiment=experiment, user=user)
    with django_assert_num_queries(1):
        rows = [(e.name, e.accelerator.name, e.run_status, e.latest_run) for e in selectors.experiment_list_for(user=user)]
    assert len(rows) == 5


# ---- figures ------------------------------------------------------------------------------------------------
def test_a_trial_without_a_summary_has_none_for_every_figure(user, experiment):
    trial = services.experiment_run(experiment=experiment, user=user)[0]
    row = selectors.trial_result_row(trial)
    assert (row["trial"], row["variant"], row["repeat"], row["run_number"], row["status"]) == (
        str(trial.code), "dedicated", 0, 1, "queued")
    assert row["requests"] is None and row["slo_met"] is None and row["hardware"] is None
    assert set(row["latency_ms"]) == {"p50", "p90", "p95", "p99", "p999", "max", "mean"}
    assert all(v is None for v in row["latency_ms"].values())
    assert all(v is None for v in row["cost"].values())
    assert row["started_at"] is None and row["error"] is None and row["device"] is None


def test_a_finished_trial_row_carries_the_summarys_figures(user, experiment):
    trial = services.experiment_run(experiment=experiment, user=user)[0]
    started = timezone.now() - datetime.timedelta(seconds=6)
    Trial.objects.filter(pk=trial.pk).update(status="succeeded", summary=SUMMARY, device="cpu", started_at=started,
                                             finished_at=timezone.now())
    trial.refresh_from_db()
    row = selectors.trial_result_row(trial)
    assert row["latency_ms"] == SUMMARY["latency_ms"]
    assert row["cold_start_ms"] == {"p50": 250.0, "max": 250.0}
    assert row["cost"] == {k: SUMMARY["cost"].get(k) for k in selectors.COST_KEYS}  # totals and price stay out
    assert (row["requests"], row["completed"], row["dropped"], row["errors"]) == (100, 97, 2, 1)
    assert (row["slo_met"], row["violation_rate"], row["slo_percentile_ci_ms"]) == (True, 0.004, [18.0, 23.0])
    assert (row["throughput_rps"], row["goodput_rps"], row["mean_batch_size"]) == (19.4, 19.3, 1.0)
    assert row["simulated"] is False and row["hardware"]["torch_version"] == "2.13.0"
    assert row["started_at"] == started.isoformat() and row["device"] == "cpu"


def test_the_row_has_exactly_the_documented_keys(user, experiment):
    trial = services.experiment_run(experiment=experiment, user=user)[0]
    assert list(selectors.trial_result_row(trial)) == [
        "trial", "variant", "repeat", "run_number", "status", "device", "device_id", "error", "run_s", "expected_requests",
        "requests", "completed", "dropped", "errors", "latency_ms", "latency_completed_ms", "unfinished", "slo_percentile_ci_ms", "slo_met",
        "slo_verdict", "violation_rate", "throughput_rps", "goodput_rps", "drain_s", "completed_in_drain",
        "cold_starts", "cold_start_ms", "mean_batch_size", "cost", "cold_start_phases_ms", "prewarms",
        "requests_paid_cold_start", "dispatch", "notes", "time_compression", "runtime", "isolation",
        "platform_delay_ms", "simulated", "simulation", "hardware", "started_at", "finished_at"]


def test_the_row_says_how_the_run_was_made_and_what_it_noticed(user, experiment):
    trial = services.experiment_run(experiment=experiment, user=user)[0]
    summary = {**SUMMARY, "notes": ["the dispatcher fell behind: worst lag 12.0 ms (threshold 5 ms)"],
               "dispatch": {"behind": True, "lag_p99_us": 800.0, "lag_max_us": 12000.0, "behind_threshold_us": 5000.0,
                            "sent": 100, "priority": "nice"},
               "prewarms": 2, "requests_paid_cold_start": 3, "time_compression": 10.0, "runtime": "thread",
               "isolation": "shared process, no isolation", "platform_delay_ms": {"value": 2000.0, "modelled": True},
               "cold_start_phases_ms": {"count": 1, "import": 1600.0, "total": 1800.0, "modelled": ["x"]}}
    Trial.objects.filter(pk=trial.pk).update(status="succeeded", summary=summary)
    trial.refresh_from_db()
    row = selectors.trial_result_row(trial)
    assert row["notes"] == summary["notes"]
    assert row["dispatch"] == {"behind": True, "lag_p99_us": 800.0, "lag_max_us": 12000.0,
                               "behind_threshold_us": 5000.0}
    assert (row["prewarms"], row["requests_paid_cold_start"]) == (2, 3)
    assert (row["time_compression"], row["runtime"], row["isolation"]) == (10.0, "thread",
                                                                           "shared process, no isolation")
    assert row["platform_delay_ms"] == 2000.0
    assert row["cold_start_phases_ms"]["import"] == 1600.0 and row["cold_start_phases_ms"]["process_start"] is None


def test_results_are_the_latest_run_in_the_runs_variant_order(user, experiment, spec_data):
    services.experiment_run(experiment=experiment, user=user)
    services.experiment_run(experiment=experiment, user=user, repeats=2)
    # Reorder the variants after the run: the results keep the order the run was queued with.
    spec_data["variants"].reverse()
    services.experiment_import(owner=user, data=spec_data, experiment=experiment)
    rows = selectors.experiment_results(experiment=experiment)
    assert [(r["variant"], r["repeat"], r["run_number"]) for r in rows] == [
        ("dedicated", 0, 2), ("dedicated", 1, 2), ("batched", 0, 2), ("batched", 1, 2)]
    first = selectors.experiment_results(experiment=experiment, run_number=1)
    assert [(r["variant"], r["repeat"]) for r in first] == [("dedicated", 0), ("batched", 0), ("batched", 1)]
    assert selectors.experiment_results(experiment=experiment, run_number=9) == []
    assert selectors.experiment_runs(experiment=experiment) == [2, 1]


def test_an_experiment_never_run_has_no_results(experiment):
    assert selectors.experiment_results(experiment=experiment) == []


def test_windows_come_oldest_first_and_can_be_fetched_incrementally(user, experiment):
    trial = services.experiment_run(experiment=experiment, user=user)[0]
    for i in (2, 0, 1):
        TrialWindow.objects.create(trial=trial, index=i, t_s=float(i + 1), data={"offered_rps": 10 * i, "p99_ms": None})
    windows = selectors.trial_windows(trial)
    assert [(w["index"], w["t_s"], w["offered_rps"]) for w in windows] == [(0, 1.0, 0), (1, 2.0, 10), (2, 3.0, 20)]
    assert [w["index"] for w in selectors.trial_windows(trial, after_index=0)] == [1, 2]


def test_the_catalogues_list_prices_and_zoo_models():
    assert "H100-80GB" in [p.name for p in selectors.price_list()]
    models = {m["key"]: m["default_input_shape"] for m in selectors.model_list()}
    assert models["cnn-small"] == [3, 32, 32]


def test_a_row_carries_the_three_way_verdict_and_what_did_not_finish(user, experiment):
    trial = services.experiment_run(experiment=experiment, user=user)[0]
    summary = dict(SUMMARY, latency_ms=dict(SUMMARY["latency_ms"], p99=None, p999=None, max=None, mean=None,
                                            unfinished=3, unfinished_share=0.03),
                   latency_completed_ms=SUMMARY["latency_ms"], slo_percentile_ci_ms=[18.0, None], slo_met=False,
                   slo_verdict={"verdict": "not_met", "reasons": ["p99 latency beyond the run"]},
                   drain_s=1.5, completed_in_drain=4)
    Trial.objects.filter(pk=trial.pk).update(status="succeeded", summary=summary)
    trial.refresh_from_db()
    row = selectors.trial_result_row(trial)
    assert row["slo_verdict"] == {"verdict": "not_met", "reasons": ["p99 latency beyond the run"]}
    assert row["latency_ms"]["p99"] is None and row["unfinished"] == 3 and "unfinished" not in row["latency_ms"]
    assert row["latency_completed_ms"] == SUMMARY["latency_ms"] and row["slo_percentile_ci_ms"] == [18.0, None]
    assert (row["slo_met"], row["drain_s"], row["completed_in_drain"]) == (False, 1.5, 4)


def test_a_summary_stored_before_the_verdict_existed_gets_one_from_slo_met(user, experiment):
    trial = services.experiment_run(experiment=experiment, user=user)[0]
    Trial.objects.filter(pk=trial.pk).update(status="succeeded", summary=dict(SUMMARY, slo_met=False,
                                                                              slo_reasons=["too slow"]))
    trial.refresh_from_db()
    row = selectors.trial_result_row(trial)
    assert row["slo_verdict"] == {"verdict": "not_met", "reasons": ["too slow"]}
    # Its latency_ms was over completed requests only: that is what it shows as such.
    assert row["latency_completed_ms"] == SUMMARY["latency_ms"] and row["unfinished"] is None
    assert row["drain_s"] is None and row["completed_in_drain"] is None
