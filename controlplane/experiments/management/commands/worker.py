"""Start one Celery worker per device of this host (one worker process per device: docs/architecture.md,
rule 3), and one for the exports.

    manage.py worker              # every device: cpu, and cuda:N for each GPU; and the reports worker
    manage.py worker --device cpu
    manage.py worker --no-reports # device pools only
    manage.py worker --sim-workers 4  # simulated trials (queue `sim`), four at a time
    manage.py worker --device cpu --device-id host1-cores-0-7   # name the physical device (docs/deploy.md)

Each worker consumes its device's queue (services.device_queue) with concurrency 1 and prefetch 1. The
"auto" and "cuda" pools go to the device they resolve to on this host (cuda:0, else cpu). The reports worker
consumes the queue `reports` alone (reports.tasks: PDF, HTML, slides and zip exports), so an export never
waits behind an hour-long trial and never takes a device pool's slot. Ctrl-C or SIGTERM stops them all.
Also home of `Supervisor`, which `demo` uses for its child processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from controlplane.experiments import services, trials
from controlplane.experiments.profiles import services as profile_services

STALE_AFTER_S = 120.0


def cuda_count() -> int:
    from workers.devices import _cuda_count

    return _cuda_count()


def device_queues(n_cuda: int | None = None) -> dict[str, list[str]]:
    """Queues each device's worker consumes on this host: {"cpu": [...], "cuda:0": [...], ...}."""
    n = cuda_count() if n_cuda is None else n_cuda
    plan = {"cpu": [services.device_queue("cpu")]}
    for i in range(n):
        plan[f"cuda:{i}"] = [services.device_queue(f"cuda:{i}")]
    # "auto" and bare "cuda" resolve to cuda:0 when there is a GPU (workers.devices.resolve_device).
    if n:
        plan["cuda:0"] += [services.device_queue("cuda"), services.device_queue("auto")]
    else:
        plan["cpu"].append(services.device_queue("auto"))
    return plan


def all_queues(n_cuda: int | None = None) -> list[str]:
    return sorted({q for queues in device_queues(n_cuda).values() for q in queues})


def celery_worker_argv(queues: list[str], name: str, *, loglevel: str = "INFO") -> list[str]:
    return [str(Path(sys.executable).with_name("celery")), "-A", "controlplane", "worker", "-Q", ",".join(queues),
            "--concurrency", "1", "--prefetch-multiplier", "1", "-n", f"{name}@%h", "--loglevel", loglevel]


def sim_worker_argv(name: str, concurrency: int, *, loglevel: str = "INFO") -> list[str]:
    """A worker for simulated trials (queue `sim`): no device, so several run at once on one host."""
    argv = celery_worker_argv([services.SIM_QUEUE], name, loglevel=loglevel)
    argv[argv.index("--concurrency") + 1] = str(max(1, int(concurrency)))
    return argv


def reports_worker_argv(name: str, *, loglevel: str = "INFO") -> list[str]:
    """A worker for the exports' queue alone, with the export task registered (`--include` its module)."""
    from controlplane.experiments.reports.exports import REPORTS_QUEUE

    return celery_worker_argv([REPORTS_QUEUE], name, loglevel=loglevel) + [
        "--include", "controlplane.experiments.reports.tasks"]


class Supervisor:
    """Child processes started together and stopped together: terminate, wait, kill, no orphans.

    Each child gets its own session (process group), so a Ctrl-C in the terminal reaches only us and
    we stop the children in order; at the end the whole group is killed, which also takes any
    processes a child forked (Celery's pool processes)."""

    def __init__(self, stdout=None):
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.stdout = stdout

    def start(self, label: str, argv: list[str], *, env: dict | None = None, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(argv, env=env, cwd=settings.BASE_DIR, start_new_session=True, **kwargs)
        self.children.append((label, proc))
        self._say(f"started {label} (pid {proc.pid})")
        return proc

    def dead(self) -> list[tuple[str, int]]:
        return [(label, proc.returncode) for label, proc in self.children if proc.poll() is not None]

    def stop(self, timeout_s: float = 10.0) -> None:
        # Last started, first stopped: the worker and web server go before the Redis they talk to.
        for label, proc in reversed(self.children):
            if proc.poll() is None:
                self._say(f"stopping {label} (pid {proc.pid})")
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self._say(f"{label} did not stop within {timeout_s:.0f} s: killing it")
            self._kill_group(proc)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    @staticmethod
    def _kill_group(proc: subprocess.Popen) -> None:
        # The child led its own session, so its pid is the group id; this reaches its forked helpers too.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _say(self, text: str) -> None:
        if self.stdout is not None:
            self.stdout.write(text)
            self.stdout.flush()


def wait_for_stop_signal(supervisor: Supervisor, stdout) -> int:
    """Block until SIGINT/SIGTERM or a child exits. Returns an exit status."""
    stop = threading.Event()

    def handler(signum, frame):
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            dead = supervisor.dead()
            if dead:
                label, code = dead[0]
                stdout.write(f"{label} exited with status {code}; stopping the rest")
                return 1
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def cancel_running_trials(worker_names: list[str], stdout, wait_s: float = 5.0) -> list:
    """Ask our workers to stop their running trials before we stop the workers: a trial is stored as
    cancelled (with what it measured) within 2 s, instead of being killed mid-run when a warm shutdown
    outlasts the supervisor's patience and left "running" until the stale sweep fails it."""
    from django.db.models import Q

    from controlplane.experiments.models import Trial

    mine = Q()
    for name in worker_names:
        mine |= Q(worker__startswith=f"{name}@")
    running = list(Trial.objects.filter(mine, status=Trial.Status.RUNNING))
    for trial in running:
        services.trial_cancel(trial=trial)
        stdout.write(f"cancelling running trial {trial} ({trial.code}) so its worker can stop")
    if running:
        wait_until(lambda: not Trial.objects.filter(id__in=[t.id for t in running],
                                                    status=Trial.Status.RUNNING).exists(), wait_s)
    return running


class Command(BaseCommand):
    help = "Start one Celery worker per device of this host (concurrency 1 each) and supervise them."

    def add_arguments(self, parser):
        parser.add_argument("--device", action="append",
                            help="only this device (cpu, cuda:N); repeatable. Default: every device")
        parser.add_argument("--loglevel", default="INFO")
        parser.add_argument("--no-reports", action="store_true",
                            help="start no worker for the exports' queue (`reports`)")
        parser.add_argument("--sim-workers", type=int, default=1, metavar="N",
                            help="simulated trials (queue `sim`) run N at a time on this host (0: none; default 1)")
        parser.add_argument("--device-id", default=None,
                            help="the physical device's name for its lease (DEVICE_ID); only with one --device")

    def handle(self, *args, device, loglevel, no_reports=False, sim_workers=1, device_id=None, **options):
        plan = device_queues()
        chosen = device or list(plan)
        unknown = [d for d in chosen if d not in plan]
        if unknown:
            raise CommandError(f"no device {', '.join(unknown)} on this host (devices: {', '.join(plan)})")
        device_id = device_id or settings.DEVICE_ID
        if device_id and len(chosen) != 1:
            # One id for several devices would make them one device to the leases: trials would queue for nothing.
            raise CommandError(f"a device id names one device; start one worker per device (--device) to give "
                               f"{device_id!r} (devices here: {', '.join(chosen)})")
        env = {**os.environ, "DEVICE_ID": device_id} if device_id else None
        failed = trials.trial_fail_stale(stale_after_s=STALE_AFTER_S)
        if failed:
            self.stdout.write(f"marked {failed} abandoned trial(s) failed (no heartbeat for {STALE_AFTER_S:.0f} s)")
        failed = profile_services.profile_fail_stale()
        if failed:
            self.stdout.write(f"marked {failed} abandoned profile(s) failed")
        supervisor = Supervisor(self.stdout)
        names = []
        for dev in chosen:
            name = f"{dev.replace(':', '-')}-{os.getpid()}"
            names.append(name)
            supervisor.start(f"worker {dev} [{', '.join(plan[dev])}]" + (f" as {device_id}" if device_id else ""),
                             celery_worker_argv(plan[dev], name, loglevel=loglevel), env=env)
        if not no_reports:
            supervisor.start("reports worker [reports]", reports_worker_argv(f"reports-{os.getpid()}",
                                                                           loglevel=loglevel))
        if sim_workers and sim_workers > 0:
            name = f"sim-{os.getpid()}"
            names.append(name)
            supervisor.start(f"simulation worker x{sim_workers} [{services.SIM_QUEUE}]",
                             sim_worker_argv(name, sim_workers, loglevel=loglevel))
        self.stdout.write(f"workers running (broker {settings.CELERY_BROKER_URL}); Ctrl-C stops them")
        self.stdout.flush()
        status = 1
        try:
            status = wait_for_stop_signal(supervisor, self.stdout)
        finally:
            try:
                cancel_running_trials(names, self.stdout)
            finally:  # whatever happened, no worker outlives us
                supervisor.stop()
        if status:
            raise CommandError("a worker exited unexpectedly", returncode=status)


def wait_until(predicate, timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
