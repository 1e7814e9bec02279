"""Device ids: what names a device lease, so that workers standing for one device take turns and workers
standing for different devices do not."""

from __future__ import annotations

import socket

import pytest

from controlplane.experiments import services
from controlplane.experiments.lease import DeviceLease, LeaseBusy, physical_device_id
from controlplane.experiments.models import Profile, Trial
from controlplane.experiments.profiles import services as profile_services
from workers.tasks import run_profile_by_id, run_trial_by_id


def test_a_configured_device_id_wins_then_a_gpu_uuid_then_host_and_device():
    assert physical_device_id("cuda:0", configured="rack2-gpu5", gpu_uuid="GPU-1234", host="h") == "rack2-gpu5"
    assert physical_device_id("cuda:0", gpu_uuid="GPU-1234", host="h") == "GPU-1234"
    assert physical_device_id("cpu", host="h") == "h:cpu"


def test_two_workers_of_one_host_with_their_own_device_ids_hold_leases_at_once(test_redis):
    a = DeviceLease(test_redis.client, "cpu", owner="a@host", device_id="host:cores-0-1")
    b = DeviceLease(test_redis.client, "cpu", owner="b@host", device_id="host:cores-2-3")
    same = DeviceLease(test_redis.client, "cpu", owner="c@host", device_id="host:cores-0-1")
    try:
        assert a.acquire() and b.acquire()
        assert not same.acquire()  # a third worker on a's device waits for it
    finally:
        a.release()
        b.release()


@pytest.mark.django_db
def test_a_profile_waits_for_a_trial_leased_under_the_same_device_id(test_redis, settings):
    """Profiles measure the device too: under DEVICE_ID they take the lease a trial on that device holds."""
    settings.DEVICE_ID = "shared-device"
    p = profile_services.profile_request(owner=None, model="mlp-small", options={}, input_shape=None, device="cpu",
                                         enqueue=False)
    lease = DeviceLease(test_redis.client, "cpu", owner="a-trial@other-host", device_id="shared-device")
    assert lease.acquire()
    try:
        with pytest.raises(LeaseBusy):
            run_profile_by_id(p.id, worker=f"test@{socket.gethostname()}", redis_conn=test_redis.client)
        p.refresh_from_db()
        assert p.status == Profile.Status.QUEUED
    finally:
        lease.release()


@pytest.mark.django_db
def test_a_trial_waits_for_the_lease_of_its_workers_device_id_not_the_host_name(test_redis, settings, user,
                                                                                spec_data, price_catalogue):
    settings.DEVICE_ID = "rack1-cpu"
    experiment = services.experiment_import(owner=user, data=spec_data)
    trial = services.experiment_run(experiment=experiment, user=user, enqueue=False)[0]
    # Another worker of this host, standing for another device, leases host:cpu: no matter to us ...
    other = DeviceLease(test_redis.client, "cpu", owner="other@host")
    # ... but a worker holding rack1-cpu is on our device: the trial stays queued.
    mine = DeviceLease(test_redis.client, "cpu", owner="twin@host", device_id="rack1-cpu")
    assert other.acquire() and mine.acquire()
    try:
        with pytest.raises(LeaseBusy) as info:
            run_trial_by_id(trial.id, worker="w@host", redis_conn=test_redis.client)
        assert info.value.holder == "twin@host"  # the lease it found taken is its device's, not the host's
        trial.refresh_from_db()
        assert trial.status == Trial.Status.QUEUED
    finally:
        other.release()
        mine.release()
