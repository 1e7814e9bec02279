"""The reaper: nothing stuck, nothing lost, whatever happened to a worker, the database or the broker.

A thread in every worker's main process (started on `worker_ready`, controlplane/celery.py) sweeps every
`REAPER_INTERVAL_S`:

- A running trial whose heartbeat is older than `TRIAL_STALE_AFTER_S` and whose device lease has lapsed
  (the lease is renewed on a thread of its own, so a lease still held means the worker process is alive and
  only its database writes are slow) lost its worker. If the worker wrote a result file before it died or
  before the database came back, the trial is completed from it (nothing measured is lost); otherwise it is
  failed "worker lost: ...", its windows kept and its lease freed.
- A queued trial whose message never reached the broker (Run during a broker outage: `enqueued_at` is
  empty) is sent now; one whose message the broker no longer holds (a Redis restart without persistence, a
  message acknowledged by a task that died before its claim) is sent again. Sending twice is harmless: the
  claim is a compare-and-set.

Several reapers (one per worker, on many hosts) may sweep at once: a short Redis lock keeps them from
doing the same work twice, and every change is a conditional UPDATE anyway, so a race changes nothing.
A pool process killed mid-trial is usually caught sooner than this, by the redelivery of its own message
(workers.tasks, `reject_on_worker_lost` on `execute_trial`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import timedelta

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from . import services
from .lease import release_token, token_held
from .models import Trial
from .trials import result_file_for, trial_complete_from_file, trial_worker_lost

log = logging.getLogger(__name__)

LOCK_KEY = "slsbench:reaper"
_TASK_ID_RE = re.compile(rb"trial-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
_PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: queue "q" at priority p lives in "q\x06\x16p"
_PRIORITY_STEPS = (3, 6, 9)


def broker_redis() -> redis.Redis:
    return redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=5, socket_connect_timeout=5)


def _broker_prefix() -> str:
    return (getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}).get("global_keyprefix") or ""


def broker_trial_codes(conn: redis.Redis, queues: set[str], *, delivered_within_s: float | None = None) -> set[str]:
    """Codes of the trials the broker holds a live message for: waiting in one of `queues`, or delivered to a
    worker within `delivered_within_s` and not yet acknowledged (a retry waiting for its countdown). A message
    delivered longer ago to a worker that never acknowledged it most likely went down with that worker (kombu
    gives it back only after the visibility timeout, hours later); sending the trial again is harmless.
    Messages carry the task id `trial-<code>` (services.trial_task_id)."""
    prefix = _broker_prefix()
    delivered_within_s = settings.TRIAL_STALE_AFTER_S if delivered_within_s is None else delivered_within_s
    found: set[str] = set()
    recent = {tag for tag, _ in conn.zrangebyscore(f"{prefix}unacked_index", time.time() - delivered_within_s, "+inf",
                                                    withscores=True)}
    unacked = conn.hgetall(f"{prefix}unacked")
    raw: list[bytes] = [payload for tag, payload in unacked.items() if tag in recent]
    for q in queues:
        for key in [q] + [f"{q}{_PRIORITY_SEP}{p}" for p in _PRIORITY_STEPS]:
            raw.extend(conn.lrange(f"{prefix}{key}", 0, -1))
    for item in raw:
        found.update(m.decode() for m in _TASK_ID_RE.findall(item))
    return found


def free_lease(trial: Trial, conn: redis.Redis | None) -> bool:
    """Free the lease recorded on a trial, if that lease (its token) still holds the device."""
    if conn is None or not trial.lease_key or not trial.lease_token:
        return False
    try:
        return release_token(conn, trial.lease_key, trial.lease_token)
    except redis.RedisError:
        log.warning("could not free the lease %s (it expires by itself)", trial.lease_key, exc_info=True)
        return False


def reap_running(*, conn: redis.Redis | None, stale_after_s: float | None = None) -> tuple[int, int]:
    """Complete or fail the running trials whose worker is gone. Returns (completed, failed)."""
    stale_after_s = settings.TRIAL_STALE_AFTER_S if stale_after_s is None else stale_after_s
    cutoff = timezone.now() - timedelta(seconds=stale_after_s)
    completed = failed = 0
    stale = Trial.objects.filter(status=Trial.Status.RUNNING, heartbeat_at__lt=cutoff).only(
        "id", "code", "worker", "heartbeat_at", "lease_key", "lease_token")
    for trial in stale:
        if trial.lease_key and conn is not None:
            try:
                if token_held(conn, trial.lease_key, trial.lease_token):
                    continue  # its worker still renews the lease: alive, only its database writes lag
            except redis.RedisError:
                continue  # cannot tell: the next sweep decides
        if result_file_for(trial.code).exists():
            if trial_complete_from_file(trial_id=trial.id, code=trial.code) is not None:
                log.info("trial %s: completed from the result file its worker left", trial.id)
                completed += 1
            continue
        reason = (f"{trial.worker or 'its worker'} stopped heart-beating "
                  f"(last heartbeat {trial.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC) and no longer holds the device lease; "
                  "the windows measured until then are kept")
        if trial_worker_lost(trial_id=trial.id, reason=reason, heartbeat_at=trial.heartbeat_at) is not None:
            free_lease(trial, conn)
            log.warning("trial %s: %s", trial.id, reason)
            failed += 1
    return completed, failed


def resend_queued(*, conn: redis.Redis, grace_s: float | None = None) -> int:
    """Send queued trials that have no message in the broker. Returns how many were sent."""
    grace_s = 2 * settings.REAPER_INTERVAL_S if grace_s is None else grace_s
    before = timezone.now() - timedelta(seconds=grace_s)
    queued = list(Trial.objects.filter(status=Trial.Status.QUEUED, created__lt=before)
                  .exclude(queue=services.INLINE_QUEUE).values_list("id", "code", "queue", "enqueued_at"))
    if not queued:
        return 0
    held = broker_trial_codes(conn, {q for _, _, q, _ in queued})
    # Never sent (broker down at Run), or sent a while ago and no longer in the broker (lost with it).
    ids = [i for i, code, _, at in queued if at is None or (at < before and str(code) not in held)]
    if not ids:
        return 0
    sent = services.trials_enqueue(trial_ids=ids)
    if sent:
        log.info("re-sent %d queued trial(s) that had no message in the broker", sent)
    return sent


def sweep(*, conn: redis.Redis | None = None) -> dict[str, int]:
    """One pass of the reaper. Returns what it did: completed, failed and re-sent trials."""
    conn = conn if conn is not None else broker_redis()
    completed, failed = reap_running(conn=conn)
    try:
        resent = resend_queued(conn=conn)
    except redis.RedisError:
        log.warning("reaper: the broker is unreachable; queued trials are sent once it is back", exc_info=True)
        resent = 0
    return {"completed": completed, "failed": failed, "resent": resent}


class Reaper(threading.Thread):
    """Sweeps every `interval_s` while the worker runs. Errors (database or broker down) are logged and the
    next sweep tries again: the reaper is what recovers from those outages, so it must outlive them."""

    def __init__(self, *, interval_s: float | None = None):
        super().__init__(name="reaper", daemon=True)
        self.interval_s = settings.REAPER_INTERVAL_S if interval_s is None else interval_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        conn = broker_redis()
        while not self._stop_event.wait(self.interval_s):
            try:
                # One reaper at a time across workers; the lock lapses by itself if its holder dies.
                if not conn.set(f"{_broker_prefix()}{LOCK_KEY}", "1", nx=True, px=int(self.interval_s * 900)):
                    continue
            except redis.RedisError:
                pass  # no lock without Redis: the database part is safe anyway (conditional UPDATEs)
            try:
                done = sweep(conn=conn)
                if any(done.values()):
                    log.info("reaper: %s", done)
            except DatabaseError:
                log.warning("reaper: database unavailable; retrying at the next sweep", exc_info=True)
                _close_db()
            except Exception:  # noqa: BLE001 - the reaper must survive anything one sweep runs into
                log.exception("reaper: sweep failed; retrying at the next sweep")
                _close_db()
        _close_db()

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(5)


def _close_db() -> None:
    # A connection broken by an outage stays broken in a thread that never ends a request: drop it, the next
    # query opens a new one.
    try:
        connection.close()
    except DatabaseError:
        pass


# ---- Celery signal handlers (connected in controlplane/celery.py) ------------------------------------------
_reaper: Reaper | None = None


def on_worker_ready(sender, **kwargs) -> None:
    global _reaper
    from .reports.exports import REPORTS_QUEUE

    if set(sender.app.amqp.queues.consume_from or {}) <= {REPORTS_QUEUE}:
        return  # the reports worker runs no trials
    _reaper = Reaper()
    _reaper.start()
    log.info("reaper: sweeping every %.1f s (stale after %.1f s)", _reaper.interval_s, settings.TRIAL_STALE_AFTER_S)


def on_worker_shutdown(sender=None, **kwargs) -> None:
    global _reaper
    if _reaper is not None:
        _reaper.stop()
        _reaper = None
