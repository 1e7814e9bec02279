"""`make soak`: many short trials back to back through a real worker, with a worker SIGKILLed and Redis restarted in
the middle. Not part of CI (minutes); `--short` (a few trials) is what the test suite runs.

    manage.py soak              # 200 trials
    manage.py soak --short      # 6 trials, same faults

It starts a private Redis (no persistence, a free port) and one Celery worker on it, queues every trial at
once (one experiment, runs of up to 20 repeats of one identical variant), and then:
- after a third of the trials have finished, kills the whole worker (SIGKILL to its process group, pool
  process included) and starts a new one: the trial it was running must end "worker lost", not stay running;
- after two thirds, restarts Redis: the queued messages are gone with it, and the worker's reaper must send
  them again.
At the end it prints trials lost (finished without their outcome stored, or gone: must be 0), trials stuck
(queued or running at the deadline: must be 0), the outcomes with their reasons, the surviving worker's
memory growth (pool process RSS after its first trial and at the end) and the spread of p99 across the
identical trials that succeeded. Exits 1 if any trial is lost or stuck.

The trials and the experiment are made in the configured database under the user `soak`, and deleted at the
end unless --keep.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import psutil
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from controlplane.experiments import services
from controlplane.experiments.models import Trial

from .demo import free_port
from .worker import celery_worker_argv, wait_until

SPEC = {
    "name": "soak", "device": "cpu",
    "slo": {"percentile": 99, "latency_ms": 50},
    "functions": [{"name": "f", "model": "mlp-small"}],
    "workload": {"pattern": "constant", "rate_rps": 20, "duration_s": 1, "seed": 3},
    "variants": [{"name": "identical", "min_instances": 1, "max_instances": 1}],
}
# Short fault detection: the soak is about what happens after a fault, not about waiting for one.
WORKER_ENV = {"TRIAL_STALE_AFTER_S": "3", "REAPER_INTERVAL_S": "1", "DEVICE_LEASE_TTL_S": "5"}


class Command(BaseCommand):
    help = "Soak: N short trials through a real worker, with a worker kill and a Redis restart in the middle."

    def add_arguments(self, parser):
        parser.add_argument("--trials", type=int, default=200)
        parser.add_argument("--short", action="store_true", help="6 trials: the same faults in about a minute")
        parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for all trials")
        parser.add_argument("--keep", action="store_true", help="keep the soak's experiment and trials")

    def handle(self, *args, trials: int, short: bool, timeout: float | None, keep: bool, **options):
        n = 6 if short else trials
        if n < 3:
            raise CommandError("--trials must be at least 3 (a kill and a restart happen in the middle)")
        if shutil.which("redis-server") is None:
            raise CommandError("redis-server is not on PATH: the soak restarts a private Redis of its own")
        timeout_s = timeout if timeout is not None else 120.0 + 20.0 * n
        tmp = Path(tempfile.mkdtemp(prefix="slsbench-soak-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.tmp = tmp
        self.redis_proc = self.worker = None
        experiment = None
        try:
            self._start_redis()
            # This process sends the messages (services.trials_enqueue reads the settings) to the private Redis.
            settings.REDIS_URL = settings.CELERY_BROKER_URL = self.url
            settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                                   "CONFIG": {"hosts": [self.url], "prefix": "slsbench-soak"}}}
            self._start_worker()
            experiment, ids = self._queue(n)
            result = self._drive(ids, n, timeout_s)
        finally:
            self._stop_worker()
            if experiment is not None and not keep:  # before Redis goes: deleting tells the trials' live pages
                services.experiment_delete(experiment=experiment)
            if self.redis_proc is not None:
                self.redis_proc.kill()
                self.redis_proc.wait(10)
            shutil.rmtree(tmp, ignore_errors=True)
        if result["lost"] or result["stuck"]:
            raise CommandError(f"{result['lost']} trial(s) lost, {result['stuck']} stuck", returncode=1)

    # ---- the parts ---------------------------------------------------------------------------------------------
    def _start_redis(self) -> None:
        self.redis_proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        if not wait_until(self._redis_answers, 10):
            raise CommandError(f"the private Redis on port {self.port} did not start")

    def _redis_answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1).ping())
        except (redis.RedisError, OSError):
            return False

    def _start_worker(self) -> None:
        env = {**os.environ, **WORKER_ENV, "REDIS_URL": self.url, "CELERY_BROKER_URL": self.url,
               "CHANNELS_PREFIX": "slsbench-soak"}
        name = f"soak-{uuid.uuid4().hex[:6]}"
        self.worker_log = self.tmp / f"{name}.log"
        with open(self.worker_log, "wb") as log:
            self.worker = subprocess.Popen(celery_worker_argv(["pool.cpu", "pool.auto"], name), env=env,
                                           cwd=settings.BASE_DIR, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)
        if not wait_until(lambda: " ready." in self.worker_log.read_text(errors="replace"), 120):
            raise CommandError(f"the worker did not start:\n{self.worker_log.read_text(errors='replace')[-3000:]}")
        self._say(f"worker {name} started (pid {self.worker.pid})")

    def _stop_worker(self, sig: int = signal.SIGTERM) -> None:
        if self.worker is None:
            return
        try:
            os.killpg(self.worker.pid, sig)
            self.worker.wait(20)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
        try:
            os.killpg(self.worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.worker.wait(10)
        self.worker = None

    def _pool_rss_bytes(self) -> int | None:
        """RSS of the worker's pool process(es), where the trials run; not their instance processes, which come
        and go with each trial."""
        try:
            children = psutil.Process(self.worker.pid).children(recursive=False)
            return sum(c.memory_info().rss for c in children) or None
        except (psutil.Error, AttributeError):
            return None

    def _queue(self, n: int):
        owner, _ = get_user_model().objects.get_or_create(username="soak")
        experiment = services.experiment_import(owner=owner, data={**SPEC, "name": f"soak-{uuid.uuid4().hex[:6]}"})
        ids: list[int] = []
        while len(ids) < n:
            run = services.experiment_run(experiment=experiment, user=owner,
                                          repeats=min(20, n - len(ids)))
            ids += [t.id for t in run]
        self._say(f"queued {n} identical trials of {experiment.name}")
        return experiment, ids

    def _drive(self, ids: list[int], n: int, timeout_s: float) -> dict:
        finished = lambda: Trial.objects.filter(id__in=ids, status__in=Trial.FINISHED).count()  # noqa: E731
        started = time.monotonic()
        deadline = started + timeout_s
        killed = restarted = False
        rss_first = None
        step = max(1, n // 10)
        said = 0  # progress is said at every tenth of the trials, with the time left at the pace so far
        while time.monotonic() < deadline:
            done = finished()
            if done // step > said // step and done < n:
                said = done
                spent = time.monotonic() - started
                self._say(f"{done}/{n} finished in {spent:.0f} s (about {spent / done * (n - done):.0f} s left)")
            if done >= n:
                break
            if not killed and done >= n // 3:
                running = Trial.objects.filter(id__in=ids, status=Trial.Status.RUNNING).count()
                if running or done >= n // 3 + 1:  # kill mid-trial when one is running
                    self._say(f"{done}/{n} finished: SIGKILL to the worker ({running} running)")
                    self._stop_worker(signal.SIGKILL)
                    self._start_worker()
                    killed = True
            elif killed and rss_first is None and done > n // 3 + 1:
                rss_first = self._pool_rss_bytes()
            elif killed and not restarted and done >= (2 * n) // 3:
                self._say(f"{done}/{n} finished: restarting Redis (no persistence: queued messages are lost)")
                self.redis_proc.kill()
                self.redis_proc.wait(10)
                self._start_redis()
                restarted = True
            time.sleep(0.5)  # polling the database for progress
        rss_last = self._pool_rss_bytes()
        elapsed_s = time.monotonic() - started
        return self._report(ids, n, elapsed_s, rss_first, rss_last, killed, restarted)

    def _report(self, ids, n, elapsed_s, rss_first, rss_last, killed, restarted) -> dict:
        rows = list(Trial.objects.filter(id__in=ids).values_list("status", "error", "summary"))
        stuck = sum(1 for s, _, _ in rows if s in (Trial.Status.QUEUED, Trial.Status.RUNNING))
        # Lost: gone, or finished as succeeded with no outcome stored.
        lost = (n - len(rows)) + sum(1 for s, _, summary in rows if s == Trial.Status.SUCCEEDED and not summary)
        outcomes = Counter(s if s != Trial.Status.FAILED else f"failed: {(e or '').split(';')[0][:90]}"
                           for s, e, _ in rows)
        p99s = sorted(summary["latency_ms"]["p99"] for s, _, summary in rows
                      if s == Trial.Status.SUCCEEDED and summary and summary.get("latency_ms", {}).get("p99"))
        self._say(f"\nsoak: {n} trials in {elapsed_s:.0f} s; worker killed: {'yes' if killed else 'no'}, "
                  f"Redis restarted: {'yes' if restarted else 'no'}")
        self._say(f"trials lost: {lost}")
        self._say(f"trials stuck: {stuck}")
        for outcome, count in sorted(outcomes.items()):
            self._say(f"  {count:4d}  {outcome}")
        if rss_first and rss_last:
            self._say(f"worker memory growth: {(rss_last - rss_first) / 2**20:+.1f} MiB "
                      f"({rss_first / 2**20:.0f} -> {rss_last / 2**20:.0f} MiB pool RSS, after its first trial -> end)")
        else:
            self._say("worker memory growth: not measured (the worker ran too few trials after the restart)")
        if len(p99s) >= 2:
            median = statistics.median(p99s)
            q1, _, q3 = statistics.quantiles(p99s, n=4) if len(p99s) >= 4 else (p99s[0], median, p99s[-1])
            self._say(f"p99 across {len(p99s)} identical trials: min {p99s[0]:.2f} ms, quartiles {q1:.2f} / "
                      f"{median:.2f} / {q3:.2f} ms, max {p99s[-1]:.2f} ms; spread (max-min)/median "
                      f"{(p99s[-1] - p99s[0]) / median:.0%}, interquartile/median {(q3 - q1) / median:.0%}")
        else:
            self._say(f"p99 spread: too few succeeded trials ({len(p99s)})")
        return {"lost": lost, "stuck": stuck}

    def _say(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()
