"""Celery execution of trials and profiles: the one module in workers/ that knows both Celery and Django.

`execute_trial` is thin: it calls `run_trial_by_id`, which `run_experiment --inline` also calls
directly, so a trial runs the same way with or without a broker:

  peek (still queued?) -> resolve the device -> take the device lease -> claim (compare-and-set)
  -> run the engine beside a monitor thread -> store the outcome -> release the lease.

The lease is taken BEFORE the claim: a trial that finds its device busy stays "queued" and its task
retries later, instead of sitting in "running" while it waits. The claim is a conditional UPDATE, so a
duplicate or redelivered message for a trial that is no longer queued does nothing.

`measure_profile_task` ("profiles.measure") measures a profile (workers.profiling) the same way: on its device
pool's queue, under the device lease (renewed while it runs), claimed by a conditional UPDATE; `manage.py
profile` calls `run_profile_by_id` directly.

Nothing stuck, nothing lost (controlplane.experiments.reaper does the rest):
- the lease is renewed by a `LeaseKeeper` thread of its own, never behind a database write; if it is lost,
  or the keeper or the monitor thread dies, the engine's `should_stop` says so and the trial fails with
  that reason;
- a pool process killed mid-trial puts its message back (`reject_on_worker_lost` on this task); the redelivery
  finds the trial running under a process that no longer exists, fails it "worker lost" and frees its lease;
- a finished trial's outcome goes to a result file beside its artifact first, then to the database with
  bounded retries; if the database stays down, the reaper stores the file later;
- a database or Redis error before the claim sends the message back (a retry) instead of dropping it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import random
import socket
import threading
import time
from pathlib import Path

import redis
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, connection

from controlplane.experiments import capacity, events, metrics, services
from controlplane.experiments.lease import (
    DeviceLease,
    LeaseBusy,
    LeaseKeeper,
    physical_device_id,
    release_token,
)
from controlplane.experiments.models import PriceEntry, Profile, Trial
from controlplane.experiments.profiles import services as profile_services
from controlplane.experiments.trials import (
    HEARTBEAT_S,
    result_file_for,
    trial_claim,
    trial_complete_from_file,
    trial_fail,
    trial_heartbeat,
    trial_store_result,
    trial_store_windows,
    trial_worker_lost,
    write_result_file,
)
from controlplane.registry.selectors import (
    resolve_uploaded_functions,
    upload_for_profile,
    uploaded_models_for,
)
from workers import profiling
from workers import spec as S
from workers.devices import DeviceError, gpu_uuid, resolve_device
from workers.engine import TrialFailed, run_trial
from workers.records import json_safe

log = logging.getLogger(__name__)

LEASE_TTL_S = settings.DEVICE_LEASE_TTL_S  # a crashed worker blocks its device at most this long
LEASE_RETRY_S = 5.0  # a trial whose device is busy is retried after this (plus jitter)
DEFAULT_PRICE = "cpu"  # price entry used when the experiment names no accelerator


class TrialMonitor(threading.Thread):
    """Runs beside the engine while a trial runs.

    Every `interval_s` it heart-beats (which also reads the cancel flag). A window the engine produces wakes
    it at once: it stores then publishes the window without waiting for the next tick, so a live page draws
    each second as soon as it ends (waiting for the tick added up to `interval_s` to every window, the first
    included). Storing before publishing means a page that connects at any moment sees every window exactly
    once in its snapshot or as an event. DB and Redis work stays off the engine's thread, which only appends
    to a queue and sets an event, so a slow database cannot delay the load generator. The device lease is
    not renewed here but by a `LeaseKeeper` of its own, so a slow database write cannot delay a renewal.

    If this thread dies of anything unexpected, `died` says why and `should_stop` turns true: nobody would
    heart-beat or see a cancel any more, so the engine must not go on.
    """

    def __init__(self, trial: Trial, keeper: LeaseKeeper | None, *, interval_s: float = HEARTBEAT_S,
                 publish: bool = True, stop: threading.Event | None = None, functions: tuple[str, ...] = ()):
        super().__init__(name=f"trial-{trial.id}-monitor", daemon=True)
        self.trial_id = trial.id
        self.code = trial.code
        self.keeper = keeper
        self.interval_s = interval_s
        self.publish = publish
        self.cancel_requested = threading.Event()
        self.external_stop = stop  # set by an inline runner on Ctrl-C
        self.died = ""  # why this thread ended early ("" while it runs or after a normal stop)
        self._died = threading.Event()
        self._windows: queue.SimpleQueue[tuple[int, dict]] = queue.SimpleQueue()
        self._next_index = 0
        self._index_lock = threading.Lock()
        self._done = threading.Event()
        self._wake = threading.Event()  # set by on_window and stop: flush now rather than at the next tick
        self._metric_labels = metrics.trial_labels(trial, functions)
        self._metric_t_s = 0.0  # end of the last window folded into the metrics

    @property
    def lease_lost(self) -> threading.Event:
        return self.keeper.lost if self.keeper is not None else _NEVER

    # -- called from the engine's threads --------------------------------------------------------------
    def on_window(self, window: dict) -> None:
        with self._index_lock:
            index = self._next_index
            self._next_index += 1
        self._windows.put((index, json_safe(window)))
        self._wake.set()

    def should_stop(self) -> bool:
        return (self.cancel_requested.is_set() or self.lease_lost.is_set() or self._died.is_set()
                or (self.external_stop is not None and self.external_stop.is_set()))

    # -- the thread ---------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            next_tick = time.monotonic() + self.interval_s
            while True:
                self._wake.wait(max(0.0, next_tick - time.monotonic()))
                self._wake.clear()
                if self._done.is_set():
                    break
                if time.monotonic() >= next_tick:
                    stored = self._tick()
                    next_tick = time.monotonic() + self.interval_s
                else:  # woken by a new window
                    stored = self._flush_or_retry_later(limit=FLUSH_CHUNK)
                if stored and not self._windows.empty():
                    # A simulated run hands over thousands of windows in seconds: storing and publishing them
                    # all in one go kept the heartbeat waiting past TRIAL_STALE_AFTER_S on a busy host (the
                    # reaper then failed a live simulation as "stopped heart-beating"). One chunk a turn, and
                    # the heartbeat's turn comes between chunks (after a failed store: at the next tick).
                    self._wake.set()
            # The rest, still a chunk at a time with the heartbeat between: a simulation ends with thousands of
            # windows not yet published, and storing them took longer than TRIAL_STALE_AFTER_S on a busy host.
            while not self._windows.empty():
                if time.monotonic() >= next_tick:
                    self._heartbeat()
                    next_tick = time.monotonic() + self.interval_s
                if not self._flush_or_retry_later(limit=FLUSH_CHUNK):
                    break  # the database is down: the engine's caller stores what is left (pending_windows)
        except BaseException as exc:  # noqa: BLE001 - the engine must learn that nobody watches it any more
            self.died = f"the trial's monitor thread died: {type(exc).__name__}: {exc}"
            self._died.set()
            log.exception("trial %s: monitor thread died", self.trial_id)
        finally:
            _close_db()  # this thread's own DB connection

    def stop(self) -> None:
        self._done.set()
        self._wake.set()
        self.join()

    def _tick(self) -> bool:
        self._heartbeat()
        return self._flush_or_retry_later(limit=FLUSH_CHUNK)

    def _heartbeat(self) -> None:
        try:
            if trial_heartbeat(trial_id=self.trial_id):
                self.cancel_requested.set()
        except DatabaseError:
            # A database blip must not kill a trial that is measuring fine; the next tick tries again.
            log.warning("trial %s: heartbeat failed", self.trial_id, exc_info=True)
            _close_db()

    def _flush_or_retry_later(self, limit: int | None = None) -> bool:
        try:
            self.flush(limit)
            return True
        except DatabaseError:
            log.warning("trial %s: storing windows failed; retrying at the next tick", self.trial_id, exc_info=True)
            _close_db()
            return False

    def pending_windows(self, limit: int | None = None) -> list[tuple[int, dict]]:
        """Windows not stored yet (the database was down): the result file keeps them. `limit`: at most that
        many, the oldest first."""
        out = []
        while limit is None or len(out) < limit:
            try:
                out.append(self._windows.get_nowait())
            except queue.Empty:
                break
        return out

    def flush(self, limit: int | None = None) -> None:
        batch = self.pending_windows(limit)
        if not batch:
            return
        try:
            trial_store_windows(trial_id=self.trial_id, windows=batch)
        except DatabaseError:
            for item in batch:  # keep them for the next attempt, in order
                self._windows.put(item)
            raise
        if self.publish:
            for index, window in batch:
                events.publish(self.code, events.window_event(self.code, index, window))
        try:  # the Prometheus figures (controlplane.experiments.metrics); a Redis blip must not fail the trial
            self._metric_t_s = metrics.record_windows(self._metric_labels, [w for _, w in batch],
                                                      last_t_s=self._metric_t_s)
        except redis.RedisError:
            log.warning("trial %s: recording metrics failed", self.trial_id, exc_info=True)


_NEVER = threading.Event()  # lease_lost of a trial run without a lease
FLUSH_CHUNK = 200  # windows stored and published per turn of the trial monitor (see TrialMonitor.run)


def _close_db() -> None:
    # After an outage this thread's connection stays broken (no request cycle closes it): drop it, so the
    # next query opens a new one.
    try:
        connection.close()
    except DatabaseError:
        pass


def with_db_retries(action, *, what: str, budget_s: float | None = None):
    """Run `action()` until it succeeds, retrying database errors with exponential backoff (0.25 s, 0.5 s, ...
    at most 8 s apart) for at most `budget_s` (RESULT_STORE_RETRY_S). Raises the last error past the budget."""
    budget_s = settings.RESULT_STORE_RETRY_S if budget_s is None else budget_s
    deadline = time.monotonic() + budget_s
    delay_s = 0.25
    while True:
        try:
            return action()
        except DatabaseError:
            _close_db()
            if time.monotonic() + delay_s > deadline:
                raise
            log.warning("%s: database unavailable; retrying in %.2f s", what, delay_s, exc_info=True)
            time.sleep(delay_s)  # backoff between retries, not work
            delay_s = min(delay_s * 2, 8.0)


def trial_spec(trial: Trial) -> S.TrialSpec:
    """The plain spec the engine runs, from the trial's frozen experiment spec. Raises SpecError/LookupError."""
    owner = trial.experiment.owner
    experiment = S.parse_experiment(trial.spec, uploaded_models=uploaded_models_for(owner))
    # An uploaded model is named in the spec; the trial runs the owner's stored file, checked by its SHA-256.
    experiment = dataclasses.replace(experiment, functions=resolve_uploaded_functions(owner, experiment.functions))
    variant = next((v for v in experiment.variants if v.name == trial.variant_name), None)
    if variant is None:
        raise LookupError(f"the frozen spec has no variant named {trial.variant_name!r}")
    # The price of the accelerator named in the frozen spec; "cpu" when it names none. Prices are looked
    # up now, not frozen: the catalogue is the user's current view of what things cost.
    name = experiment.accelerator or DEFAULT_PRICE
    entry = PriceEntry.objects.filter(name=name).first()
    if entry is None and name != DEFAULT_PRICE:
        raise LookupError(f"accelerator {name!r} is not in the price catalogue any more")
    return S.TrialSpec(experiment=experiment, variant=variant, repeat=trial.repeat,
                       price=entry.to_spec() if entry is not None else None, trial_id=str(trial.code))


def artifact_path_for(trial: Trial) -> Path:
    path = Path(settings.MEDIA_ROOT) / "artifacts" / f"{trial.code}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def device_lease_id(info) -> str:
    """The physical device this worker runs `info` on, as leases name it: DEVICE_ID when set (several workers
    of one host standing for several devices), else the GPU's UUID, else host:device."""
    return physical_device_id(info.name, configured=settings.DEVICE_ID, gpu_uuid=gpu_uuid(info))


def run_trial_by_id(trial_id: int, *, worker: str, redis_conn: redis.Redis | None, publish: bool = True,
                    lease_ttl_s: float = LEASE_TTL_S, heartbeat_s: float = HEARTBEAT_S,
                    stop: threading.Event | None = None) -> str:
    """Run one queued trial to its end in this process. Returns what happened: "succeeded", "cancelled",
    "failed" or "skipped" (not queued any more: someone else ran or cancelled it).

    `redis_conn` holds the device lease; None runs without one (only `run_experiment --inline` on a host
    with no Redis does that, and says so). Raises LeaseBusy when the device is leased by another trial:
    the trial is left queued for the caller to retry. Setting `stop` ends the run like a cancel.
    """
    trial = Trial.objects.filter(id=trial_id).first()
    if trial is not None and trial.status == Trial.Status.RUNNING and _run_by_a_dead_process(trial, worker):
        return _close_lost(trial, redis_conn)
    if trial is None or trial.status != Trial.Status.QUEUED:
        log.info("trial %s: not queued (%s): nothing to do", trial_id, trial.status if trial else "deleted")
        return "skipped"
    if trial.simulation is not None:
        return _run_simulated_by_id(trial, worker=worker, publish=publish, heartbeat_s=heartbeat_s, stop=stop)
    requested = str((trial.spec or {}).get("device") or "auto")
    try:
        spec = trial_spec(trial)
        info = resolve_device(spec.experiment.device)
        device = info.name
    except (S.SpecError, LookupError, DeviceError) as exc:
        # Nothing to run: record why on the trial (claimed first, so a duplicate message cannot race us).
        if trial_claim(trial_id=trial_id, worker=worker, device=requested) is None:
            return "skipped"
        trial_fail(trial_id=trial_id, error=_reason(exc))
        log.info("trial %s: failed before start: %s", trial_id, exc)
        return "failed"

    device_id = device_lease_id(info)
    # The owner names this process: a redelivered message can then tell that the process running the trial died.
    lease = (DeviceLease(redis_conn, device, owner=f"{worker}#{os.getpid()}", ttl_s=lease_ttl_s, device_id=device_id)
             if redis_conn is not None else None)
    if lease is not None:
        lease.acquire_or_raise()
    try:
        claimed = trial_claim(trial_id=trial_id, worker=worker, device=device, device_id=device_id,
                              lease_key=lease.key if lease else "", lease_token=lease.token if lease else "")
        if claimed is None:
            log.info("trial %s: claimed by someone else meanwhile: nothing to do", trial_id)
            return "skipped"
        log.info("trial %s: claimed by %s on %s", trial_id, worker, device)
        return _execute(claimed, spec, lease, publish=publish, heartbeat_s=heartbeat_s, stop=stop)
    finally:
        if lease is not None:
            try:
                lease.release()
            except redis.RedisError:
                log.warning("trial %s: could not release the lease on %s (it expires by itself)", trial_id,
                            device, exc_info=True)


def simulation_profiles(spec: S.TrialSpec, device: str, *, pinned: dict | None = None, owner=None) -> list[dict]:
    """The measured profile of each function the simulation draws from: the one pinned for it ({function name:
    profile code}), else the newest of its model on this device kind that `owner` may use (None: any). Each comes
    with its id and its latest validation. Raises LookupError saying what to measure."""
    from controlplane.experiments.models import Profile
    from controlplane.experiments.profiles.selectors import find_profile

    pinned = pinned or {}
    out = []
    for f in resolve_uploaded_functions(owner, spec.experiment.functions):
        if f.name in pinned:
            row = Profile.objects.filter(code=pinned[f.name], status=Profile.Status.SUCCEEDED).first()
            if row is None or (row.owner_id is not None and owner is not None and row.owner_id != owner.id):
                raise LookupError(f"function {f.name!r}: profile {pinned[f.name]} does not exist or is not measured")
        else:
            row = find_profile(*profiling.function_profile_parts(f), device, user=owner)
            if row is None:
                raise LookupError(f"function {f.name!r}: no profile of {f.model} on {device} to simulate from; "
                                  "measure one first (the Profile button, or manage.py profile SPEC)")
        out.append({**row.data, "id": str(row.code), "validation": row.validation})
    return out


def run_trial_waiting(trial: Trial, *, worker: str, redis_conn: redis.Redis | None, stop: threading.Event,
                      should_stop=None, on_wait=None) -> None:
    """Run one queued trial in this process (`run_experiment --inline`, a capacity search's probes), waiting while
    its device is leased by another trial: every 2 s it tries again, until `stop` is set or `should_stop()` says
    so, which cancels the trial. on_wait(line): told once that it waits."""
    waited = False
    while True:
        try:
            run_trial_by_id(trial.id, worker=worker, redis_conn=redis_conn, publish=redis_conn is not None, stop=stop)
            return
        except LeaseBusy as exc:
            if not waited and on_wait is not None:
                on_wait(f"waiting: {exc}")
            waited = True
            if stop.wait(2.0) or (should_stop is not None and should_stop()):
                services.trial_cancel(trial=trial)
                return


def _run_simulated_by_id(trial: Trial, *, worker: str, publish: bool, heartbeat_s: float,
                         stop: threading.Event | None) -> str:
    """A simulated trial: no device lease (nothing runs on the device), profiles of this host's device kind."""
    try:
        spec = trial_spec(trial)
        device = resolve_device(spec.experiment.device).name
        profiles = simulation_profiles(spec, device, pinned=(trial.simulation or {}).get("profiles"),
                                       owner=trial.experiment.owner)
    except (S.SpecError, LookupError, DeviceError) as exc:
        if trial_claim(trial_id=trial.id, worker=worker, device="simulated") is None:
            return "skipped"
        trial_fail(trial_id=trial.id, error=_reason(exc))
        log.info("trial %s: simulation failed before start: %s", trial.id, exc)
        return "failed"
    claimed = trial_claim(trial_id=trial.id, worker=worker, device=f"simulated {device}")
    if claimed is None:
        return "skipped"
    return _execute(claimed, spec, None, publish=publish, heartbeat_s=heartbeat_s, stop=stop, profiles=profiles,
                    fleet={"devices": trial.simulation.get("devices", 1),
                           "placement": trial.simulation.get("placement", "first_fit")})


def _lease_owner_pid(token: str) -> int | None:
    owner = token.split("|", 1)[0]
    _, _, pid = owner.rpartition("#")
    return int(pid) if pid.isdigit() else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_by_a_dead_process(trial: Trial, worker: str) -> bool:
    """True when this worker (same node name, so same host) claimed the trial in a process that is gone: the
    message came back because that pool process was killed (SIGKILL, out of memory, the hard time limit)."""
    if trial.worker != worker[:200] or not trial.lease_token:
        return False
    pid = _lease_owner_pid(trial.lease_token)
    return pid is not None and pid != os.getpid() and not _pid_alive(pid)


def _close_lost(trial: Trial, redis_conn: redis.Redis | None) -> str:
    pid = _lease_owner_pid(trial.lease_token)
    # The lease first: whoever sees the trial closed finds the device free.
    if redis_conn is not None and trial.lease_key:
        try:
            release_token(redis_conn, trial.lease_key, trial.lease_token)
        except redis.RedisError:
            log.warning("trial %s: could not free the dead process's lease (it expires by itself)", trial.id)
    if result_file_for(trial.code).exists():  # it finished, and died before storing: store what it measured
        if trial_complete_from_file(trial_id=trial.id, code=trial.code) is not None:
            log.info("trial %s: stored the result its dead process %s left", trial.id, pid)
            return "stored later"
    reason = (f"the process running it on {trial.worker} (pid {pid}) died (killed by a signal, out of memory "
              "or past the hard time limit); the windows measured until then are kept")
    trial_worker_lost(trial_id=trial.id, reason=reason)
    log.warning("trial %s: worker lost: %s", trial.id, reason)
    return "failed"


def _retry_when_leased(task, what: str, obj_id: int, exc: LeaseBusy):
    """The task's retry after LEASE_RETRY_S plus jitter, which keeps several waiting tasks from polling in lockstep."""
    countdown = LEASE_RETRY_S + random.uniform(0, LEASE_RETRY_S / 2)
    log.info("%s %s: %s; retrying in %.1f s", what, obj_id, exc, countdown)
    return task.retry(countdown=countdown, exc=exc)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (TrialFailed, S.SpecError, LookupError, DeviceError)):
        return str(exc) or type(exc).__name__
    if isinstance(exc, SoftTimeLimitExceeded):
        return (f"the trial ran past the time limit of {settings.CELERY_TASK_SOFT_TIME_LIMIT} s "
                "(TRIAL_SOFT_TIME_LIMIT_S) and was stopped")
    return f"internal error: {type(exc).__name__}: {exc}"


def _execute(trial: Trial, spec: S.TrialSpec, lease: DeviceLease | None, *, publish: bool,
             heartbeat_s: float, stop: threading.Event | None, profiles: list[dict] | None = None,
             fleet: dict | None = None) -> str:
    keeper = LeaseKeeper(lease, interval_s=heartbeat_s) if lease is not None else None
    if keeper is not None:
        keeper.start()
    monitor = TrialMonitor(trial, keeper, interval_s=heartbeat_s, publish=publish, stop=stop,
                           functions=tuple(f.name for f in spec.experiment.functions))
    monitor.start()
    artifact = artifact_path_for(trial)
    result = None
    error: Exception | None = None
    try:
        result = run_trial(spec, model_dir=Path(settings.MODEL_DIR), on_window=monitor.on_window,
                           should_stop=monitor.should_stop, artifact_path=artifact, profiles=profiles, fleet=fleet)
    except (TrialFailed, SoftTimeLimitExceeded) as exc:  # expected: the reason says it all, no traceback
        error = exc
    except Exception as exc:  # noqa: BLE001 - any failure must end as a failed trial with a reason
        log.exception("trial %s: the engine raised", trial.id)
        error = exc
    finally:
        monitor.stop()  # stores the last windows it can, so a failed trial keeps what it measured
        if keeper is not None:
            keeper.stop()

    if monitor.lease_lost.is_set():
        reason = (f"{keeper.reason}; the load was stopped at once, because another trial may have shared the "
                  "device, so the figures are not trustworthy")
    elif monitor.died:
        reason = f"{monitor.died}; the load was stopped"
    elif error is not None:
        reason = _reason(error)
    else:
        try:
            return _store_result(trial, result, monitor)
        except DatabaseError:
            # The result file is on disk; the reaper stores it once the database is back. Not failed: nothing
            # measured is lost, it is only late.
            log.exception("trial %s: the database stayed unavailable; the reaper will store %s", trial.id,
                          result_file_for(trial.code))
            return "stored later"
        except Exception as exc:  # noqa: BLE001 - a trial must never be left "running" by its own worker
            log.exception("trial %s: storing the result failed", trial.id)
            reason = f"the trial ran but its result could not be stored: {type(exc).__name__}: {exc}"
    last_windows = monitor.pending_windows()
    with_db_retries(lambda: trial_store_windows(trial_id=trial.id, windows=last_windows),
                    what=f"trial {trial.id}: storing its last windows")
    with_db_retries(lambda: trial_fail(trial_id=trial.id, error=reason), what=f"trial {trial.id}: failing it")
    log.info("trial %s: failed: %s", trial.id, reason)
    return "failed"


def _store_result(trial: Trial, result, monitor: TrialMonitor) -> str:
    # The engine's final windows replace the live ones (same indices); normally they are identical.
    windows = [(i, json_safe(w)) for i, w in enumerate(result.windows)]
    monitor.pending_windows()  # the engine's windows include these
    summary = json_safe(dict(result.summary or {}))
    if result.hardware and not summary.get("hardware"):
        summary["hardware"] = json_safe(result.hardware)
    status = Trial.Status.CANCELLED if result.status == "cancelled" else Trial.Status.SUCCEEDED
    # On disk first: if the database is down now, or this process dies before the store, nothing is lost.
    path = write_result_file(code=trial.code, status=status, summary=summary, windows=windows,
                             artifact_path=result.artifact_path)
    with_db_retries(lambda: trial_store_result(trial_id=trial.id, status=status, summary=summary, windows=windows,
                                               artifact_path=result.artifact_path),
                    what=f"trial {trial.id}: storing its result")
    path.unlink(missing_ok=True)
    log.info("trial %s: %s", trial.id, status)
    return str(status)


# reject_on_worker_lost: a pool process killed mid-trial (SIGKILL, out of memory, the hard time limit) puts its
# message back, and the redelivery closes the trial "worker lost" (_run_by_a_dead_process) instead of running it
# again, so a trial that kills its worker cannot do it in a loop. Only this task: another task redelivered after
# killing its worker would kill it again.
@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None,
             soft_time_limit=settings.CELERY_TASK_SOFT_TIME_LIMIT, time_limit=settings.CELERY_TASK_TIME_LIMIT)
def execute_trial(self, trial_id: int) -> str:
    """Run one trial (by id: tasks take ids, never model instances). Idempotent; see the module docstring."""
    worker = self.request.hostname or f"celery@{socket.gethostname()}"
    try:
        return run_trial_by_id(trial_id, worker=worker, redis_conn=redis_client())
    except LeaseBusy as exc:
        # Not a failure: the trial stays queued and this task comes back.
        raise _retry_when_leased(self, "trial", trial_id, exc) from None
    except (DatabaseError, redis.RedisError) as exc:
        # The database or Redis is down before the trial could start: acknowledging this message would leave
        # the trial queued with no message. Send it back; if even that fails, the reaper re-sends it.
        _close_db()
        countdown = LEASE_RETRY_S + random.uniform(0, LEASE_RETRY_S / 2)
        log.warning("trial %s: %s: %s; retrying in %.1f s", trial_id, type(exc).__name__, exc, countdown)
        raise self.retry(countdown=countdown, exc=exc) from None


# ---- profiles ---------------------------------------------------------------------------------------------
def run_profile_by_id(profile_id: int, *, worker: str, redis_conn: redis.Redis | None,
                      lease_ttl_s: float = LEASE_TTL_S, progress=None, stop: threading.Event | None = None) -> str:
    """Measure one queued profile in this process, holding the device lease as a trial does (a profile
    measures the device: a trial beside it would change both). Returns "succeeded", "failed" or "skipped";
    raises LeaseBusy when the device is leased (the profile stays queued)."""
    profile = Profile.objects.filter(id=profile_id).first()
    if profile is None or profile.status != Profile.Status.QUEUED:
        return "skipped"
    try:
        info = resolve_device(profile.device)
        device = info.name
    except DeviceError as exc:
        if profile_services.profile_claim(profile_id=profile_id, worker=worker) is None:
            return "skipped"
        profile_services.profile_fail(profile_id=profile_id, error=str(exc))
        return "failed"
    lease = (DeviceLease(redis_conn, device, owner=worker, ttl_s=lease_ttl_s, device_id=device_lease_id(info))
             if redis_conn is not None else None)
    if lease is not None:
        lease.acquire_or_raise()
    # The same keeper as a trial's: renewals on a thread of their own; lost -> the measurement stops.
    keeper = LeaseKeeper(lease, interval_s=max(0.5, lease_ttl_s / 6)) if lease is not None else None
    lease_lost = keeper.lost if keeper is not None else _NEVER
    try:
        claimed = profile_services.profile_claim(profile_id=profile_id, worker=worker)
        if claimed is None:
            return "skipped"
        if keeper is not None:
            keeper.start()

        def say(line: str) -> None:
            profile_services.profile_progress(profile_id=profile_id, stage=line)
            if progress is not None:
                progress(line)

        asked = claimed.asked or {}
        try:
            upload = None
            if "onnx_sha256" in (claimed.options or {}):
                upload = upload_for_profile(claimed.options["onnx_sha256"], claimed.owner)
                if upload is None:
                    raise LookupError(f"{claimed.model}: the uploaded model was deleted since the profile was asked")
            data = profiling.measure_profile(
                claimed.model, options=claimed.options, input_shape=claimed.input_shape, device=device,
                model_dir=Path(settings.MODEL_DIR), samples=int(asked.get("samples", profiling.DEFAULT_SAMPLES)),
                cold_starts=int(asked.get("cold_starts", profiling.DEFAULT_COLD_STARTS)),
                max_batch_size=int(asked.get("max_batch_size", profiling.DEFAULT_MAX_BATCH_SIZE)), progress=say,
                should_stop=lambda: lease_lost.is_set() or (stop is not None and stop.is_set()), upload=upload)
        except Exception as exc:  # noqa: BLE001 - any failure ends as a failed profile with a reason
            if isinstance(exc, SoftTimeLimitExceeded):
                reason = f"the profile ran past its time limit of {profile_services.SOFT_TIME_LIMIT_S} s"
            elif lease_lost.is_set():
                reason = "lost the device lease while measuring; another trial may have shared the device"
            else:
                log.info("profile %s: measuring failed", profile_id, exc_info=True)
                reason = f"{type(exc).__name__}: {exc}"
            profile_services.profile_fail(profile_id=profile_id, error=reason)
            return "failed"
        if lease_lost.is_set():
            profile_services.profile_fail(profile_id=profile_id, error="lost the device lease while measuring; "
                                          "another trial may have shared the device")
            return "failed"
        profile_services.profile_finish(profile_id=profile_id, data=data)
        return "succeeded"
    finally:
        if keeper is not None:
            keeper.stop()
        if lease is not None:
            try:
                lease.release()
            except redis.RedisError:
                log.warning("profile %s: could not release the lease on %s", profile_id, device, exc_info=True)


@shared_task(bind=True, name="profiles.measure", acks_late=True, max_retries=None)
def measure_profile_task(self, profile_id: int) -> str:
    """Measure one profile (by id). Idempotent: a profile that is not queued any more is skipped."""
    worker = self.request.hostname or f"celery@{socket.gethostname()}"
    try:
        return run_profile_by_id(profile_id, worker=worker, redis_conn=redis_client())
    except LeaseBusy as exc:
        raise _retry_when_leased(self, "profile", profile_id, exc) from None


# ---- capacity searches ------------------------------------------------------------------------------------------
@shared_task(bind=True, name="capacity.search", acks_late=True)
def capacity_search_task(self, search_id: int) -> str:
    """Run one capacity search (by id) with its probes in this process (controlplane.experiments.capacity): on the
    device pool's queue for a real search (each probe takes the device lease as any trial), on `sim` for a simulated
    one. Idempotent: a search that is not queued any more is skipped."""
    worker = self.request.hostname or f"celery@{socket.gethostname()}"
    return capacity.capacity_run_by_id(search_id, worker=worker, redis_conn=redis_client())
