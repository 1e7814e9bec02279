"""Run every variant x repeat of an experiment spec file and print a row as each trial finishes.

    manage.py run_experiment examples/classifier-poc.json --inline --json results.json

The experiment is imported for --owner (or, if that owner already has an experiment of the same name,
updated from the file). --inline runs the trials one after another in this process, through the same
function the Celery task calls; without it they go through Celery and this command waits for them.
Exit status: 0 when every trial succeeded, 1 when any failed, 130 when interrupted (Ctrl-C cancels).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import threading
import time
from pathlib import Path

import redis
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from controlplane.experiments import selectors, services, spec_io
from controlplane.experiments.models import Experiment, Trial
from workers import spec as S

DEFAULT_OWNER = "cli"
POLL_S = 1.0
CANCEL_WAIT_S = 15.0  # how long Ctrl-C waits for running trials to stop before giving up on them

COLUMNS = (("variant", 18, "<"), ("rep", 3, ">"), ("status", 9, "<"), ("p50 ms", 8, ">"), ("p99 ms", 8, ">"),
           ("SLO", 12, "<"), ("thr rps", 8, ">"), ("cold", 4, ">"), ("$/1k srvless", 12, ">"),
           ("$/1k prov", 10, ">"))
VERDICTS = {"met": "met", "not_met": "NOT MET", "inconclusive": "inconclusive"}


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_row(row: dict) -> str:
    """The trial's table row, then indented lines: percentiles beyond the run and why the SLO was not met.

    A percentile that is None because its rank fell among unfinished requests shows as ">drain" in the
    table and "> drain (N unfinished)" below it."""
    cost = row.get("cost") or {}
    latency = row.get("latency_ms") or {}
    unfinished = row.get("unfinished") or 0
    verdict = row.get("slo_verdict") or {}

    def pct(key: str) -> str:
        value = latency.get(key)
        return ">drain" if value is None and unfinished else _num(value, 2)

    values = (row["variant"], str(row["repeat"]), row["status"], pct("p50"), pct("p99"),
              VERDICTS.get(verdict.get("verdict"), "-"), _num(row.get("throughput_rps"), 1),
              "-" if row.get("cold_starts") is None else str(row["cold_starts"]),
              _num(cost.get("serverless_per_1k_usd"), 5), _num(cost.get("provisioned_per_1k_usd"), 5))
    lines = ["  ".join(f"{v:{align}{width}}" for v, (_, width, align) in zip(values, COLUMNS, strict=True))]
    beyond = [k for k in ("p50", "p99") if latency.get(k) is None and unfinished and row.get("requests")]
    if beyond:
        lines.append(f"    {' and '.join(beyond)} > drain ({unfinished} unfinished)")
    if verdict.get("verdict") in ("not_met", "inconclusive"):
        lines.append(f"    SLO {VERDICTS[verdict['verdict']].lower()}: " + "; ".join(verdict.get("reasons") or []))
    return "\n".join(lines)


def header() -> str:
    return "  ".join(f"{name:{align}{width}}" for name, width, align in COLUMNS)


def load_spec(path: str, owner=None) -> tuple[dict, S.ExperimentSpec]:
    """A spec file read and validated as `owner` would have it validated (their uploaded models may be named),
    with those models' stored files filled in (for commands that run or profile it here); CommandError when bad."""
    from controlplane.registry.selectors import resolve_uploaded_functions, uploaded_models_for

    try:
        data = spec_io.load_spec_file(path)
        exp = S.parse_experiment(data, uploaded_models=uploaded_models_for(owner))
    except S.SpecError as exc:
        raise CommandError(f"{path}: invalid experiment spec:\n" + "\n".join(f"  {e}" for e in exc.errors)) \
            from None
    return data, dataclasses.replace(exp, functions=resolve_uploaded_functions(owner, exp.functions))


class Command(BaseCommand):
    help = "Import a spec file and run all its variants x repeats, printing a result row per trial."

    def add_arguments(self, parser):
        parser.add_argument("spec", help="experiment spec file (JSON or YAML)")
        parser.add_argument("--inline", action="store_true",
                            help="run the trials in this process, one after another (no Celery worker needed)")
        parser.add_argument("--json", dest="json_out", metavar="OUT",
                            help="write {experiment, trials: [result rows]} to this file")
        parser.add_argument("--repeats", type=int, help="repeats per variant (overrides the spec's)")
        parser.add_argument("--owner", default=DEFAULT_OWNER,
                            help=f"username that owns the experiment (created if missing; default {DEFAULT_OWNER})")

    def handle(self, *args, spec, inline, json_out, repeats, owner, **options):
        owner_user = self._owner(owner)
        try:
            data = spec_io.load_spec_file(spec)
            experiment = self._import(owner_user, data)
            run = (services.experiment_run(experiment=experiment, user=experiment.owner, repeats=repeats, enqueue=False) if inline
                   else services.experiment_run(experiment=experiment, user=owner_user, repeats=repeats))
        except S.SpecError as exc:
            raise CommandError(f"{spec}: invalid experiment spec:\n" + "\n".join(f"  {e}" for e in exc.errors)) \
                from None
        try:
            self.stdout.write(f"{experiment.name}: run {run[0].run_number}, {len(run)} trial(s)"
                              f"{' inline' if inline else ' via Celery'}")
            # What it will take, before it starts: inline runs one trial after another here; via Celery, every live
            # worker of the pool takes one at a time.
            plan = selectors.experiment_plan(spec=spec_io.experiment_to_spec(experiment), repeats=repeats,
                                             workers=None if inline else selectors.pool_workers(experiment.device))
            self.stdout.write(f"{plan['text']} (workload time; cold starts come on top)")
            self.stdout.write(header())
        except KeyboardInterrupt:  # Ctrl-C before the wait began: the trials are queued (or running) already
            interrupted = self._cancel_pending({t.id for t in run})
        else:
            interrupted = self._run_inline(run) if inline else self._wait(run)
        self._finish(run, experiment, json_out, interrupted)

    def _finish(self, run: list[Trial], experiment: Experiment, json_out: str | None, interrupted: bool) -> None:
        """Write the JSON if asked; exit 130 when interrupted, 1 when any trial failed (with the reasons)."""
        final = list(Trial.objects.filter(id__in=[t.id for t in run]).order_by("id"))
        if json_out:
            self._write_json(json_out, experiment, final)
        failed = [t for t in final if t.status == Trial.Status.FAILED]
        if interrupted:
            raise CommandError("interrupted: unfinished trials were cancelled", returncode=130)
        if failed:
            reasons = "\n".join(f"  {t.variant_name} #{t.repeat}: {t.error}" for t in failed)
            raise CommandError(f"{len(failed)} of {len(final)} trial(s) failed:\n{reasons}")

    # ---- setup ------------------------------------------------------------------------------------------
    def _owner(self, username: str):
        User = get_user_model()
        user, created = User.objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()  # a command-line owner: it never logs in until given a password
            user.save(update_fields=["password"])
        return user

    def _import(self, owner, data) -> Experiment:
        name = data.get("name").strip() if isinstance(data, dict) and isinstance(data.get("name"), str) else None
        existing = (Experiment.objects.filter(owner=owner, name=name).order_by("-updated").first()
                    if name else None)
        experiment = services.experiment_import(owner=owner, data=data, experiment=existing)
        self.stdout.write(f"{'updated' if existing else 'imported'} experiment {experiment.name!r} "
                          f"({experiment.code}) for {owner.get_username()}")
        return experiment

    # ---- inline -----------------------------------------------------------------------------------------
    def _run_inline(self, run: list[Trial]) -> bool:
        conn = redis.Redis.from_url(_redis_url(), socket_timeout=2, socket_connect_timeout=2)
        try:
            conn.ping()
        except redis.RedisError:
            conn = None
            self.stderr.write("warning: Redis is not reachable: running without the device lease (make sure "
                              "no worker uses this device) and without live page updates")
        stop = threading.Event()
        previous = signal.getsignal(signal.SIGINT)

        def on_sigint(signum, frame):
            # First Ctrl-C: stop the running trial cleanly (it is stored as cancelled) and skip the rest.
            stop.set()
            signal.signal(signal.SIGINT, previous)  # a second Ctrl-C interrupts at once

        signal.signal(signal.SIGINT, on_sigint)
        worker = f"inline@{socket.gethostname()}"
        try:
            for trial in run:
                if stop.is_set():
                    services.trial_cancel(trial=trial)
                    self._print(trial)
                    continue
                self._run_one_inline(trial, worker, conn, stop)
                self._print(trial)
        finally:
            signal.signal(signal.SIGINT, previous)
        return stop.is_set()

    def _run_one_inline(self, trial: Trial, worker: str, conn, stop: threading.Event) -> None:
        from workers.tasks import run_trial_waiting  # imports torch: only when running inline

        run_trial_waiting(trial, worker=worker, redis_conn=conn, stop=stop, on_wait=self.stderr.write)

    # ---- via Celery -------------------------------------------------------------------------------------
    def _wait(self, run: list[Trial]) -> bool:
        pending = {t.id for t in run}
        last_progress = ""
        try:
            while pending:
                done = list(Trial.objects.filter(id__in=pending, status__in=Trial.FINISHED).order_by("id"))
                for trial in done:
                    pending.discard(trial.id)
                    self._print(trial)
                progress = self._progress(pending)
                if progress and progress != last_progress:
                    self.stderr.write(progress)
                    last_progress = progress
                if pending:
                    time.sleep(POLL_S)
        except KeyboardInterrupt:
            return self._cancel_pending(pending)
        return False

    def _cancel_pending(self, pending: set[int]) -> bool:
        """Ctrl-C: cancel the unfinished trials and wait a little for them to close. Returns True (interrupted)."""
        self.stderr.write("interrupted: cancelling unfinished trials…")
        for trial in Trial.objects.filter(id__in=pending):
            services.trial_cancel(trial=trial)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while pending and time.monotonic() < deadline:
            for trial in Trial.objects.filter(id__in=pending, status__in=Trial.FINISHED):
                pending.discard(trial.id)
                self._print(trial)
            time.sleep(0.5)
        for trial in Trial.objects.filter(id__in=pending):
            self.stderr.write(f"  {trial.variant_name} #{trial.repeat} is still {trial.status}")
        return True

    def _progress(self, pending: set[int]) -> str:
        parts = []
        queued: set[str] = set()
        n_queued = 0
        for trial in Trial.objects.filter(id__in=pending).order_by("id"):
            if trial.status == Trial.Status.RUNNING:
                parts.append(f"running {trial.variant_name} #{trial.repeat} ({trial.windows.count()} s done)")
            elif trial.status == Trial.Status.QUEUED:
                n_queued += 1
                queued.add(trial.queue)
        if n_queued:
            parts.append(f"{n_queued} queued (for a worker on {', '.join(sorted(queued))})")
        return "; ".join(parts)

    # ---- output -----------------------------------------------------------------------------------------
    def _print(self, trial: Trial) -> None:
        trial.refresh_from_db()
        self.stdout.write(format_row(selectors.trial_result_row(trial)))
        if trial.error:
            self.stdout.write(f"    {trial.error}")

    def _write_json(self, path: str, experiment: Experiment, final: list[Trial]) -> None:
        order = {t.id: i for i, t in enumerate(final)}
        document = {
            "experiment": {"code": str(experiment.code), "name": experiment.name,
                           "spec": final[0].spec if final else spec_io.experiment_to_dict(experiment)},
            "trials": [selectors.trial_result_row(t) for t in sorted(final, key=lambda t: order[t.id])],
        }
        Path(path).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        self.stdout.write(f"wrote {path}")


def _redis_url() -> str:
    from django.conf import settings

    return settings.REDIS_URL
