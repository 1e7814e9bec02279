"""GET /metrics: refused without the bearer token; with it, Prometheus text that prometheus-client parses, the
control plane's figures, and the counters of a real trial (real torch on the CPU, the real trial monitor pushing
its windows through Redis) moving while it runs."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from controlplane.experiments import services
from workers.tasks import run_trial_by_id

TOKEN = "metrics-test-token"


@pytest.fixture
def metrics_settings(settings, test_redis):
    settings.METRICS_TOKEN = TOKEN
    # keys under this test's prefix, as a test session's broker prefix would put them
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {
        **(getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}), "global_keyprefix": test_redis.prefix}
    return settings


def scrape(client: Client) -> dict:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for fam in text_string_to_metric_families(response.content.decode()):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def total(samples: dict, name: str, **labels) -> float:
    return sum(v for (n, lv), v in samples.items() if n == name and labels.items() <= dict(lv).items())


@pytest.mark.django_db
def test_metrics_refuse_without_the_token_and_parse_with_it(metrics_settings, queued_trials):
    client = Client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=TOKEN).status_code == 401  # not a bearer header
    samples = scrape(client)
    assert total(samples, "slsbench_trials", status="queued") == len(queued_trials) > 0
    assert total(samples, "slsbench_trials", status="running") == 0
    assert total(samples, "slsbench_queue_length") == len(queued_trials)
    assert ("slsbench_workers", ()) in samples and ("slsbench_leases_held", ()) in samples
    metrics_settings.METRICS_TOKEN = ""  # no token configured: the endpoint is off
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 401


@pytest.mark.django_db(transaction=True)  # the trial monitor writes from its own thread
def test_the_counters_move_during_a_real_trial(metrics_settings, user, spec_data, price_catalogue, media_root,
                                                test_redis):
    spec_data["workload"] = {"pattern": "poisson", "rate_rps": 40, "duration_s": 8, "seed": 7}
    spec_data["variants"] = [spec_data["variants"][0]]
    experiment = services.experiment_import(owner=user, data=spec_data)
    trial = services.experiment_run(experiment=experiment, user=experiment.owner, enqueue=False)[0]
    outcome: dict = {}

    def target():
        try:
            outcome["result"] = run_trial_by_id(trial.id, worker="metrics-test@host", redis_conn=test_redis.client,
                                                publish=False, heartbeat_s=0.5)
        finally:
            connection.close()

    thread = threading.Thread(target=target)
    thread.start()
    client = Client()
    labels = {"trial": str(trial.code), "experiment": experiment.name, "variant": trial.variant_name,
              "function": "classify"}
    seen: list[float] = []
    histogram_counts: list[float] = []
    running_while_serving = 0
    deadline = time.monotonic() + 120
    while thread.is_alive() and time.monotonic() < deadline:
        samples = scrape(client)
        seen.append(total(samples, "slsbench_trial_requests_completed_total", **labels))
        histogram_counts.append(total(samples, "slsbench_trial_request_latency_seconds_count", **labels))
        if seen[-1] > 0:
            running = total(samples, "slsbench_trials", status="running")
            # the thread outlives the trial by its last writes: a scrape there sees it succeeded
            assert running + total(samples, "slsbench_trials", status="succeeded") == 1
            running_while_serving += running == 1 and total(samples, "slsbench_trial_instances", **labels) >= 1
        time.sleep(0.5)
    thread.join(120)
    assert outcome.get("result") == "succeeded"
    after = scrape(client)
    completed = total(after, "slsbench_trial_requests_completed_total", **labels)
    offered = total(after, "slsbench_trial_requests_offered_total", **labels)
    print("completed during the run:", seen, "after:", completed, "offered:", offered)
    moving = [b for a, b in zip(seen, seen[1:], strict=False) if b > a]
    assert len(moving) >= 2  # rose at least twice while the trial ran
    assert running_while_serving >= 2  # seen running, with an instance, while its counters moved
    trial.refresh_from_db()
    assert abs(completed - trial.summary["completed"]) <= 0.02 * trial.summary["completed"] + 1
    assert (("slsbench_trial_latency_ms", tuple(sorted({**labels, "quantile": "0.99"}.items()))) in after)
    # the histogram: its count moved while the trial ran and ends at every completed request; its buckets are
    # cumulative, +Inf holding them all, and agree with the trial's own exact percentiles
    assert len([b for a, b in zip(histogram_counts, histogram_counts[1:], strict=False) if b > a]) >= 2
    count = total(after, "slsbench_trial_request_latency_seconds_count", **labels)
    assert count == total(after, "slsbench_trial_request_latency_seconds_bucket", **labels, le="+Inf")
    assert abs(count - trial.summary["completed"]) <= 0.02 * trial.summary["completed"] + 1
    buckets = sorted((float(dict(lv)["le"]), v) for (n, lv), v in after.items()
                     if n == "slsbench_trial_request_latency_seconds_bucket" and dict(lv)["trial"] == labels["trial"])
    assert [v for _, v in buckets] == sorted(v for _, v in buckets) and buckets[0][1] < count
    p50_s = trial.summary["latency_ms"]["p50"] / 1000
    below = next(v for le, v in buckets if le >= p50_s)  # the first bound at or above the exact median
    assert below >= 0.5 * count - 1
    mean_s = total(after, "slsbench_trial_request_latency_seconds_sum", **labels) / count
    print(f"histogram: {count:.0f} requests, mean {mean_s * 1000:.2f} ms, exact p50 {p50_s * 1000:.2f} ms")
    assert 0 < mean_s < 10 * trial.summary["latency_ms"]["p99"] / 1000
    assert total(after, "slsbench_trials", status="succeeded") == 1


@pytest.mark.django_db
def test_every_query_of_the_grafana_dashboard_names_a_metric_the_exposition_has(metrics_settings, queued_trials,
                                                                                 test_redis):
    import json
    import re
    from pathlib import Path

    from controlplane.experiments import metrics

    # one window with every field filled, as the trial monitor would fold it in
    window = {"t_s": 1.0, "offered_rps": 10.0, "completed_rps": 9.0, "dropped": 1, "errors": 0, "late": 0,
              "p50_ms": 3.0, "p95_ms": 5.0, "p99_ms": 7.0, "queue_depth": 2, "instances_starting": 0,
              "instances_idle": 1, "instances_busy": 1, "cold_starts": 1, "cpu_util_pct": 50.0, "rss_mb": 300.0,
              "gpu_util_pct": 10.0, "gpu_mem_used_mb": 1000.0, "latency_buckets": [0, 1, 3, 4, 1] + [0] * 9,
              "latency_sum_ms": 40.0}
    metrics.record_windows(metrics.trial_labels(queued_trials[0]), [window], last_t_s=0.0, conn=test_redis.client)
    names = {n for n, _ in scrape(Client())}
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert len(queries) >= 13 and any("histogram_quantile" in q for q in queries)
    used = set()
    for q in queries:
        named = set(re.findall(r"\bslsbench_[a-z0-9_]+", q))
        assert named, q
        assert named <= names, (q, named - names)
        used |= named
    print(f"{len(queries)} queries, {len(used)} metrics of {len(names)} exposed")
    # a made-up name would be caught: the check is not vacuous
    assert "slsbench_trial_requests_completed" not in names and "slsbench_trial_requests_completed_total" in names
