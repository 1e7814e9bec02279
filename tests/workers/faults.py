"""Helpers of the fault tests: real Celery workers on a private queue and key prefix, trials sent to them, and
the reliability knobs shortened (heartbeat staleness, reaper interval) so a fault is caught in seconds."""

from __future__ import annotations

import os
import signal
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis

from controlplane.celery import app
from controlplane.experiments import services
from controlplane.experiments.models import Trial
from tests import processes
from tests.conftest import TEST_REDIS_URL
from workers.tasks import execute_trial

# Short in tests, so each fault is caught within seconds; the defaults are in controlplane/settings.py.
FAST = {"TRIAL_STALE_AFTER_S": 2, "REAPER_INTERVAL_S": 0.5}


def spec(name: str, *, duration_s: float = 2, rate_rps: float = 20) -> dict:
    return {
        "name": name, "device": "cpu", "accelerator": "cpu",
        "slo": {"percentile": 99, "latency_ms": 50},
        "functions": [{"name": "f", "model": "mlp-small"}],
        "workload": {"pattern": "constant", "rate_rps": rate_rps, "duration_s": duration_s, "seed": 3},
        "variants": [{"name": "dedicated"}],
    }


@dataclass
class Rig:
    """One test's private corner of Redis and disk: a key prefix, a queue, a media folder, its workers."""

    tmp: Path
    prefix: str = field(default_factory=lambda: f"slsbench-fault-{uuid.uuid4().hex[:8]}")
    queue: str = field(default_factory=lambda: f"test.{uuid.uuid4().hex[:8]}")
    workers: list = field(default_factory=list)

    @property
    def media_root(self) -> Path:
        return self.tmp / "media"

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(TEST_REDIS_URL)

    def env(self, **extra) -> dict:
        return processes.subprocess_env(redis_url=TEST_REDIS_URL, channels_prefix=self.prefix,
                                        media_root=self.media_root, **{**FAST, **extra})

    def start_worker(self, name: str, queues: list[str] | None = None, **extra):
        proc = processes.start_celery_worker(self.env(**extra), queues or [self.queue], self.tmp / f"{name}.log",
                                             name=f"{name}-{self.queue}")
        self.workers.append(proc)
        return proc

    def point_settings(self, settings) -> None:
        """This process talks to the same Redis DB, prefixes and media folder as the workers."""
        settings.REDIS_URL = TEST_REDIS_URL
        settings.CELERY_BROKER_URL = TEST_REDIS_URL
        settings.CELERY_BROKER_TRANSPORT_OPTIONS = {**settings.CELERY_BROKER_TRANSPORT_OPTIONS,
                                                    "global_keyprefix": f"{self.prefix}:"}
        settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                               "CONFIG": {"hosts": [TEST_REDIS_URL], "prefix": self.prefix}}}
        settings.MEDIA_ROOT = self.media_root
        settings.DEVICE_LEASE_KEY_PREFIX = f"{self.prefix}:lease"

    def send(self, trial: Trial) -> None:
        with app.connection_for_write(TEST_REDIS_URL, transport_options={"global_keyprefix": f"{self.prefix}:"}) as c:
            execute_trial.apply_async(args=[trial.id], queue=self.queue, connection=c,
                                      task_id=services.trial_task_id(trial.code))

    def close(self) -> None:
        for proc in self.workers:
            processes.stop(proc)
        client = self.redis
        for key in client.scan_iter(f"{self.prefix}*"):
            client.delete(key)


def make_trial(owner, data: dict) -> Trial:
    """A queued trial nobody has sent anywhere yet (queue "inline": the reaper leaves it to the test)."""
    experiment = services.experiment_import(owner=owner, data=data)
    return services.experiment_run(experiment=experiment, user=owner, enqueue=False)[0]


def wait_status(trial: Trial, statuses, timeout_s: float, proc=None) -> Trial:
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)

    def check():
        trial.refresh_from_db()
        return trial if trial.status in statuses else None

    return processes.wait_for(check, timeout_s, f"trial {trial.id} to be {'/'.join(sorted(statuses))}", proc)


def lease_pid(trial: Trial) -> int:
    """The pid of the process that holds the trial's lease (the pool process running it)."""
    owner = trial.lease_token.split("|", 1)[0]
    return int(owner.rpartition("#")[2])


def kill_group(proc) -> None:
    """SIGKILL a worker and everything it forked: a host lost at once, no chance to clean up."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


class TcpProxy:
    """A TCP proxy in front of a server (the test's Postgres): `stop()` drops every connection and refuses new
    ones, exactly what a database host going away looks like to a client; `start()` brings it back on the same
    port."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.port = processes.free_port()
        self._listener = None
        self._sockets: list = []
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self._listener is not None:
            # shutdown() first: close() alone does not wake the thread blocked in accept(), which would go on
            # accepting connections on the closed listener.
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
