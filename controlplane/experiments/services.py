"""Writes. Every change to experiments and trials made by a page, the API or a command goes through here.

Each service owns its `transaction.atomic()`: on any error nothing is saved. Side effects that others
must not see before the commit (enqueueing a trial, deleting replaced files) are scheduled with
`transaction.on_commit`. Invalid input is reported as `workers.spec.SpecError`, the same error (with
field paths) that the spec validator raises, so every caller shows problems the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import re
from collections.abc import Iterable
from datetime import timedelta

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Max
from django.http import Http404
from django.utils import timezone

from controlplane.registry.selectors import uploaded_models_for
from workers import spec as S

from . import spec_io
from .models import Experiment, Function, Pin, PriceEntry, RunSpec, SLOTarget, Trial, Variant, Workload
from .trials import CANCEL_GONE_AFTER_HEARTBEATS, HEARTBEAT_S, WORKER_LOST, trial_announce

log = logging.getLogger(__name__)

NAME_MAX_LEN = Experiment._meta.get_field("name").max_length
VARIANT_NAME_MAX_LEN = 64  # workers.spec.NAME_RE


# ---- experiments ------------------------------------------------------------------------------------
def experiment_create(*, owner, spec: S.ExperimentSpec) -> Experiment:
    """Store a new experiment. The spec is validated again, so no caller can store what the engine rejects."""
    return _experiment_save(owner=owner, spec=_revalidated(spec, owner))


def experiment_update(*, experiment: Experiment, spec: S.ExperimentSpec) -> Experiment:
    """Replace an experiment's settings, functions, workloads and variants with `spec`.

    The code and the trials stay. Variants are matched by name, so a variant that keeps its name keeps
    its row and its trials' link to it; a removed variant's trials keep their `variant_name`.
    """
    return _experiment_save(experiment=experiment, spec=_revalidated(spec, experiment.owner))


def experiment_import(*, owner, data: dict, experiment: Experiment | None = None) -> Experiment:
    """Validate a spec dict (from a file, the API or a form) and create or replace an experiment from it."""
    _refuse_trace_paths(data)
    spec = S.parse_experiment(data, uploaded_models=uploaded_models_for(experiment.owner if experiment else owner))
    if experiment is None:
        return _experiment_save(owner=owner, spec=spec)
    return _experiment_save(experiment=experiment, spec=spec)


def experiment_clone(*, experiment: Experiment, owner, name: str | None = None) -> Experiment:
    """A new experiment with the same settings (not the trials), named "<name> (copy)" by default."""
    new_name = name if name is not None else f"{experiment.name} (copy)"
    if name is None and len(new_name) > NAME_MAX_LEN:
        new_name = f"{experiment.name[: NAME_MAX_LEN - len(' (copy)') - 1]}… (copy)"
    spec = dataclasses.replace(spec_io.experiment_to_spec(experiment), name=new_name)
    return experiment_create(owner=owner, spec=spec)


def experiment_delete(*, experiment: Experiment) -> None:
    """Delete an experiment with its trials. Stored trace and artifact files go once the delete commits."""
    with transaction.atomic():
        files = _stored_files(experiment)
        experiment.delete()
        transaction.on_commit(functools.partial(_delete_files, files))


def _revalidated(spec: S.ExperimentSpec, owner) -> S.ExperimentSpec:
    # Forms build specs from the per-section parsers; the whole-experiment rules (unique names, workloads
    # naming known functions, request bounds, uploaded models the owner has) are only checked by parse_experiment.
    return S.parse_experiment(S.experiment_to_dict(spec), uploaded_models=uploaded_models_for(owner))


def _refuse_trace_paths(data: object) -> None:
    # Only spec files on the server's own disk may name a path (spec_io.load_spec_file inlines it); a
    # document from the API or a form naming one would otherwise read an arbitrary server file.
    if not isinstance(data, dict):
        return
    entries = spec_io._workload_entries(data)
    errors = [S.FieldError(f"{path}.trace_path", "only spec files may name a trace file; send the trace's text "
                                                 "in trace_content")
              for path, w in entries if "trace_path" in w]
    if errors:
        raise S.SpecError(errors)


def _price_entry(name: str | None) -> PriceEntry | None:
    if name is None:
        return None
    entry = PriceEntry.objects.filter(name=name).first()
    if entry is None:
        known = ", ".join(PriceEntry.objects.order_by("name").values_list("name", flat=True)) or "none"
        raise S.SpecError([S.FieldError("accelerator", f"unknown price entry {name!r} (known: {known})")])
    return entry


def _experiment_save(*, spec: S.ExperimentSpec, owner=None, experiment: Experiment | None = None) -> Experiment:
    saved_files: list[str] = []
    try:
        with transaction.atomic():
            accelerator = _price_entry(spec.accelerator)
            sweep = S.sweep_to_dict(spec.sweep) if spec.sweep else None
            replaced_files: list[str] = []
            if experiment is None:
                experiment = Experiment.objects.create(
                    owner=owner, name=spec.name, description=spec.description, notes=spec.notes,
                    device=spec.device, accelerator=accelerator, sweep=sweep)
            else:
                # Row lock: two concurrent edits of one experiment would interleave their deletes and inserts.
                experiment = Experiment.objects.select_for_update().get(pk=experiment.pk)
                experiment.name, experiment.description, experiment.notes = spec.name, spec.description, spec.notes
                experiment.device, experiment.accelerator = spec.device, accelerator
                experiment.sweep = sweep
                experiment.save()
                replaced_files = [w.trace_file.name for w in experiment.workloads.all() if w.trace_file]
                # Workloads go with their functions (CASCADE) and the split workload explicitly.
                experiment.workloads.all().delete()
                experiment.functions.all().delete()
            SLOTarget.objects.update_or_create(experiment=experiment, defaults=dataclasses.asdict(spec.slo))
            functions = {}
            for i, f in enumerate(spec.functions):
                functions[f.name] = Function.objects.create(
                    experiment=experiment, position=i, name=f.name, model_key=f.model,
                    input_shape=list(f.input_shape) if f.input_shape is not None else None,
                    options=dict(f.options), weight=f.weight, model_runtime=f.model_runtime)
            for w in spec.workloads:
                saved_files.extend(_workload_create(experiment, w, functions))
            _variants_replace(experiment, spec.variants, set(spec.sweep.variant_names) if spec.sweep else set())
            transaction.on_commit(functools.partial(_delete_files, replaced_files))
    except BaseException:
        # The rows rolled back; files written to storage do not, so remove them here.
        _delete_files(saved_files)
        raise
    return experiment


def _workload_create(experiment: Experiment, w: S.WorkloadSpec, functions: dict[str, Function]) -> list[str]:
    workload = Workload(experiment=experiment, function=functions[w.function] if w.function else None,
                        pattern=w.pattern, params=dict(w.params), duration_s=w.duration_s,
                        time_compression=w.time_compression, seed=w.seed)
    saved: list[str] = []
    if w.trace is not None:
        workload.trace_format = w.trace.format
        workload.trace_filename = w.trace.filename
        workload.function_hash = w.trace.function_hash
        workload.trace_file.save(_safe_filename(w.trace.filename, w.trace.format), ContentFile(w.trace.content.encode()),
                                 save=False)
        saved.append(workload.trace_file.name)
    workload.save()
    return saved


def _safe_filename(filename: str, fmt: str) -> str:
    # The user's file name is kept in trace_filename; the stored name only needs to be harmless.
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", filename.rsplit("/", 1)[-1]).strip("._")
    return stem or f"trace-{fmt}.txt"


def _variant_fields(v: S.VariantSpec, position: int, from_sweep: bool = False) -> dict:
    return dict(position=position, from_sweep=from_sweep, **Variant.spec_fields(v))


def _variants_replace(experiment: Experiment, variants: Iterable[S.VariantSpec], generated: set[str]) -> None:
    existing = {v.name: v for v in experiment.variants.all()}
    wanted = {v.name for v in variants}
    experiment.variants.exclude(name__in=wanted).delete()  # their trials keep variant_name (SET_NULL)
    for i, v in enumerate(variants):
        row = existing.get(v.name)
        fields = _variant_fields(v, i, v.name in generated)
        if row is None:
            Variant.objects.create(experiment=experiment, name=v.name, **fields)
        else:
            for key, value in fields.items():
                setattr(row, key, value)
            row.save()


def _stored_files(experiment: Experiment) -> list[str]:
    names = [w.trace_file.name for w in experiment.workloads.all() if w.trace_file]
    names += [t.artifact.name for t in experiment.trials.exclude(artifact="").exclude(artifact__isnull=True)]
    return names


def _delete_files(names: Iterable[str]) -> None:
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:
            pass  # already gone; a stray file costs disk, never correctness


# ---- variants ---------------------------------------------------------------------------------------
def variant_clone(*, variant: Variant, name: str | None = None) -> Variant:
    """A copy of a variant in the same experiment, named "<name>-copy" (then "-copy-2", ...) by default."""
    with transaction.atomic():
        experiment = Experiment.objects.select_for_update().get(pk=variant.experiment_id)
        taken = set(experiment.variants.values_list("name", flat=True))
        if experiment.variants.filter(from_sweep=False).count() >= S.MAX_VARIANTS:
            raise S.SpecError([S.FieldError("variants", f"an experiment has at most {S.MAX_VARIANTS} variants")])
        if name is None:
            name = _unique_copy_name(variant.name, taken)
        elif not isinstance(name, str) or not S.NAME_RE.match(name):
            raise S.SpecError([S.FieldError("name", "must be 1-64 letters, digits, '.', '_' or '-', starting with "
                                                    "a letter or digit")])
        elif name in taken:
            raise S.SpecError([S.FieldError("name", f"another variant is already named {name!r}")])
        position = (experiment.variants.aggregate(m=Max("position"))["m"] or 0) + 1
        fields = _variant_fields(variant.to_spec(), position)
        return Variant.objects.create(experiment=experiment, name=name, **fields)


def _unique_copy_name(base: str, taken: set[str]) -> str:
    n = 1
    while True:
        suffix = "-copy" if n == 1 else f"-copy-{n}"
        candidate = base[: VARIANT_NAME_MAX_LEN - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
        n += 1


# ---- running ----------------------------------------------------------------------------------------
def device_queue(device: str) -> str:
    """The Celery queue of a device pool: auto -> pool.auto, cpu -> pool.cpu, cuda:0 -> pool.cuda-0.

    A worker consumes its own device's queue plus the pools it can serve (a CPU-only host: pool.auto and
    pool.cpu), so a trial waits for a device of the kind it asked for.
    """
    if not S.DEVICE_RE.match(device or ""):
        raise S.SpecError([S.FieldError("device", "must be auto, cpu, cuda or cuda:N")])
    return "pool." + device.replace(":", "-")


INLINE_QUEUE = "inline"  # Trial.queue of trials run in the calling process (run_experiment --inline)
SIM_QUEUE = "sim"  # simulated trials: any host's sim workers (manage.py worker --sim-workers N) take them
MAX_SIM_DEVICES = 256


def simulation_options(data) -> dict:
    """The normalised `simulation` of simulated trials from what a form, the API or a command gave:
    {"devices": 1..256, "placement": "first_fit" | "load_pack", "profiles": {function: profile code}}.
    Raises SpecError naming the field."""
    from workers.platform.core import PLACEMENTS  # no torch: the core imports numpy only

    data = {} if data is None or data is True else data
    errors: list[S.FieldError] = []
    if not isinstance(data, dict):
        raise S.SpecError([S.FieldError("simulate", "must be an object with devices, placement, profiles")])
    unknown = sorted(set(data) - {"devices", "placement", "profiles"})
    if unknown:
        errors.append(S.FieldError(f"simulate.{unknown[0]}", "unknown field (known: devices, placement, profiles)"))
    devices = data.get("devices", 1)
    if isinstance(devices, bool) or not isinstance(devices, int) or not 1 <= devices <= MAX_SIM_DEVICES:
        errors.append(S.FieldError("simulate.devices", f"must be a whole number between 1 and {MAX_SIM_DEVICES}"))
    placement = data.get("placement", "first_fit")
    if placement not in PLACEMENTS:
        errors.append(S.FieldError("simulate.placement", f"must be one of: {', '.join(PLACEMENTS)}"))
    profiles = data.get("profiles") or {}
    if not isinstance(profiles, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in profiles.items()):
        errors.append(S.FieldError("simulate.profiles", "must map function names to profile codes"))
    if errors:
        raise S.SpecError(errors)
    return {"devices": devices, "placement": placement, "profiles": dict(profiles)}


def experiment_run(*, experiment: Experiment, user, repeats: int | None = None,
                   variant_names: list[str] | None = None, enqueue: bool = True,
                   simulate: dict | None = None) -> list[Trial]:
    """Queue one run: a Trial per variant x repeat, each enqueued on its device pool once this commits.

    Each trial points at the experiment spec frozen now (one RunSpec for the whole run), so editing the
    experiment later never changes what a queued or finished trial measures. `repeats` overrides every
    variant's own repeat count.
    `enqueue=False`: the trials are created for a runner in this process (queue "inline") and sent to
    no broker. `simulate` (see simulation_options): the trials are simulated from measured profiles, on the
    `sim` queue, instead of run on the device.
    """
    errors: list[S.FieldError] = []
    if repeats is not None and (isinstance(repeats, bool) or not isinstance(repeats, int)
                                or not 1 <= repeats <= S.MAX_REPEATS):
        errors.append(S.FieldError("repeats", f"must be a whole number between 1 and {S.MAX_REPEATS}"))
    if variant_names is not None and (not isinstance(variant_names, list | tuple) or not variant_names
                                      or not all(isinstance(n, str) for n in variant_names)):
        errors.append(S.FieldError("variants", "must be a non-empty list of variant names"))
        variant_names = None
    if errors:
        raise S.SpecError(errors)
    simulation = simulation_options(simulate) if simulate is not None else None
    with transaction.atomic():
        # Row lock: two presses of Run at once must get different run numbers.
        experiment = Experiment.objects.select_for_update().get(pk=experiment.pk)
        data = spec_io.experiment_to_dict(experiment)
        # The stored rows may predate a stricter validator, or name an uploaded model deleted since.
        spec = S.parse_experiment(data, uploaded_models=uploaded_models_for(experiment.owner))
        rows = {v.name: v for v in experiment.variants.all()}
        if variant_names is not None:
            unknown = [n for n in variant_names if n not in rows]
            if unknown:
                raise S.SpecError([S.FieldError("variants", f"no variant named {n!r} (known: "
                                                            f"{', '.join(rows)})") for n in unknown])
        if simulation is None:
            too_big = S.real_run_errors(spec)
            if too_big:
                raise S.SpecError(too_big)
        chosen = [v for v in spec.variants if variant_names is None or v.name in variant_names]
        last = experiment.trials.aggregate(m=Max("run_number"))["m"] or 0
        if simulation is not None:
            unknown = sorted(set(simulation["profiles"]) - {f.name for f in spec.functions})
            if unknown:
                raise S.SpecError([S.FieldError("simulate.profiles", f"no function named {unknown[0]!r}")])
        queue = (SIM_QUEUE if simulation is not None else device_queue(spec.device)) if enqueue else INLINE_QUEUE
        row = run_fields(experiment=experiment, spec=spec, data=data)
        trials = [
            Trial(experiment=experiment, variant=rows[v.name], variant_name=v.name, run_number=last + 1,
                  repeat=r, queue=queue, simulation=simulation, **row)
            for v in chosen for r in range(repeats if repeats is not None else v.repeats)
        ]
        Trial.objects.bulk_create(trials)
        # bulk_create sets ids on Postgres and SQLite; re-read by code anyway so the ids are certain.
        trials = list(Trial.objects.filter(code__in=[t.code for t in trials]).order_by("id"))
        if enqueue:
            # One callback for the whole run: one broker connection sends every message.
            transaction.on_commit(functools.partial(trials_enqueue, trial_ids=[t.id for t in trials]))
    if enqueue:  # after the commit: enqueued_at tells which messages went out (None: the broker was down)
        sent_at = dict(Trial.objects.filter(id__in=[t.id for t in trials]).values_list("id", "enqueued_at"))
        for trial in trials:
            trial.enqueued_at = sent_at.get(trial.id)
    return trials


# Beyond the workload's run time a trial needs time for cold starts, the drain (at most 60 s) and storing.
TRIAL_TIME_MARGIN_S = 900.0


TRIAL_HARD_LIMIT_AFTER_S = 120.0  # the hard time limit comes this long after the soft one


def trial_time_limits_s(run_s: float) -> tuple[float, float]:
    """(soft, hard) Celery time limits for a trial of `run_s` seconds of workload: its run time plus a margin, so
    a long trial is not cut off by a global limit and a stuck short one is not left running for an hour. Run
    stores the soft one on the trial (`Trial.time_limit_s`)."""
    soft = run_s + TRIAL_TIME_MARGIN_S
    return soft, soft + TRIAL_HARD_LIMIT_AFTER_S


def canonical_spec_json(data: dict) -> bytes:
    """The spec dict as canonical JSON (sorted keys, compact): what a RunSpec's hash and size are of."""
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("ascii")


def run_fields(*, experiment: Experiment, spec: S.ExperimentSpec, data: dict | None = None) -> dict:
    """The fields every trial of a run shares: its frozen spec, stored once (`run_spec_store`), and what the queue
    and the pages need from it, figured out once here (run time, expected requests, Celery time limit) so that
    nobody parses a spec again to show or send a trial. `data`: the spec dict as validated (default: `spec`'s)."""
    run_s = S.trial_run_s(spec)
    return dict(run_spec=run_spec_store(experiment=experiment, data=data if data is not None else
                                        S.experiment_to_dict(spec)),
                run_s=run_s, expected_requests=S.trial_requests(spec), time_limit_s=trial_time_limits_s(run_s)[0])


def run_spec_store(*, experiment: Experiment, data: dict) -> RunSpec:
    """The experiment's RunSpec holding `data` (a validated spec dict): the stored one when an earlier run froze
    the same spec, else a new one. Called under Run's row lock on the experiment."""
    raw = canonical_spec_json(data)
    digest = hashlib.sha256(raw).hexdigest()
    found = RunSpec.objects.filter(experiment=experiment, sha256=digest).only("id", "experiment_id", "sha256").first()
    if found is not None:
        return found
    return RunSpec.objects.create(experiment=experiment, sha256=digest, size_bytes=len(raw), spec=data)


BROKER_UNAVAILABLE = "queued, broker unavailable, will retry"


def trial_task_id(code) -> str:
    """The Celery task id of a trial's message: the same for every send and retry, so the reaper can tell
    whether the broker still holds a message for the trial (reaper.broker_trial_codes)."""
    return f"trial-{code}"


def trials_unsent(trials: Iterable[Trial]) -> int:
    """How many of a run's queued trials have no message in the broker yet (it was unavailable at Run)."""
    return sum(1 for t in trials if t.status == Trial.Status.QUEUED and t.queue != INLINE_QUEUE
               and t.enqueued_at is None)


def trials_enqueue(*, trial_ids: list[int]) -> int:
    """Send each queued trial's message to its device pool's queue and record when (`enqueued_at`).

    A broker outage is not an error here: the trials stay queued with no `enqueued_at`, Run says
    "queued, broker unavailable, will retry", and a worker's reaper sends them once the broker is back.
    Sending twice is harmless (the claim is a compare-and-set). Returns how many were sent.
    """
    from django.conf import settings
    from kombu.exceptions import KombuError, OperationalError

    from workers.tasks import execute_trial  # imported late: workers.tasks pulls in the Celery app

    rows = list(Trial.objects.filter(id__in=trial_ids, status=Trial.Status.QUEUED).exclude(queue=INLINE_QUEUE)
                .values_list("id", "code", "queue", "time_limit_s").order_by("id"))
    if not rows:
        return 0
    sent: list[int] = []
    # The connection from the settings each time (not one cached at import): what the settings say is
    # what is used, in a web process, a worker's reaper and a test alike.
    try:
        with execute_trial.app.connection_for_write(
                settings.CELERY_BROKER_URL, transport_options=dict(settings.CELERY_BROKER_TRANSPORT_OPTIONS)) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=2)
            for trial_id, code, queue, soft_s in rows:
                hard_s = soft_s + TRIAL_HARD_LIMIT_AFTER_S
                execute_trial.apply_async(args=[trial_id], queue=queue, soft_time_limit=soft_s, time_limit=hard_s,
                                          task_id=trial_task_id(code), connection=conn, retry=False)
                sent.append(trial_id)
    except (OperationalError, KombuError, OSError, ConnectionError) as exc:
        log.warning("broker unavailable: %d of %d trial(s) not sent yet (%s); the reaper will retry",
                    len(rows) - len(sent), len(rows), exc)
    # One UPDATE once the messages are out (a trial a worker has claimed meanwhile is left as it is).
    Trial.objects.filter(id__in=sent, status=Trial.Status.QUEUED).update(enqueued_at=timezone.now())
    return len(sent)


def _gone_before():
    # A running trial whose worker has missed this many heartbeats has nobody left to stop it.
    return timezone.now() - timedelta(seconds=HEARTBEAT_S * CANCEL_GONE_AFTER_HEARTBEATS)


def _cancel_running(ids, now) -> int:
    """Ask the workers of these running trials to stop; close at once those whose worker is gone."""
    gone = Trial.objects.filter(id__in=ids, status=Trial.Status.RUNNING, heartbeat_at__lt=_gone_before())
    gone_ids = list(gone.values_list("id", flat=True))
    closed = gone.update(status=Trial.Status.CANCELLED, finished_at=now, cancel_requested=True,
                         error=f"cancelled; {WORKER_LOST}: no heartbeat from its worker, so nothing was left to stop")
    for trial_id in gone_ids:
        trial_announce(trial_id)
    asked = Trial.objects.filter(id__in=ids, status=Trial.Status.RUNNING, cancel_requested=False).update(
        cancel_requested=True)
    return closed + asked


def trial_cancel(*, trial: Trial) -> Trial:
    """Cancel one trial: a queued one at once, a running one by asking its worker (it stops within 2 s), or
    at once when its worker is gone (no heartbeat for a few beats)."""
    # Conditional UPDATEs, not read-then-write: the worker may claim the trial between our read and write.
    now = timezone.now()
    with transaction.atomic():
        done = Trial.objects.filter(pk=trial.pk, status=Trial.Status.QUEUED).update(
            status=Trial.Status.CANCELLED, finished_at=now, cancel_requested=True)
        if done:
            trial_announce(trial.pk)  # an open live page learns at once; a running trial announces itself
        else:
            _cancel_running([trial.pk], now)
    trial.refresh_from_db()
    return trial


def experiment_cancel(*, experiment: Experiment) -> int:
    """Cancel every unfinished trial of an experiment; returns how many were cancelled or asked to stop."""
    now = timezone.now()
    with transaction.atomic():
        queued_ids = list(experiment.trials.filter(status=Trial.Status.QUEUED).values_list("id", flat=True))
        queued = Trial.objects.filter(id__in=queued_ids, status=Trial.Status.QUEUED).update(
            status=Trial.Status.CANCELLED, finished_at=now, cancel_requested=True)
        for trial_id in queued_ids:
            trial_announce(trial_id)
        running = _cancel_running(list(experiment.trials.filter(status=Trial.Status.RUNNING)
                                       .values_list("id", flat=True)), now)
    return queued + running


# ---- the compare basket -------------------------------------------------------------------------------------
PIN_LIMIT = 100  # trials one user may pin: the comparison page stays readable (and fast) at this size


def pin_add(*, user, trial: Trial) -> tuple[Pin, bool]:
    """Pin one of the user's trials for comparison. Returns (pin, created); pinning twice changes nothing.
    The caller has found the trial with `selectors.trial_get_for`; anyone else's trial is refused all the same."""
    if trial.experiment.owner_id != user.pk:
        raise Http404("No such trial.")
    with transaction.atomic():
        existing = Pin.objects.filter(user=user, trial=trial).first()
        if existing is not None:
            return existing, False
        if Pin.objects.filter(user=user).count() >= PIN_LIMIT:
            raise S.SpecError([S.FieldError("trial", f"the compare basket holds at most {PIN_LIMIT} trials; "
                                                     "unpin some first")])
        pin, created = Pin.objects.get_or_create(user=user, trial=trial)
    return pin, created


def pin_remove(*, user, trial: Trial) -> bool:
    """Unpin a trial; False when it was not pinned."""
    deleted, _ = Pin.objects.filter(user=user, trial=trial).delete()
    return bool(deleted)


def pins_clear(*, user) -> int:
    """Empty the user's basket; returns how many trials were unpinned."""
    deleted, _ = Pin.objects.filter(user=user).delete()
    return deleted


# ---- the price catalogue ------------------------------------------------------------------------------------
def price_entry_save(*, entry: PriceEntry) -> PriceEntry:
    """Store a new or edited price entry (staff only: the views check). Validated against the model's
    constraints first, so the catalogue never holds a negative price or a zero billing granularity."""
    entry.full_clean()
    with transaction.atomic():
        entry.save()
    return entry
