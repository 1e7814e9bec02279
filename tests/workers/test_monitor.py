"""The trial monitor stores and publishes each window as soon as the engine produces it, not at its next tick."""

from __future__ import annotations

import time

import pytest

from controlplane.experiments import services
from controlplane.experiments.models import Trial, TrialWindow
from controlplane.experiments.trials import trial_claim
from tests import processes
from workers.tasks import TrialMonitor

pytestmark = pytest.mark.django_db(transaction=True)  # the monitor thread has its own DB connection


@pytest.fixture
def running_trial(queued_trials) -> Trial:
    trial = queued_trials[0]
    return trial_claim(trial_id=trial.id, worker="test@host", device="cpu")


def test_a_window_is_stored_at_once_not_at_the_next_heartbeat(running_trial):
    monitor = TrialMonitor(running_trial, None, interval_s=30.0, publish=False)  # a tick far away
    monitor.start()
    try:
        time.sleep(0.2)
        handed = time.monotonic()
        monitor.on_window({"t_s": 1.0, "offered_rps": 25.0})
        processes.wait_for(lambda: TrialWindow.objects.filter(trial=running_trial).exists(), 2.0, "the window")
        assert time.monotonic() - handed < 0.5
        monitor.on_window({"t_s": 2.0, "offered_rps": 25.0})
        processes.wait_for(lambda: TrialWindow.objects.filter(trial=running_trial).count() == 2, 2.0, "window 2")
    finally:
        monitor.stop()
    assert list(TrialWindow.objects.filter(trial=running_trial).values_list("index", "t_s")) == [(0, 1.0), (1, 2.0)]


def test_the_heartbeat_still_reads_the_cancel_flag_between_windows(running_trial):
    monitor = TrialMonitor(running_trial, None, interval_s=0.1, publish=False)
    monitor.start()
    try:
        monitor.on_window({"t_s": 1.0})
        services.trial_cancel(trial=running_trial)
        processes.wait_for(monitor.cancel_requested.is_set, 2.0, "the cancel to be seen")
        assert monitor.should_stop()
    finally:
        monitor.stop()
    assert TrialWindow.objects.filter(trial=running_trial).count() == 1


def test_a_monitor_that_dies_of_an_unexpected_error_tells_the_engine_to_stop(running_trial):
    # A window the database layer cannot take (t_s is not a number) raises ValueError, not a DatabaseError: the
    # monitor thread ends, and with it the heartbeat and the cancel check, so the engine must not go on.
    monitor = TrialMonitor(running_trial, None, interval_s=30.0, publish=False)
    monitor.start()
    try:
        assert not monitor.should_stop()
        monitor.on_window({"t_s": "not a number"})
        processes.wait_for(monitor.should_stop, 2.0, "the engine to be told to stop")
    finally:
        monitor.stop()
    assert monitor.died.startswith("the trial's monitor thread died: ValueError")
