"""The reaper's sweep of running trials, on rows: what a lost worker leaves behind is failed or completed, and
a worker that is alive (its lease still held) is left alone. Real Redis for the leases."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from controlplane.experiments import reaper, services
from controlplane.experiments.lease import DeviceLease
from controlplane.experiments.models import Trial
from controlplane.experiments.trials import (
    result_file_for,
    trial_claim,
    trial_store_windows,
    write_result_file,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def running(queued_trials, media_root):
    trial = trial_claim(trial_id=queued_trials[0].id, worker="w@host", device="cpu")
    trial_store_windows(trial_id=trial.id, windows=[(0, {"t_s": 1.0}), (1, {"t_s": 2.0})])
    return trial


def age_heartbeat(trial: Trial, seconds: float) -> None:
    Trial.objects.filter(id=trial.id).update(heartbeat_at=timezone.now() - timedelta(seconds=seconds))


def test_a_trial_without_heartbeats_is_failed_worker_lost_and_keeps_its_windows(running, test_redis):
    age_heartbeat(running, 60)
    assert reaper.reap_running(conn=test_redis.client, stale_after_s=30) == (0, 1)
    running.refresh_from_db()
    assert running.status == "failed" and running.error.startswith("worker lost: w@host stopped heart-beating")
    assert running.windows.count() == 2


def test_a_recent_heartbeat_is_left_alone(running, test_redis):
    age_heartbeat(running, 5)
    assert reaper.reap_running(conn=test_redis.client, stale_after_s=30) == (0, 0)
    running.refresh_from_db()
    assert running.status == "running"


def test_a_stale_heartbeat_with_the_lease_still_renewed_is_left_alone(running, test_redis):
    # The lease is renewed on a thread of its own: held means the worker lives and only its DB writes lag.
    lease = DeviceLease(test_redis.client, "cpu", owner="w@host#1", ttl_s=30)
    assert lease.acquire()
    Trial.objects.filter(id=running.id).update(lease_key=lease.key, lease_token=lease.token)
    age_heartbeat(running, 60)
    assert reaper.reap_running(conn=test_redis.client, stale_after_s=30) == (0, 0)
    lease.release()
    assert reaper.reap_running(conn=test_redis.client, stale_after_s=30) == (0, 1)


def test_a_result_file_left_by_a_lost_worker_completes_the_trial(running, test_redis):
    write_result_file(code=running.code, status="succeeded", summary={"requests": 3},
                      windows=[(0, {"t_s": 1.0}), (1, {"t_s": 2.0}), (2, {"t_s": 3.0})], artifact_path=None)
    age_heartbeat(running, 60)
    assert reaper.reap_running(conn=test_redis.client, stale_after_s=30) == (1, 0)
    running.refresh_from_db()
    assert running.status == "succeeded" and running.summary == {"requests": 3}
    assert running.windows.count() == 3
    assert not result_file_for(running.code).exists()


def test_cancel_closes_a_trial_whose_worker_missed_its_heartbeats_at_once(running):
    age_heartbeat(running, 10)
    trial = services.trial_cancel(trial=running)
    assert trial.status == "cancelled" and "worker lost" in trial.error


def test_cancel_asks_a_live_worker_to_stop(running):
    trial = services.trial_cancel(trial=running)
    assert trial.status == "running" and trial.cancel_requested


def test_a_run_counts_the_trials_the_broker_did_not_get(queued_trials):
    trials = list(queued_trials)
    assert services.trials_unsent(trials) == 0  # queue "inline": never sent to a broker
    Trial.objects.filter(id=trials[0].id).update(queue="pool.cpu")
    trials[0].refresh_from_db()
    assert services.trials_unsent(trials) == 1
