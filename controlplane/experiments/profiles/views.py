"""Profile pages: the list (running and finished), one profile with its charts, its JSON download, and the
experiment page's "Profile" button. A user sees shared profiles (measured by `manage.py profile`) and their
own; anyone else's is a 404."""

from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from .. import selectors as experiment_selectors
from ..models import Profile
from . import selectors, services


@login_required
@require_GET
def profile_list(request: HttpRequest) -> HttpResponse:
    profiles = list(selectors.profiles_visible_to(user=request.user)[:200])
    active = any(not p.is_finished for p in profiles)
    return render(request, "profiles/list.html", {"profiles": profiles, "active": active})


@login_required
@require_GET
def profile_detail(request: HttpRequest, code) -> HttpResponse:
    profile = selectors.profile_get_for(user=request.user, code=code)
    figures = selectors.profile_figures(profile)
    return render(request, "profiles/detail.html", {
        "profile": profile, "figures": figures, "data": profile.data,
        "chart_series": figures["series"] if figures else [],
        "options_json": json.dumps(profile.options, sort_keys=True)})


@login_required
@require_GET
def profile_json(request: HttpRequest, code) -> HttpResponse:
    """The profile dict itself (version 1), as a download."""
    profile = selectors.profile_get_for(user=request.user, code=code)
    if profile.status != Profile.Status.SUCCEEDED:
        raise Http404("this profile has not been measured")
    response = JsonResponse(profile.data, json_dumps_params={"indent": 2})
    response["Content-Disposition"] = f'attachment; filename="profile-{profile.model}-{profile.device}-{profile.code}.json"'
    return response


@login_required
@require_POST
def experiment_profile(request: HttpRequest, code) -> HttpResponse:
    """Queue a profile of each distinct function model of the experiment on its device's worker."""
    experiment = experiment_selectors.experiment_get_for(user=request.user, code=code)
    profiles = services.experiment_profile(experiment=experiment, user=request.user,
                                           short=request.POST.get("short") == "1")
    messages.success(request, f"Profiling queued: {len(profiles)} model{'s' if len(profiles) != 1 else ''} on "
                              f"{experiment.device}.")
    return redirect("profile-list")
