"""Reads of profiles: what a user may see (shared ones and their own), the newest profile of a model on a
device (`find_profile`, what experiments and the simulator reuse), and the figures the page shows."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from django.http import Http404

from controlplane.registry.selectors import resolve_uploaded_functions
from workers import profiling

from ..models import Profile
from ..selectors import _uuid_or_404


def profiles_visible_to(*, user) -> QuerySet:
    """Shared profiles (no owner: measured by a command) and the user's own."""
    return Profile.objects.filter(Q(owner__isnull=True) | Q(owner=user)).select_related("experiment", "owner")


def profile_get_for(*, user, code: Any) -> Profile:
    """The profile if the user may see it; 404 otherwise (another user's profile does not exist for them)."""
    profile = profiles_visible_to(user=user).filter(code=_uuid_or_404(code)).first()
    if profile is None:
        raise Http404("no such profile")
    return profile


def find_profile(model: str, options: dict | None, input_shape, device: str, *, user=None) -> Profile | None:
    """The newest finished profile of this model (options and input shape as in a function spec; a built-in's
    defaults need not be spelled out) on this device ("cpu", "cuda:N": the device measured, not "auto").
    `user`: only profiles that user may see; None: any."""
    qs = Profile.objects.filter(key=profiling.profile_key(model, options, input_shape, device),
                                status=Profile.Status.SUCCEEDED)
    if user is not None:
        qs = qs.filter(Q(owner__isnull=True) | Q(owner=user))
    return qs.order_by("-finished_at", "-id").first()


def profile_figures(profile: Profile) -> dict | None:
    """What the detail page shows: the table, the two charts' series, the cold-start phases. None until
    measured."""
    d = profile.data
    if not d:
        return None
    rows = profiling.summary_table(d)
    series = []
    for level in d["sharing_levels"]:
        mine = [r for r in rows if r["level"] == level]
        series.append({"level": level, "batch_sizes": [r["batch_size"] for r in mine],
                       "p50_ms": [r["p50_ms"] for r in mine], "p99_ms": [r["p99_ms"] for r in mine],
                       "throughput_rps": [r["throughput_rps"] for r in mine]})
    cold = profiling.cold_start_table(d)
    total = next(c for c in cold if c["phase"] == "total")
    return {"rows": rows, "series": series, "cold": [c for c in cold if c["phase"] != "total"], "cold_total": total,
            "cold_starts": len(d["cold_start_ms"]["total"]), "overhead_us": d["overhead_us"],
            "memory_mib": d["memory_bytes"] / 2**20, "skipped": d.get("skipped") or [],
            "threads": d.get("instance_torch_threads") or {}}


def _measured_devices(device: str) -> tuple[str, ...]:
    """The devices a trial on `device` may run on, in the order resolve_device picks them (the web process
    does not import torch to ask): auto -> cuda:0 when there is a GPU, else cpu."""
    d = (device or "auto").strip().lower()
    return {"auto": ("cuda:0", "cpu"), "cuda": ("cuda:0",)}.get(d, (d,))


def experiment_function_profiles(*, experiment, user) -> dict[int, Profile | None]:
    """Function id -> the profile an experiment's function reuses (the newest one the user can see of its
    model on the experiment's device), or None. One query for all the functions (an experiment may have
    hundreds)."""
    wanted: dict[int, list[str]] = {}
    rows = list(experiment.functions.all())
    for f, spec in zip(rows, resolve_uploaded_functions(experiment.owner, tuple(f.to_spec() for f in rows)),
                       strict=True):
        wanted[f.id] = [profiling.profile_key(*profiling.function_profile_parts(spec), d)
                        for d in _measured_devices(experiment.device)]
    newest: dict[str, Profile] = {}
    keys = {k for ks in wanted.values() for k in ks}
    for p in profiles_visible_to(user=user).filter(key__in=keys, status=Profile.Status.SUCCEEDED).order_by(
            "-finished_at", "-id"):
        newest.setdefault(p.key, p)
    return {fid: next((newest[k] for k in ks if k in newest), None) for fid, ks in wanted.items()}
