"""Reads. Pages, the API, reports and commands get experiments, trials and figures from here.

Access rule: a user sees only their own experiments and trials; anything else is "not found" (404, never
403), so codes of other people's experiments do not leak. Every figure shown for a trial comes from
`trial_result_row`, so the page, the API and the `run_experiment` JSON always agree.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from django.db.models import (
    Case,
    CharField,
    Count,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.http import Http404
from django.utils import timezone

from workers.records import COLD_START_PHASES

from .models import Experiment, Pin, PriceEntry, RunSpec, Trial, TrialWindow

STATUSES = ("draft", "queued", "running", "finished", "failed", "cancelled")
LATENCY_KEYS = ("p50", "p90", "p95", "p99", "p999", "max", "mean")
COLD_START_KEYS = ("p50", "max")
COST_KEYS = ("serverless_per_1k_usd", "provisioned_per_1k_usd", "serverless_per_1k_good_usd",
             "provisioned_per_1k_good_usd", "monthly_serverless_usd", "monthly_provisioned_usd", "monthly_note",
             "time_compression")


# ---- experiments ------------------------------------------------------------------------------------
def _latest_run_count(status: str) -> Coalesce:
    latest_run = Trial.objects.filter(experiment=OuterRef("experiment")).order_by("-run_number").values("run_number")[:1]
    counted = (Trial.objects.filter(experiment=OuterRef("pk"), status=status, run_number=Subquery(latest_run))
               .order_by().values("experiment").annotate(n=Count("pk")).values("n"))
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


def _with_run_status(qs: QuerySet) -> QuerySet:
    """Annotate the latest run: its number, its trial counts by status and the status it adds up to."""
    qs = qs.annotate(
        latest_run=Subquery(Trial.objects.filter(experiment=OuterRef("pk")).order_by("-run_number")
                            .values("run_number")[:1], output_field=IntegerField()),
        trial_count=Coalesce(Subquery(Trial.objects.filter(experiment=OuterRef("pk")).order_by()
                                      .values("experiment").annotate(n=Count("pk")).values("n"),
                                      output_field=IntegerField()), Value(0)),
        **{f"{s}_count": _latest_run_count(s) for s in Trial.Status.values},
    )
    finished = Q(succeeded_count__gt=0) | Q(failed_count__gt=0) | Q(cancelled_count__gt=0)
    return qs.annotate(run_status=Case(
        When(latest_run__isnull=True, then=Value("draft")),
        When(running_count__gt=0, then=Value("running")),
        # Some trials done and others still waiting: the run is under way between two trials.
        When(Q(queued_count__gt=0) & finished, then=Value("running")),
        When(queued_count__gt=0, then=Value("queued")),
        When(failed_count__gt=0, then=Value("failed")),
        When(cancelled_count__gt=0, then=Value("cancelled")),
        default=Value("finished"),
        output_field=CharField(),
    ))


def experiment_list_for(*, user) -> QuerySet:
    """The user's experiments, most recently changed first, each annotated with its latest run.

    Annotations: `latest_run` (number, None if never run), `trial_count` (all runs), `queued_count`,
    `running_count`, `succeeded_count`, `failed_count`, `cancelled_count` (latest run only) and
    `run_status` (what `experiment_status` returns).
    """
    if not getattr(user, "is_authenticated", False):
        return Experiment.objects.none()
    return _with_run_status(Experiment.objects.filter(owner=user).select_related("accelerator", "owner"))


def capacity_get_for(*, user, code: Any):
    """The user's capacity search with this code; Http404 for unknown codes and for anyone else's."""
    from .models import CapacitySearch

    code = _uuid_or_404(code)
    if not getattr(user, "is_authenticated", False):
        raise Http404("No such capacity search.")
    try:
        return CapacitySearch.objects.select_related("experiment", "probes_experiment").get(code=code, owner=user)
    except CapacitySearch.DoesNotExist:
        raise Http404("No such capacity search.") from None


def experiment_get_for(*, user, code: Any) -> Experiment:
    """The user's experiment with this code; Http404 for unknown codes and for anyone else's."""
    code = _uuid_or_404(code)
    if not getattr(user, "is_authenticated", False):
        raise Http404("No such experiment.")
    try:
        return Experiment.objects.select_related("accelerator", "owner", "slo").get(code=code, owner=user)
    except Experiment.DoesNotExist:
        raise Http404("No such experiment.") from None


def experiment_status(experiment: Experiment) -> str:
    """Status of the latest run: draft (never run), queued, running, finished, failed or cancelled."""
    return _with_run_status(Experiment.objects.filter(pk=experiment.pk)).values_list("run_status", flat=True).get()


def experiment_with_status(experiment: Experiment) -> Experiment:
    """The experiment read afresh with the annotations of `experiment_list_for` (latest run, counts, status)."""
    return _with_run_status(Experiment.objects.filter(pk=experiment.pk).select_related("accelerator", "owner")).get()


def _uuid_or_404(code: Any) -> uuid.UUID:
    try:
        return code if isinstance(code, uuid.UUID) else uuid.UUID(str(code))
    except (TypeError, ValueError):
        raise Http404("No such object.") from None


# ---- trials -----------------------------------------------------------------------------------------
def trial_get_for(*, user, code: Any) -> Trial:
    """The trial with this code if it belongs to one of the user's experiments; Http404 otherwise."""
    code = _uuid_or_404(code)
    if not getattr(user, "is_authenticated", False):
        raise Http404("No such trial.")
    try:
        return Trial.objects.select_related("experiment", "variant").get(code=code, experiment__owner=user)
    except Trial.DoesNotExist:
        raise Http404("No such trial.") from None


def experiment_trials(*, experiment: Experiment, run_number: int | None = None) -> QuerySet:
    """All trials of an experiment (or of one run), newest run first, then by variant name and repeat."""
    qs = experiment.trials.select_related("experiment")
    return qs.filter(run_number=run_number) if run_number is not None else qs


def run_spec_parts(run_spec_ids: Iterable[int], keys: Sequence[str]) -> dict[int, dict]:
    """Top-level parts (`keys`: "slo", "variants"...) of frozen specs by RunSpec id, in one query, extracted by the
    database: the rest of the spec, a trace of megabytes included, is never read. A trial's is `trial.run_spec_id`;
    the whole spec is `trial.spec`."""
    ids = set(run_spec_ids)
    if not ids:
        return {}
    rows = RunSpec.objects.filter(pk__in=ids).values_list("pk", *(f"spec__{k}" for k in keys))
    return {pk: dict(zip(keys, values, strict=True)) for pk, *values in rows}


def trial_windows(trial: Trial, *, after_index: int | None = None) -> list[dict]:
    """The trial's per-second windows, oldest first, each with its `index` (`after_index`: only newer ones)."""
    qs = TrialWindow.objects.filter(trial=trial).order_by("index")
    if after_index is not None:
        qs = qs.filter(index__gt=after_index)
    return [{"index": w.index, **(w.data or {}), "t_s": w.t_s} for w in qs]


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def trial_result_row(trial: Trial) -> dict:
    """One trial's figures, shaped once for pages, the API and reports. Figures are None until it has a summary.

    `latency_ms` counts every request (dropped, failed and unfinished ones as beyond the run: a percentile
    whose rank falls among them is None, and `unfinished` says how many there were); `latency_completed_ms`
    counts the completed ones only. `slo_verdict` is met / not_met / inconclusive with its reasons; summaries
    stored before it existed get it from their `slo_met` (and their latency_ms, completed-only, is also their
    latency_completed_ms).
    """
    s = trial.summary or {}
    latency = s.get("latency_ms") or {}
    completed = s.get("latency_completed_ms")
    if completed is None and latency and "unfinished" not in latency:
        completed = latency
    completed = completed or {}
    verdict = s.get("slo_verdict")
    if verdict is None and s.get("slo_met") is not None:
        verdict = {"verdict": "met" if s["slo_met"] else "not_met", "reasons": list(s.get("slo_reasons") or [])}
    cold = s.get("cold_start_ms") or {}
    cost = s.get("cost") or {}
    phases = s.get("cold_start_phases_ms") or {}
    dispatch = s.get("dispatch") or {}
    return {
        "trial": str(trial.code),
        "variant": trial.variant_name,
        "repeat": trial.repeat,
        "run_number": trial.run_number,
        "status": trial.status,
        "device": trial.device or s.get("device") or None,
        "device_id": trial.device_id or None,  # the physical device (its lease): which of a pool's workers ran it
        "error": trial.error or None,
        # From the row (Run copied them from the frozen spec): the planned run, known before any summary.
        "run_s": trial.run_s,
        "expected_requests": trial.expected_requests,
        "requests": s.get("requests"),
        "completed": s.get("completed"),
        "dropped": s.get("dropped"),
        "errors": s.get("errors"),
        "latency_ms": {k: latency.get(k) for k in LATENCY_KEYS},
        "latency_completed_ms": {k: completed.get(k) for k in LATENCY_KEYS},
        "unfinished": latency.get("unfinished"),
        "slo_percentile_ci_ms": s.get("slo_percentile_ci_ms"),
        "slo_met": s.get("slo_met"),
        "slo_verdict": verdict,
        "violation_rate": s.get("violation_rate"),
        "throughput_rps": s.get("throughput_rps"),
        "goodput_rps": s.get("goodput_rps"),
        "drain_s": s.get("drain_s"),
        "completed_in_drain": s.get("completed_in_drain"),
        "cold_starts": s.get("cold_starts"),
        "cold_start_ms": {k: cold.get(k) for k in COLD_START_KEYS},
        "mean_batch_size": s.get("mean_batch_size"),
        # Per-1,000 and monthly figures only: totals depend on the run length and mislead side by side.
        "cost": {k: cost.get(k) for k in COST_KEYS},
        "cold_start_phases_ms": {k: phases.get(k) for k in COLD_START_PHASES} if phases else None,
        "prewarms": s.get("prewarms"),
        "requests_paid_cold_start": s.get("requests_paid_cold_start"),
        "dispatch": {"behind": dispatch.get("behind"), "lag_p99_us": dispatch.get("lag_p99_us"),
                     "lag_max_us": dispatch.get("lag_max_us"), "behind_threshold_us": dispatch.get("behind_threshold_us")}
        if dispatch else None,
        "notes": list(s.get("notes") or []),
        # How the run was made: replayed faster, instances as processes or threads, a modelled delay.
        "time_compression": s.get("time_compression", cost.get("time_compression")),
        "runtime": s.get("runtime"),
        "isolation": s.get("isolation") or (s.get("hardware") or {}).get("isolation"),
        "platform_delay_ms": (s.get("platform_delay_ms") or {}).get("value"),
        # Simulated from measured profiles (workers.platform.sim), not measured: every page says so.
        "simulated": bool(s.get("simulated")) or trial.simulation is not None,
        "simulation": _simulation_brief(s.get("simulation"), trial.simulation),
        "hardware": s.get("hardware"),
        "started_at": _iso(trial.started_at),
        "finished_at": _iso(trial.finished_at),
    }


def _simulation_brief(summary_sim: dict | None, asked: dict | None) -> dict | None:
    """How a simulated trial was simulated: fleet size, placement, and the latest validation of its profiles (the
    largest relative p50/p99 error a validate_simulator run found for them, with its date), for the badge."""
    if summary_sim is None and asked is None:
        return None
    sim = summary_sim or {}
    vals = [p.get("validation") for p in sim.get("profiles") or [] if p.get("validation")]
    errs = [v["max_latency_rel_err"] for v in vals if v.get("max_latency_rel_err") is not None]
    return {"devices": sim.get("devices") or (asked or {}).get("devices") or 1,
            "placement": sim.get("placement") or (asked or {}).get("placement"),
            "validated": bool(vals), "validation_max_rel_err": max(errs) if errs else None,
            "validation_date": max(v["date"] for v in vals) if vals else None}


def experiment_results(*, experiment: Experiment, run_number: int | None = None) -> list[dict]:
    """Result rows of one run (the latest by default), in the run's variant order, then by repeat."""
    if run_number is None:
        run_number = experiment.trials.order_by("-run_number").values_list("run_number", flat=True).first()
        if run_number is None:
            return []
    trials = list(experiment.trials.filter(run_number=run_number))
    if not trials:
        return []
    # The order of the variants as they were when the run was queued, not as edited since: Run creates a run's
    # trials in its frozen spec's variant order (a sweep's expanded in place), so the first id of each says it.
    # No spec is read: a list or a poll must not load megabytes of trace.
    order: dict[str, int] = {}
    for t in sorted(trials, key=lambda t: t.id):
        order.setdefault(t.variant_name, len(order))
    trials.sort(key=lambda t: (order[t.variant_name], t.repeat))
    return [trial_result_row(t) for t in trials]


def experiment_runs(*, experiment: Experiment) -> list[int]:
    """Run numbers of the experiment, newest first."""
    return list(experiment.trials.order_by("-run_number").values_list("run_number", flat=True).distinct())


# ---- catalogue ----------------------------------------------------------------------------------------
def price_list() -> QuerySet:
    return PriceEntry.objects.order_by("name")


def model_list() -> list[dict]:
    """Model zoo keys with their default input shapes (no torch import)."""
    from workers.zoo import ModelError, default_input_shape, model_keys

    out = []
    for key in model_keys():
        try:
            shape: list[int] | None = list(default_input_shape(key))
        except ModelError:  # a user model whose factory declares no default shape
            shape = None
        out.append({"key": key, "default_input_shape": shape})
    return out


# ---- workers --------------------------------------------------------------------------------------------
def worker_devices() -> dict | None:
    """The devices that running workers report serving (see worker_registry), or None when Redis cannot be
    read (then nobody knows, and pages say nothing either way).

    `{"devices": {"cpu": ["cpu-1@host"], "auto": [...]}, "resolves": {"auto": ["cpu"]}, "workers": [...]}`:
    device name -> hostnames of the workers serving it; what auto (and bare cuda) mean on those workers.
    """
    import redis
    from django.conf import settings

    from . import worker_registry

    try:
        conn = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            reports = worker_registry.read_reports(conn)
        finally:
            conn.close()
    except redis.RedisError:
        return None
    devices: dict[str, list[str]] = {}
    resolves: dict[str, list[str]] = {}
    for r in reports:
        for d in r.get("devices") or []:
            devices.setdefault(str(d), []).append(str(r.get("hostname")))
        for d, target in (r.get("resolves") or {}).items():
            if target and target not in resolves.setdefault(str(d), []):
                resolves[str(d)].append(str(target))
    return {"devices": devices, "resolves": resolves, "workers": reports}


# ---- the compare basket ---------------------------------------------------------------------------------
def pinned_trials(*, user) -> QuerySet:
    """The user's pinned trials, in the order they were pinned, with their experiment (one query)."""
    if not getattr(user, "is_authenticated", False):
        return Trial.objects.none()
    return (Trial.objects.filter(pins__user=user, experiment__owner=user)
            .select_related("experiment", "variant").order_by("pins__created", "pins__id"))


def pinned_trial_codes(*, user) -> set[str]:
    """Codes (as strings) of the user's pinned trials: what the pin / unpin buttons need."""
    if not getattr(user, "is_authenticated", False):
        return set()
    return {str(c) for c in Pin.objects.filter(user=user).values_list("trial__code", flat=True)}


def pins_for(*, user) -> QuerySet:
    """The user's pins (trial and experiment joined), in the order they were pinned."""
    if not getattr(user, "is_authenticated", False):
        return Pin.objects.none()
    return Pin.objects.filter(user=user, trial__experiment__owner=user).select_related("trial", "trial__experiment")


# ---- run plans and sweep progress ---------------------------------------------------------------------------
def pool_workers(device: str, devices: dict | None = None) -> list[str] | None:
    """Hostnames of the live workers that take trials of this experiment device (its pool), or None when
    Redis cannot be read."""
    devices = worker_devices() if devices is None else devices
    if devices is None:
        return None
    return sorted(set(devices["devices"].get(device, [])))


def experiment_plan(*, spec, repeats: int | None = None, workers: list[str] | None = None) -> dict:
    """What pressing Run queues, before it is pressed: variants, trials, the workload time they add up to on one
    device and on the pool's live workers (`workers`). Workload time only: cold starts and the drain add to it."""
    from workers import spec as S

    plan = S.run_plan(spec, repeats=repeats)
    out = plan.to_dict(len(workers) if workers else None)
    out["text"] = (f"{plan.variants} variant{'s' * (plan.variants != 1)}, {plan.trials} "
                   f"trial{'s' * (plan.trials != 1)}, about {S.duration_text(plan.total_run_s)} of run time")
    if workers and len(workers) > 1:
        out["text"] += (f"; about {S.duration_text(plan.run_s_on(len(workers)))} on the {len(workers)} workers "
                        "of its pool")
    out["workers"] = len(workers) if workers is not None else None
    return out


FINISHED = ("succeeded", "failed", "cancelled")


def sweep_progress(*, experiment: Experiment, run_number: int | None = None) -> dict:
    """One run's progress by worker: {"run", "totals": {done, running, queued, failed, total}, "workers":
    [{worker, device_id, done, running, failed, live}], "queue", "pool_workers", "finished"}. Queued trials belong to no worker
    yet: they wait in the pool's queue until a worker of the pool is free."""
    runs = experiment_runs(experiment=experiment)
    run = run_number if run_number in runs else (runs[0] if runs else None)
    totals = {"done": 0, "running": 0, "queued": 0, "failed": 0, "total": 0}
    by_worker: dict[str, dict] = {}
    queue = ""
    from workers import spec as S

    from .services import SIM_QUEUE

    left_s = 0.0  # workload seconds still to run: the queued trials' run_s and what the running ones have left
    now = timezone.now()
    rows = (experiment.trials.filter(run_number=run).values("status", "worker", "device_id", "queue", "run_s",
                                                            "started_at")
            if run is not None else [])
    for r in rows:
        totals["total"] += 1
        queue = queue or r["queue"]
        if r["status"] == "queued":
            totals["queued"] += 1
            left_s += r["run_s"] or 0.0
            continue
        if r["status"] == "running" and r["started_at"]:
            left_s += max(0.0, (r["run_s"] or 0.0) - (now - r["started_at"]).total_seconds())
        if not r["worker"]:  # cancelled before any worker claimed it
            totals["done"] += 1
            continue
        w = by_worker.setdefault(r["worker"], {"worker": r["worker"], "device_id": r["device_id"], "done": 0,
                                               "running": 0, "failed": 0})
        if r["status"] == "running":
            w["running"] += 1
            totals["running"] += 1
        else:
            w["done"] += 1
            totals["done"] += 1
            if r["status"] == "failed":
                w["failed"] += 1
                totals["failed"] += 1
    live = pool_workers(experiment.device)
    for hostname in live or []:  # a live worker of the pool that has taken none of these trials yet
        by_worker.setdefault(hostname, {"worker": hostname, "device_id": "", "done": 0, "running": 0, "failed": 0})
    for w in by_worker.values():
        w["live"] = None if live is None else w["worker"] in live
    # Real trials run one per device at a time, so the pool's live workers share what is left; simulated ones run
    # faster than their run time, so no estimate is given for them (None).
    slots = max(1, len(live or []), totals["running"])
    remaining_s = None if queue == SIM_QUEUE or not (totals["queued"] or totals["running"]) else left_s / slots
    return {"run": run, "runs": runs, "totals": totals, "queue": queue, "pool_workers": live,
            "remaining_s": remaining_s, "remaining_text": None if remaining_s is None else S.duration_text(remaining_s),
            "workers": sorted(by_worker.values(), key=lambda w: w["worker"]),
            "finished": bool(totals["total"]) and totals["done"] == totals["total"]}
