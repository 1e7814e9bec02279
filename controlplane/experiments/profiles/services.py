"""Writes of profiles: ask for one (queued, enqueued on its device pool once this commits), claim it, record
progress, store the measured dict or the reason it failed. Same shape as the trial services: a conditional
UPDATE claims a row, so a duplicate task message does nothing."""

from __future__ import annotations

import functools

from django.db import transaction
from django.utils import timezone

from controlplane.registry.selectors import resolve_uploaded_functions
from workers import profiling

from ..models import Experiment, Profile
from ..services import INLINE_QUEUE, device_queue

# A full profile of a small model takes about a minute; a large one several. A stuck one is stopped well
# before a trial's hour-long limit.
SOFT_TIME_LIMIT_S = 1800
TIME_LIMIT_S = SOFT_TIME_LIMIT_S + 120


def profile_settings(*, short: bool = False, samples: int | None = None) -> dict:
    """What measure_profile is asked for: the defaults, or the short mode, with `samples` overriding both."""
    out = dict(profiling.SHORT) if short else {"max_batch_size": profiling.DEFAULT_MAX_BATCH_SIZE,
                                                 "samples": profiling.DEFAULT_SAMPLES,
                                                 "cold_starts": profiling.DEFAULT_COLD_STARTS}
    if samples is not None:
        if int(samples) < 1:
            raise ValueError("samples: must be 1 or more")
        out["samples"] = int(samples)
    out["short"] = bool(short)
    return out


def profile_request(*, owner, model: str, options: dict | None, input_shape, device: str,
                    experiment: Experiment | None = None, asked: dict | None = None,
                    enqueue: bool = True) -> Profile:
    """A queued profile. enqueue=True: sent to the device pool's queue once this commits (a worker measures
    it); False: for a runner in this process (`manage.py profile`)."""
    opts, shape = profiling.canonical(model, options, input_shape)
    with transaction.atomic():
        profile = Profile.objects.create(
            owner=owner, experiment=experiment, model=model, options=opts, input_shape=shape, device=device,
            key=profiling.profile_key(model, opts, shape, device), asked=asked or profile_settings(),
            queue=device_queue(device) if enqueue else INLINE_QUEUE)
        if enqueue:
            transaction.on_commit(functools.partial(_enqueue, profile.id, profile.queue))
    return profile


def _enqueue(profile_id: int, queue: str) -> None:
    from workers.tasks import measure_profile_task

    measure_profile_task.apply_async(args=[profile_id], queue=queue, soft_time_limit=SOFT_TIME_LIMIT_S,
                                     time_limit=TIME_LIMIT_S)


def experiment_profile(*, experiment: Experiment, user, short: bool = False) -> list[Profile]:
    """One queued profile per distinct (model, options, input shape) of the experiment's functions, on its
    device, owned by `user`."""
    seen: set[str] = set()
    out: list[Profile] = []
    specs = resolve_uploaded_functions(experiment.owner, tuple(f.to_spec() for f in experiment.functions.all()))
    with transaction.atomic():
        for spec in specs:
            model, options, shape = profiling.function_profile_parts(spec)
            key = profiling.profile_key(model, options, shape, experiment.device)
            if key in seen:
                continue
            seen.add(key)
            out.append(profile_request(owner=user, model=model, options=options, input_shape=shape,
                                       device=experiment.device, experiment=experiment,
                                       asked=profile_settings(short=short)))
    return out


def profile_claim(*, profile_id: int, worker: str) -> Profile | None:
    """queued -> running, or None when it is not queued any more (someone else has it)."""
    n = Profile.objects.filter(id=profile_id, status=Profile.Status.QUEUED).update(
        status=Profile.Status.RUNNING, worker=worker, started_at=timezone.now())
    return Profile.objects.get(id=profile_id) if n else None


def profile_progress(*, profile_id: int, stage: str) -> None:
    Profile.objects.filter(id=profile_id, status=Profile.Status.RUNNING).update(stage=stage[:200])


def profile_finish(*, profile_id: int, data: dict) -> Profile:
    """Store a measured profile (validated first). Its key and device become the device really measured, so
    a profile asked for on "auto" is found under "cpu" or "cuda:0"."""
    data = profiling.validate_profile(data)
    key = profiling.profile_key(data["model"], data["options"], data["input_shape"], data["device"])
    Profile.objects.filter(id=profile_id).update(
        status=Profile.Status.SUCCEEDED, data=data, key=key, device=data["device"], hardware=data["hardware"][:500],
        options=data["options"], input_shape=data["input_shape"], finished_at=timezone.now(), stage="", error="")
    return Profile.objects.get(id=profile_id)


def profile_fail(*, profile_id: int, error: str) -> None:
    Profile.objects.filter(id=profile_id).exclude(status=Profile.Status.SUCCEEDED).update(
        status=Profile.Status.FAILED, error=error, finished_at=timezone.now())


def profile_delete(*, profile: Profile) -> None:
    profile.delete()


def profile_fail_stale(*, now=None) -> int:
    """Fail running profiles older than the task's hard time limit: their worker is gone (killed, host lost),
    since Celery would have stopped the task by then. Returns how many were failed."""
    from datetime import timedelta

    cutoff = (now or timezone.now()) - timedelta(seconds=TIME_LIMIT_S)
    return Profile.objects.filter(status=Profile.Status.RUNNING, started_at__lt=cutoff).update(
        status=Profile.Status.FAILED, finished_at=timezone.now(),
        error=f"abandoned: still running after the task's time limit of {TIME_LIMIT_S} s (the worker stopped)")
