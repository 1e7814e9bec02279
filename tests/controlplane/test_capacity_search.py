"""Capacity searches in the control plane (controlplane.experiments.capacity): a simulated search started through the
API and run by a real Celery worker (the `sim` queue), its probes stored as trials of "<name> capacity <variant>",
its result on the comparison (the "capacity at SLO" column and the knee chart) and in the reports; the options
checked with the field named; cancelling a queued and a running search."""

from __future__ import annotations

import csv
import io
import time

import pytest
from django.test import Client

from controlplane.experiments import capacity, comparison, services
from controlplane.experiments.models import CapacitySearch, Experiment, Trial
from controlplane.experiments.reports import tabular
from controlplane.experiments.reports.charts import report_charts
from tests.controlplane.test_profiles import stored


def _spec(spec_data: dict) -> dict:
    # M/D/1-like: 10 ms per request on one instance, p99 <= 100 ms: the knee lies near 70-80 req/s
    spec_data.pop("accelerator", None)  # transactional tests start without the seeded catalogue
    spec_data["slo"] = {"percentile": 99, "latency_ms": 100}
    spec_data["workload"] = {"pattern": "poisson", "rate_rps": 10, "duration_s": 10, "seed": 3}
    spec_data["variants"] = [{"name": "one", "sharing": "time_slice", "min_instances": 1, "max_instances": 1},
                             {"name": "other", "min_instances": 1, "max_instances": 1}]
    return spec_data


def _client(user) -> Client:
    c = Client()
    c.force_login(user)
    return c


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_a_simulated_search_started_through_the_api_runs_on_a_celery_worker_and_shows_on_the_comparison(
        spec_data, user, tmp_path, settings):
    import uuid

    import redis

    from controlplane.experiments.management.commands.worker import sim_worker_argv
    from tests import processes
    from tests.conftest import TEST_REDIS_URL

    prefix = f"slsbench-cap-{uuid.uuid4().hex[:8]}"
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.REDIS_URL = settings.CELERY_BROKER_URL = TEST_REDIS_URL
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {**settings.CELERY_BROKER_TRANSPORT_OPTIONS,
                                                "global_keyprefix": f"{prefix}:"}
    stored(model="mlp-small", service_ms=10.0)
    experiment = services.experiment_import(owner=user, data=_spec(spec_data))
    run = services.experiment_run(experiment=experiment, user=user, enqueue=False, simulate={})  # the page's rows
    client = _client(user)
    env = processes.subprocess_env(redis_url=TEST_REDIS_URL, channels_prefix=prefix, media_root=settings.MEDIA_ROOT)
    proc = processes.start(sim_worker_argv(prefix, 1) + ["--without-gossip", "--without-mingle", "--without-heartbeat"],
                           env, tmp_path / "sim-worker.log")
    try:
        processes.wait_for(lambda: " ready." in processes.log_text(proc), 90, "the simulation worker", proc)
        for t in run:
            from workers.tasks import execute_trial

            with execute_trial.app.connection_for_write(TEST_REDIS_URL, transport_options={
                    "global_keyprefix": f"{prefix}:"}) as conn:
                execute_trial.apply_async(args=[t.id], queue=services.SIM_QUEUE, connection=conn)
        response = client.post(f"/api/experiments/{experiment.code}/capacity/", {
            "variant": "one", "simulated": True, "budget": 6, "probe_s": 10, "tolerance": 0.2},
            content_type="application/json")
        assert response.status_code == 202, response.content
        body = response.json()
        assert body["status"] == "queued" and body["variant"] == "one" and body["simulated"] is True
        assert response["Location"] == body["url"]
        seen_progress = []

        def done():
            d = client.get(body["url"]).json()
            seen_progress.append((d["status"], len(d["probes"])))
            return d if d["status"] in ("succeeded", "failed", "cancelled") else None

        final = processes.wait_for(done, 240, "the capacity search", proc, interval_s=0.3)
        processes.wait_for(lambda: all(Trial.objects.get(pk=t.pk).is_finished for t in run), 120, "the run", proc)
    finally:
        processes.stop(proc)
        client_r = redis.Redis.from_url(TEST_REDIS_URL)
        for key in client_r.scan_iter(f"{prefix}*"):
            client_r.delete(key)
    print(final["result"], seen_progress[:: max(1, len(seen_progress) // 10)])
    assert final["status"] == "succeeded", final["error"]
    assert "capacity.search" in (tmp_path / "sim-worker.log").read_text()  # the task ran on the worker
    result = final["result"]
    for key in ("capacity_rps", "conservative_capacity_rps", "probes", "cost_per_1k_usd_at_capacity"):
        assert key in result
    assert 1 <= len(result["probes"]) <= 6 and final["probes"] == result["probes"] and final["progress"] == 1.0
    assert result["capacity_rps"] is not None and 30 < result["capacity_rps"] < 100  # below the service rate
    # every probe is a stored, simulated trial of "<name> capacity one" at its rate
    probes_exp = Experiment.objects.get(code=final["probes_experiment"])
    assert probes_exp.name == f"{experiment.name} capacity one"
    trials = {str(t.code): t for t in probes_exp.trials.all()}
    for p in result["probes"]:
        t = trials[p["trial"]]
        assert t.status == Trial.Status.SUCCEEDED and t.simulated and t.variant_name == "one"
        assert t.spec["workload"]["rate_rps"] == pytest.approx(p["rate_rps"])
        assert t.summary["slo_verdict"]["verdict"] == p["verdict"]
    # the comparison of the source experiment: the column and the knee
    data = comparison.experiment_comparison(experiment=experiment)
    rows = {r["variant"]: r for r in data["rows"]}
    assert rows["one"]["capacity"]["capacity_rps"] == result["capacity_rps"] and rows["one"]["capacity"]["simulated"]
    assert rows["other"]["capacity"] is None
    (knee,) = data["charts"]["knee"]["series"]
    assert knee["key"] == "one" and data["charts"]["knee"]["slo_ms"] == 100
    assert [p[0] for p in knee["points"]] == sorted(p["rate_rps"] for p in result["probes"] if p["counted"])
    api = client.get(f"/api/experiments/{experiment.code}/comparison/").json()
    assert api["rows"][0]["capacity"]["search"] == final["code"]
    page = client.get(f"/experiments/{experiment.code}/compare/").content.decode()
    assert "Capacity at SLO" in page and f"/capacity/{final['code']}/" in page and "simulated" in page
    detail = client.get(f"/capacity/{final['code']}/").content.decode()
    assert "capacity-result" in detail and "http-equiv=\"refresh\"" not in detail  # finished: no more refreshing
    # reports: the CSV column, the knee chart
    header, lines = tabular.csv_rows(data)
    col = header.index("capacity at SLO (req/s)")
    by_variant = {line[header.index("variant")]: line for line in lines}
    assert float(by_variant["one"][col]) == pytest.approx(result["capacity_rps"], rel=0.01)
    assert by_variant["other"][col] == "" and by_variant["one"][header.index("capacity simulated")] == "yes"
    assert list(csv.reader(io.StringIO(tabular.render_csv(data).decode())))[0] == header
    assert "knee" in [c.key for c in report_charts(data, png=False)]


@pytest.mark.django_db
def test_the_options_are_checked_with_the_field_named_and_one_search_per_variant_runs_at_a_time(spec_data, user):
    experiment = services.experiment_import(owner=user, data=_spec(spec_data))
    client = _client(user)
    url = f"/api/experiments/{experiment.code}/capacity/"
    for body, field in (({"variant": "nope"}, "variant"), ({"variant": "one", "budget": 0}, "budget"),
                        ({"variant": "one", "tolerance": 0.9}, "tolerance"), ({"variant": "one", "probe_s": 0}, "probe_s"),
                        ({"variant": "one", "simulated": "yes"}, "simulated"), ({"variant": "one", "x": 1}, "x")):
        response = client.post(url, body, content_type="application/json")
        assert response.status_code == 400 and response.json()["errors"][0]["path"] == field, (body, response.content)
    trace = _spec(spec_data) | {"name": "traced", "workload": {
        "pattern": "trace", "trace_format": "timestamps", "trace_content": "0.1\n0.5\n1.0\n", "duration_s": 2}}
    traced = services.experiment_import(owner=user, data=trace)
    response = client.post(f"/api/experiments/{traced.code}/capacity/", {"variant": "one"},
                           content_type="application/json")
    assert response.status_code == 400 and "cannot be scaled" in response.json()["detail"]
    first = client.post(url, {"variant": "one", "simulated": True}, content_type="application/json")
    assert first.status_code == 202
    again = client.post(url, {"variant": "one"}, content_type="application/json")
    assert again.status_code == 400 and "already queued or running" in again.json()["detail"]
    assert client.post(url, {"variant": "other"}, content_type="application/json").status_code == 202
    listed = client.get(url).json()
    assert [s["variant"] for s in listed] == ["other", "one"]
    # a queued search is cancelled at once (the button and the API)
    cancelled = client.post(f"/api/capacity/{first.json()['code']}/cancel/").json()
    assert cancelled["status"] == "cancelled"
    assert capacity.capacity_run_by_id(CapacitySearch.objects.get(code=cancelled["code"]).id, worker="t",
                                       redis_conn=None) == "skipped"
    # the comparison page's form starts one and lands on its page
    page = client.post(f"/experiments/{experiment.code}/capacity/", {"variant": "one", "mode": "simulated",
                                                                     "budget": "4"})
    search = CapacitySearch.objects.filter(variant_name="one", status="queued").get()
    assert page.status_code == 302 and page["Location"] == search.get_absolute_url() and search.budget == 4
    assert 'http-equiv="refresh"' in client.get(search.get_absolute_url()).content.decode()  # polls while it runs
    # a running search whose runner died (no probe for over a minute) is closed by Cancel; one that just started
    # is only asked to stop
    from datetime import timedelta

    from django.utils import timezone

    CapacitySearch.objects.filter(pk=search.pk).update(status="running", started_at=timezone.now())
    assert capacity.capacity_cancel(search=search).status == "running" and search.cancel_requested
    CapacitySearch.objects.filter(pk=search.pk).update(started_at=timezone.now() - timedelta(minutes=2))
    assert capacity.capacity_cancel(search=search).status == "cancelled"


@pytest.mark.django_db(transaction=True)  # the trial monitor writes from its own thread
def test_cancelling_a_running_search_stops_it_before_its_next_probe(spec_data, user, tmp_path, settings, test_redis):
    settings.MEDIA_ROOT = tmp_path / "media"
    stored(model="mlp-small", service_ms=10.0)
    experiment = services.experiment_import(owner=user, data=_spec(spec_data))
    search = capacity.capacity_start(experiment=experiment, user=user, enqueue=False,
                                     options={"variant": "one", "simulated": True, "budget": 8, "probe_s": 10})
    seen = []

    def cancel_after_the_first(p):
        seen.append(p)
        if len(seen) == 1:
            capacity.capacity_cancel(search=CapacitySearch.objects.get(pk=search.pk))

    t0 = time.monotonic()
    outcome = capacity.capacity_run_by_id(search.id, worker="test", redis_conn=None, on_probe=cancel_after_the_first)
    search.refresh_from_db()
    print(f"{outcome} after {len(seen)} probe(s), {time.monotonic() - t0:.1f} s")
    assert outcome == "cancelled" and search.status == CapacitySearch.Status.CANCELLED
    assert len(search.probes) == 1 and search.result["stopped"] == "cancelled"
    assert search.probes_experiment.trials.count() == 1  # no probe started after the cancel
    # a cancelled search is not the variant's capacity
    assert comparison.experiment_comparison(experiment=experiment)["charts"]["knee"]["series"] == []
