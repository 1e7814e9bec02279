"""The device lease is renewed on a thread of its own: a long database write lock cannot make a trial lose it,
and a lease that is lost anyway (taken over after it expired) stops the load at once and fails the trial with
that reason. A real worker, real Redis, the test database."""

from __future__ import annotations

import time

import pytest
from django.db import transaction

from controlplane.experiments.models import Trial
from tests import processes
from tests.workers import faults

pytestmark = [pytest.mark.celery, pytest.mark.django_db(transaction=True)]

LEASE_TTL_S = 3


@pytest.fixture
def rig(tmp_path, settings, price_catalogue):
    rig = faults.Rig(tmp_path)
    rig.point_settings(settings)
    yield rig
    rig.close()


def test_a_database_lock_longer_than_the_lease_ttl_does_not_cost_the_trial_its_lease(rig, user):
    worker = rig.start_worker("locked", DEVICE_LEASE_TTL_S=LEASE_TTL_S, TRIAL_STALE_AFTER_S=30)
    trial = faults.make_trial(user, faults.spec("db-locked", duration_s=8))
    rig.send(trial)
    processes.wait_for(lambda: trial.windows.count() >= 1, 90, "the first window", worker)

    # Hold the trial's row (Postgres) or the database's write lock (SQLite) for longer than the lease's TTL:
    # the worker's heartbeat and window writes wait behind it.
    with transaction.atomic():
        Trial.objects.select_for_update().filter(id=trial.id).update(error="")
        time.sleep(LEASE_TTL_S + 2)  # the fault itself: a long write lock held by another connection

    faults.wait_status(trial, Trial.FINISHED, 60, worker)
    assert trial.status == Trial.Status.SUCCEEDED, trial.error
    assert trial.windows.count() >= 8


def test_a_lease_taken_over_stops_the_load_at_once_and_fails_the_trial_with_that_reason(rig, user):
    worker = rig.start_worker("stolen", DEVICE_LEASE_TTL_S=30)
    trial = faults.make_trial(user, faults.spec("lease-stolen", duration_s=60))
    rig.send(trial)
    processes.wait_for(lambda: trial.windows.count() >= 2, 90, "the first windows", worker)
    trial.refresh_from_db()
    windows_at_steal = trial.windows.count()

    stolen_at = time.monotonic()
    rig.redis.set(trial.lease_key, "someone-else|0")  # its lease expired and another trial took the device
    faults.wait_status(trial, Trial.FINISHED, 30, worker)
    elapsed_s = time.monotonic() - stolen_at
    print(f"lease taken over -> trial failed in {elapsed_s:.2f} s")

    assert trial.status == Trial.Status.FAILED
    assert trial.error.startswith("the device lease on cpu was gone at renewal and may now be held by another trial"), trial.error
    assert "the load was stopped at once" in trial.error
    assert trial.summary is None
    # Stopped at once: a window or two more at most, not the rest of the minute.
    assert windows_at_steal <= trial.windows.count() <= windows_at_steal + 3
    assert rig.redis.get(trial.lease_key) == b"someone-else|0"  # never deletes the new holder's lease
