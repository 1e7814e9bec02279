"""The trial page, Cancel and artifact views with Django's test client: who may see what."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from controlplane.experiments import trials
from controlplane.experiments.models import Trial

pytestmark = pytest.mark.django_db


@pytest.fixture
def trial(queued_trials) -> Trial:
    return queued_trials[0]


def url(name: str, trial: Trial) -> str:
    return reverse(name, kwargs={"code": trial.code})


def page_data(response) -> dict:
    html = response.content.decode()
    start = html.index('<script id="trial-data" type="application/json">') + len(
        '<script id="trial-data" type="application/json">')
    return json.loads(html[start:html.index("</script>", start)])


def test_the_owner_sees_a_queued_trial_with_a_cancel_button_and_a_live_socket_path(client, user, trial):
    client.force_login(user)

    response = client.get(url("trial-detail", trial))

    assert response.status_code == 200
    assert b'id="cancel-button"' in response.content
    data = page_data(response)
    assert data["status"] == "queued" and data["finished"] is False
    assert data["ws_path"] == f"/ws/trials/{trial.code}/"
    assert data["slo"]["latency_ms"] == 50.0


def test_an_outsider_gets_404_and_an_anonymous_visitor_is_sent_to_log_in(client, other_user, trial):
    assert client.get(url("trial-detail", trial)).status_code == 302
    assert reverse("login") in client.get(url("trial-detail", trial)).headers["Location"]

    client.force_login(other_user)
    assert client.get(url("trial-detail", trial)).status_code == 404
    assert client.post(url("trial-cancel", trial)).status_code == 404
    assert client.get(url("trial-artifact", trial)).status_code == 404
    trial.refresh_from_db()
    assert trial.status == Trial.Status.QUEUED


def test_the_page_embeds_the_stored_windows_in_order(client, user, trial):
    trials.trial_claim(trial_id=trial.id, worker="w1@host", device="cpu")
    trials.trial_store_windows(trial_id=trial.id, windows=[(1, {"t_s": 2.0, "p99_ms": 4.0}),
                                                           (0, {"t_s": 1.0, "p99_ms": 3.0})])
    client.force_login(user)

    data = page_data(client.get(url("trial-detail", trial)))

    assert [(w["index"], w["window"]["p99_ms"]) for w in data["windows"]] == [(0, 3.0), (1, 4.0)]


def test_cancel_on_a_queued_trial_cancels_it_at_once(client, user, trial):
    client.force_login(user)

    response = client.post(url("trial-cancel", trial))

    assert response.status_code == 302 and response.headers["Location"] == url("trial-detail", trial)
    trial.refresh_from_db()
    assert trial.status == Trial.Status.CANCELLED


def test_cancel_on_a_running_trial_asks_the_worker_and_hides_the_button(client, user, trial):
    trials.trial_claim(trial_id=trial.id, worker="w1@host", device="cpu")
    client.force_login(user)

    client.post(url("trial-cancel", trial))
    page = client.get(url("trial-detail", trial))

    trial.refresh_from_db()
    assert trial.status == Trial.Status.RUNNING and trial.cancel_requested is True
    assert b'id="cancel-button"' not in page.content
    assert b"cancel requested" in page.content


def test_cancel_needs_a_post(client, user, trial):
    client.force_login(user)

    assert client.get(url("trial-cancel", trial)).status_code == 405


def test_a_failed_trial_shows_its_reason_and_no_summary(client, user, trial):
    trials.trial_claim(trial_id=trial.id, worker="w1@host", device="cpu")
    trials.trial_fail(trial_id=trial.id, error="spatial sharing on cpu needs at least one whole core per instance")
    client.force_login(user)

    response = client.get(url("trial-detail", trial))

    assert b"spatial sharing on cpu needs at least one whole core per instance" in response.content
    assert b'id="trial-summary"' not in response.content
    assert page_data(response)["finished"] is True


def test_a_trial_without_an_artifact_has_nothing_to_download(client, user, trial):
    client.force_login(user)

    assert client.get(url("trial-artifact", trial)).status_code == 404


def test_a_finished_page_labels_a_replay_a_thread_runtime_a_modelled_delay_and_shows_cold_start_phases(
        client, user, trial):
    summary = {"requests": 10, "completed": 10, "latency_ms": {"p99": 5.0, "unfinished": 0},
               "time_compression": 20.0, "runtime": "thread", "isolation": "shared process, no isolation",
               "platform_delay_ms": {"value": 2000.0, "modelled": True}, "prewarms": 1, "requests_paid_cold_start": 4,
               "cold_start_phases_ms": {"count": 2, "platform_delay_modelled": 2000.0, "build": 3.0, "load": 8.0,
                                        "total": 2050.0, "page_cache_resident_max": 0.0, "modelled": ["x"]},
               "breakdown_ms": {"dispatch_lag": 0.01, "cold_start": 1.0, "platform_delay_modelled": 40.0,
                                "batch_wait": 0.0, "queue_wait": 0.5, "compute": 2.0}}
    Trial.objects.filter(pk=trial.pk).update(status="succeeded", summary=summary)
    client.force_login(user)
    html = client.get(url("trial-detail", trial)).content.decode()
    assert "replayed 20× faster" in html
    assert "instances: shared process, no isolation" in html
    assert "+2000 ms modelled platform delay per cold start" in html
    assert 'id="phases-table"' in html and "platform delay (modelled, not measured)" in html
    assert "read the weights from disk" in html and "disk (page cache dropped)" in html
    assert "1 pre-warm paid by no request" in html
    assert "modelled platform delay (not measured)" in html  # its own line in the breakdown
    experiment_html = client.get(trial.experiment.get_absolute_url()).content.decode()
    assert "shared process, no isolation" in experiment_html and "replayed 20× faster" in experiment_html
