"""A worker lost mid-trial (SIGKILL of the pool process, or of the whole worker) never leaves its trial running:
the trial is failed "worker lost" with its windows kept, and its device lease is freed. Real worker processes,
real Redis, the test database."""

from __future__ import annotations

import os
import signal
import time

import pytest

from controlplane.experiments import services
from controlplane.experiments.models import Trial
from tests import processes
from tests.workers import faults

pytestmark = [pytest.mark.celery, pytest.mark.django_db(transaction=True)]

LONG_LEASE_TTL_S = 60  # so a freed lease is the reaper's doing, not the TTL running out


@pytest.fixture
def rig(tmp_path, settings, price_catalogue):
    rig = faults.Rig(tmp_path)
    rig.point_settings(settings)
    yield rig
    rig.close()


def running_with_windows(rig, user, worker, name: str) -> Trial:
    trial = faults.make_trial(user, faults.spec(name, duration_s=120))
    rig.send(trial)
    processes.wait_for(lambda: trial.windows.count() >= 2, 90, "the first windows", worker)
    trial.refresh_from_db()
    assert trial.status == Trial.Status.RUNNING and trial.lease_token
    return trial


def test_a_pool_process_killed_mid_trial_fails_it_worker_lost_frees_the_lease_and_keeps_its_windows(rig, user):
    worker = rig.start_worker("w", DEVICE_LEASE_TTL_S=LONG_LEASE_TTL_S)
    trial = running_with_windows(rig, user, worker, "killed-child")
    windows_before = trial.windows.count()

    killed_at = time.monotonic()
    os.kill(faults.lease_pid(trial), signal.SIGKILL)  # the pool process running the trial, not the worker
    faults.wait_status(trial, Trial.FINISHED, LONG_LEASE_TTL_S, worker)
    elapsed_s = time.monotonic() - killed_at
    print(f"pool process SIGKILL -> trial failed in {elapsed_s:.1f} s (lease TTL {LONG_LEASE_TTL_S} s)")

    assert trial.status == Trial.Status.FAILED
    assert trial.error.startswith("worker lost: the process running it"), trial.error
    assert rig.redis.get(trial.lease_key) is None  # freed, well before its TTL would have freed it
    assert elapsed_s < LONG_LEASE_TTL_S / 2
    assert trial.windows.count() >= windows_before
    # The worker itself lives on and runs the next trial on the freed device.
    nxt = faults.make_trial(user, faults.spec("after-the-kill", duration_s=1))
    rig.send(nxt)
    faults.wait_status(nxt, Trial.FINISHED, 90, worker)
    assert nxt.status == Trial.Status.SUCCEEDED, nxt.error


def test_a_whole_worker_killed_mid_trial_is_reaped_by_another_worker(rig, user):
    lease_ttl_s = 3
    doomed = rig.start_worker("doomed", DEVICE_LEASE_TTL_S=lease_ttl_s)
    trial = running_with_windows(rig, user, doomed, "killed-host")
    windows_before = trial.windows.count()
    # Another worker, on a queue of its own: only its reaper thread is involved.
    survivor = rig.start_worker("survivor", queues=[f"{rig.queue}.other"])

    killed_at = time.monotonic()
    faults.kill_group(doomed)
    faults.wait_status(trial, Trial.FINISHED, 60, survivor)
    elapsed_s = time.monotonic() - killed_at
    bound_s = faults.FAST["TRIAL_STALE_AFTER_S"] + lease_ttl_s + 4 * faults.FAST["REAPER_INTERVAL_S"]
    print(f"worker SIGKILL -> trial failed by another worker's reaper in {elapsed_s:.1f} s "
          f"(stale after {faults.FAST['TRIAL_STALE_AFTER_S']} s, lease TTL {lease_ttl_s} s)")

    assert trial.status == Trial.Status.FAILED
    assert trial.error.startswith("worker lost: "), trial.error
    assert "stopped heart-beating" in trial.error
    assert rig.redis.get(trial.lease_key) is None
    assert trial.windows.count() >= windows_before
    assert elapsed_s < 2 * bound_s


def test_cancel_of_a_trial_whose_worker_is_gone_closes_it_at_once(rig, user):
    doomed = rig.start_worker("gone", DEVICE_LEASE_TTL_S=LONG_LEASE_TTL_S)
    trial = running_with_windows(rig, user, doomed, "cancel-after-loss")
    faults.kill_group(doomed)
    # Nobody heart-beats any more; nothing else reaps it (no other worker runs).
    processes.wait_for(lambda: not Trial.objects.filter(
        id=trial.id, heartbeat_at__gt=services._gone_before()).exists(), 10, "the heartbeat to go stale")

    trial = services.trial_cancel(trial=trial)

    assert trial.status == Trial.Status.CANCELLED
    assert "worker lost" in trial.error
    assert trial.windows.count() >= 2
