"""A sweep fanned out over two REAL Celery workers of one device pool, each standing for its own device.

Both workers consume pool.cpu on this host (one started as `manage.py worker --device-id` is); their DEVICE_IDs say they are two devices (two CPU core sets,
or two GPUs of one host), so each takes its own device lease and the sweep's two trials run at the same
time. Without distinct device ids the second trial would wait for the first one's lease.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
import redis
from django.conf import settings

from controlplane.experiments.models import Trial
from tests import processes
from tests.conftest import TEST_REDIS_URL

pytestmark = [pytest.mark.celery, pytest.mark.django_db(transaction=True)]

PREFIX = f"slsbench-fanout-{uuid.uuid4().hex[:8]}"
POOLS = ["pool.auto", "pool.cpu"]
DEVICE_IDS = ("fanout-device-a", "fanout-device-b")


@pytest.fixture(scope="module")
def two_workers(django_db_setup, django_db_blocker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fanout")
    media = tmp / "media"
    procs = []
    try:
        env = processes.subprocess_env(redis_url=TEST_REDIS_URL, channels_prefix=PREFIX, media_root=media)
        # One worker the way tests start them, with DEVICE_ID in its environment ...
        procs.append(processes.start_celery_worker({**env, "DEVICE_ID": DEVICE_IDS[0]}, POOLS,
                                                   tmp / "worker-a.log", name=DEVICE_IDS[0]))
        # ... and one the way docs/deploy.md says: `manage.py worker --device cpu --device-id ...`.
        proc = processes.start([sys.executable, "manage.py", "worker", "--device", "cpu", "--device-id", DEVICE_IDS[1],
                                "--no-reports"], env, tmp / "worker-b.log")
        procs.append(proc)
        processes.wait_for(lambda: " ready." in processes.log_text(proc), 90, "manage.py worker to be ready", proc)
        yield procs, env
    finally:
        for proc in procs:
            processes.stop(proc)
        client = redis.Redis.from_url(TEST_REDIS_URL)
        for key in client.scan_iter(f"{PREFIX}*"):
            client.delete(key)


def test_a_two_variant_sweep_runs_its_trials_at_once_on_two_workers_under_distinct_leases(
        two_workers, user, price_catalogue, tmp_path):
    procs, env = two_workers
    spec = {
        "name": "fan-out", "device": "cpu", "accelerator": "cpu",
        "functions": [{"name": "f", "model": "mlp-small"}],
        "workload": {"pattern": "constant", "rate_rps": 20, "duration_s": 2, "seed": 3},
        "sweep": {"grid": {"max_instances": [1, 2]}},
    }
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(spec))
    result = subprocess.run([sys.executable, "manage.py", "run_experiment", str(path), "--owner", user.username],
                            cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=240)

    logs = "\n".join(processes.log_text(p)[-3000:] for p in procs)
    assert result.returncode == 0, result.stdout + result.stderr + logs
    # Before running, it said what the run takes, on one device and on the pool's two live workers.
    assert "2 variants, 2 trials, about 4 s of run time; about 2 s on the 2 workers of its pool" in result.stdout
    trials = list(Trial.objects.filter(experiment__name="fan-out").order_by("variant_name"))
    assert [t.variant_name for t in trials] == ["i1", "i2"]
    assert [t.status for t in trials] == ["succeeded", "succeeded"], [t.error for t in trials]
    # Each ran under its own device's lease, on its own worker ...
    assert {t.device_id for t in trials} == set(DEVICE_IDS)
    assert len({t.worker for t in trials}) == 2
    # ... at the same time: each started before the other finished.
    first, second = sorted(trials, key=lambda t: t.started_at)
    overlap_s = (first.finished_at - second.started_at).total_seconds()
    print(f"trial intervals overlap by {overlap_s:.2f} s "
          f"({first.started_at:%H:%M:%S.%f}-{first.finished_at:%H:%M:%S.%f} and "
          f"{second.started_at:%H:%M:%S.%f}-{second.finished_at:%H:%M:%S.%f})")
    assert second.started_at < first.finished_at, logs
