"""Run while the broker is down: the page and the API say "queued, broker unavailable, will retry" (no 500), the
trials stay queued, and a worker's reaper sends them once a broker is reachable; they then run to the end."""

from __future__ import annotations

import time

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from controlplane.experiments import services
from controlplane.experiments.models import Trial
from tests import processes
from tests.workers import faults

pytestmark = [pytest.mark.celery, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def rig(tmp_path, settings, price_catalogue):
    rig = faults.Rig(tmp_path)
    rig.point_settings(settings)
    yield rig
    rig.close()


def test_run_during_a_broker_outage_is_queued_and_sent_by_the_reaper_once_the_broker_is_back(
        rig, settings, user, client):
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{processes.free_port()}/9"  # nothing listens there
    experiment = services.experiment_import(owner=user, data=faults.spec("broker-outage", duration_s=1))
    client.force_login(user)

    started = time.monotonic()
    page = client.post(reverse("experiment-run", args=[experiment.code]), follow=True)
    page_s = time.monotonic() - started
    api = APIClient()
    api.force_authenticate(user)
    response = api.post(f"/api/experiments/{experiment.code}/run/", {}, format="json")
    print(f"Run with the broker down answered in {page_s:.2f} s")

    assert page.status_code == 200
    assert "1 trial queued, broker unavailable, will retry." in page.content.decode()
    assert response.status_code == 202 and response.json()["unsent"] == 1
    trials = list(Trial.objects.filter(experiment=experiment).order_by("id"))
    assert [(t.status, t.queue, t.enqueued_at) for t in trials] == [("queued", "pool.cpu", None)] * 2

    # The broker is back (the worker is pointed at the real one): its reaper sends both, and they run.
    worker = rig.start_worker("broker", queues=["pool.cpu"])
    for trial in trials:
        faults.wait_status(trial, Trial.FINISHED, 120, worker)
        assert trial.status == Trial.Status.SUCCEEDED, trial.error
        assert trial.enqueued_at is not None
    assert "queued trial(s) that had no message in the broker" in processes.log_text(worker)


def test_a_queued_trial_whose_message_the_broker_lost_is_sent_again(rig, user):
    # Sent, then lost with the broker's data (a Redis restart without persistence): nothing holds its message.
    experiment = services.experiment_import(owner=user, data=faults.spec("lost-message", duration_s=1))
    trial = services.experiment_run(experiment=experiment, user=user)[0]
    trial.refresh_from_db()
    assert trial.enqueued_at is not None
    for key in rig.redis.scan_iter(f"{rig.prefix}:pool.cpu*"):
        rig.redis.delete(key)

    worker = rig.start_worker("lost", queues=["pool.cpu"])
    faults.wait_status(trial, Trial.FINISHED, 120, worker)

    assert trial.status == Trial.Status.SUCCEEDED, trial.error
    assert "re-sent 1 queued trial(s) that had no message in the broker" in processes.log_text(worker)
