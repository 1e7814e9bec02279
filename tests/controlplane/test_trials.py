"""Trial lifecycle services (the worker's side of a Trial row) and the device lease."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.utils import timezone

from controlplane.experiments import events, services, trials
from controlplane.experiments.lease import DeviceLease, LeaseBusy
from controlplane.experiments.models import Trial, TrialWindow

pytestmark = pytest.mark.django_db


def window(t_s: float, **extra) -> dict:
    return {"t_s": t_s, "offered_rps": 20.0, "completed_rps": 19.0, "p99_ms": 12.5, **extra}


@pytest.fixture
def trial(queued_trials) -> Trial:
    return queued_trials[0]


@pytest.fixture
def running(trial) -> Trial:
    return trials.trial_claim(trial_id=trial.id, worker="w1@host", device="cpu")


# ---- claim ------------------------------------------------------------------------------------------------
def test_a_queued_trial_is_claimed_by_the_first_worker_and_a_second_claim_gets_none(trial):
    first = trials.trial_claim(trial_id=trial.id, worker="w1@host", device="cpu")
    second = trials.trial_claim(trial_id=trial.id, worker="w2@host", device="cpu")

    assert first is not None and first.status == Trial.Status.RUNNING
    assert first.worker == "w1@host" and first.device == "cpu"
    assert first.started_at is not None and first.heartbeat_at is not None
    assert second is None
    trial.refresh_from_db()
    assert trial.worker == "w1@host"


def test_a_cancelled_trial_cannot_be_claimed(trial):
    services.trial_cancel(trial=trial)

    assert trials.trial_claim(trial_id=trial.id, worker="w1@host", device="cpu") is None
    trial.refresh_from_db()
    assert trial.status == Trial.Status.CANCELLED


def test_a_finished_trial_cannot_be_claimed_again(running):
    trials.trial_finish(trial_id=running.id, status="succeeded", summary={"requests": 1})

    assert trials.trial_claim(trial_id=running.id, worker="w2@host", device="cpu") is None


def test_claiming_announces_running_on_the_trials_channel_group(trial, test_redis, django_capture_on_commit_callbacks):
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(events.group_name(trial.code), channel)

    with django_capture_on_commit_callbacks(execute=True):
        trials.trial_claim(trial_id=trial.id, worker="w1@host", device="cpu")

    message = async_to_sync(layer.receive)(channel)
    assert message["type"] == "trial.status"
    assert message["trial"] == str(trial.code)
    assert message["status"] == "running" and message["device"] == "cpu"


# ---- heartbeat --------------------------------------------------------------------------------------------
def test_heartbeat_updates_heartbeat_at_and_says_keep_going(running):
    before = running.heartbeat_at
    time.sleep(0.01)

    assert trials.trial_heartbeat(trial_id=running.id) is False
    running.refresh_from_db()
    assert running.heartbeat_at > before


def test_heartbeat_returns_the_cancel_flag_once_the_user_cancels(running):
    services.trial_cancel(trial=running)

    assert trials.trial_heartbeat(trial_id=running.id) is True
    running.refresh_from_db()
    assert running.status == Trial.Status.RUNNING  # the worker, not the request, ends a running trial


def test_heartbeat_says_stop_when_the_trial_is_no_longer_running_or_gone(running):
    trials.trial_fail(trial_id=running.id, error="abandoned")
    assert trials.trial_heartbeat(trial_id=running.id) is True

    assert trials.trial_heartbeat(trial_id=10**9) is True


# ---- windows ----------------------------------------------------------------------------------------------
def test_storing_a_window_twice_keeps_one_row_per_second_with_the_latest_values(running):
    trials.trial_store_windows(trial_id=running.id, windows=[(0, window(1.0)), (1, window(2.0))])
    trials.trial_store_windows(trial_id=running.id, windows=[(1, window(2.0, p99_ms=99.0)), (2, window(3.0))])

    rows = list(TrialWindow.objects.filter(trial=running).order_by("index").values_list("index", "t_s", "data"))
    assert [(i, t) for i, t, _ in rows] == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert rows[1][2]["p99_ms"] == 99.0


def test_storing_no_windows_is_a_no_op(running):
    assert trials.trial_store_windows(trial_id=running.id, windows=[]) == 0
    assert not TrialWindow.objects.exists()


# ---- finish and fail --------------------------------------------------------------------------------------
def test_finishing_stores_summary_status_and_the_artifact_relative_to_media_root(running, media_root):
    artifact = media_root / "artifacts" / f"{running.code}.parquet"
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(b"PAR1")

    done = trials.trial_finish(trial_id=running.id, status="succeeded", summary={"requests": 10},
                               artifact_path=artifact)

    assert done.status == Trial.Status.SUCCEEDED and done.summary == {"requests": 10}
    assert done.finished_at is not None
    assert done.artifact.name == f"artifacts/{running.code}.parquet"
    assert done.artifact.path == str(artifact)


def test_finishing_twice_changes_nothing_the_second_time(running):
    trials.trial_finish(trial_id=running.id, status="succeeded", summary={"requests": 10})

    assert trials.trial_finish(trial_id=running.id, status="cancelled", summary={"requests": 1}) is None
    running.refresh_from_db()
    assert running.status == Trial.Status.SUCCEEDED and running.summary == {"requests": 10}


def test_finish_refuses_failed_as_a_status(running):
    with pytest.raises(ValueError, match="trial_fail"):
        trials.trial_finish(trial_id=running.id, status="failed", summary=None)


def test_a_failed_trial_keeps_its_partial_windows_and_reason(running):
    trials.trial_store_windows(trial_id=running.id, windows=[(0, window(1.0)), (1, window(2.0))])

    failed = trials.trial_fail(trial_id=running.id, error="cuda:3 requested but this host has 0 CUDA devices")

    assert failed.status == Trial.Status.FAILED
    assert failed.error == "cuda:3 requested but this host has 0 CUDA devices"
    assert failed.windows.count() == 2


def test_failing_an_already_finished_trial_changes_nothing(running):
    trials.trial_finish(trial_id=running.id, status="succeeded", summary={})

    assert trials.trial_fail(trial_id=running.id, error="late") is None
    running.refresh_from_db()
    assert running.status == Trial.Status.SUCCEEDED and running.error == ""


def test_a_running_trial_without_heartbeat_for_too_long_is_failed_with_a_reason(running, queued_trials):
    Trial.objects.filter(id=running.id).update(heartbeat_at=timezone.now() - timedelta(minutes=10))

    assert trials.trial_fail_stale(stale_after_s=120) == 1

    running.refresh_from_db()
    assert running.status == Trial.Status.FAILED
    assert "w1@host stopped responding" in running.error
    assert Trial.objects.get(id=queued_trials[1].id).status == Trial.Status.QUEUED


def test_a_running_trial_with_a_recent_heartbeat_is_not_stale(running):
    assert trials.trial_fail_stale(stale_after_s=120) == 0


# ---- inline runs ------------------------------------------------------------------------------------------
def test_an_inline_run_numbers_itself_after_earlier_runs_and_enqueues_nothing(queued_trials,
                                                                              django_capture_on_commit_callbacks):
    experiment = queued_trials[0].experiment

    with django_capture_on_commit_callbacks() as callbacks:
        second = services.experiment_run(experiment=experiment, user=experiment.owner, repeats=1, enqueue=False)

    assert callbacks == []
    assert {t.run_number for t in queued_trials} == {1}
    assert [(t.variant_name, t.repeat, t.run_number, t.queue) for t in second] == [
        ("dedicated", 0, 2, "inline"), ("batched", 0, 2, "inline")]
    assert second[0].spec["variants"][1]["name"] == "batched"


def test_the_spec_repeats_give_one_trial_per_variant_and_repeat(queued_trials):
    assert [(t.variant_name, t.repeat) for t in queued_trials] == [("dedicated", 0), ("batched", 0), ("batched", 1)]


# ---- the device lease -------------------------------------------------------------------------------------
@pytest.fixture
def device(test_redis) -> str:
    return f"test-device-{uuid.uuid4().hex[:8]}"


def test_a_leased_device_refuses_a_second_holder_until_the_first_releases_it(test_redis, device):
    first = DeviceLease(test_redis.client, device, owner="w1", ttl_s=30)
    second = DeviceLease(test_redis.client, device, owner="w2", ttl_s=30)

    assert first.acquire() is True
    assert second.acquire() is False
    with pytest.raises(LeaseBusy, match="held by w1"):
        second.acquire_or_raise()

    assert first.release() is True
    assert second.acquire() is True
    assert second.holder() == "w2"


def test_an_unrenewed_lease_expires_and_the_device_is_free_again(test_redis, device):
    crashed = DeviceLease(test_redis.client, device, owner="crashed", ttl_s=0.2)
    assert crashed.acquire()

    time.sleep(0.35)

    assert DeviceLease(test_redis.client, device, owner="w2", ttl_s=30).acquire() is True


def test_renewing_keeps_the_lease_past_its_ttl(test_redis, device):
    lease = DeviceLease(test_redis.client, device, owner="w1", ttl_s=0.3)
    assert lease.acquire()
    for _ in range(4):
        time.sleep(0.15)
        assert lease.renew() is True

    assert DeviceLease(test_redis.client, device, owner="w2", ttl_s=30).acquire() is False


def test_a_holder_whose_lease_expired_cannot_renew_or_release_the_new_holders_lease(test_redis, device):
    stale = DeviceLease(test_redis.client, device, owner="stalled", ttl_s=0.2)
    assert stale.acquire()
    time.sleep(0.35)
    current = DeviceLease(test_redis.client, device, owner="w2", ttl_s=30)
    assert current.acquire()

    assert stale.renew() is False
    assert stale.release() is False
    assert current.holder() == "w2"


def test_leases_of_different_devices_do_not_interfere(test_redis, device):
    assert DeviceLease(test_redis.client, device, owner="w1").acquire()
    assert DeviceLease(test_redis.client, device + "-other", owner="w2").acquire()
