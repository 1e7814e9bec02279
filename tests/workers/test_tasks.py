"""execute_trial against a REAL Celery worker (a subprocess), the real Redis broker and the test database.

The worker consumes a queue of its own on a Redis DB reserved for tests (TEST_REDIS_URL); it sees the
rows the test writes because it runs on the test database (tests/subprocess_settings.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
import uuid

import pyarrow.parquet as pq
import pytest
import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from controlplane.celery import app
from controlplane.experiments import events, services
from controlplane.experiments.lease import DeviceLease
from controlplane.experiments.models import Trial
from tests import processes
from tests.conftest import TEST_REDIS_URL
from workers.tasks import execute_trial

pytestmark = [pytest.mark.celery, pytest.mark.django_db(transaction=True)]

PREFIX = f"slsbench-tasks-{uuid.uuid4().hex[:8]}"
QUEUE = f"test.{uuid.uuid4().hex[:8]}"
# The worker also serves the device pools (under this session's key prefix on the test Redis DB), so the
# real enqueue path of services.experiment_run (run_experiment without --inline) is tested too.
POOLS = ("pool.auto", "pool.cpu")
SOFT_TIME_LIMIT_S = 12  # every other trial here ends well within it


def spec(name: str, *, duration_s: float = 2, rate_rps: float = 20, device: str = "cpu", **variant) -> dict:
    return {
        "name": name, "device": device, "accelerator": "cpu",
        "slo": {"percentile": 99, "latency_ms": 50},
        "functions": [{"name": "f", "model": "mlp-small"}],
        "workload": {"pattern": "constant", "rate_rps": rate_rps, "duration_s": duration_s, "seed": 3},
        "variants": [{"name": "dedicated", **variant}],
    }


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("celery-worker")
    media = tmp / "media"
    redis_client = redis.Redis.from_url(TEST_REDIS_URL)
    env = processes.subprocess_env(redis_url=TEST_REDIS_URL, channels_prefix=PREFIX, media_root=media,
                                   TRIAL_SOFT_TIME_LIMIT_S=SOFT_TIME_LIMIT_S)
    proc = processes.start_celery_worker(env, [QUEUE, *POOLS], tmp / "worker.log", name=QUEUE)
    proc.media_root = media
    proc.env = env
    yield proc
    processes.stop(proc)
    for key in redis_client.scan_iter(f"{PREFIX}*"):  # channel layer, broker and lease keys
        redis_client.delete(key)


@pytest.fixture
def on_worker_redis(settings, worker):
    """This process talks to the same Redis DB, channel prefix and media folder as the worker."""
    settings.REDIS_URL = TEST_REDIS_URL
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [TEST_REDIS_URL], "prefix": PREFIX}}}
    settings.MEDIA_ROOT = worker.media_root
    settings.DEVICE_LEASE_KEY_PREFIX = f"{PREFIX}:lease"


@pytest.fixture
def make_trial(user, price_catalogue, on_worker_redis):
    def make(data: dict) -> Trial:
        experiment = services.experiment_import(owner=user, data=data)
        return services.experiment_run(experiment=experiment, user=experiment.owner, enqueue=False)[0]

    return make


def send(trial: Trial, **options) -> None:
    # An explicit connection: this process's default broker is the developer's Redis DB, not the test one.
    with app.connection_for_write(TEST_REDIS_URL, transport_options={"global_keyprefix": f"{PREFIX}:"}) as conn:
        execute_trial.apply_async(args=[trial.id], queue=QUEUE, connection=conn, **options)


async def drain(layer, channel, timeout_s: float = 5.0) -> list[dict]:
    """Messages on a channel until the trial's final status (or nothing more within timeout_s)."""
    received: list[dict] = []
    while not received or received[-1].get("status") not in ("succeeded", "failed", "cancelled"):
        try:
            received.append(await asyncio.wait_for(layer.receive(channel), timeout_s))
        except TimeoutError:
            break
    return received


def wait_status(trial: Trial, statuses, timeout_s: float, worker=None) -> Trial:
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)

    def check():
        trial.refresh_from_db()
        return trial if trial.status in statuses else None

    return processes.wait_for(check, timeout_s, f"trial {trial.id} to be {'/'.join(statuses)}", worker)


def test_a_short_trial_runs_on_the_worker_and_stores_summary_windows_and_artifact(worker, make_trial):
    trial = make_trial(spec("short-run"))
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(events.group_name(trial.code), channel)

    send(trial)
    wait_status(trial, Trial.FINISHED, 90, worker)

    assert trial.status == Trial.Status.SUCCEEDED, trial.error
    assert trial.worker.startswith(f"{QUEUE}@") and trial.device == "cpu"
    assert trial.summary["requests"] == 40 and trial.summary["completed"] == 40
    assert trial.summary["latency_ms"]["p99"] > 0
    assert trial.summary["hardware"]["on_cpu"] is True
    assert trial.windows.count() >= 2
    assert trial.artifact.name == f"artifacts/{trial.code}.parquet"
    assert pq.read_table(trial.artifact.path).num_rows == 40
    # The live page's group got the running status, the windows and the final status.
    received = async_to_sync(drain)(layer, channel)
    kinds = [m["type"] for m in received]
    assert kinds[0] == "trial.status" and received[0]["status"] == "running"
    assert kinds.count("trial.window") == trial.windows.count()
    assert received[-1] == {"type": "trial.status", "trial": str(trial.code), "status": "succeeded", "error": "",
                            "device": "cpu", "cancel_requested": False}


def test_cancelling_a_running_trial_stops_it_within_two_seconds_and_keeps_its_windows(worker, make_trial):
    trial = make_trial(spec("long-run", duration_s=60))
    send(trial)
    processes.wait_for(lambda: trial.windows.count() >= 2, 60, "the first windows", worker)

    requested_at = time.monotonic()
    services.trial_cancel(trial=trial)
    wait_status(trial, Trial.FINISHED, 10, worker)
    elapsed_s = time.monotonic() - requested_at

    assert trial.status == Trial.Status.CANCELLED
    assert elapsed_s <= 2.0, f"took {elapsed_s:.2f} s to stop"
    assert trial.windows.count() >= 2
    assert 0 < trial.summary["requests"] < 60 * 20  # what was sent before the cancel, not the whole workload


def test_a_duplicate_delivery_runs_the_trial_once(worker, make_trial):
    trial = make_trial(spec("duplicate", duration_s=1))

    send(trial)
    send(trial)
    wait_status(trial, Trial.FINISHED, 90, worker)
    started_at = trial.started_at
    processes.wait_for(lambda: f"trial {trial.id}: not queued (succeeded): nothing to do" in processes.log_text(worker),
                       30, "the duplicate to be skipped", worker)

    log = processes.log_text(worker)
    assert log.count(f"trial {trial.id}: claimed by") == 1
    trial.refresh_from_db()
    assert trial.status == Trial.Status.SUCCEEDED and trial.started_at == started_at


def test_a_device_this_host_lacks_fails_the_trial_with_a_readable_reason(worker, make_trial):
    trial = make_trial(spec("no-such-gpu", device="cuda:63"))

    send(trial)
    wait_status(trial, Trial.FINISHED, 60, worker)

    assert trial.status == Trial.Status.FAILED
    assert "cuda:63 requested but this host has" in trial.error
    assert "use device 'cpu' or 'auto'" in trial.error


def test_a_spatial_share_the_host_cannot_give_fails_before_any_load(worker, make_trial):
    # 1 % of the CPU is less than one whole core on any host with fewer than 100 cores.
    trial = make_trial(spec("tiny-share", sharing="spatial", share=0.01))

    send(trial)
    wait_status(trial, Trial.FINISHED, 60, worker)

    assert trial.status == Trial.Status.FAILED
    assert "spatial sharing on cpu needs at least one whole core per instance" in trial.error
    assert trial.windows.count() == 0 and trial.summary is None


def test_a_trial_whose_device_is_leased_waits_queued_and_runs_once_the_lease_is_free(worker, make_trial):
    lease = DeviceLease(redis.Redis.from_url(TEST_REDIS_URL), "cpu", owner="another-trial", ttl_s=60,
                        prefix=f"{PREFIX}:lease")
    assert lease.acquire(), "the cpu lease of this host is held by something else"
    try:
        trial = make_trial(spec("leased", duration_s=1))
        send(trial)
        processes.wait_for(lambda: f"trial {trial.id}: device cpu is busy (held by another-trial)"
                           in processes.log_text(worker), 60, "the lease to be found busy", worker)
        trial.refresh_from_db()
        assert trial.status == Trial.Status.QUEUED
    finally:
        lease.release()

    wait_status(trial, Trial.FINISHED, 60, worker)
    assert trial.status == Trial.Status.SUCCEEDED


def test_a_trial_that_outlasts_the_time_limit_fails_with_the_reason_and_keeps_its_windows(worker, make_trial):
    trial = make_trial(spec("too-long", duration_s=120))

    # The sender's limits travel in the message (a web process and its workers share the settings; this
    # test process has the default limit, the worker a short one).
    send(trial, soft_time_limit=SOFT_TIME_LIMIT_S, time_limit=SOFT_TIME_LIMIT_S + 60)
    wait_status(trial, Trial.FINISHED, SOFT_TIME_LIMIT_S + 30, worker)

    assert trial.status == Trial.Status.FAILED
    assert trial.error == (f"the trial ran past the time limit of {SOFT_TIME_LIMIT_S} s (TRIAL_SOFT_TIME_LIMIT_S) "
                           "and was stopped")
    assert trial.windows.count() >= SOFT_TIME_LIMIT_S // 2


def test_run_experiment_through_celery_prints_each_trial_and_exits_zero(worker, user, price_catalogue, tmp_path):
    path = tmp_path / "spec.json"
    data = spec("via-celery", duration_s=1)
    data["variants"].append({"name": "batched", "batching": {"mode": "fixed", "max_batch_size": 4,
                                                             "max_queue_delay_ms": 2}})
    path.write_text(json.dumps(data))

    result = subprocess.run(
        [sys.executable, "manage.py", "run_experiment", str(path), "--owner", user.username,
         "--json", str(tmp_path / "out.json")],
        cwd=settings.BASE_DIR, env=worker.env, capture_output=True, text=True, timeout=180)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "via Celery" in result.stdout
    assert re.search(r"^dedicated\s+0\s+succeeded", result.stdout, re.M)
    assert re.search(r"^batched\s+0\s+succeeded", result.stdout, re.M)
    out = json.loads((tmp_path / "out.json").read_text())
    assert [t["status"] for t in out["trials"]] == ["succeeded", "succeeded"]
    assert {t.worker for t in Trial.objects.filter(experiment__name="via-celery")} == {f"{QUEUE}@{socket.gethostname()}"}


def test_ctrl_c_on_run_experiment_cancels_its_trials_and_exits_130(worker, user, price_catalogue, tmp_path):
    path = tmp_path / "spec.json"
    data = spec("interrupted", duration_s=60)
    data["variants"][0]["repeats"] = 2
    path.write_text(json.dumps(data))

    proc = subprocess.Popen([sys.executable, "manage.py", "run_experiment", str(path), "--owner", user.username],
                            cwd=settings.BASE_DIR, env=worker.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        processes.wait_for(lambda: Trial.objects.filter(experiment__name="interrupted",
                                                        status=Trial.Status.RUNNING).exists(), 60, "a running trial")
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()

    assert proc.returncode == 130, output
    statuses = sorted(Trial.objects.filter(experiment__name="interrupted").values_list("status", flat=True))
    assert statuses == ["cancelled", "cancelled"], output


def test_the_worker_reports_its_devices_in_redis_and_warms_up_its_pool_process(worker, settings, on_worker_redis):
    from controlplane.experiments import selectors, worker_registry

    hostname = f"{QUEUE}@{socket.gethostname()}"
    client = redis.Redis.from_url(TEST_REDIS_URL)
    key = f"{PREFIX}:{worker_registry.KEY_PREFIX}:{hostname}"
    report = json.loads(processes.wait_for(lambda: client.get(key), 10, "the worker's report", worker))
    assert report["devices"] == ["auto", "cpu"] and report["pools"] == ["pool.auto", "pool.cpu"]
    assert report["resolves"] == {"auto": "cpu"}  # this host has no GPU: auto runs on the CPU
    assert 0 < client.pttl(key) <= worker_registry.TTL_S * 1000  # it expires unless the heartbeat renews it
    # The editor's selector sees it under the broker's key prefix.
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {**settings.CELERY_BROKER_TRANSPORT_OPTIONS,
                                                "global_keyprefix": f"{PREFIX}:"}
    assert hostname in selectors.worker_devices()["devices"]["cpu"]
    processes.wait_for(lambda: "worker warm-up: imports done" in processes.log_text(worker), 60,
                       "the pool process to warm up", worker)


def test_a_simulated_trial_runs_on_a_worker_without_the_device_lease(worker, user, price_catalogue, on_worker_redis):
    from tests.controlplane.test_profiles import stored

    profile = stored(model="mlp-small", service_ms=2.0)
    experiment = services.experiment_import(owner=user, data=spec("sim", duration_s=30, rate_rps=50))
    trial = services.experiment_run(experiment=experiment, user=user, enqueue=False, simulate={})[0]
    lease = redis.Redis.from_url(TEST_REDIS_URL)
    send(trial)
    trial = wait_status(trial, ("succeeded", "failed"), 60, worker)
    assert trial.status == "succeeded", trial.error
    assert trial.device == "simulated cpu" and trial.summary["simulated"] is True
    assert trial.summary["simulation"]["profiles"][0]["id"] == str(profile.code)
    assert trial.summary["requests"] == 1500 and trial.windows.count() >= 30
    assert not list(lease.scan_iter(f"{PREFIX}:lease*"))  # a simulation takes no device
