"""Capacity searches in the control plane: start one (the comparison page's button, the API, `manage.py capacity`),
run it (the Celery task `capacity.search` in workers/tasks.py, or the command in its own process: both call
`capacity_run_by_id`), cancel it, and read the latest finished one of a variant for the comparison.

The search itself is `workers.capacity.search` (one implementation); this module hands it the probe: each probe is
an ordinary trial of the experiment "<name> capacity <variant>" (that variant only, `probes_experiment`), whose
workload is set to the probe's rate before the probe runs as one run of it in this process, under the device lease
like any trial (`workers.tasks.run_trial_waiting`; simulated probes take none). A real search's first trial, at the
spec's own rate, gives the starting estimate (its median latency stands in for the batch-1 service time); a
simulated one starts from the stored profiles' batch-1 service time. Each finished probe is appended to
`CapacitySearch.probes` (the page and the API show progress from it); the end stores `CapacityResult.to_dict()`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections.abc import Callable

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from controlplane.registry.selectors import uploaded_models_for
from workers import capacity as C
from workers import spec as S
from workers.records import json_safe

from . import services, spec_io
from .models import CapacitySearch, Experiment, Trial

log = logging.getLogger(__name__)

MAX_BUDGET = 50
MAX_TOLERANCE = 0.5
MIN_PROBE_S = 1.0
# A probe is a trial: its run time plus the trials' margin (cold starts, drain, storing), and an inconclusive one is
# repeated twice as long; the task's limit covers the budget of them.
TASK_MARGIN_S = 300.0
RUNNER_GONE_S = 60.0  # a running search with no probe unfinished and none finished for this long has no runner


class ProbeFailed(RuntimeError):
    """A probe trial failed: the search stops with its reason."""


def search_options(data: dict) -> dict:
    """{variant, simulated, budget, probe_s, tolerance} from what a form, the API or the command gave, checked.
    Raises SpecError naming the field."""
    errors: list[S.FieldError] = []
    variant = data.get("variant")
    if not isinstance(variant, str) or not variant:
        errors.append(S.FieldError("variant", "must name one of the experiment's variants"))
    simulated = data.get("simulated", False)
    if not isinstance(simulated, bool):
        errors.append(S.FieldError("simulated", "must be true or false"))
    budget = data.get("budget", C.DEFAULT_BUDGET)
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= MAX_BUDGET:
        errors.append(S.FieldError("budget", f"must be a whole number between 1 and {MAX_BUDGET}"))
    probe_s = data.get("probe_s")
    if probe_s is not None and (isinstance(probe_s, bool) or not isinstance(probe_s, int | float)
                                or not MIN_PROBE_S <= probe_s <= S.MAX_DURATION_S):
        errors.append(S.FieldError("probe_s", f"must be between {MIN_PROBE_S:g} and {S.MAX_DURATION_S:g} seconds"))
    tolerance = data.get("tolerance", C.DEFAULT_TOLERANCE)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 < tolerance <= MAX_TOLERANCE:
        errors.append(S.FieldError("tolerance", f"must be above 0 and at most {MAX_TOLERANCE:g}"))
    if errors:
        raise S.SpecError(errors)
    return {"variant": variant, "simulated": simulated, "budget": budget,
            "probe_s": float(probe_s) if probe_s is not None else None, "tolerance": float(tolerance)}


def probes_spec(spec: S.ExperimentSpec, variant: str) -> S.ExperimentSpec:
    """The probes' experiment: `spec` with that variant alone, one repeat, no sweep, named "<name> capacity
    <variant>". Raises SpecError (field `variant`) for an unknown variant or a workload whose rate cannot scale."""
    var = next((v for v in spec.variants if v.name == variant), None)
    if var is None:
        raise S.SpecError([S.FieldError("variant", f"no variant named {variant!r} (known: "
                                                   f"{', '.join(v.name for v in spec.variants)})")])
    name = f"{spec.name} capacity {var.name}"[:services.NAME_MAX_LEN]
    out = dataclasses.replace(spec, name=name, variants=(dataclasses.replace(var, repeats=1),), sweep=None)
    try:
        C.offered_rate_rps(S.TrialSpec(out, out.variants[0]))
    except ValueError as exc:
        raise S.SpecError([S.FieldError("variant", str(exc))]) from None
    return out


def capacity_start(*, experiment: Experiment, user, options: dict, enqueue: bool = True) -> CapacitySearch:
    """A queued search of one of the experiment's variants (options: `search_options`). enqueue=True: sent to the
    device pool's queue (simulated: the `sim` queue) once this commits; False: for a runner in this process
    (`manage.py capacity`). One search per variant at a time: its probes share one experiment."""
    opts = search_options(options)
    spec = S.parse_experiment(spec_io.experiment_to_dict(experiment), uploaded_models=uploaded_models_for(experiment.owner))
    probes = probes_spec(spec, opts["variant"])
    if not opts["simulated"]:
        too_big = S.real_run_errors(probes)
        if too_big:
            raise S.SpecError(too_big)
    with transaction.atomic():
        Experiment.objects.select_for_update().get(pk=experiment.pk)  # two presses at once: one search
        if CapacitySearch.objects.filter(experiment=experiment, variant_name=opts["variant"],
                                         status__in=(CapacitySearch.Status.QUEUED, CapacitySearch.Status.RUNNING)
                                         ).exists():
            raise S.SpecError([S.FieldError("variant", f"a capacity search of {opts['variant']!r} is already queued "
                                                       "or running: cancel it or wait for it")])
        existing = Experiment.objects.filter(owner=experiment.owner, name=probes.name).order_by("-updated").first()
        probes_exp = (services.experiment_update(experiment=existing, spec=probes) if existing is not None
                      else services.experiment_create(owner=experiment.owner, spec=probes))
        queue = ((services.SIM_QUEUE if opts["simulated"] else services.device_queue(spec.device)) if enqueue
                 else services.INLINE_QUEUE)
        search = CapacitySearch.objects.create(
            owner=user, experiment=experiment, variant_name=opts["variant"], probes_experiment=probes_exp,
            simulated=opts["simulated"], budget=opts["budget"], probe_s=opts["probe_s"], tolerance=opts["tolerance"],
            queue=queue, stage="queued")
        if enqueue:
            run_s = opts["probe_s"] or max(w.run_s for w in probes.workloads)
            soft_s = (opts["budget"] + 1) * (2 * run_s + TASK_MARGIN_S)
            transaction.on_commit(functools.partial(_enqueue, search.id, queue, soft_s))
    return search


def _enqueue(search_id: int, queue: str, soft_s: float) -> None:
    """Send the search's message (the broker from the settings each time, as `services.trials_enqueue` does). A
    broker outage leaves it queued and says so on the search: start it again later."""
    from django.conf import settings
    from kombu.exceptions import KombuError, OperationalError

    from workers.tasks import capacity_search_task  # imported late: workers.tasks pulls in the Celery app

    try:
        with capacity_search_task.app.connection_for_write(
                settings.CELERY_BROKER_URL, transport_options=dict(settings.CELERY_BROKER_TRANSPORT_OPTIONS)) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=2)
            capacity_search_task.apply_async(args=[search_id], queue=queue, soft_time_limit=soft_s,
                                             time_limit=soft_s + 120, connection=conn, retry=False)
    except (OperationalError, KombuError, OSError, ConnectionError) as exc:
        log.warning("capacity search %s: broker unavailable (%s)", search_id, exc)
        _fail(search_id, "the broker was unavailable when it was started: start it again")


def capacity_cancel(*, search: CapacitySearch) -> CapacitySearch:
    """Cancel a search: a queued one at once; a running one stops before its next probe, and its running probe
    trial is cancelled like any trial. A running search whose runner is gone (killed with its worker: no probe
    unfinished and none finished for RUNNER_GONE_S) is closed at once."""
    now = timezone.now()
    with transaction.atomic():
        done = CapacitySearch.objects.filter(pk=search.pk, status=CapacitySearch.Status.QUEUED).update(
            status=CapacitySearch.Status.CANCELLED, cancel_requested=True, finished_at=now, stage="cancelled")
        if not done and CapacitySearch.objects.filter(pk=search.pk, status=CapacitySearch.Status.RUNNING).update(
                cancel_requested=True):
            probes = Trial.objects.filter(experiment_id=search.probes_experiment_id)
            if search.probes_experiment_id:
                services.experiment_cancel(experiment=Experiment.objects.get(pk=search.probes_experiment_id))
            last = (probes.aggregate(m=Max("finished_at"))["m"]
                    or CapacitySearch.objects.values_list("started_at", flat=True).get(pk=search.pk))
            if (not probes.exclude(status__in=Trial.FINISHED).exists() and last is not None
                    and (now - last).total_seconds() > RUNNER_GONE_S):
                CapacitySearch.objects.filter(pk=search.pk, status=CapacitySearch.Status.RUNNING).update(
                    status=CapacitySearch.Status.CANCELLED, finished_at=now,
                    stage="cancelled; its runner was gone (no probe for a while)")
    search.refresh_from_db()
    return search


def bracket(probes: list[dict]) -> list[float | None]:
    """[highest passing rate, lowest failing rate above it] among the probes that count (for progress)."""
    counted = [p for p in probes if p.get("counted", True)]
    fail = [p["rate_rps"] for p in counted if p["verdict"] == "not_met"]
    ok = [p["rate_rps"] for p in counted if p["verdict"] != "not_met" and (not fail or p["rate_rps"] < min(fail))]
    lo = max(ok, default=None)
    hi = min((r for r in fail if lo is None or r > lo), default=None)
    return [lo, hi]


def latest_results(pairs: set[tuple[int, str]]) -> dict[tuple[int, str], CapacitySearch]:
    """The latest succeeded search of each (experiment id, variant name): one query."""
    if not pairs:
        return {}
    out: dict[tuple[int, str], CapacitySearch] = {}
    qs = (CapacitySearch.objects.filter(experiment_id__in={e for e, _ in pairs}, status=CapacitySearch.Status.SUCCEEDED)
          .only("code", "experiment_id", "variant_name", "simulated", "result", "finished_at")
          .order_by("-finished_at", "-id"))
    for s in qs:
        key = (s.experiment_id, s.variant_name)
        if key in pairs and key not in out:
            out[key] = s
    return out


def knee_series(search: CapacitySearch, *, key: str | None = None, label: str | None = None) -> dict:
    """One variant's series of the knee chart (p99 against offered rate): the probes that count, by rate."""
    result = search.result or {}
    probes = result["probes"] if "probes" in result else (search.probes or [])  # finished: no deferred field read
    return {"key": key or search.variant_name, "label": label or search.variant_name, "search": str(search.code),
            "simulated": search.simulated, "capacity_rps": result.get("capacity_rps"),
            "conservative_capacity_rps": result.get("conservative_capacity_rps"),
            "points": [[p["rate_rps"], p["p99_ms"], p["verdict"]]
                       for p in sorted((p for p in probes if p.get("counted", True)), key=lambda p: p["rate_rps"])]}


def capacity_cell(search: CapacitySearch | None) -> dict | None:
    """A comparison row's `capacity`: the latest finished search of its variant, or None."""
    if search is None:
        return None
    r = search.result or {}
    return {"search": str(search.code), "url": search.get_absolute_url(), "simulated": search.simulated,
            "capacity_rps": r.get("capacity_rps"), "conservative_capacity_rps": r.get("conservative_capacity_rps"),
            "p99_ms_at_capacity": r.get("p99_ms_at_capacity"),
            "cost_per_1k_usd_at_capacity": r.get("cost_per_1k_usd_at_capacity"),
            "serverless_per_1k_usd_at_capacity": r.get("serverless_per_1k_usd_at_capacity"),
            "stopped": r.get("stopped"), "finished_at": search.finished_at.isoformat() if search.finished_at else None}


# ---- running ------------------------------------------------------------------------------------------------
def _fail(search_id: int, error: str) -> None:
    CapacitySearch.objects.filter(id=search_id).exclude(status__in=CapacitySearch.FINISHED).update(
        status=CapacitySearch.Status.FAILED, error=error[:4000], finished_at=timezone.now(), stage="failed")


class _Prober:
    """Runs each probe as one run of the probes' experiment, in this process."""

    def __init__(self, search: CapacitySearch, *, worker: str, redis_conn, stop: threading.Event,
                 should_stop: Callable[[], bool], say: Callable[[str], None]):
        self.search, self.worker, self.conn, self.stop, self.should_stop, self.say = (
            search, worker, redis_conn, stop, should_stop, say)
        self.experiment = search.probes_experiment
        self.simulate = services.simulation_options({}) if search.simulated else None

    def __call__(self, ts: S.TrialSpec) -> tuple[dict, str]:
        from workers.tasks import run_trial_waiting  # imports torch: only where probes run

        try:
            services.experiment_update(experiment=self.experiment, spec=ts.experiment)
            trial = services.experiment_run(experiment=self.experiment, user=self.search.owner, repeats=1,
                                            enqueue=False, simulate=self.simulate)[0]
        except S.SpecError as exc:
            raise ProbeFailed("probe: " + "; ".join(str(e) for e in exc.errors)) from None
        if self.should_stop():
            services.trial_cancel(trial=trial)
        else:
            run_trial_waiting(trial, worker=self.worker, redis_conn=self.conn, stop=self.stop,
                              should_stop=self.should_stop, on_wait=self.say)
        trial.refresh_from_db()
        if trial.status == Trial.Status.FAILED:
            raise ProbeFailed(f"probe trial {trial.code} failed: {trial.error}")
        if trial.status != Trial.Status.SUCCEEDED:  # cancelled: should_stop is true, the search ends
            return {"slo_verdict": {"verdict": "inconclusive"}}, str(trial.code)
        return trial.summary, str(trial.code)

    def estimate(self, ts: S.TrialSpec) -> float:
        if self.search.simulated:
            from workers import devices
            from workers.tasks import simulation_profiles

            device = devices.resolve_device(ts.experiment.device).name
            profiles = simulation_profiles(ts, device, owner=self.search.owner)
            return C.estimate_rps(ts, [C.profile_batch1_ms(p) for p in profiles])
        # Real: the median latency of a trial at the spec's own rate stands in for the batch-1 service time (close to
        # it when that rate is light). It is stored like the probes but is not one of them.
        summary, code = self(ts)
        p50 = (summary.get("latency_ms") or {}).get("p50") or 1.0
        self.say(f"estimate from a trial at the spec's rate ({code}): p50 {p50:.1f} ms")
        return C.estimate_rps(ts, [p50] * len(ts.experiment.functions))


def capacity_run_by_id(search_id: int, *, worker: str, redis_conn, stop: threading.Event | None = None,
                       on_probe: Callable[[C.Probe], None] | None = None,
                       say: Callable[[str], None] | None = None) -> str:
    """Run one queued search to its end in this process. Returns "succeeded", "cancelled", "failed" or "skipped"
    (not queued any more). `redis_conn` holds each real probe's device lease (None: none, as `run_experiment
    --inline` without Redis); setting `stop` ends it like a cancel."""
    from workers.devices import DeviceError

    now = timezone.now()
    if not CapacitySearch.objects.filter(id=search_id, status=CapacitySearch.Status.QUEUED).update(
            status=CapacitySearch.Status.RUNNING, worker=worker[:200], started_at=now, stage="starting"):
        return "skipped"
    search = CapacitySearch.objects.select_related("owner", "probes_experiment").get(id=search_id)
    stop = stop or threading.Event()

    def should_stop() -> bool:
        if not stop.is_set() and CapacitySearch.objects.filter(id=search_id, cancel_requested=True).exists():
            stop.set()
        return stop.is_set()

    def stage(line: str) -> None:
        CapacitySearch.objects.filter(id=search_id).update(stage=line[:200])
        if say is not None:
            say(line)

    probes: list[dict] = []

    def probe_done(p: C.Probe) -> None:
        probes.append(json_safe(p.to_dict()))
        lo, hi = bracket(probes)
        line = (f"probe {len(probes)} of at most {search.budget}: {p.rate_rps:.3g} req/s {p.verdict}; bracket "
                f"{'-' if lo is None else f'{lo:.3g}'} to {'-' if hi is None else f'{hi:.3g}'} req/s")
        CapacitySearch.objects.filter(id=search_id).update(probes=probes, stage=line[:200])
        if on_probe is not None:
            on_probe(p)

    try:
        if search.probes_experiment is None:
            raise LookupError("the probes' experiment was deleted")
        spec = S.parse_experiment(spec_io.experiment_to_dict(search.probes_experiment),
                                  uploaded_models=uploaded_models_for(search.owner))
        trial = S.TrialSpec(spec, spec.variants[0])
        prober = _Prober(search, worker=worker, redis_conn=redis_conn, stop=stop, should_stop=should_stop, say=stage)
        estimate = prober.estimate(trial)
        CapacitySearch.objects.filter(id=search_id).update(estimate_rps=estimate)
        stage(f"searching from {estimate:.3g} req/s")
        result = C.search(trial, prober, estimate=estimate, probe_run_s=search.probe_s, tolerance=search.tolerance,
                          budget=search.budget, should_stop=should_stop, on_probe=probe_done)
    except (ProbeFailed, S.SpecError, LookupError, DeviceError, ValueError) as exc:
        _fail(search_id, str(exc) or type(exc).__name__)
        return "failed"
    except Exception as exc:  # noqa: BLE001 - a search must never be left "running" by its own runner
        log.exception("capacity search %s: failed", search_id)
        _fail(search_id, f"internal error: {type(exc).__name__}: {exc}")
        return "failed"
    status = CapacitySearch.Status.CANCELLED if result.stopped == "cancelled" else CapacitySearch.Status.SUCCEEDED
    data = json_safe(result.to_dict())
    CapacitySearch.objects.filter(id=search_id).update(
        status=status, result=data, probes=data["probes"], finished_at=timezone.now(), stage=result.stopped)
    return str(status)

