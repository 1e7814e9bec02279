"""Trial lifecycle services: what a worker does to a Trial row while it runs it.

Every state change is a conditional UPDATE on the current status (compare-and-set), so a duplicate
or redelivered Celery message, a late heartbeat after a cancel, or two workers racing for one trial
can never move a trial backwards or run it twice: "0 rows updated" means someone else has it.
Status changes are announced on the trial's channel group once committed (`on_commit`), never from
inside the transaction.

Enqueueing and cancelling belong to `services` (the user's actions); these are the worker's side.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import events
from .models import Trial, TrialWindow

ERROR_MAX_CHARS = 4_000
HEARTBEAT_S = 0.5  # cancel must stop a running trial within 2 s: heartbeat + engine stop + store fit in it
# Cancel closes a running trial at once when its worker has missed this many heartbeats: nobody is left to stop it.
CANCEL_GONE_AFTER_HEARTBEATS = 4
WORKER_LOST = "worker lost"  # how a reaped trial's error starts; the pages show the error as it is
_ACTIVE = (Trial.Status.QUEUED, Trial.Status.RUNNING)


def trial_announce(trial_id: int) -> None:
    """Tell open pages (after commit) that this trial's status changed."""

    def send() -> None:
        trial = Trial.objects.filter(id=trial_id).only("code", "status", "error", "device",
                                                       "cancel_requested").first()
        if trial is not None:
            events.publish(trial.code, events.status_event(trial))

    transaction.on_commit(send)


def trial_claim(*, trial_id: int, worker: str, device: str, device_id: str = "", lease_key: str = "",
                lease_token: str = "") -> Trial | None:
    """Move a queued trial to running for this worker. None: it is not queued any more (another worker
    has it, it was cancelled, or this is a duplicate delivery of a finished trial): do nothing. The lease
    the worker holds is recorded, so a reaper can free exactly that lease if the worker is lost."""
    now = timezone.now()
    with transaction.atomic():
        claimed = Trial.objects.filter(id=trial_id, status=Trial.Status.QUEUED).update(
            status=Trial.Status.RUNNING, started_at=now, heartbeat_at=now, worker=worker[:200], device=device[:64],
            device_id=device_id[:200], lease_key=lease_key[:200], lease_token=lease_token[:300])
        if not claimed:
            return None
        trial_announce(trial_id)
    return Trial.objects.select_related("experiment", "experiment__accelerator").get(id=trial_id)


def trial_heartbeat(*, trial_id: int) -> bool:
    """Record that the worker is alive; returns True when the trial should stop (cancel requested, or the
    trial is no longer running: cancelled or failed behind the worker's back, or deleted)."""
    Trial.objects.filter(id=trial_id, status=Trial.Status.RUNNING).update(heartbeat_at=timezone.now())
    row = Trial.objects.filter(id=trial_id).values_list("status", "cancel_requested").first()
    if row is None:
        return True
    status, cancel_requested = row
    return bool(cancel_requested) or status != Trial.Status.RUNNING


def trial_store_windows(*, trial_id: int, windows: list[tuple[int, dict]]) -> int:
    """Store per-second windows. Idempotent on (trial, index): storing a window again replaces it, so the
    engine's final windows (which may count late completions) overwrite the live ones."""
    if not windows:
        return 0
    rows = [TrialWindow(trial_id=trial_id, index=int(index), t_s=float(w.get("t_s") or index), data=w)
            for index, w in windows]
    TrialWindow.objects.bulk_create(rows, update_conflicts=True, unique_fields=["trial", "index"],
                                    update_fields=["t_s", "data"])
    return len(rows)


def _artifact_name(artifact_path: str | Path | None) -> str | None:
    """The FileField name of an artifact file: relative to MEDIA_ROOT (files elsewhere are not served)."""
    if not artifact_path:
        return None
    path = Path(artifact_path).resolve()
    try:
        return path.relative_to(Path(settings.MEDIA_ROOT).resolve()).as_posix()
    except ValueError:
        return None


def trial_finish(*, trial_id: int, status: str, summary: dict | None, artifact_path: str | Path | None = None
                 ) -> Trial | None:
    """Store a trial's outcome (succeeded, or cancelled with the summary of what ran). None: the trial was
    not running (already finished elsewhere); nothing is changed."""
    if status not in (Trial.Status.SUCCEEDED, Trial.Status.CANCELLED):
        raise ValueError(f"trial_finish takes succeeded or cancelled, not {status!r} (use trial_fail)")
    with transaction.atomic():
        done = Trial.objects.filter(id=trial_id, status=Trial.Status.RUNNING).update(
            status=status, summary=summary, artifact=_artifact_name(artifact_path) or "",
            finished_at=timezone.now(), heartbeat_at=timezone.now())
        if not done:
            return None
        trial_announce(trial_id)
    return Trial.objects.get(id=trial_id)


def trial_fail(*, trial_id: int, error: str, artifact_path: str | Path | None = None) -> Trial | None:
    """Mark a queued or running trial failed with a readable reason. Windows already stored are kept: they
    show how far it got. None: it had already finished."""
    error = (error or "failed without a reason").strip()
    if len(error) > ERROR_MAX_CHARS:
        error = error[: ERROR_MAX_CHARS - 1] + "…"
    with transaction.atomic():
        fields = {"status": Trial.Status.FAILED, "error": error, "finished_at": timezone.now()}
        if artifact_path:
            fields["artifact"] = _artifact_name(artifact_path) or ""
        done = Trial.objects.filter(id=trial_id, status__in=_ACTIVE).update(**fields)
        if not done:
            return None
        trial_announce(trial_id)
    return Trial.objects.get(id=trial_id)


def trial_fail_stale(*, stale_after_s: float = 120.0) -> int:
    """Fail running trials whose worker stopped heart-beating (killed, host lost). Their lease has long
    expired, so the device is free again; rerunning is the user's call (their numbers would mix two runs).
    Returns how many were failed."""
    cutoff = timezone.now() - timedelta(seconds=stale_after_s)
    stale = list(Trial.objects.filter(status=Trial.Status.RUNNING, heartbeat_at__lt=cutoff)
                 .values_list("id", "worker", "heartbeat_at"))
    failed = 0
    for trial_id, worker, heartbeat_at in stale:
        reason = (f"{WORKER_LOST}: {worker or '?'} stopped responding (last heartbeat "
                  f"{heartbeat_at:%Y-%m-%d %H:%M:%S} UTC); the trial was abandoned")
        with transaction.atomic():
            # Conditional on the same heartbeat: a worker that just came back is left alone.
            done = Trial.objects.filter(id=trial_id, status=Trial.Status.RUNNING,
                                        heartbeat_at=heartbeat_at).update(
                status=Trial.Status.FAILED, error=reason, finished_at=timezone.now())
            if done:
                trial_announce(trial_id)
                failed += 1
    return failed



def trial_worker_lost(*, trial_id: int, reason: str, heartbeat_at=None) -> Trial | None:
    """Fail a running trial whose worker is gone, with "worker lost: <reason>". Its windows stay. With
    `heartbeat_at`, only if the heartbeat is still that one (a worker that just came back is left alone).
    The caller frees the lease recorded on the row (`lease_key`, `lease_token`)."""
    rows = Trial.objects.filter(id=trial_id, status=Trial.Status.RUNNING)
    if heartbeat_at is not None:
        rows = rows.filter(heartbeat_at=heartbeat_at)
    with transaction.atomic():
        done = rows.update(status=Trial.Status.FAILED, error=f"{WORKER_LOST}: {reason}"[:ERROR_MAX_CHARS],
                           finished_at=timezone.now())
        if not done:
            return None
        trial_announce(trial_id)
    return Trial.objects.get(id=trial_id)


# ---- the result file: what a finished trial measured, on disk before it is in the database ---------------------
def result_file_for(code) -> Path:
    """`<MEDIA_ROOT>/artifacts/<code>.result.json`, beside the trial's Parquet artifact."""
    return Path(settings.MEDIA_ROOT) / "artifacts" / f"{code}.result.json"


def write_result_file(*, code, status: str, summary: dict, windows: list[tuple[int, dict]],
                      artifact_path: str | Path | None) -> Path:
    """Write a finished trial's outcome next to its artifact before storing it, so a database outage (or
    the worker dying) between the end of the run and the store loses nothing: the reaper stores it later
    (`trial_complete_from_file`). Written to a temporary name and renamed: never half a file."""
    path = result_file_for(code)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"status": str(status), "summary": summary, "windows": windows,
                               "artifact_path": str(artifact_path) if artifact_path else None}))
    os.replace(tmp, path)
    return path


def trial_store_result(*, trial_id: int, status: str, summary: dict, windows: list[tuple[int, dict]],
                       artifact_path: str | Path | None) -> Trial | None:
    """Store a finished trial's windows and outcome (idempotent: windows replace by index, the finish is a
    compare-and-set). None: the trial was not running any more."""
    trial_store_windows(trial_id=trial_id, windows=windows)
    return trial_finish(trial_id=trial_id, status=status, summary=summary, artifact_path=artifact_path)


def trial_complete_from_file(*, trial_id: int, code) -> Trial | None:
    """Store the outcome a worker wrote to its result file but could not store (the database was down, or
    the worker died right after writing it). None: no result file, or the trial was no longer running."""
    path = result_file_for(code)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    done = trial_store_result(trial_id=trial_id, status=data["status"], summary=data["summary"],
                              windows=[(int(i), w) for i, w in data["windows"]], artifact_path=data["artifact_path"])
    path.unlink(missing_ok=True)
    return done
