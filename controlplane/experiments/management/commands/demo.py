"""`make demo`: the whole product on this machine, ready to click through.

Creates the demo user and a demo experiment (examples/classifier-poc.json), uses the Redis at REDIS_URL
if it answers, else starts a private one (no persistence) on a free port, then starts the ASGI server
(daphne: pages + WebSockets), one Celery worker for this host's device pools and one for the exports' queue
(`reports`), prints the URL and the credentials, and on Ctrl-C / SIGTERM stops everything it started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
from pathlib import Path

import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from controlplane.experiments import limits, services, spec_io, trials
from controlplane.experiments.models import Experiment, Trial

from .worker import (
    STALE_AFTER_S,
    Supervisor,
    all_queues,
    cancel_running_trials,
    celery_worker_argv,
    reports_worker_argv,
    wait_for_stop_signal,
    wait_until,
)

DEMO_USER = "demo"
DEMO_SPEC = Path(settings.BASE_DIR) / "examples" / "classifier-poc.json"
START_TIMEOUT_S = 90.0  # daphne and the worker import Django and torch; a slow CI machine needs a while


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Command(BaseCommand):
    help = "Run the demo: web server (HTTP + WebSocket), one Celery worker and Redis if needed; Ctrl-C stops all."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
        parser.add_argument("--host", default="127.0.0.1")

    def handle(self, *args, port, host, **options):
        call_command("migrate", interactive=False, verbosity=0)
        password = self._demo_user()
        experiment = self._demo_experiment()
        abandoned = trials.trial_fail_stale(stale_after_s=STALE_AFTER_S)
        if abandoned:
            self._say(f"marked {abandoned} abandoned trial(s) from an earlier session failed")
        if port_open(host, port):
            raise CommandError(f"port {port} on {host} is in use: set PORT=... or pass --port")

        supervisor = Supervisor(self.stdout)
        status = 1
        self.private_redis = False
        self.started_at = timezone.now()
        try:
            redis_url = self._redis(supervisor)
            env = {**os.environ, "REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url,
                   "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "controlplane.settings"),
                   "PYTHONUNBUFFERED": "1"}
            # daphne with request bodies bounded while they stream (controlplane/webserver.py), WebSocket bounds
            supervisor.start("web server (daphne)", limits.daphne_argv(host, port), env=env)
            # One worker for everything in the demo: the device pools and simulated trials.
            supervisor.start("celery worker", celery_worker_argv([*all_queues(), services.SIM_QUEUE], self.worker_name),
                             env=env)
            supervisor.start("reports worker", reports_worker_argv(f"reports-{self.worker_name}"), env=env)
            if not wait_until(lambda: port_open(host, port) or bool(supervisor.dead()), START_TIMEOUT_S) \
                    or supervisor.dead():
                raise CommandError("the web server did not start; see its output above")
            url = f"http://{host}:{port}/"
            self._say("")
            self._say(f"slsbench demo is running at {url}")
            self._say(f"  log in as: {DEMO_USER}")
            self._say(f"  password:  {password}")
            self._say(f"  demo experiment: {url.rstrip('/')}{experiment.get_absolute_url()}")
            self._say("Press Ctrl-C to stop.")
            status = wait_for_stop_signal(supervisor, self.stdout)
        finally:
            try:
                self._wind_down()
            finally:  # whatever happened, no child outlives us
                supervisor.stop()
                self._say("demo stopped")
        if status:
            raise CommandError("a demo process exited unexpectedly", returncode=status)

    @property
    def worker_name(self) -> str:
        return f"demo-{os.getpid()}"

    def _wind_down(self) -> None:
        """Ask our worker to stop its running trial (stored as cancelled within 2 s, so the worker's warm
        shutdown does not wait out a long trial), and cancel queued trials whose messages die with a
        private Redis (they would otherwise stay queued forever)."""
        cancel_running_trials([self.worker_name], self.stdout)
        if self.private_redis:
            # Only trials queued during this session: older ones wait in the real Redis for its return.
            queued = list(Trial.objects.filter(status=Trial.Status.QUEUED, created__gte=self.started_at))
            n = len(queued)
            if n:
                for trial in queued:
                    services.trial_cancel(trial=trial)
                self._say(f"cancelled {n} queued trial(s): their queue was in the demo's private Redis")

    def _say(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def _demo_user(self) -> str:
        # A given DEMO_PASSWORD is kept; otherwise a fresh random one each start (the old one was never
        # stored in clear, so it could not be shown again).
        password = os.environ.get("DEMO_PASSWORD") or secrets.token_urlsafe(9)
        User = get_user_model()
        user, _ = User.objects.get_or_create(username=DEMO_USER)
        user.set_password(password)
        user.save()
        return password

    def _demo_experiment(self) -> Experiment:
        user = get_user_model().objects.get(username=DEMO_USER)
        data = spec_io.load_spec_file(DEMO_SPEC)
        existing = Experiment.objects.filter(owner=user, name=data["name"]).first()
        if existing is not None:
            return existing
        experiment = services.experiment_import(owner=user, data=data)
        self._say(f"created the demo experiment {experiment.name!r}")
        return experiment

    def _redis(self, supervisor: Supervisor) -> str:
        url = settings.REDIS_URL
        if redis_answers(url):
            self._say(f"using Redis at {url}")
            return url
        binary = shutil.which("redis-server")
        if binary is None:
            raise CommandError(f"Redis at {url} does not answer and there is no redis-server binary to start a "
                               "private one: install redis (apt-get install redis-server) or set REDIS_URL")
        port = free_port()
        workdir = tempfile.mkdtemp(prefix="slsbench-redis-")
        # A throwaway broker: no snapshots, no append-only file, reachable from this host only.
        supervisor.start("redis-server", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                          "--appendonly", "no", "--dir", workdir, "--loglevel", "warning"])
        url = f"redis://127.0.0.1:{port}/0"
        if not wait_until(lambda: redis_answers(url), 15.0):
            raise CommandError("the private redis-server did not start")
        self.private_redis = True
        self._say(f"Redis at {settings.REDIS_URL} did not answer: started a private one at {url}")
        return url
