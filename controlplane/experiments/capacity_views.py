"""Capacity search pages: the comparison page's "Capacity at SLO" button (a form per variant: simulated or real,
budget), one search's page (progress, its probes with links to their trials, the knee chart and the result,
refreshing itself while it runs) and its Cancel button. The search is `capacity.capacity_start`, as for the API and
`manage.py capacity`."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from workers import spec as S

from . import capacity, selectors
from .figures import format_usd_per_1k


@login_required
@require_POST
def experiment_capacity(request: HttpRequest, code) -> HttpResponse:
    experiment = selectors.experiment_get_for(user=request.user, code=code)
    options = {"variant": request.POST.get("variant", ""), "simulated": request.POST.get("mode") == "simulated"}
    for field, kind in (("budget", int), ("probe_s", float)):
        raw = request.POST.get(field, "").strip()
        if raw:
            try:
                options[field] = kind(raw)
            except ValueError:
                options[field] = raw  # search_options names the field
    try:
        search = capacity.capacity_start(experiment=experiment, user=request.user, options=options)
    except S.SpecError as exc:
        messages.error(request, "Cannot start the capacity search: " + "; ".join(str(e) for e in exc.errors))
        return redirect("experiment-compare", code=experiment.code)
    return redirect(search)


@login_required
@require_GET
def capacity_detail(request: HttpRequest, code) -> HttpResponse:
    search = selectors.capacity_get_for(user=request.user, code=code)
    slo = search.experiment.slo
    result = search.result or {}
    lo, hi = capacity.bracket(search.probes or [])
    return render(request, "capacity/detail.html", {
        "search": search, "result": result, "bracket": (lo, hi), "slo": slo,
        "cost_at_capacity": format_usd_per_1k(result.get("cost_per_1k_usd_at_capacity")),
        "serverless_at_capacity": format_usd_per_1k(result.get("serverless_per_1k_usd_at_capacity")),
        "knee": {"slo_ms": slo.latency_ms, "series": [capacity.knee_series(search)]},
        "probes": [{**p, "index": i} for i, p in enumerate(search.probes or [])]})


@login_required
@require_POST
def capacity_cancel(request: HttpRequest, code) -> HttpResponse:
    search = capacity.capacity_cancel(search=selectors.capacity_get_for(user=request.user, code=code))
    return redirect(search)
